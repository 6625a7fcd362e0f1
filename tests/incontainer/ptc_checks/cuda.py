"""CUDA checks: models on the GPU, cross-device save/load, cuDNN, device report.

Called by ``torchscript --device cuda``. Without CUDA the result is a single
FAILED "cuda available" check: nothing silently runs on the CPU instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .results import Check, check, close_check, guarded
from .torchscript import CROSS_DEVICE_ATOL, CROSS_DEVICE_RTOL, same

NVIDIA_SMI_TIMEOUT_S = 60
NVIDIA_SMI_HEAD_LINES = 15


def availability_check() -> Check:
    """The "cuda available" check, with enough context to diagnose a failure."""
    import torch

    available = torch.cuda.is_available()
    detail = (
        f"torch.cuda.is_available()={available}, "
        f"torch.version.cuda={torch.version.cuda}, "
        f"device_count={torch.cuda.device_count()}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}, "
        f"NVIDIA_VISIBLE_DEVICES={os.environ.get('NVIDIA_VISIBLE_DEVICES')}"
    )
    return check("cuda available", available, detail)


def nvidia_smi() -> dict[str, Any]:
    """Run ``nvidia-smi`` if on PATH: {path, returncode, head (first lines), error}."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return {"path": None, "returncode": None, "head": [], "error": "not on PATH"}
    try:
        done = subprocess.run(
            [path],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {"path": path, "returncode": None, "head": [], "error": error}
    head = (done.stdout or done.stderr).splitlines()[:NVIDIA_SMI_HEAD_LINES]
    error = None if done.returncode == 0 else (done.stderr.strip() or "non-zero exit")
    return {"path": path, "returncode": done.returncode, "head": head, "error": error}


def device_info() -> dict[str, Any]:
    """Name, capability and count of the visible GPUs, cuDNN version, nvidia-smi."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "device_name": torch.cuda.get_device_name(0),
        "capability": f"{major}.{minor}",
        "device_count": torch.cuda.device_count(),
        "cudnn_version": torch.backends.cudnn.version(),
        "nvidia_smi": nvidia_smi(),
    }


def cross(name: str, expected: Any, actual: Any) -> Check:
    """CPU-vs-CUDA comparison (cross-device tolerances)."""
    return close_check(
        name, expected, actual, rtol=CROSS_DEVICE_RTOL, atol=CROSS_DEVICE_ATOL
    )


def model_pairs(device: str) -> Iterator[tuple[str, Any, Any, Any]]:
    """(name, eager reference, TorchScript copy on ``device``, CPU input) per model check.

    The copy is scripted from an independently built twin (same seed), never
    from the reference itself: a scripted module shares its source module's
    parameters, so moving it to ``device`` would move the reference's weights
    too. The frozen copy is scripted on ``device`` (freezing bakes in constants).
    """
    import torch

    from . import models as m

    cases = (
        ("control flow scripted positive", m.ControlFlow, m.positive(4, 8, seed=1)),
        ("control flow scripted negative", m.ControlFlow, -m.positive(4, 8, seed=2)),
        ("conv net scripted", m.SmallConvNet, m.sample(2, 3, 32, 32, seed=4)),
        ("loop scripted large input", m.HalvingLoop, m.sample(4, 8, seed=5, scale=1e2)),
    )
    for name, cls, x in cases:
        reference, twin = m.twins(cls)
        yield name, reference, torch.jit.script(twin).to(device), x
    reference, twin = m.twins(m.EvalSensitive)
    frozen = torch.jit.freeze(torch.jit.script(twin.to(device)))
    yield "eval mode frozen", reference, frozen, m.sample(8, 16, seed=3)


def model_checks() -> Iterator[Check]:
    """Scripted models on CUDA match the eager CPU reference (cross-device tolerance)."""
    import torch

    with torch.no_grad():
        for name, reference, on_gpu, x in model_pairs("cuda"):
            yield cross(f"cuda {name}", reference(x), on_gpu(x.cuda()))


def _devices(module: Any) -> list[str]:
    return sorted({p.device.type for p in module.parameters()})


def save_load_checks() -> Iterator[Check]:
    """A model saved on CUDA loads on the CPU (map_location="cpu") and back onto CUDA."""
    import torch

    from .models import SmallConvNet, sample, seeded

    model = seeded(SmallConvNet).eval()
    x = sample(2, 3, 32, 32, seed=4)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = str(Path(tmp) / "conv_cuda.pt")
        torch.jit.script(seeded(SmallConvNet).eval()).cuda().save(path)
        for location in ("cpu", "cuda"):
            loaded = torch.jit.load(path, map_location=location)
            devices = _devices(loaded)
            yield check(
                f"cuda save load to {location} parameters",
                devices == [location],
                f"parameter devices after map_location={location!r}: {devices}",
            )
            compare = same if location == "cpu" else cross
            name = f"cuda save load to {location}"
            yield compare(name, model(x), loaded(x.to(location)))


def cudnn_checks() -> Iterator[Check]:
    """cuDNN is available and a conv2d on CUDA matches the CPU result."""
    import torch
    import torch.nn.functional as F

    from .models import sample

    cudnn = torch.backends.cudnn
    status = f"is_available={cudnn.is_available()}, enabled={cudnn.enabled}"
    yield check(
        "cudnn available",
        cudnn.is_available() and cudnn.enabled,
        f"{status}, version={cudnn.version()}",
    )
    x, weight = sample(4, 16, 32, 32, seed=6), sample(32, 16, 3, 3, seed=7, scale=0.1)
    x_cuda = x.cuda()
    with torch.no_grad():
        expected = F.conv2d(x, weight, padding=1)
        result = cross(
            "cudnn conv2d", expected, F.conv2d(x_cuda, weight.cuda(), padding=1)
        )
    result["detail"] += f"; cudnn.is_acceptable(input)={cudnn.is_acceptable(x_cuda)}"
    yield result


def device_checks(info: dict[str, Any]) -> Iterator[Check]:
    """Fill ``info`` with the device report and record it as a check."""
    info.update(device_info())
    detail = f"{info['device_name']} (capability {info['capability']})"
    yield check("cuda device", True, detail)


def run() -> tuple[list[Check], dict[str, Any] | None]:
    """CUDA checks and device report; without CUDA only the failed availability check."""
    available = availability_check()
    if not available["passed"]:
        return [available], None
    info: dict[str, Any] = {}
    checks = [available, *guarded("cuda device", lambda: device_checks(info))]
    for name, group in (
        ("cuda models", model_checks),
        ("cuda save load", save_load_checks),
        ("cudnn", cudnn_checks),
    ):
        checks.extend(guarded(name, group))
    return checks, info or None
