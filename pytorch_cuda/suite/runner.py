"""`build.py test`: run the in-container suite (pytest + testinfra) and record full passes."""

from __future__ import annotations

import subprocess
import sys

import docker
import docker.errors

from pytorch_cuda.build import builder
from pytorch_cuda.build.engine import ensure_engine
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import ROOT
from pytorch_cuda.lock import locking
from pytorch_cuda.matrix import Cell, Image, Matrix
from pytorch_cuda.suite import records

SUITE = "tests/integration"


def cells_to_test(matrix: Matrix, cell_ids: list[str], every: bool) -> list[Cell]:
    """The named cells, every locked cell (saying which are left out), or the default cell."""
    if not every:
        return matrix.select(cell_ids) if cell_ids else [matrix.default_cell]
    skipped = [c.id for c in matrix.cells if not locking.is_locked(c)]
    if skipped:
        print(f"not buildable here (no lock): {', '.join(skipped)}", file=sys.stderr)
    return [c for c in matrix.cells if locking.is_locked(c)]


def pytest_command(cells: list[Cell], require_gpu: bool, keyword: str | None) -> list[str]:
    """The pytest command line of the suite for these cells."""
    cmd = [sys.executable, "-m", "pytest", SUITE, "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--cell={c.id}" for c in cells]
    if require_gpu:
        cmd.append("--require-gpu")
    if keyword:
        cmd += ["-k", keyword]
    return cmd


def image_id(client: docker.DockerClient, image: Image) -> str | None:
    """The ID of the image a tag names now, or None when it is not built."""
    try:
        return client.images.get(image.ref()).id
    except docker.errors.ImageNotFound:
        return None


def run_suite(matrix: Matrix, cells: list[Cell], require_gpu: bool, keyword: str | None) -> int:
    """Run pytest against the cells' images; record the image IDs of a full pass."""
    client = ensure_engine()
    images = {i.ref(): image_id(client, i) for i in matrix.images(cells)}
    code = subprocess.run(pytest_command(cells, require_gpu, keyword), cwd=ROOT,
                          check=False).returncode
    if code not in (0, 1):
        raise UserError(f"pytest could not run the suite (exit code {code})")
    if code == 0 and not keyword and all(images.values()):
        records.record_pass(images)
        print(f"recorded a full pass of {len(images)} image(s) in "
              f"{records.RECORDS.relative_to(ROOT)}")
    return code


def build_and_test(matrix: Matrix, cells: list[Cell], options: builder.BuildOptions | None,
                   require_gpu: bool, keyword: str | None) -> int:
    """Build the cells' images first when `options` are given, then run the suite."""
    if options is not None:
        builder.build(ensure_engine(), matrix.images(cells), options)
    return run_suite(matrix, cells, require_gpu, keyword)
