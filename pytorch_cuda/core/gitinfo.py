"""What git says about the source: commit time (SOURCE_DATE_EPOCH) and revision."""

from __future__ import annotations

import os
import subprocess

from pytorch_cuda.core.paths import IMAGE_INPUTS, ROOT


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH from the environment, else the time of the last commit that changed
    what goes into images (so commits to tests or docs leave every layer as it was), else 0."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    stamp = _git("log", "-1", "--format=%ct", "--",
                 *(path.relative_to(ROOT).as_posix() for path in IMAGE_INPUTS))
    return int(stamp) if stamp.isdigit() else 0


def revision() -> str:
    """The commit being built, with '-dirty' when the tree has changes."""
    rev = _git("rev-parse", "HEAD") or "unknown"
    return rev + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")

