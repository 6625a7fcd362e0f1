"""Rewrite ``docker save`` archives into bit-for-bit reproducible images.

Docker's classic builder stamps layer tars with build-time mtimes and the
image config with wall-clock times and host details, so two builds of the
same Dockerfile get different image IDs. :func:`normalize_archive` reads a
saved archive (the legacy layout of engine 20.10 or the OCI layout of engine
25+), rewrites every layer into one canonical tar form, rewrites the config
canonically and writes an archive that ``docker load`` takes on both engines.

Canonical layer tar (rules versioned by :data:`FORMAT_VERSION`):

* entries sorted by path component, a directory before its content and a
  directory's opaque whiteout (``.wh..wh..opq``) first among its children;
  whiteouts are kept as they are;
* a group of hard links is re-rooted at the path that sorts first: that path
  carries the data, the others link to it (the unpacked tree is the same);
* mtimes are clamped to ``epoch`` (the SOURCE_DATE_EPOCH convention: what is
  older, such as files from base images and packages, keeps its time) or,
  with ``mtime="set"``, all set to ``epoch``; sub-second parts are dropped;
* uid/gid kept, uname/gname emptied, mode bits kept without file-type bits;
* POSIX ustar headers, plus a PAX extended header only when a value does
  not fit (long or non-ASCII names, large ids, sizes or times) or for the
  kept xattrs (:data:`KEPT_XATTRS`); no atime/ctime, no other PAX records;
* file bytes unchanged; the archive ends with two zero blocks, as Go writes.

Canonical config: ``created`` and every ``history[].created`` set to
``epoch``, build-host fields dropped (:data:`DROPPED_CONFIG_KEYS`,
:data:`DROPPED_RUN_KEYS`), ``rootfs.diff_ids`` recomputed, serialized with
sorted keys and compact separators; the image ID is its sha256.

The output archive holds ``manifest.json`` and the config and layers as
``blobs/sha256/<digest>`` (the paths engine 25+ writes), all with fixed
header fields, so equal images give byte-identical archives.

Layers the engine already has: ``docker load`` unpacks the whole archive and
then reads a layer file only when the engine lacks that layer's chain
(:func:`chain_ids`). Given the chain IDs the engine holds (``present_chains``),
such a layer is written as an empty placeholder ``present/sha256/<chain>``
instead of its bytes; the config keeps the real diff_ids, so the image ID is
the same. Its normalized diff_id comes, without reading the layer's data,
from the cache map or from seeing in its headers that the layer is already
canonical; failing that, a layer on a present parent chain is hashed first
and written only when its chain turns out to be absent. Such an archive
loads only into an engine that holds those chains.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the canonical form changes; part of every cache key."""

KEPT_XATTRS = frozenset(
    {"security.capability", "system.posix_acl_access", "system.posix_acl_default"}
)
"""Extended attributes that change behaviour; all others (SELinux labels,
user.* notes from the build host) are dropped."""

DROPPED_CONFIG_KEYS = ("container", "container_config", "docker_version")
"""Top-level config fields that describe the build host, not the image."""

DROPPED_RUN_KEYS = ("Hostname", "Image")
"""``config`` fields set per build (container ID, parent image ID)."""

MtimeMode = Literal["clamp", "set"] | int
"""``"clamp"``: min(mtime, epoch); ``"set"``: epoch; an int T: epoch for what is newer than T
(made by the build), the recorded time for what is not (shipped by packages before T)."""
Source = str | os.PathLike[str] | BinaryIO

_BLOCK = 512
_CHUNK = 8 << 20
_OPAQUE = ".wh..wh..opq"
_PAX_NAME = "././@PaxHeader"
_XATTR = "SCHILY.xattr."
_DATA_TYPES = (tarfile.REGTYPE, tarfile.CONTTYPE)
_PRESENT_DIR = "present/sha256/"


# --- tar encoding ---------------------------------------------------------


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field; 0 when the value lives in a PAX record."""
    fits = 0 <= value < 8 ** (width - 1)
    return b"%0*o\0" % (width - 1, value if fits else 0)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while length != len(str(length)) + len(body):
        length = len(str(length)) + len(body)
    return b"%d" % length + body


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    dev: tuple[int, int],
) -> bytes:
    block = b"".join(
        (
            name[:100].ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,
            typeflag,
            linkname[:100].ljust(100, b"\0"),
            b"ustar\x0000",
            b"\0" * 64,
            _octal(dev[0], 8),
            _octal(dev[1], 8),
        )
    ).ljust(_BLOCK, b"\0")
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def tar_header(
    name: str,
    typeflag: bytes,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: str = "",
    dev: tuple[int, int] = (0, 0),
    xattrs: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """The canonical header blocks of one tar entry (PAX header when needed)."""
    bname, blink = _encode(name), _encode(linkname)
    records = [(_encode(_XATTR + key), value) for key, value in xattrs]
    for key, text in ((b"path", bname), (b"linkpath", blink)):
        if len(text) > 100 or not text.isascii():
            records.append((key, text))
    for key, value, width in (
        (b"gid", gid, 8),
        (b"mtime", mtime, 12),
        (b"size", size, 12),
        (b"uid", uid, 8),
    ):
        if not 0 <= value < 8 ** (width - 1):
            records.append((key, b"%d" % value))
    head = _ustar(bname, typeflag, mode, uid, gid, size, mtime, blink, dev)
    if not records:
        return head
    data = b"".join(_pax_record(k, v) for k, v in sorted(records))
    pax = _ustar(
        _encode(_PAX_NAME), tarfile.XHDTYPE, 0, 0, 0, len(data), 0, b"", (0, 0)
    )
    return pax + data + _padding(len(data)) + head


# --- reading saved archives -----------------------------------------------


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


def _copy(
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
        buffer = memoryview(bytearray(min(_CHUNK, max(length, 1))))
        _copy(self.fd, self.offset + offset, length, digest.update, buffer)
        return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class SavedImage:
    """The config and layers of the one image in a ``docker save`` archive."""

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


def _blob_path(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _placeholder_path(chain_id: str) -> str:
    return _PRESENT_DIR + chain_id.removeprefix("sha256:")


def _oci_manifest(archive: _Archive) -> tuple[str, list[str]]:
    """Config and layer paths from ``index.json`` (archives without manifest.json)."""
    document = json.loads(archive.read("index.json"))
    while "manifests" in document:
        if len(document["manifests"]) != 1:
            raise ValueError("the archive must hold exactly one image manifest")
        document = json.loads(
            archive.read(_blob_path(document["manifests"][0]["digest"]))
        )
    layers = [_blob_path(layer["digest"]) for layer in document["layers"]]
    return _blob_path(document["config"]["digest"]), layers


def _image_paths(archive: _Archive) -> tuple[str, list[str]]:
    """Config and layer paths: ``manifest.json`` (both engines), else OCI index."""
    if not archive.has("manifest.json"):
        return _oci_manifest(archive)
    entries = json.loads(archive.read("manifest.json"))
    if len(entries) != 1:
        raise ValueError(f"the archive holds {len(entries)} images; save one at a time")
    return entries[0]["Config"], list(entries[0]["Layers"])


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
        shutil.copyfileobj(data, out, _CHUNK)
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
def open_saved_image(
    src: Source, scratch_dir: Path | None = None
) -> Iterator[SavedImage]:
    """Open a ``docker save`` archive (path or binary stream) for random access.

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
        config_path, layer_paths = _image_paths(archive)
        config = json.loads(archive.read(config_path))
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(layer_paths):
            raise ValueError("config diff_ids and manifest layers disagree")
        layers = tuple(
            SavedLayer(index, diff_id, *_uncompressed(archive, path, scratch, stack))
            for index, (diff_id, path) in enumerate(
                zip(diff_ids, layer_paths, strict=True)
            )
        )
        yield SavedImage(config, layers)


# --- canonical layer plan -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One layer entry as it will be written; data comes from ``offset``."""

    name: str
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: str
    dev: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]
    offset: int

    def header(self) -> bytes:
        name = self.name + "/" if self.typeflag == tarfile.DIRTYPE else self.name
        return tar_header(
            name,
            self.typeflag,
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            size=self.size,
            mtime=self.mtime,
            linkname=self.linkname,
            dev=self.dev,
            xattrs=self.xattrs,
        )


def _entry(info: tarfile.TarInfo, epoch: int, mtime: MtimeMode) -> _Entry:
    if info.issparse():
        raise ValueError(f"sparse tar entry {info.name!r} is not supported")
    typeflag = tarfile.REGTYPE if info.type == tarfile.AREGTYPE else info.type
    has_data = typeflag in _DATA_TYPES
    xattrs = tuple(
        sorted(
            (key.removeprefix(_XATTR), _encode(value))
            for key, value in info.pax_headers.items()
            if key.startswith(_XATTR) and key.removeprefix(_XATTR) in KEPT_XATTRS
        )
    )
    recorded = math.floor(info.mtime)
    if mtime == "set":
        stamp = epoch
    elif mtime == "clamp":
        stamp = min(recorded, epoch)
    else:
        stamp = epoch if recorded > mtime else recorded
    return _Entry(
        name=info.name,
        typeflag=typeflag,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime=stamp,
        size=info.size if has_data else 0,
        linkname=info.linkname
        if typeflag in (tarfile.LNKTYPE, tarfile.SYMTYPE)
        else "",
        dev=(info.devmajor, info.devminor) if info.ischr() or info.isblk() else (0, 0),
        xattrs=xattrs,
        offset=info.offset_data,
    )


def _sort_key(name: str) -> tuple[tuple[bool, bytes], ...]:
    """Path-component order; the opaque whiteout first among its siblings."""
    return tuple((part != _OPAQUE, _encode(part)) for part in name.split("/"))


def _link_root(by_name: Mapping[str, _Entry], entry: _Entry) -> _Entry | None:
    """The entry a hard link finally points at, if it is in this layer."""
    seen: set[str] = set()
    while entry.typeflag == tarfile.LNKTYPE:
        if entry.name in seen:
            return None
        seen.add(entry.name)
        target = by_name.get(entry.linkname)
        if target is None:
            return None
        entry = target
    return entry


def _reroot_hardlinks(entries: list[_Entry]) -> list[_Entry]:
    """Make the first-sorting path of each hard-link group carry the data."""
    by_name = {entry.name: entry for entry in entries}
    groups: dict[str, list[str]] = {}
    for entry in entries:
        root = _link_root(by_name, entry) if entry.typeflag == tarfile.LNKTYPE else None
        if root is not None:
            groups.setdefault(root.name, [root.name]).append(entry.name)
    rewritten: dict[str, _Entry] = {}
    for root_name, names in groups.items():
        root, first = by_name[root_name], min(names, key=_sort_key)
        for name in names:
            rewritten[name] = (
                replace(root, name=name)
                if name == first
                else replace(
                    root, name=name, typeflag=tarfile.LNKTYPE, linkname=first, size=0
                )
            )
    return [rewritten.get(entry.name, entry) for entry in entries]


@dataclass(frozen=True)
class _Plan:
    """Headers and data ranges of a canonical layer tar, and its exact size."""

    parts: list[tuple[bytes, int, int]]
    size: int


def _plan_layer(
    members: Sequence[tarfile.TarInfo], epoch: int, mtime: MtimeMode
) -> _Plan:
    entries = _reroot_hardlinks([_entry(info, epoch, mtime) for info in members])
    entries.sort(key=lambda entry: _sort_key(entry.name))
    parts = [(entry.header(), entry.offset, entry.size) for entry in entries]
    size = sum(len(head) + data + (-data % _BLOCK) for head, _, data in parts)
    return _Plan(parts, size + 2 * _BLOCK)


# --- writing --------------------------------------------------------------


class _Sink:
    """Hashes what it is given and writes it to every target."""

    def __init__(self, targets: Sequence[BinaryIO]) -> None:
        self.targets, self.digest = targets, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        for target in self.targets:
            target.write(data)


def _write_plan(
    sink: _Sink, plan: _Plan, layer: SavedLayer, buffer: memoryview
) -> None:
    for head, offset, size in plan.parts:
        sink.write(head)
        _copy(layer.fd, layer.offset + offset, size, sink.write, buffer)
        sink.write(_padding(size))
    sink.write(b"\0" * (2 * _BLOCK))


class _ArchiveWriter:
    """Writes the output archive: fixed headers, blobs named by their digest."""

    def __init__(self, file: BinaryIO, epoch: int) -> None:
        self._file, self._epoch, self._blobs = file, epoch, set[str]()
        self._last: tuple[int, str] | None = None
        self._placeholders = False
        self.buffer = memoryview(bytearray(_CHUNK))

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
        self._file.write(self._header(name, len(data)) + data + _padding(len(data)))

    def has(self, digest: str) -> bool:
        """Whether the blob ``digest`` is in the archive."""
        return digest in self._blobs

    def add_placeholder(self, chain_id: str) -> None:
        """An empty file standing for a layer whose chain the engine has."""
        if not self._placeholders:
            self.add_dir(_PRESENT_DIR.split("/")[0] + "/")
            self.add_dir(_PRESENT_DIR)
        self._placeholders = True
        self.add_file(_placeholder_path(chain_id), b"")

    def add_blob(
        self, size: int, fill: Callable[[_Sink], None], tee: BinaryIO | None = None
    ) -> str:
        """Stream a blob of known size, hashing it; it is named afterwards
        ``blobs/sha256/<hex>`` by patching its header. A blob already in the
        archive is dropped again. Returns the digest."""
        start = self._file.tell()
        placeholder = self._header(_blob_path("sha256:" + "0" * 64), size)
        self._file.write(placeholder)
        sink = _Sink([self._file] if tee is None else [self._file, tee])
        fill(sink)
        written = self._file.tell() - start - len(placeholder)
        if written != size:
            raise AssertionError(f"blob is {written} bytes, planned {size}")
        self._file.write(_padding(size))
        digest = "sha256:" + sink.digest.hexdigest()
        end = self._file.tell()
        self._file.seek(start)
        if digest in self._blobs:
            self._file.truncate()
            self._last = None
            return digest
        self._blobs.add(digest)
        self._last = (start, digest)
        self._file.write(self._header(_blob_path(digest), size))
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
        self._file.write(b"\0" * (2 * _BLOCK))


# --- chain IDs ------------------------------------------------------------


def _chain_id(parent: str | None, diff_id: str) -> str:
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain ID of each layer of an image, from its diff_ids in order.

    The chain ID of the first layer is its diff_id; that of layer n is
    ``"sha256:" + sha256(f"{chain_id(n - 1)} {diff_id(n)}")`` (the OCI
    ChainID, which the engine's layer store is keyed by).
    """
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(_chain_id(chains[-1] if chains else None, diff_id))
    return chains


def chains_of(layer_lists: Iterable[Iterable[str]]) -> set[str]:
    """Every chain ID of some images, given each one's diff_ids
    (``RootFS.Layers`` in ``docker image inspect``)."""
    return {chain for diff_ids in layer_lists for chain in chain_ids(diff_ids)}


# --- cache ----------------------------------------------------------------


class LayerCache:
    """Remembers source diff_id -> normalized (diff_id, size) per epoch/mode.

    The map lives in ``<root>/layers.json``. A normalized layer maps to itself,
    so an image built on an already normalized base copies those layers
    verbatim. Normalized tars are kept in ``<root>/blobs/sha256/<hex>`` while
    they fit in ``keep_bytes``; adding one evicts the least recently used
    others down to that budget (a call keeping nothing evicts nothing).
    """

    def __init__(self, root: Path, keep_bytes: int = 0) -> None:
        self.root, self.keep_bytes = Path(root), keep_bytes
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._map = self._load()

    @staticmethod
    def key(diff_id: str, epoch: int, mtime: MtimeMode) -> str:
        return f"v{FORMAT_VERSION}:{mtime}:{epoch}:{diff_id}"

    def _load(self) -> dict[str, dict]:
        try:
            return json.loads((self.root / "layers.json").read_text())
        except FileNotFoundError:
            return {}

    def lookup(self, key: str) -> tuple[str, int] | None:
        found = self._map.get(key)
        return None if found is None else (found["diff_id"], found["size"])

    def kept(self, diff_id: str, size: int) -> Path | None:
        """The kept tar of a normalized layer, marked as just used."""
        path = self.blobs / diff_id.removeprefix("sha256:")
        try:
            if path.stat().st_size != size:
                return None
        except FileNotFoundError:
            return None
        os.utime(path)
        return path

    def has_room(self, size: int, pending: Mapping[str, Path]) -> bool:
        """Whether a tar of ``size`` fits the budget next to ``pending`` ones."""
        taken = sum(path.stat().st_size for path in pending.values())
        return taken + size <= self.keep_bytes

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def record(
        self, entries: Mapping[str, tuple[str, int]], kept: Mapping[str, Path]
    ) -> None:
        """Merge map entries and move kept tars (digest -> temp file) in place."""
        with self._locked():
            self._map = self._load()
            for key, (diff_id, size) in entries.items():
                self._map[key] = {"diff_id": diff_id, "size": size}
            path = self.root / "layers.json"
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._map, indent=1, sort_keys=True))
            os.replace(temporary, path)
            for digest, file in kept.items():
                os.replace(file, self.blobs / digest.removeprefix("sha256:"))
            if kept:
                self._evict({digest.removeprefix("sha256:") for digest in kept})

    def _evict(self, protect: set[str]) -> None:
        files = [p for p in self.blobs.iterdir() if not p.name.startswith(".")]
        stats = sorted(
            ((p.stat().st_mtime, p.stat().st_size, p) for p in files),
            key=lambda item: item[0],
        )
        total = sum(size for _, size, _ in stats)
        for _, size, path in stats:
            if total <= self.keep_bytes:
                break
            if path.name not in protect:
                path.unlink()
                total -= size


# --- results --------------------------------------------------------------


@dataclass(frozen=True)
class LayerResult:
    """How one layer was normalized.

    ``action`` is ``rewritten`` (parsed and written in canonical form),
    ``cached`` (copied from a kept normalized tar), ``verbatim`` (already
    canonical, copied), ``repeated`` (same source layer earlier in the image)
    or ``present`` (the engine has its chain: an empty placeholder was
    written). ``size`` is that of the normalized layer tar, ``entries`` the
    number of entries parsed (0 when the layer was not parsed).
    """

    index: int
    source_diff_id: str
    diff_id: str
    chain_id: str
    size: int
    entries: int
    action: str
    seconds: float

    @property
    def written(self) -> int:
        """Bytes of this layer written to the archive (0 for a placeholder)."""
        return 0 if self.action == "present" else self.size

    @property
    def path(self) -> str:
        """Where the archive holds the layer (or its placeholder)."""
        if self.action == "present":
            return _placeholder_path(self.chain_id)
        return _blob_path(self.diff_id)

    @property
    def rate(self) -> float:
        """Bytes written per second."""
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class NormalizeResult:
    """The normalized archive and the identity of the image inside it."""

    path: Path
    image_id: str
    diff_ids: tuple[str, ...]
    config: bytes
    tags: tuple[str, ...]
    layers: tuple[LayerResult, ...]
    size: int
    seconds: float

    @property
    def chain_ids(self) -> tuple[str, ...]:
        """The chain ID of each layer (see :func:`chain_ids`)."""
        return tuple(layer.chain_id for layer in self.layers)

    def summary(self) -> str:
        """A few lines for people: per layer action, size, time and speed."""
        lines = [f"{self.image_id}  {self.size / 1e6:.1f} MB in {self.seconds:.1f} s"]
        present = [layer for layer in self.layers if layer.action == "present"]
        if present:
            skipped = sum(layer.size for layer in present)
            lines[0] += (
                f"; {len(present)} layer(s) the engine has, {skipped / 1e6:.1f} MB,"
                " left out"
            )
        for layer in self.layers:
            lines.append(
                f"  layer {layer.index}: {layer.action:9} {layer.size / 1e6:10.1f} MB "
                f"{layer.seconds:7.2f} s {layer.rate / 1e6:8.0f} MB/s  {layer.diff_id}"
            )
        return "\n".join(lines)


# --- config ---------------------------------------------------------------


def rfc3339(epoch: int) -> str:
    """``epoch`` as RFC 3339 UTC with whole seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value: object) -> bytes:
    """Sorted keys, compact separators, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def normalize_config(
    config: Mapping,
    diff_ids: Sequence[str],
    epoch: int,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The canonical config bytes: fixed times, no host fields, new diff_ids."""
    result = {k: v for k, v in config.items() if k not in DROPPED_CONFIG_KEYS}
    created = rfc3339(epoch)
    result["created"] = created
    result["history"] = [
        {**item, "created": created} for item in config.get("history") or []
    ]
    run = {
        k: v
        for k, v in (config.get("config") or {}).items()
        if k not in DROPPED_RUN_KEYS
    }
    if labels:
        run["Labels"] = {**(run.get("Labels") or {}), **labels}
    result["config"] = run
    result["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return canonical_json(result)


# --- normalize ------------------------------------------------------------


@dataclass
class _Run:
    """State shared by the layers of one normalization."""

    out: _ArchiveWriter
    epoch: int
    mtime: MtimeMode
    cache: LayerCache | None
    learned: dict[str, tuple[str, int]]
    kept: dict[str, Path]
    present: frozenset[str] = frozenset()


def _copy_blob(run: _Run, fd: int, offset: int, size: int, expected: str) -> bool:
    """Copy bytes that should hash to ``expected``; False (and undone) if not."""

    def fill(sink: _Sink) -> None:
        _copy(fd, offset, size, sink.write, run.out.buffer)

    digest = run.out.add_blob(size, fill)
    if digest == expected:
        return True
    log.warning("copy of %s hashed to %s; rewriting it", expected, digest)
    run.out.undo()
    return False


def _from_cache(run: _Run, layer: SavedLayer) -> tuple[str, str, int] | None:
    """Copy the layer as the cache knows it: (action, diff_id, size), or None."""
    if run.cache is None:
        return None
    known = run.cache.lookup(LayerCache.key(layer.diff_id, run.epoch, run.mtime))
    if known is None:
        return None
    diff_id, size = known
    if diff_id == layer.diff_id and size == layer.size:
        if _copy_blob(run, layer.fd, layer.offset, size, diff_id):
            return "verbatim", diff_id, size
        return None
    kept = run.cache.kept(diff_id, size)
    if kept is None:
        return None
    with open(kept, "rb") as file:
        if _copy_blob(run, file.fileno(), 0, size, diff_id):
            return "cached", diff_id, size
    kept.unlink()
    return None


def _rewrite(
    run: _Run, layer: SavedLayer, parsed: tuple[_Plan, int] | None = None
) -> tuple[str, int, int]:
    """Write the canonical tar of a layer: (diff_id, size, entry count)."""
    plan, entries = _parse(run, layer) if parsed is None else parsed
    with ExitStack() as stack:
        tee = None
        if run.cache is not None and run.cache.has_room(plan.size, run.kept):
            tee = stack.enter_context(
                tempfile.NamedTemporaryFile(
                    dir=run.cache.blobs, prefix=".", delete=False
                )
            )
        digest = run.out.add_blob(
            plan.size, lambda sink: _write_plan(sink, plan, layer, run.out.buffer), tee
        )
    if tee is not None:
        if digest in run.kept:
            os.unlink(tee.name)
        else:
            run.kept[digest] = Path(tee.name)
    return digest, plan.size, entries


def _parse(run: _Run, layer: SavedLayer) -> tuple[_Plan, int]:
    """The canonical plan of a layer and its entry count (reads headers only)."""
    members = layer.members()
    return _plan_layer(members, run.epoch, run.mtime), len(members)


def _is_canonical(layer: SavedLayer, plan: _Plan) -> bool:
    """Whether the layer tar already is its canonical form, so that its
    normalized diff_id is its own: compares headers and padding, not data."""
    if plan.size != layer.size:
        return False
    position = 0
    for head, offset, size in plan.parts:
        if size and offset != position + len(head):
            return False
        if os.pread(layer.fd, len(head), layer.offset + position) != head:
            return False
        position += len(head) + size
        pad = -size % _BLOCK
        if pad and os.pread(layer.fd, pad, layer.offset + position) != bytes(pad):
            return False
        position += pad
    end = 2 * _BLOCK
    return os.pread(layer.fd, end, layer.offset + position) == bytes(end)


def _hash_plan(plan: _Plan, layer: SavedLayer, buffer: memoryview) -> str:
    """The diff_id of the canonical tar, computed without writing it."""
    sink = _Sink([])
    _write_plan(sink, plan, layer, buffer)
    return "sha256:" + sink.digest.hexdigest()


def _known(
    run: _Run, layer: SavedLayer, first: LayerResult | None
) -> tuple[str, int] | None:
    """The normalized (diff_id, size) of a layer, when known without reading it:
    from its earlier copy in this image or from the cache map."""
    if first is not None:
        return first.diff_id, first.size
    if run.cache is None:
        return None
    return run.cache.lookup(LayerCache.key(layer.diff_id, run.epoch, run.mtime))


def _write_layer(
    run: _Run, layer: SavedLayer, parsed: tuple[_Plan, int] | None, canonical: bool
) -> tuple[str, str, int, int]:
    """Put a layer's canonical tar in the archive: (action, diff_id, size, entries)."""
    entries = 0 if parsed is None else parsed[1]
    if canonical:
        if _copy_blob(run, layer.fd, layer.offset, layer.size, layer.diff_id):
            return "verbatim", layer.diff_id, layer.size, entries
    else:
        copied = _from_cache(run, layer)
        if copied is not None:
            return (*copied, entries)
    return ("rewritten", *_rewrite(run, layer, parsed))


def _normalize_layer(
    run: _Run, layer: SavedLayer, parent: str | None, done: dict[str, LayerResult]
) -> LayerResult:
    """Normalize one layer on top of the chain ``parent`` (None for the first)."""
    start = time.monotonic()
    first = done.get(layer.diff_id)
    known = _known(run, layer, first)
    parsed: tuple[_Plan, int] | None = None
    canonical = False
    if known is None and run.present and (parent is None or parent in run.present):
        # The chain may be present (an engine holds the parents of its chains):
        # find the normalized diff_id from the headers (a canonical layer is
        # its own normalized form), else by hashing the canonical tar unwritten.
        parsed = _parse(run, layer)
        canonical = _is_canonical(layer, parsed[0])
        if canonical:
            known = layer.diff_id, layer.size
        else:
            known = _hash_plan(parsed[0], layer, run.out.buffer), parsed[0].size
    if known is not None:
        chain = _chain_id(parent, known[0])
        if chain in run.present:
            run.out.add_placeholder(chain)
            entries = 0 if parsed is None else parsed[1]
            outcome = "present", *known, entries
            return _finish(run, layer, chain, outcome, start, done)
        if first is not None and run.out.has(first.diff_id):
            return replace(
                first, index=layer.index, chain_id=chain, action="repeated", seconds=0.0
            )
    outcome = _write_layer(run, layer, parsed, canonical)
    return _finish(run, layer, _chain_id(parent, outcome[1]), outcome, start, done)


def _finish(
    run: _Run,
    layer: SavedLayer,
    chain: str,
    outcome: tuple[str, str, int, int],
    start: float,
    done: dict[str, LayerResult],
) -> LayerResult:
    """Record what became of a layer (cache map, log) and describe it."""
    action, diff_id, size, entries = outcome
    for source in (layer.diff_id, diff_id):
        run.learned[LayerCache.key(source, run.epoch, run.mtime)] = (diff_id, size)
    result = LayerResult(
        layer.index,
        layer.diff_id,
        diff_id,
        chain,
        size,
        entries,
        action,
        time.monotonic() - start,
    )
    done.setdefault(layer.diff_id, result)
    log.info(
        "layer %d %s: %.1f MB in %.2f s (%.0f MB/s) -> %s",
        layer.index,
        action,
        size / 1e6,
        result.seconds,
        result.rate / 1e6,
        diff_id,
    )
    return result


def _discard(files: Mapping[str, Path]) -> None:
    """Remove tars meant for the cache when the normalization failed."""
    for path in files.values():
        path.unlink(missing_ok=True)


def normalize_archive(
    src: Source,
    dst: str | os.PathLike[str],
    epoch: int,
    cache_dir: Path | None = None,
    *,
    tags: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    mtime: MtimeMode = "clamp",
    cache_keep_bytes: int = 0,
    present_chains: Collection[str] = (),
) -> NormalizeResult:
    """Write a reproducible copy of the ``docker save`` archive ``src`` to ``dst``.

    ``epoch`` (seconds, SOURCE_DATE_EPOCH) bounds every mtime and is the
    created time of the image and its history. ``tags`` go into manifest.json
    for ``docker load``; ``labels`` are merged into the config. With
    ``cache_dir`` layer mappings are remembered there, and up to
    ``cache_keep_bytes`` of normalized layer tars are kept for reuse.
    A layer whose chain ID is in ``present_chains`` (chains the engine that
    will load the archive already has) is written as an empty placeholder,
    not its bytes; the image ID does not change, but the archive then loads
    only into such an engine.
    The output is written beside ``dst`` and renamed into place when complete.
    """
    if epoch < 0:
        raise ValueError("epoch must be a non-negative number of seconds")
    if mtime not in ("clamp", "set") and not (isinstance(mtime, int) and mtime >= 0):
        raise ValueError(f"mtime must be 'clamp', 'set' or a threshold time, not {mtime!r}")
    start = time.monotonic()
    dst = Path(dst)
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    cache = None if cache_dir is None else LayerCache(cache_dir, cache_keep_bytes)
    with ExitStack() as stack:
        image = stack.enter_context(open_saved_image(src, dst.parent))
        file = stack.enter_context(open(partial, "wb", buffering=1 << 20))
        stack.callback(lambda: partial.unlink(missing_ok=True))
        run = _Run(
            _ArchiveWriter(file, epoch),
            epoch,
            mtime,
            cache,
            {},
            {},
            frozenset(present_chains),
        )
        stack.callback(_discard, run.kept)
        run.out.add_dir("blobs/")
        run.out.add_dir("blobs/sha256/")
        done: dict[str, LayerResult] = {}
        layers: list[LayerResult] = []
        for layer in image.layers:
            parent = layers[-1].chain_id if layers else None
            layers.append(_normalize_layer(run, layer, parent, done))
        diff_ids = tuple(layer.diff_id for layer in layers)
        config = normalize_config(image.config, diff_ids, epoch, labels)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        run.out.add_file(_blob_path(image_id), config)
        manifest = [
            {
                "Config": _blob_path(image_id),
                "RepoTags": list(tags) or None,
                "Layers": [layer.path for layer in layers],
            }
        ]
        run.out.add_file("manifest.json", canonical_json(manifest))
        run.out.close()
        file.close()
        os.replace(partial, dst)
        if cache is not None:
            cache.record(run.learned, run.kept)
            run.kept.clear()
    return NormalizeResult(
        dst,
        image_id,
        diff_ids,
        config,
        tuple(tags),
        tuple(layers),
        dst.stat().st_size,
        time.monotonic() - start,
    )
