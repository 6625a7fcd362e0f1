"""Layers scanned while ``docker save`` is still writing the archive.

The engine produces a save at about one CPU's pace. Scanning a layer (its
canonical plan, and the digest of its canonical form) needs only that layer's
bytes, so :class:`SaveScanner` follows the archive as it grows and scans each
layer as soon as the next member's header shows it complete, on a thread of its
own. Normalization then finds the layers scanned instead of reading them again
after the save.
"""

from __future__ import annotations

import logging
import os
import tarfile
import threading
from pathlib import Path
from types import TracebackType

from pytorch_cuda.repro.normalize import Scanned, ScanKey, scan_layer
from pytorch_cuda.repro.plan import MtimeMode
from pytorch_cuda.repro.saved import CHUNK, SavedLayer, Window

log = logging.getLogger(__name__)

MIN_LAYER_BYTES = 1 << 20
"""Smaller layers are left to the normalization: scanning them later costs little."""

_GZIP, _ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class _GrowingFile(Window):
    """A read-only view of a file that another thread is still writing: a read
    waits until the bytes it asks for are written, or the writer is done."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, 0, 0)
        self._ended = False
        self._grown = threading.Condition()

    def grow(self, written: int) -> None:
        with self._grown:
            self._size = written
            self._grown.notify_all()

    def end(self) -> None:
        with self._grown:
            self._ended = True
            self._grown.notify_all()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with self._grown:
            while self._size < self._pos + len(buffer) and not self._ended:
                self._grown.wait()
        return super().readinto(buffer)


class SaveScanner:
    """Scans the layers of a ``docker save`` archive at ``path`` while it is written.

    Inside the ``with`` block the writer calls :meth:`grow` with the bytes written
    (and flushed) so far. Leaving the block waits for the layers still being
    scanned (or, when the block raised, stops the scan); then :attr:`results`
    holds every layer scanned, by where it lies in the archive. A member that is
    not a layer tar, or a stream that ends early, is skipped: the normalization
    then reads those layers itself.
    """

    def __init__(self, path: Path, epoch: int, mtime: MtimeMode) -> None:
        self._epoch, self._mtime = epoch, mtime
        self._path = path
        self._stop = threading.Event()
        self.results: dict[ScanKey, Scanned] = {}

    def __enter__(self) -> SaveScanner:
        self._fd = os.open(self._path, os.O_RDONLY)
        self._file = _GrowingFile(self._fd)
        self._thread = threading.Thread(target=self._follow, name="save-scanner", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self._stop.set()
        self._file.end()
        self._thread.join()
        os.close(self._fd)

    def grow(self, written: int) -> None:
        """The archive now holds ``written`` bytes."""
        self._file.grow(written)

    def _follow(self) -> None:
        buffer = memoryview(bytearray(CHUNK))
        try:
            with tarfile.open(fileobj=self._file, mode="r:") as archive:
                complete: tarfile.TarInfo | None = None
                for member in archive:  # the next header read means the last member is whole
                    if self._stop.is_set():
                        return
                    if complete is not None:
                        self._scan(complete, buffer)
                    complete = member if _may_be_layer(member) else None
                if complete is not None and not self._stop.is_set():
                    self._scan(complete, buffer)
        except (tarfile.TarError, OSError, ValueError) as exc:
            log.info("scanning the save stopped early: %s", exc)

    def _scan(self, member: tarfile.TarInfo, buffer: memoryview) -> None:
        key = member.offset_data, member.size
        if os.pread(self._fd, 4, key[0]).startswith((_GZIP, _ZSTD)):
            return
        layer = SavedLayer(-1, "", self._fd, *key)
        try:
            self.results[key] = scan_layer(layer, self._epoch, self._mtime, buffer)
        except (tarfile.TarError, ValueError) as exc:
            log.info("%s is not a layer the scan can read: %s", member.name, exc)


def _may_be_layer(member: tarfile.TarInfo) -> bool:
    """A layer tar of the legacy layout (``<id>/layer.tar``) or a big OCI blob."""
    name = member.name.removeprefix("./")
    return (member.isreg() and member.size >= MIN_LAYER_BYTES
            and (name.endswith("/layer.tar") or name.startswith("blobs/")))
