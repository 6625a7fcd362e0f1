"""Which files torch really loads: the size floor of an image that runs TorchScript.

Runs inside the prod image (mounted read-only); prints one JSON object on
stdout. It imports torch, scripts and runs a small model (and, when a GPU is
visible, runs a convolution and a matrix product on it), then lists every file
the process has mapped (``/proc/self/maps``: shared libraries) or imported
(``sys.modules``: Python sources and their bytecode), with their sizes, next
to what is installed under the virtual environments.
"""

from __future__ import annotations

import json
import os
import sys

import torch

VENVS = ("/opt/venv", "/opt/venv-prod")


class Tiny(torch.nn.Module):
    """A linear layer with a data-dependent branch, so scripting has work to do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool(x.sum() > 0):
            y = torch.relu(y)
        return y


def exercise() -> list[str]:
    """Run the work whose files count; return the devices used."""
    scripted = torch.jit.script(Tiny().eval())
    with torch.inference_mode():
        scripted(torch.ones(2, 8))
    if not torch.cuda.is_available():
        return ["cpu"]
    with torch.inference_mode():
        scripted.cuda()(torch.ones(2, 8, device="cuda"))
        conv = torch.nn.Conv2d(3, 8, 3).cuda()
        conv(torch.rand(2, 3, 32, 32, device="cuda"))
        a = torch.rand(64, 64, device="cuda")
        (a @ a).sum().item()
    return ["cpu", "cuda"]


def loaded_files() -> dict[str, int]:
    """Real path -> size of every regular file mapped or imported by this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                paths.add(fields[5].strip().removesuffix(" (deleted)"))
    for module in list(sys.modules.values()):
        for attr in ("__file__", "__cached__"):
            value = getattr(module, attr, None)
            if isinstance(value, str):
                paths.add(value)
    found = {}
    for path in paths:
        real = os.path.realpath(path)
        if real.startswith(("/proc/", "/dev/", "/sys/", "/bench/")) or not os.path.isfile(real):
            continue
        found[real] = os.stat(real).st_size
    return found


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
    devices = exercise()
    loaded = loaded_files()
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
