"""Custom C++ operator round trip: build in the dev image, run in the prod image.

``build`` compiles ``csrc/ptc_ops.cpp`` (``ptc::scaled_add`` registered with
TORCH_LIBRARY), scripts a model that calls it and writes libptc_ops.so, model.pt
and reference.json into the output folder. ``run`` loads the library, then the
model, and compares with the reference; with ``load=False`` it shows that the
model cannot be loaded without the library ("Unknown builtin op").
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .results import Check, all_passed, check, guarded
from .torchscript import same

SOURCE = Path(__file__).resolve().parent / "csrc" / "ptc_ops.cpp"
EXTENSION_NAME = "ptc_ops"
LIBRARY_FILE = "libptc_ops.so"
MODEL_FILE = "model.pt"
REFERENCE_FILE = "reference.json"
BUILD_SUBDIR = "build"
ALPHA = 0.5
UNKNOWN_OP_TEXT = "Unknown builtin op"


def compile_library(out: Path) -> Path:
    """Compile under ``out/build`` (also loads it here); copy it to ``out``."""
    from torch.utils import cpp_extension

    build_dir = out / BUILD_SUBDIR
    build_dir.mkdir(parents=True, exist_ok=True)
    built = cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(SOURCE)],
        extra_cflags=["-O2"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    library = out / LIBRARY_FILE
    shutil.copyfile(built, library)
    return library


def build_checks(out: Path, files: dict[str, str]) -> Iterator[Check]:
    """Compile, script, save and verify in-process; record written files in ``files``."""
    import torch

    from .models import ScaledAdd, sample

    library = compile_library(out)
    files["library"] = str(library)
    size = library.stat().st_size
    yield check("custom op compiled", library.is_file(), f"{library} ({size} bytes)")
    a, b = sample(3, 5, seed=11), sample(3, 5, seed=12)
    scripted = torch.jit.script(ScaledAdd(ALPHA))
    with torch.no_grad():
        expected = scripted(a, b)
        formula = torch.relu(a) + ALPHA * b
        yield same("custom op matches formula", formula, expected)
        model_path = out / MODEL_FILE
        scripted.save(str(model_path))
        files["model"] = str(model_path)
        reloaded = torch.jit.load(str(model_path), map_location="cpu")
        yield same("custom op model reloads", expected, reloaded(a, b))
    reference = {
        "alpha": ALPHA,
        "a": a.tolist(),
        "b": b.tolist(),
        "expected": expected.tolist(),
        "torch": torch.__version__,
    }
    reference_path = out / REFERENCE_FILE
    reference_path.write_text(json.dumps(reference, indent=2), encoding="utf-8")
    files["reference"] = str(reference_path)


def build(out: Path) -> dict[str, Any]:
    """The ``customop build`` command."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    checks = guarded("custom op build", lambda: build_checks(out, files))
    return {
        "command": "customop build",
        "out": str(out),
        "ok": all_passed(checks),
        "checks": checks,
        "files": files,
        "source": str(SOURCE),
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def load_library_checks(library: Path) -> Iterator[Check]:
    """``torch.ops.load_library`` on the built library."""
    import torch

    torch.ops.load_library(str(library))
    yield check("custom op library loads", True, f"torch.ops.load_library({library})")


def reference_checks(model: Any, folder: Path) -> Iterator[Check]:
    """The loaded model reproduces the output stored in reference.json."""
    import torch

    reference = json.loads((folder / REFERENCE_FILE).read_text(encoding="utf-8"))
    a, b, expected = (torch.tensor(reference[k]) for k in ("a", "b", "expected"))
    with torch.no_grad():
        yield same("custom op output matches reference", expected, model(a, b))


def load_model(path: Path) -> tuple[Any, str | None]:
    """``torch.jit.load`` on the CPU: (model, None) or (None, error text)."""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu"), None
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        return None, f"{type(exc).__name__}: {exc}"


def without_library_checks(load_error: str | None) -> list[Check]:
    """Loading must fail, naming the unknown operator."""
    return [
        check(
            "model load fails without library",
            load_error is not None,
            load_error or "model loaded although the library was not loaded",
        ),
        check(
            "error names unknown builtin op",
            UNKNOWN_OP_TEXT in (load_error or ""),
            f"expected {UNKNOWN_OP_TEXT!r} in the load error",
        ),
    ]


def run(folder: Path, load: bool) -> dict[str, Any]:
    """The ``customop run`` command: load the library (unless ``load`` is False), then the model."""
    checks: list[Check] = []
    if load:
        library = folder / LIBRARY_FILE
        checks.extend(
            guarded("custom op library loads", lambda: load_library_checks(library))
        )
    model, load_error = load_model(folder / MODEL_FILE)
    if not load:
        checks.extend(without_library_checks(load_error))
    else:
        checks.append(
            check("custom op model loads", model is not None, load_error or "loaded")
        )
        if model is not None:
            checks.extend(
                guarded("custom op reference", lambda: reference_checks(model, folder))
            )
    return {
        "command": "customop run",
        "dir": str(folder),
        "library_loaded": load,
        "ok": all_passed(checks),
        "checks": checks,
        "load_error": load_error,
    }
