"""Host tools: Debian packages installed on the build machine when they are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.progress import say


def can_install() -> bool:
    """Whether this machine can install Debian packages itself (root on Debian)."""
    return os.geteuid() == 0 and Path("/etc/debian_version").exists()


def apt_install(*packages: str) -> None:
    """Install Debian packages on the host (root on Debian only), saying so."""
    if not can_install():
        raise UserError(f"{', '.join(packages)} is needed and this machine cannot install it "
                        "(root on Debian is required); install it and retry")
    say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            raise UserError(f"'{' '.join(cmd[:3])} {' '.join(packages)}' failed: {tail}")


def ensure_tool(command: str, package: str) -> str:
    """The path of a host tool, installing its Debian package when missing."""
    path = shutil.which(command)
    if not path:
        apt_install(package)
        path = shutil.which(command)
    if not path:
        raise UserError(f"{command} is still missing after installing {package}")
    return path
