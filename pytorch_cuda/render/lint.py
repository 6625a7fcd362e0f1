"""`build.py lint`: hadolint on every rendered Dockerfile, ruff, actionlint, render --check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import ROOT
from pytorch_cuda.core.progress import say, table
from pytorch_cuda.matrix import Matrix
from pytorch_cuda.render import dockerfiles

# DL3057 (HEALTHCHECK missing) is off by default; prod promises one, so it is on there.
HADOLINT_COMMON = ["--failure-threshold", "warning", "--no-color"]
HADOLINT_PROD = ["--warning", "DL3057"]
# DL3002: dev runs as root only to start sshd, then drops to the user (entrypoint).
HADOLINT_DEV = ["--ignore", "DL3002"]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not path:
        raise UserError(f"{name} is not installed: run 'make venv'")
    return path


def _run(cmd: list[str]) -> tuple[bool, str]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def lint(matrix: Matrix) -> bool:
    """Run every linter; print a table and the findings; True when all are clean."""
    rows, ok_all = [], True
    hadolint = _tool("hadolint")
    for image in matrix.images():
        path = ROOT / names.dockerfile_path(image)
        extra = HADOLINT_PROD if image.variant == "prod" else HADOLINT_DEV
        ok, out = _run([hadolint, *HADOLINT_COMMON, *extra, str(path.relative_to(ROOT))])
        rows.append([f"hadolint {image.name}", "ok" if ok else "FAIL"])
        ok_all &= ok
        if not ok:
            print(out)
    for name, cmd in (("ruff", [_tool("ruff"), "check", "."]),
                      ("zizmor", [_tool("zizmor"), "--offline", "--min-severity", "medium", ".github/workflows"])):
        say(f"running {name}")
        ok, out = _run(cmd)
        rows.append([name, "ok" if ok else "FAIL"])
        ok_all &= ok
        if not ok:
            print(out)
    stale = dockerfiles.differences(dockerfiles.render_tree(matrix))
    rows.append(["render --check", "ok" if not stale else f"FAIL ({len(stale)} files differ)"])
    ok_all &= not stale
    print(table(["check", "result"], rows))
    return ok_all
