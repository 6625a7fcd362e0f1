"""Latency of a model in eager mode and as TorchScript (script, trace, freeze).

For every model, batch size and device the four variants are built from the
same weights, warmed up, then timed in rounds. Each round alternates the
variants in short slices (the order rotating from slice to slice), so that a
slow spell of a shared machine hits every variant alike; a round's median per
variant is one run of the figure. Used by ``bench/incontainer/inference.py``
(in the prod image) and the GPU proof.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .models import ControlFlow, SmallConvNet, TransformerBlock, positive, seeded

MODES = ("eager", "script", "trace", "freeze")
WARMUP_CALLS = 30
WARMUP_SECONDS = 0.3
CALIBRATION_CALLS = 10
SLICES = 10  # each round alternates the variants in this many short slices
MAX_CALLS = 200  # per variant and slice

# name -> (module factory, input shape without the batch dimension, what it is)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    "controlflow": (lambda: seeded(ControlFlow, features=8), (8,),
                    "Linear(8, 8), ReLU only when the input sum is positive"),
    "smallconv": (lambda: seeded(SmallConvNet), (3, 32, 32),
                  "two 3x3 convolutions, BatchNorm, pooling, linear head; 3x32x32 input"),
    "transformer": (lambda: seeded(TransformerBlock), (32, 128),
                    "pre-norm attention + MLP block, 32 tokens of width 128"),
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def variants(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, Callable], int]:
    """The four variants of one model, and how many tracer warnings tracing raised.

    They share the model's weights, which is fine here: nothing is moved or cast
    after they are built.
    """
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)
    tracer_warnings = sum(1 for w in caught if issubclass(w.category, torch.jit.TracerWarning))
    scripted = torch.jit.script(model)
    frozen = torch.jit.freeze(torch.jit.script(model).eval())
    return {"eager": model, "script": scripted, "trace": traced, "freeze": frozen}, tracer_warnings


def time_calls(fn: Callable, x: torch.Tensor, calls: int, sync: Callable[[], None]) -> list[float]:
    """Wall time of each of `calls` calls, in microseconds."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn(x)
        sync()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def bench_one(name: str, batch: int, device: str, rounds: int, budget: float) -> list[dict]:
    """Time the four variants of one model at one batch size on one device."""
    factory, shape, _ = MODELS[name]
    x = positive(batch, *shape, seed=1).to(device)
    model = factory().to(device)
    fns, tracer_warnings = variants(model, x)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    calls: dict[str, int] = {}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for mode, fn in fns.items():
            started, warm = time.monotonic(), 0
            while warm < WARMUP_CALLS or time.monotonic() - started < WARMUP_SECONDS:
                time_calls(fn, x, 1, sync)
                warm += 1
            per_call = statistics.median(time_calls(fn, x, CALIBRATION_CALLS, sync)) / 1e6
            share = budget / rounds / SLICES / len(fns)
            calls[mode] = max(1, min(MAX_CALLS, int(share / per_call)))
            outputs[mode] = fn(x).float().cpu()
        samples: dict[str, list[float]] = {m: [] for m in fns}
        medians: dict[str, list[float]] = {m: [] for m in fns}
        turn = 0
        for _ in range(rounds):
            this_round: dict[str, list[float]] = {m: [] for m in fns}
            for _ in range(SLICES):
                for mode in MODES[turn % len(MODES):] + MODES[:turn % len(MODES)]:
                    this_round[mode] += time_calls(fns[mode], x, calls[mode], sync)
                turn += 1
            for mode, got in this_round.items():
                samples[mode] += got
                medians[mode].append(statistics.median(got))
    results = []
    for mode in MODES:
        values = samples[mode]
        results.append({
            "model": name, "batch": batch, "device": device, "mode": mode,
            "median_us": statistics.median(values), "p99_us": percentile(values, 99),
            "min_us": min(values), "max_us": max(values), "calls": len(values),
            "round_medians_us": medians[mode],
            "max_abs_diff_vs_eager": float((outputs[mode] - outputs["eager"]).abs().max()),
            "tracer_warnings": tracer_warnings if mode == "trace" else 0,
        })
    return results


def with_speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``speedup_vs_eager`` (eager's median over the variant's) and its range over rounds."""
    eager = {(r["model"], r["batch"], r["device"]): r for r in results if r["mode"] == "eager"}
    for row in results:
        base = eager[(row["model"], row["batch"], row["device"])]
        per_round = [e / m for e, m in zip(base["round_medians_us"], row["round_medians_us"],
                                           strict=True) if m]
        row["speedup_vs_eager"] = base["median_us"] / row["median_us"]
        row["speedup_round_min"] = min(per_round)
        row["speedup_round_max"] = max(per_round)
        row["speedup_round_median"] = statistics.median(per_round)
    return results
