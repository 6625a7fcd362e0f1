"""The build context: a deterministic tar of exactly the files the Dockerfiles copy, with an entry
for each of their folders (a `COPY tree/ /` gives each folder it copies the entry's mtime, so the
layer is the same every build)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from pytorch_cuda.core.paths import PER_CELL_INPUTS, ROOT, SHARED_INPUTS
from pytorch_cuda.matrix import Cell


def _files(cell: Cell) -> list[Path]:
    roots = [*(folder / cell.id for folder in PER_CELL_INPUTS), *SHARED_INPUTS]
    found = [p for r in roots if r.exists() for p in r.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(found)


def write_context(cell: Cell, out: Path, epoch: int) -> None:
    """Write the context tar for a cell."""
    files = {path.relative_to(ROOT).as_posix(): path for path in _files(cell)}
    folders = {parent.as_posix() for name in files
               for parent in PurePosixPath(name).parents if parent.name}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for folder in sorted(folders):
            _add(tar, folder, None, 0o755, epoch)
        for name, path in files.items():
            _add(tar, name, path.read_bytes(),
                 0o755 if path.stat().st_mode & 0o111 else 0o644, epoch)


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, epoch: int) -> None:
    """A file (or, for `data` None, a folder) owned by root with a fixed mtime."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = mode, epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
