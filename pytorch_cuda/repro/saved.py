"""Reading `docker save` archives (legacy and OCI layouts) without unpacking them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

Source = str | os.PathLike[str] | BinaryIO

CHUNK = 8 << 20

PRESENT_DIR = "present/sha256/"


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``fd`` from ``base``."""

    def __init__(self, fd: int, base: int, size: int) -> None:
        super().__init__()
        self._fd, self._base, self._size, self._pos = fd, base, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        self._pos = max(0, start[whence] + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        view = memoryview(buffer).cast("B")[:count]
        got = os.preadv(self._fd, [view], self._base + self._pos)
        self._pos += got
        return got


def copy_range(
    fd: int,
    offset: int,
    size: int,
    write: Callable[[memoryview], object],
    buffer: memoryview,
) -> None:
    """Pass ``size`` bytes of ``fd`` from ``offset`` to ``write`` in big chunks."""
    while size > 0:
        view = buffer[: min(size, len(buffer))]
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise ValueError("archive is truncated")
        write(view[:got])
        offset += got
        size -= got


@dataclass(frozen=True)
class SavedLayer:
    """One uncompressed layer tar inside an opened archive."""

    index: int
    diff_id: str
    fd: int
    offset: int
    size: int

    def window(self) -> _Window:
        """A seekable file object over the layer tar."""
        return _Window(self.fd, self.offset, self.size)

    def members(self) -> list[tarfile.TarInfo]:
        """The tar entries; their ``offset_data`` is relative to the layer."""
        with tarfile.open(
            fileobj=self.window(), mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            return tar.getmembers()

    def sha256(self, offset: int = 0, size: int | None = None) -> str:
        """Digest of a byte range of the layer (default: the whole tar)."""
        digest = hashlib.sha256()
        length = self.size - offset if size is None else size
        buffer = memoryview(bytearray(min(CHUNK, max(length, 1))))
        copy_range(self.fd, self.offset + offset, length, digest.update, buffer)
        return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class SavedImage:
    """The config and layers of an image in a ``docker save`` archive; ``image_id``
    is the sha256 of its config as saved (the engine's ID of the image)."""

    image_id: str
    config: dict
    layers: tuple[SavedLayer, ...]


class _Archive:
    """Random access to the members of an uncompressed outer tar."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        with tarfile.open(fileobj=_Window(fd, 0, size), mode="r:") as tar:
            self._members = {_clean(m.name): m for m in tar.getmembers()}

    def has(self, name: str) -> bool:
        return _clean(name) in self._members

    def find(self, name: str) -> tarfile.TarInfo:
        """The regular file behind ``name``, following links (legacy archives
        link a repeated layer to its first copy)."""
        name = _clean(name)
        for _ in range(16):
            member = self._members.get(name)
            if member is None:
                raise ValueError(f"archive has no {name!r}")
            if member.issym():
                name = _clean(os.path.join(os.path.dirname(name), member.linkname))
            elif member.islnk():
                name = _clean(member.linkname)
            else:
                return member
        raise ValueError(f"link loop at {name!r}")

    def read(self, name: str) -> bytes:
        member = self.find(name)
        return os.pread(self.fd, member.size, member.offset_data)


def _clean(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


def blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def placeholder_path(chain_id: str) -> str:
    return PRESENT_DIR + chain_id.removeprefix("sha256:")


def _oci_manifests(archive: _Archive) -> list[tuple[str, list[str]]]:
    """Config and layer paths of each image in ``index.json`` (archives without manifest.json)."""
    found: list[tuple[str, list[str]]] = []
    pending = [json.loads(archive.read("index.json"))]
    while pending:
        document = pending.pop(0)
        if "manifests" in document:
            pending.extend(
                json.loads(archive.read(blob_path(entry["digest"])))
                for entry in document["manifests"]
            )
            continue
        layers = [blob_path(layer["digest"]) for layer in document["layers"]]
        found.append((blob_path(document["config"]["digest"]), layers))
    return found


def _image_paths(archive: _Archive) -> list[tuple[str, list[str]]]:
    """Config and layer paths of each image: ``manifest.json`` (both engines), else OCI index."""
    if not archive.has("manifest.json"):
        return _oci_manifests(archive)
    return [
        (entry["Config"], list(entry["Layers"]))
        for entry in json.loads(archive.read("manifest.json"))
    ]


def _uncompressed(
    archive: _Archive, path: str, scratch: Callable[[], Path], stack: ExitStack
) -> tuple[int, int, int]:
    """(fd, offset, size) of the layer tar; gzip layers are inflated to scratch."""
    member = archive.find(path)
    magic = os.pread(archive.fd, 4, member.offset_data)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise ValueError(f"layer {path} is zstd-compressed, which is not supported")
    if not magic.startswith(b"\x1f\x8b"):
        return archive.fd, member.offset_data, member.size
    window = _Window(archive.fd, member.offset_data, member.size)
    with gzip.GzipFile(fileobj=window, mode="rb") as inflated:
        fd = _scratch_copy(inflated, scratch(), stack)
    return fd, 0, os.fstat(fd).st_size


def _scratch_copy(data: BinaryIO, folder: Path, stack: ExitStack) -> int:
    """Copy a stream into an unnamed file in ``folder``; its descriptor."""
    fd, name = tempfile.mkstemp(dir=folder)
    os.unlink(name)
    stack.callback(os.close, fd)
    with open(fd, "wb", closefd=False) as out:
        shutil.copyfileobj(data, out, CHUNK)
    return fd


def _source_fd(src: Source, scratch: Callable[[], Path], stack: ExitStack) -> int:
    """A file descriptor with the archive: opened, reused, or spooled to scratch."""
    if isinstance(src, str | os.PathLike):
        return stack.enter_context(open(src, "rb")).fileno()
    try:
        if src.seekable():
            return src.fileno()
    except (OSError, AttributeError):
        pass
    return _scratch_copy(src, scratch(), stack)


@contextmanager
def open_saved_images(
    src: Source, scratch_dir: Path | None = None
) -> Iterator[list[SavedImage]]:
    """Open a ``docker save`` archive of one or more images (path or binary
    stream) for random access; a layer the images share is read once.

    Seekable files are read in place; a pipe is spooled and gzip layers are
    inflated into a temporary folder under ``scratch_dir``.
    """
    with ExitStack() as stack:
        temporary: list[Path] = []

        def scratch() -> Path:
            if not temporary:
                folder = stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=".normalize-", dir=scratch_dir)
                )
                temporary.append(Path(folder))
            return temporary[0]

        archive = _Archive(_source_fd(src, scratch, stack))
        opened: dict[str, tuple[int, int, int]] = {}

        def layer(path: str) -> tuple[int, int, int]:
            key = _clean(archive.find(path).name)
            if key not in opened:
                opened[key] = _uncompressed(archive, path, scratch, stack)
            return opened[key]

        images = []
        for config_path, layer_paths in _image_paths(archive):
            raw = archive.read(config_path)
            config = json.loads(raw)
            diff_ids = config["rootfs"]["diff_ids"]
            if len(diff_ids) != len(layer_paths):
                raise ValueError("config diff_ids and manifest layers disagree")
            layers = tuple(
                SavedLayer(index, diff_id, *layer(path))
                for index, (diff_id, path) in enumerate(
                    zip(diff_ids, layer_paths, strict=True)
                )
            )
            images.append(
                SavedImage("sha256:" + hashlib.sha256(raw).hexdigest(), config, layers)
            )
        yield images


@contextmanager
def open_saved_image(
    src: Source, scratch_dir: Path | None = None
) -> Iterator[SavedImage]:
    """Open a ``docker save`` archive of exactly one image (see :func:`open_saved_images`)."""
    with open_saved_images(src, scratch_dir) as images:
        if len(images) != 1:
            raise ValueError(f"the archive holds {len(images)} images; save one at a time")
        yield images[0]
