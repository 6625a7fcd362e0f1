"""Writing canonical layers and the output archive that `docker load` takes."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Sequence
from typing import BinaryIO

from pytorch_cuda.repro.plan import LayerPlan
from pytorch_cuda.repro.saved import (
    CHUNK,
    PRESENT_DIR,
    SavedLayer,
    blob_path,
    copy_range,
    placeholder_path,
)
from pytorch_cuda.repro.tarformat import BLOCK, padding, tar_header


class Sink:
    """Hashes what it is given and writes it to every target."""

    def __init__(self, targets: Sequence[BinaryIO]) -> None:
        self.targets, self.digest = targets, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        for target in self.targets:
            target.write(data)


def write_plan(
    sink: Sink, plan: LayerPlan, layer: SavedLayer, buffer: memoryview
) -> None:
    for head, offset, size in plan.parts:
        sink.write(head)
        copy_range(layer.fd, layer.offset + offset, size, sink.write, buffer)
        sink.write(padding(size))
    sink.write(b"\0" * (2 * BLOCK))


class ArchiveWriter:
    """Writes the output archive: fixed headers, blobs named by their digest."""

    def __init__(self, file: BinaryIO, epoch: int) -> None:
        self._file, self._epoch, self._blobs = file, epoch, set[str]()
        self._last: tuple[int, str] | None = None
        self._placeholders: set[str] = set()
        self.buffer = memoryview(bytearray(CHUNK))

    def _header(
        self,
        name: str,
        size: int,
        typeflag: bytes = tarfile.REGTYPE,
    ) -> bytes:
        mode = 0o755 if typeflag == tarfile.DIRTYPE else 0o644
        return tar_header(name, typeflag, mode=mode, size=size, mtime=self._epoch)

    def add_dir(self, name: str) -> None:
        self._file.write(self._header(name, 0, tarfile.DIRTYPE))

    def add_file(self, name: str, data: bytes) -> None:
        self._file.write(self._header(name, len(data)) + data + padding(len(data)))

    def has(self, digest: str) -> bool:
        """Whether the blob ``digest`` is in the archive."""
        return digest in self._blobs

    def add_placeholder(self, chain_id: str) -> None:
        """An empty file standing for a layer whose chain the engine has (once per chain)."""
        if chain_id in self._placeholders:
            return
        if not self._placeholders:
            self.add_dir(PRESENT_DIR.split("/")[0] + "/")
            self.add_dir(PRESENT_DIR)
        self._placeholders.add(chain_id)
        self.add_file(placeholder_path(chain_id), b"")

    def add_blob(
        self, size: int, fill: Callable[[Sink], None], tee: BinaryIO | None = None
    ) -> str:
        """Stream a blob of known size, hashing it; it is named afterwards
        ``blobs/sha256/<hex>`` by patching its header. A blob already in the
        archive is dropped again. Returns the digest."""
        start = self._file.tell()
        placeholder = self._header(blob_path("sha256:" + "0" * 64), size)
        self._file.write(placeholder)
        sink = Sink([self._file] if tee is None else [self._file, tee])
        fill(sink)
        written = self._file.tell() - start - len(placeholder)
        if written != size:
            raise AssertionError(f"blob is {written} bytes, planned {size}")
        self._file.write(padding(size))
        digest = "sha256:" + sink.digest.hexdigest()
        end = self._file.tell()
        self._file.seek(start)
        if digest in self._blobs:
            self._file.truncate()
            self._last = None
            return digest
        self._blobs.add(digest)
        self._last = (start, digest)
        self._file.write(self._header(blob_path(digest), size))
        self._file.seek(end)
        return digest

    def undo(self) -> None:
        """Drop the blob just added (a copy that did not hash as expected)."""
        if self._last is not None:
            start, digest = self._last
            self._blobs.discard(digest)
            self._file.seek(start)
            self._file.truncate()
            self._last = None

    def close(self) -> None:
        self._file.write(b"\0" * (2 * BLOCK))
