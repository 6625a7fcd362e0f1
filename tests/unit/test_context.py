"""The build context: folders with fixed mtimes, so a `COPY tree/ /` layer is the same every build."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from pytorch_cuda.build.context import write_context
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.matrix import load_matrix


def test_every_folder_of_the_context_has_an_entry_with_the_epoch(tmp_path: Path):
    cell = load_matrix(VERSIONS).default_cell
    out = tmp_path / "context.tar"
    write_context(cell, out, 1_234_567)
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    folders = {m.name for m in members if m.isdir()}
    files = [m for m in members if m.isfile()]
    assert any(m.name.startswith("templates/files/common/") for m in files)
    for member in files:
        for parent in PurePosixPath(member.name).parents:
            if parent.name:
                assert parent.as_posix() in folders, member.name
    assert all(m.mtime == 1_234_567 and m.uid == 0 and not m.uname for m in members)
    assert all(m.mode == 0o755 for m in members if m.isdir())
    names = [m.name for m in members]
    assert len(names) == len(set(names))
