"""The canonical plan of one layer: entries sorted, hard links re-rooted, mtimes and ids fixed."""

from __future__ import annotations

import math
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pytorch_cuda.repro.tarformat import BLOCK, XATTR_PREFIX, encode, tar_header

KEPT_XATTRS = frozenset(
    {"security.capability", "system.posix_acl_access", "system.posix_acl_default"}
)
"""Extended attributes that change behaviour; all others (SELinux labels,
user.* notes from the build host) are dropped."""

MtimeMode = Literal["clamp", "set"] | int
"""``"clamp"``: min(mtime, epoch); ``"set"``: epoch; an int T: epoch for what is newer than T
(made by the build), the recorded time for what is not (shipped by packages before T)."""

_OPAQUE = ".wh..wh..opq"

_DATA_TYPES = (tarfile.REGTYPE, tarfile.CONTTYPE)


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
            (key.removeprefix(XATTR_PREFIX), encode(value))
            for key, value in info.pax_headers.items()
            if key.startswith(XATTR_PREFIX) and key.removeprefix(XATTR_PREFIX) in KEPT_XATTRS
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
    return tuple((part != _OPAQUE, encode(part)) for part in name.split("/"))


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
class LayerPlan:
    """Headers and data ranges of a canonical layer tar, and its exact size."""

    parts: list[tuple[bytes, int, int]]
    size: int


def plan_layer(
    members: Sequence[tarfile.TarInfo], epoch: int, mtime: MtimeMode
) -> LayerPlan:
    entries = _reroot_hardlinks([_entry(info, epoch, mtime) for info in members])
    entries.sort(key=lambda entry: _sort_key(entry.name))
    parts = [(entry.header(), entry.offset, entry.size) for entry in entries]
    size = sum(len(head) + data + (-data % BLOCK) for head, _, data in parts)
    return LayerPlan(parts, size + 2 * BLOCK)
