"""Which files torch really loads: the size floor of an image that runs TorchScript.

Runs inside the prod image (mounted read-only, with ``ptc_checks`` on
PYTHONPATH); prints one JSON object on stdout. It scripts, traces and freezes
the check models and runs them on the CPU and, when a GPU is visible, on CUDA
(``ptc_checks.floor.exercise``), then lists every file the process has mapped
(``/proc/self/maps``: shared libraries) or imported (``sys.modules``: Python
sources and their bytecode), with their sizes, next to what is installed under
the virtual environments.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import ptc_checks
from ptc_checks.floor import exercise, imported_files, mapped_files

VENVS = ("/opt/venv", "/opt/venv-prod")
# This script and the check code are mounted for the measurement: not part of the floor.
MOUNTED = (str(Path(__file__).resolve().parent) + "/",
           str(Path(ptc_checks.__file__).resolve().parent) + "/")


def installed(root: str) -> dict[str, int]:
    """Path -> size of every regular file under root (hard links counted once)."""
    seen, files = set(), {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path) or (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            files[path] = info.st_size
    return files


def main() -> int:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        exercise(device)
    loaded = {**mapped_files(MOUNTED), **imported_files(MOUNTED)}
    venv_files = {root: installed(root) for root in VENVS if os.path.isdir(root)}
    print(json.dumps({
        "torch": torch.__version__,
        "devices": devices,
        "loaded": loaded,
        "installed": {root: sum(files.values()) for root, files in venv_files.items()},
        "installed_files": {root: len(files) for root, files in venv_files.items()},
        "largest_not_loaded": sorted(
            ((path, size) for files in venv_files.values() for path, size in files.items()
             if path not in loaded), key=lambda item: -item[1])[:12],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
