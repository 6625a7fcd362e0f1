"""Inference latency in the prod image: eager vs torch.jit.script, trace and freeze.

The timing itself runs inside the prod image (bench/incontainer/inference.py,
mounted read-only), on the CPU and, where a GPU is visible, on CUDA too.
Speed-ups are eager's median latency over each variant's, taken from the same
interleaved rounds; their range is the per-round ratios' min and max.
"""

from __future__ import annotations

import statistics

from pytorch_cuda.core.progress import say

from .session import Session

BATCHES = (1, 32)


def measure(session: Session, runs: int) -> dict:
    """Latency per model, batch size, device and variant, with speed-ups vs eager."""
    say(f"timing eager and TorchScript variants in {session.prod.ref()} ({runs} rounds each)")
    data = session.run_json(
        session.prod.ref(),
        ["python", "/bench/inference.py", "--rounds", str(runs),
         "--batch", *map(str, BATCHES)],
        **session.gpu_kwargs())
    eager = {(r["model"], r["batch"], r["device"]): r for r in data["results"]
             if r["mode"] == "eager"}
    for row in data["results"]:
        base = eager[(row["model"], row["batch"], row["device"])]
        per_round = [e / m for e, m in zip(base["round_medians_us"], row["round_medians_us"],
                                           strict=True) if m]
        row["speedup_vs_eager"] = base["median_us"] / row["median_us"]
        row["speedup_round_min"] = min(per_round)
        row["speedup_round_max"] = max(per_round)
        row["speedup_round_median"] = statistics.median(per_round)
    data["rounds"] = runs
    return data
