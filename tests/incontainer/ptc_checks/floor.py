"""Which files a process really loads for TorchScript inference: the size floor.

``python -m ptc_checks.floor [--device cpu|cuda]`` scripts, traces and freezes
the benchmark models (``latency.MODELS``), runs every variant on the device
(float32, and float16 copies on CUDA), then prints one JSON object: the files
the process has mapped (``/proc/self/maps``: shared libraries) and imported
(``sys.modules``: Python sources and bytecode), path -> size. Run it in a fresh
process: whatever else the process did would count too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable

SKIP = ("/proc/", "/dev/", "/sys/")
_SITE = re.compile(r"/(?:site|dist)-packages/([^/]+)(?:/([^/]+))?")


def exercise(device: str) -> None:
    """Run every TorchScript variant of every benchmark model on ``device``."""
    import torch

    from .latency import MODELS, variants
    from .models import positive

    dtypes = [torch.float32] + ([torch.float16] if device == "cuda" else [])
    with torch.inference_mode():
        for factory, shape, _ in MODELS.values():
            for dtype in dtypes:
                # A fresh module per dtype: casting a scripted module casts its source too.
                x = positive(2, *shape, seed=1).to(device, dtype)
                fns, _ = variants(factory().to(device, dtype), x)
                for fn in fns.values():
                    fn(x)
    if device == "cuda":
        torch.cuda.synchronize()


def _sizes(paths: Iterable[str], exclude: tuple[str, ...]) -> dict[str, int]:
    """Real path -> size of the regular files among ``paths``, minus excluded prefixes."""
    found = {}
    for path in paths:
        real = os.path.realpath(path)
        if real.startswith(SKIP + exclude) or not os.path.isfile(real):
            continue
        found[real] = os.stat(real).st_size
    return found


def mapped_files(exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Real path -> size of every regular file this process has mapped."""
    paths = set()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                paths.add(fields[5].strip().removesuffix(" (deleted)"))
    return _sizes(paths, exclude)


def imported_files(exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Real path -> size of the source and bytecode of every imported module."""
    paths = set()
    for module in list(sys.modules.values()):
        for attr in ("__file__", "__cached__"):
            value = getattr(module, attr, None)
            if isinstance(value, str):
                paths.add(value)
    return _sizes(paths, exclude)


def package_of(path: str) -> str | None:
    """The installed package a path belongs to ("torch", "nvidia/cudnn"), None outside one."""
    match = _SITE.search(path)
    if match is None:
        return None
    top, sub = match.groups()
    return f"{top}/{sub}" if top == "nvidia" and sub else top


def by_package(files: dict[str, int]) -> dict[str, int]:
    """Bytes per installed package, largest first (files outside site-packages left out)."""
    totals: dict[str, int] = {}
    for path, size in files.items():
        package = package_of(path)
        if package is not None:
            totals[package] = totals.get(package, 0) + size
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def nvidia_libs(files: dict[str, int]) -> list[dict[str, object]]:
    """The NVIDIA wheels' libraries among ``files``: package, file name and size, by name."""
    rows = [
        {"package": package, "file": os.path.basename(path), "bytes": size}
        for path, size in files.items()
        if (package := package_of(path) or "").startswith("nvidia/")
    ]
    return sorted(rows, key=lambda row: (str(row["package"]), str(row["file"])))


def main(argv: list[str] | None = None) -> int:
    """Exercise the device, then print the mapped and imported files as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    args = parser.parse_args(argv)
    import torch

    exercise(args.device)
    print(json.dumps({
        "torch": torch.__version__,
        "device": args.device,
        "mapped": mapped_files(),
        "imported": imported_files(),
        "triton_imported": "triton" in sys.modules,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
