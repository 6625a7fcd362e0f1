"""Fixtures for unit tests: a private copy of versions.yaml to break in every way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from pytorch_cuda.cli import main
from pytorch_cuda.core.paths import ROOT, SERVER, VERSIONS

# The model server and the in-image check code are not packages of the driver: put them on the
# path once, for every unit test that imports them.
for _path in (SERVER, ROOT / "tests" / "incontainer"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture
def versions(tmp_path: Path) -> Path:
    """A copy of the real matrix in a temporary directory."""
    path = tmp_path / "versions.yaml"
    path.write_text(VERSIONS.read_text())
    return path


@pytest.fixture
def edit(versions: Path):
    """Apply a change to the parsed matrix and write it back."""
    def apply(change) -> Path:
        data = yaml.safe_load(versions.read_text())
        change(data)
        versions.write_text(yaml.safe_dump(data, sort_keys=False))
        return versions
    return apply


@pytest.fixture
def run_cli(capsys):
    """Run the driver in-process; return (exit code, stdout, stderr)."""
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run
