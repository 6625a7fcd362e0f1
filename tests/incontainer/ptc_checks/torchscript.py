"""TorchScript checks: scripting vs tracing, save/load, eval mode, freeze, loops.

Tolerances (see ``torch.testing.assert_close``):

* FP32_*: scripted vs eager on the same device run the same float32 kernels, so
  the float32 defaults of ``assert_close`` apply.
* CROSS_DEVICE_*: CPU vs CUDA use different kernels and reduction orders
  (cuBLAS/cuDNN), so the comparison is looser; TF32 is switched off for it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .results import Check, all_passed, check, close_check, differ_check, guarded

# Scripted vs eager on one device run the same float32 kernels: the float32
# defaults of torch.testing.assert_close apply (a frozen model folds BatchNorm
# into the preceding layer, which stays well inside them).
FP32_RTOL = 1.3e-6
FP32_ATOL = 1e-5
# CPU vs CUDA use different kernels and reduction orders (cuBLAS, cuDNN); float32
# with TF32 disabled, so errors stay around 1e-6..1e-4 for these small models.
CROSS_DEVICE_RTOL = 1e-4
CROSS_DEVICE_ATOL = 1e-3

TOLERANCES = {
    "fp32": {"rtol": FP32_RTOL, "atol": FP32_ATOL},
    "cross_device": {"rtol": CROSS_DEVICE_RTOL, "atol": CROSS_DEVICE_ATOL},
}


def configure_numerics() -> dict[str, Any]:
    """Disable TF32 so float32 comparisons are meaningful; return the settings used."""
    import torch

    from .models import SEED

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(SEED)
    return {
        "seed": SEED,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def same(name: str, expected: Any, actual: Any) -> Check:
    """Float32 comparison on one device (FP32 tolerances)."""
    return close_check(name, expected, actual, rtol=FP32_RTOL, atol=FP32_ATOL)


def control_flow_checks() -> Iterator[Check]:
    """Scripting keeps the data-dependent branch; tracing freezes the branch it saw."""
    import torch

    from .models import ControlFlow, positive, seeded

    model = seeded(ControlFlow).eval()
    pos, neg = positive(4, 8, seed=1), -positive(4, 8, seed=2)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        yield same("control flow scripted positive", model(pos), scripted(pos))
        yield same("control flow scripted negative", model(neg), scripted(neg))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, pos)
        tracer = torch.jit.TracerWarning
        count = sum(issubclass(w.category, tracer) for w in caught)
        yield same("control flow traced positive", model(pos), traced(pos))
        why = (
            "model traced on a positive input keeps ReLU for a negative input "
            f"({count} TracerWarning(s))"
        )
        yield differ_check(
            "control flow traced freezes branch",
            model(neg),
            traced(neg),
            why,
            rtol=FP32_RTOL,
            atol=FP32_ATOL,
        )


def save_load_checks() -> Iterator[Check]:
    """A scripted model saved to a file loads back with map_location="cpu"."""
    import torch

    from .models import ControlFlow, positive, seeded

    model = seeded(ControlFlow).eval()
    inputs = {"positive": positive(4, 8, seed=1), "negative": -positive(4, 8, seed=2)}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "control_flow.pt"
        torch.jit.script(model).save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        for label, x in inputs.items():
            yield same(f"save load cpu {label}", model(x), loaded(x))


def eval_mode_checks() -> Iterator[Check]:
    """Dropout/BatchNorm: train mode is random, eval mode is not; script/freeze match."""
    import torch

    from .models import EvalSensitive, sample, seeded

    model = seeded(EvalSensitive)
    x = sample(8, 16, seed=3)
    with torch.no_grad():
        model.train()
        first, second = model(x), model(x)
        yield check(
            "train mode nondeterministic",
            not torch.equal(first, second),
            "two train-mode runs differ (dropout active): shows why .eval() matters",
        )
        model.eval()
        first, second = model(x), model(x)
        yield check(
            "eval mode deterministic",
            torch.equal(first, second),
            "two eval-mode runs are bitwise equal",
        )
        yield same("eval mode scripted", first, torch.jit.script(model)(x))
        frozen = torch.jit.freeze(torch.jit.script(model.eval()))
        yield same("eval mode frozen", first, frozen(x))


def conv_and_loop_checks() -> Iterator[Check]:
    """A small conv net and a data-dependent while loop: scripted matches eager."""
    import torch

    from .models import HalvingLoop, SmallConvNet, sample, seeded

    conv = seeded(SmallConvNet).eval()
    loop = seeded(HalvingLoop).eval()
    images = sample(2, 3, 32, 32, seed=4)
    with torch.no_grad():
        yield same("conv net scripted", conv(images), torch.jit.script(conv)(images))
        scripted_loop = torch.jit.script(loop)
        for label, scale in (("small input", 0.1), ("large input", 100.0)):
            x = sample(4, 8, seed=5, scale=scale)
            yield same(f"loop scripted {label}", loop(x), scripted_loop(x))


CPU_GROUPS = (
    ("control flow", control_flow_checks),
    ("save load cpu", save_load_checks),
    ("eval mode", eval_mode_checks),
    ("conv net and loop", conv_and_loop_checks),
)


def run(device: str) -> dict[str, Any]:
    """Run the CPU checks, plus the CUDA checks for device "cuda" (no CPU fallback)."""
    started = time.monotonic()
    settings = configure_numerics()
    checks: list[Check] = []
    for name, group in CPU_GROUPS:
        checks.extend(guarded(name, group))
    cuda_info = None
    if device == "cuda":
        from . import cuda

        cuda_checks, cuda_info = cuda.run()
        checks.extend(cuda_checks)
    return {
        "command": "torchscript",
        "device": device,
        "ok": all_passed(checks),
        "checks": checks,
        "cuda": cuda_info,
        "settings": settings,
        "tolerances": TOLERANCES,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
