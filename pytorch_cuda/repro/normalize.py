"""Rewrite ``docker save`` archives into bit-for-bit reproducible images.

Docker's classic builder stamps layer tars with build-time mtimes and the
image config with wall-clock times and host details, so two builds of the
same Dockerfile get different image IDs. :func:`normalize_archive` reads a
saved archive (the legacy layout of engine 20.10 or the OCI layout of engine
25+), rewrites every layer into one canonical tar form, rewrites the config
canonically and writes an archive that ``docker load`` takes on both engines.

Canonical layer tar (rules versioned by ``layercache.FORMAT_VERSION``; see
``plan`` and ``tarformat``):

* entries sorted by path component, a directory before its content and a
  directory's opaque whiteout (``.wh..wh..opq``) first among its children;
  whiteouts are kept as they are;
* a group of hard links is re-rooted at the path that sorts first: that path
  carries the data, the others link to it (the unpacked tree is the same);
* mtimes by the ``mtime`` mode: the builds use a threshold time T (the
  base's epoch), so what the build made (newer than T) gets ``epoch`` and what
  the base and packages shipped (not newer than T) keeps its time, whenever
  the build ran; ``"set"`` sets every mtime to ``epoch`` and ``"clamp"``
  takes min(mtime, epoch); sub-second parts are dropped;
* uid/gid kept, uname/gname emptied, mode bits kept without file-type bits;
* POSIX ustar headers, plus a PAX extended header only when a value does
  not fit (long or non-ASCII names, large ids, sizes or times) or for the
  kept xattrs (``plan.KEPT_XATTRS``); no atime/ctime, no other PAX records;
* file bytes unchanged; the archive ends with two zero blocks, as Go writes.

Canonical config: ``created`` and every ``history[].created`` set to
``epoch``, build-host fields dropped (``config.DROPPED_CONFIG_KEYS``,
``config.DROPPED_RUN_KEYS``), ``rootfs.diff_ids`` recomputed, serialized with
sorted keys and compact separators; the image ID is its sha256.

The output archive holds ``manifest.json`` and the config and layers as
``blobs/sha256/<digest>`` (the paths engine 25+ writes), all with fixed
header fields, so equal images give byte-identical archives.

Layers the engine already has: ``docker load`` unpacks the whole archive and
then reads a layer file only when the engine lacks that layer's chain
(``chains.chain_ids``). Given the chain IDs the engine holds (``present_chains``),
such a layer is written as an empty placeholder ``present/sha256/<chain>``
instead of its bytes; the config keeps the real diff_ids, so the image ID is
the same. Its normalized diff_id comes, without reading the layer's data,
from the cache map or from seeing in its headers that the layer is already
canonical; failing that, a layer on a present parent chain is hashed first
and written only when its chain turns out to be absent. Such an archive
loads only into an engine that holds those chains.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytorch_cuda.repro.chains import chain_id
from pytorch_cuda.repro.config import canonical_json, normalize_config
from pytorch_cuda.repro.layercache import LayerCache
from pytorch_cuda.repro.plan import LayerPlan, MtimeMode, plan_layer
from pytorch_cuda.repro.saved import (
    SavedImage,
    SavedLayer,
    Source,
    blob_path,
    copy_range,
    open_saved_images,
    placeholder_path,
)
from pytorch_cuda.repro.tarformat import BLOCK
from pytorch_cuda.repro.writer import ArchiveWriter, Sink, write_plan

log = logging.getLogger(__name__)


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
        """Bytes of this layer written to the archive (0 for a placeholder or a repeat)."""
        return 0 if self.action in ("present", "repeated") else self.size

    @property
    def path(self) -> str:
        """Where the archive holds the layer (or its placeholder)."""
        if self.action == "present":
            return placeholder_path(self.chain_id)
        return blob_path(self.diff_id)

    @property
    def rate(self) -> float:
        """Bytes written per second."""
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class NormalizeResult:
    """The normalized archive and the identity of an image inside it; ``source_id``
    is the image ID of the raw image it came from."""

    path: Path
    image_id: str
    diff_ids: tuple[str, ...]
    config: bytes
    tags: tuple[str, ...]
    layers: tuple[LayerResult, ...]
    size: int
    seconds: float
    source_id: str

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


@dataclass
class _Run:
    """State shared by the layers of one normalization."""

    out: ArchiveWriter
    epoch: int
    mtime: MtimeMode
    cache: LayerCache | None
    learned: dict[str, tuple[str, int]]
    kept: dict[str, Path]
    present: frozenset[str] = frozenset()
    done: dict[str, LayerResult] = field(default_factory=dict)


def _copy_blob(run: _Run, fd: int, offset: int, size: int, expected: str) -> bool:
    """Copy bytes that should hash to ``expected``; False (and undone) if not."""

    def fill(sink: Sink) -> None:
        copy_range(fd, offset, size, sink.write, run.out.buffer)

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
    run: _Run, layer: SavedLayer, parsed: tuple[LayerPlan, int] | None = None
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
            plan.size, lambda sink: write_plan(sink, plan, layer, run.out.buffer), tee
        )
    if tee is not None:
        if digest in run.kept:
            os.unlink(tee.name)
        else:
            run.kept[digest] = Path(tee.name)
    return digest, plan.size, entries


def _parse(run: _Run, layer: SavedLayer) -> tuple[LayerPlan, int]:
    """The canonical plan of a layer and its entry count (reads headers only)."""
    members = layer.members()
    return plan_layer(members, run.epoch, run.mtime), len(members)


def _is_canonical(layer: SavedLayer, plan: LayerPlan) -> bool:
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
        pad = -size % BLOCK
        if pad and os.pread(layer.fd, pad, layer.offset + position) != bytes(pad):
            return False
        position += pad
    end = 2 * BLOCK
    return os.pread(layer.fd, end, layer.offset + position) == bytes(end)


def _hash_plan(plan: LayerPlan, layer: SavedLayer, buffer: memoryview) -> str:
    """The diff_id of the canonical tar, computed without writing it."""
    sink = Sink([])
    write_plan(sink, plan, layer, buffer)
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
    run: _Run, layer: SavedLayer, parsed: tuple[LayerPlan, int] | None, canonical: bool
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
    parsed: tuple[LayerPlan, int] | None = None
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
        chain = chain_id(parent, known[0])
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
    return _finish(run, layer, chain_id(parent, outcome[1]), outcome, start, done)


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


def _write_image(
    run: _Run, image: SavedImage, labels: Mapping[str, str] | None, tags: Sequence[str]
) -> tuple[NormalizeResult, dict]:
    """Write an image's layers and config; return its result (archive path and size
    not yet known) and its manifest.json entry. A layer an earlier image of the
    same archive wrote is not written again."""
    start = time.monotonic()
    layers: list[LayerResult] = []
    for layer in image.layers:
        parent = layers[-1].chain_id if layers else None
        layers.append(_normalize_layer(run, layer, parent, run.done))
    diff_ids = tuple(layer.diff_id for layer in layers)
    config = normalize_config(image.config, diff_ids, run.epoch, labels)
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    run.out.add_file(blob_path(image_id), config)
    entry = {"Config": blob_path(image_id), "RepoTags": list(tags) or None,
             "Layers": [layer.path for layer in layers]}
    result = NormalizeResult(Path(), image_id, diff_ids, config, tuple(tags), tuple(layers),
                             0, time.monotonic() - start, image.image_id)
    return result, entry


def _normalize(
    src: Source,
    dst: str | os.PathLike[str],
    epoch: int,
    cache_dir: Path | None,
    mtime: MtimeMode,
    cache_keep_bytes: int,
    present_chains: Collection[str],
    single: tuple[Sequence[str], Mapping[str, str] | None] | None,
) -> tuple[NormalizeResult, ...]:
    """Normalize the images of ``src`` into one archive ``dst``; ``single`` (tags,
    labels) requires exactly one image and applies to it."""
    if epoch < 0:
        raise ValueError("epoch must be a non-negative number of seconds")
    if mtime not in ("clamp", "set") and not (isinstance(mtime, int) and mtime >= 0):
        raise ValueError(f"mtime must be 'clamp', 'set' or a threshold time, not {mtime!r}")
    dst = Path(dst)
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    cache = None if cache_dir is None else LayerCache(cache_dir, cache_keep_bytes)
    with ExitStack() as stack:
        images = stack.enter_context(open_saved_images(src, dst.parent))
        if single is not None and len(images) != 1:
            raise ValueError(f"the archive holds {len(images)} images; save one at a time")
        file = stack.enter_context(open(partial, "wb", buffering=1 << 20))
        stack.callback(lambda: partial.unlink(missing_ok=True))
        run = _Run(
            ArchiveWriter(file, epoch),
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
        tags, labels = single if single is not None else ((), None)
        written = [_write_image(run, image, labels, tags) for image in images]
        run.out.add_file("manifest.json", canonical_json([entry for _, entry in written]))
        run.out.close()
        file.close()
        os.replace(partial, dst)
        if cache is not None:
            cache.record(run.learned, run.kept)
            run.kept.clear()
    size = dst.stat().st_size
    return tuple(replace(result, path=dst, size=size) for result, _ in written)


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
    (result,) = _normalize(src, dst, epoch, cache_dir, mtime, cache_keep_bytes,
                           present_chains, (tags, labels))
    return result


def normalize_images(
    src: Source,
    dst: str | os.PathLike[str],
    epoch: int,
    cache_dir: Path | None = None,
    *,
    mtime: MtimeMode = "clamp",
    cache_keep_bytes: int = 0,
    present_chains: Collection[str] = (),
) -> tuple[NormalizeResult, ...]:
    """Normalize every image of a ``docker save`` archive of several into one archive.

    The options are those of :func:`normalize_archive`. A layer the images share
    (dev and prod share their heavy layers) is read, rewritten and written once,
    so saving and loading the images together costs one copy of it. The results
    follow the archive's order; ``seconds`` is each image's own share of the work.
    """
    return _normalize(src, dst, epoch, cache_dir, mtime, cache_keep_bytes,
                      present_chains, None)
