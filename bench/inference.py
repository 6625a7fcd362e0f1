"""Inference latency in the prod image: eager vs torch.jit.script, trace and freeze.

The timing itself runs inside the prod image (bench/incontainer/inference.py,
mounted read-only), on the CPU and, where a GPU is visible, on CUDA too.
Speed-ups are eager's median latency over each variant's, taken from the same
interleaved rounds; their range is the per-round ratios' min and max.
"""

from __future__ import annotations


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
    data["rounds"] = runs
    return data
