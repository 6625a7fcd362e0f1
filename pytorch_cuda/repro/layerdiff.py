"""Explain why two saved images differ: which layers, which files, and how.

Works on raw ``docker save`` archives and on normalized ones alike, so it
answers both "what does normalization not cover" and "what did the build
really change".
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from pytorch_cuda.repro.config import rfc3339
from pytorch_cuda.repro.saved import SavedLayer, Source, open_saved_image

_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CONTTYPE: "file",
}


@dataclass(frozen=True)
class FileDiff:
    """One way in which one path differs between the two layers.

    ``kind`` is ``type`` (file type or link target), ``content`` (sha256 and
    size), ``mode``, ``owner`` (uid:gid and names), ``mtime``, ``xattrs``,
    ``only-in-a`` or ``only-in-b``; :func:`diff_configs` uses ``config``.
    """

    path: str
    kind: str
    a: str
    b: str


@dataclass(frozen=True)
class LayerDiff:
    """A layer position whose diff_ids differ (``None``: no such layer)."""

    index: int
    diff_id_a: str | None
    diff_id_b: str | None
    files: tuple[FileDiff, ...]
    note: str = ""


@dataclass(frozen=True)
class _File:
    """What matters about one tar entry, with lazily hashed content."""

    info: tarfile.TarInfo
    layer: SavedLayer

    @property
    def kind(self) -> str:
        target = f" -> {self.info.linkname}" if self.info.linkname else ""
        return _TYPES.get(self.info.type, repr(self.info.type)) + target

    def content(self) -> str:
        digest = self.layer.sha256(self.info.offset_data, self.info.size)
        return f"{digest} ({self.info.size} B)"

    def owner(self) -> str:
        info = self.info
        return f"{info.uid}:{info.gid} ({info.uname or '-'}:{info.gname or '-'})"

    def mtime(self) -> str:
        seconds = f"{self.info.mtime:f}".rstrip("0").rstrip(".")
        return f"{seconds} ({rfc3339(int(self.info.mtime))})"

    def xattrs(self) -> str:
        found = {
            k: v
            for k, v in self.info.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        return json.dumps(found, sort_keys=True, ensure_ascii=True)


def _files(layer: SavedLayer) -> dict[str, _File]:
    return {info.name: _File(info, layer) for info in layer.members()}


def _compare(path: str, a: _File, b: _File) -> Iterator[FileDiff]:
    if a.kind != b.kind:
        yield FileDiff(path, "type", a.kind, b.kind)
        return
    if a.info.isreg():
        left, right = a.content(), b.content()
        if left != right:
            yield FileDiff(path, "content", left, right)
    pairs = (
        ("mode", f"{a.info.mode & 0o7777:04o}", f"{b.info.mode & 0o7777:04o}"),
        ("owner", a.owner(), b.owner()),
        ("mtime", a.mtime(), b.mtime()),
        ("xattrs", a.xattrs(), b.xattrs()),
    )
    for kind, left, right in pairs:
        if left != right:
            yield FileDiff(path, kind, left, right)


def diff_layers(a: SavedLayer, b: SavedLayer) -> LayerDiff:
    """Every file difference between two layers, by path."""
    files_a, files_b = _files(a), _files(b)
    found: list[FileDiff] = []
    for path in sorted(files_a.keys() | files_b.keys()):
        left, right = files_a.get(path), files_b.get(path)
        if left is not None and right is not None:
            found.extend(_compare(path, left, right))
        elif left is not None:
            found.append(FileDiff(path, "only-in-a", left.kind, ""))
        elif right is not None:
            found.append(FileDiff(path, "only-in-b", "", right.kind))
    note = ""
    if not found:
        same_order = list(files_a) == list(files_b)
        note = (
            "same files and metadata; tar headers differ (uname, PAX records, padding)"
            if same_order
            else "same files and metadata; entry order differs"
        )
    return LayerDiff(a.index, a.diff_id, b.diff_id, tuple(found), note)


def diff_archives(a: Source, b: Source) -> list[LayerDiff]:
    """The layers that differ between two saved images, compared by position."""
    with ExitStack() as stack:
        image_a = stack.enter_context(open_saved_image(a))
        image_b = stack.enter_context(open_saved_image(b))
        found: list[LayerDiff] = []
        for index in range(max(len(image_a.layers), len(image_b.layers))):
            left = image_a.layers[index] if index < len(image_a.layers) else None
            right = image_b.layers[index] if index < len(image_b.layers) else None
            if left is None or right is None:
                found.append(
                    LayerDiff(index, left and left.diff_id, right and right.diff_id, ())
                )
            elif left.diff_id != right.diff_id:
                found.append(diff_layers(left, right))
        return found


def _flatten(value: object, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return {prefix: json.dumps(value, sort_keys=True)}
    flat: dict[str, str] = {}
    for key, item in items:
        name = (
            f"{prefix}{key}"
            if str(key).startswith("[") or not prefix
            else f"{prefix}.{key}"
        )
        flat.update(_flatten(item, name))
    return flat


def diff_configs(a: Source, b: Source) -> list[FileDiff]:
    """Config fields that differ, as ``FileDiff(field, "config", a, b)``."""
    with ExitStack() as stack:
        left = _flatten(stack.enter_context(open_saved_image(a)).config)
        right = _flatten(stack.enter_context(open_saved_image(b)).config)
    return [
        FileDiff(key, "config", left.get(key, "(absent)"), right.get(key, "(absent)"))
        for key in sorted(left.keys() | right.keys())
        if left.get(key) != right.get(key)
    ]


def format_diff(
    layers: Sequence[LayerDiff], config: Sequence[FileDiff] = (), limit: int = 50
) -> str:
    """A report for people; at most ``limit`` files per layer."""
    if not layers and not config:
        return "images are identical: same config and layers"
    lines = [f"config {d.path}: {d.a} != {d.b}" for d in config]
    for layer in layers:
        lines.append(
            f"layer {layer.index}: {layer.diff_id_a or '(none)'} != "
            f"{layer.diff_id_b or '(none)'}"
        )
        if layer.note:
            lines.append(f"  {layer.note}")
        for diff in layer.files[:limit]:
            detail = f"{diff.a} != {diff.b}" if diff.a and diff.b else diff.a or diff.b
            lines.append(f"  {diff.kind:9} {diff.path}  {detail}")
        if len(layer.files) > limit:
            lines.append(f"  ... and {len(layer.files) - limit} more")
    return "\n".join(lines)
