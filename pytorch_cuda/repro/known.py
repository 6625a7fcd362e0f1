"""Normalization without `docker save`, for a raw build made only of layers normalized before.

The build steps give the same raw layer every build (each RUN settles its mtimes, final stages copy
builder output as trees rooted at /, the base holds no file a step deletes). When the layer cache
maps every raw layer of a build to its normalized form and the engine holds each normalized chain,
the normalized image is only a new config: rebuilt here from what the engine reports about the raw
image (inspect and history), written with one empty placeholder per layer and loaded in a moment.

Whatever this cannot vouch for (a layer not seen before, a chain the engine lacks, a history that
does not tell which steps made layers) falls back to the full save. Every full normalization
checks that the config rebuilt here equals the one it wrote, and turns this path off for good on
this engine when it does not (`check`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core.progress import say
from pytorch_cuda.repro.chains import chain_ids
from pytorch_cuda.repro.config import canonical_json, normalize_config
from pytorch_cuda.repro.layercache import LayerCache
from pytorch_cuda.repro.normalize import LayerResult, NormalizeResult
from pytorch_cuda.repro.plan import MtimeMode
from pytorch_cuda.repro.saved import blob_path, placeholder_path
from pytorch_cuda.repro.writer import ArchiveWriter

OPTIONAL_KEYS = {"Author": "author", "Variant": "variant", "OsVersion": "os.version"}
"""Config fields the engine's inspect reports, by their name in the config, when set."""


def raw_config(client: docker.DockerClient, image_id: str) -> dict | None:
    """The config of a raw image as far as normalization reads it, from the engine's inspect and
    history; None when the history does not tell which of its steps made a layer."""
    attrs = client.api.inspect_image(image_id)
    layers = attrs["RootFS"].get("Layers") or []
    history: list[dict] = []
    before = 0
    for item in reversed(client.api.history(image_id)):
        count = _layer_count(client, item["Id"])
        empty = count == before if count is not None else item["Size"] == 0
        before = count if count is not None else before + (not empty)
        entry = {"created": "", "created_by": item["CreatedBy"]}
        if item.get("Comment"):
            entry["comment"] = item["Comment"]
        if empty:
            entry["empty_layer"] = True
        history.append(entry)
    if sum(not entry.get("empty_layer") for entry in history) != len(layers):
        return None
    config = {"architecture": attrs["Architecture"], "os": attrs["Os"],
              "config": attrs["Config"], "history": history,
              "rootfs": {"type": "layers", "diff_ids": layers}}
    config.update({key: attrs[name] for name, key in OPTIONAL_KEYS.items() if attrs.get(name)})
    return config


def _layer_count(client: docker.DockerClient, image_id: str) -> int | None:
    """How many layers an image of the history has (None for a step the engine kept no image of)."""
    if not image_id.startswith("sha256:"):
        return None
    try:
        return len(client.api.inspect_image(image_id)["RootFS"].get("Layers") or [])
    except docker.errors.NotFound:
        return None


def normalized_config(client: docker.DockerClient, raw_id: str, diff_ids: Sequence[str],
                      epoch: int) -> bytes | None:
    """The normalized config of a raw image given its normalized diff_ids (None: unknown)."""
    config = raw_config(client, raw_id)
    return None if config is None else normalize_config(config, diff_ids, epoch)


def _marker(state: Path) -> Path:
    return state / "known-config-mismatch.json"


def check(client: docker.DockerClient, state: Path,
          results: Mapping[str, NormalizeResult], epoch: int) -> None:
    """After a full normalization: does the config rebuilt from inspect and history equal the one
    written? If not, say so and turn the save-free path off on this engine."""
    for raw_id, result in results.items():
        rebuilt = normalized_config(client, raw_id, result.diff_ids, epoch)
        if rebuilt is not None and rebuilt != result.config:
            version = client.version().get("Version", "?")
            _marker(state).write_text(json.dumps(
                {"engine": version, "raw": raw_id, "written": result.config.decode(),
                 "rebuilt": rebuilt.decode()}, indent=1))
            say(f"normalizing without a save is off on this engine ({version}): the config it "
                f"rebuilds for {raw_id[7:19]} differs from the saved one "
                f"(details: {_marker(state)})")
            return


@dataclass(frozen=True)
class _Known:
    """A raw build whose normalized twin needs no save: its config and layers."""

    config: bytes
    sources: tuple[str, ...]
    layers: tuple[tuple[str, int], ...]
    seconds: float


def _known(client: docker.DockerClient, raw_id: str, epoch: int, mtime: MtimeMode,
           cache: LayerCache, present: set[str]) -> _Known | None:
    """What the normalized twin of a raw build is, when known without a save."""
    started = time.monotonic()
    sources = tuple(client.api.inspect_image(raw_id)["RootFS"].get("Layers") or [])
    layers = [cache.lookup(LayerCache.key(source, epoch, mtime)) for source in sources]
    if any(layer is None for layer in layers):
        return None
    known = tuple(layer for layer in layers if layer is not None)
    diff_ids = [diff_id for diff_id, _ in known]
    if not set(chain_ids(diff_ids)) <= present:
        return None
    config = normalized_config(client, raw_id, diff_ids, epoch)
    if config is None:
        return None
    return _Known(config, sources, known, time.monotonic() - started)


def write_known(client: docker.DockerClient, raws: Mapping[str, str], out: Path, epoch: int,
                mtime: MtimeMode, cache_dir: Path, present: set[str],
                state: Path) -> dict[str, NormalizeResult]:
    """Write one archive (`out`) of the normalized twins of those raw builds ({raw ID: name})
    whose every layer is known and present; their results. Nothing is written when none is."""
    if _marker(state).exists():
        return {}
    cache = LayerCache(cache_dir)
    found = {raw_id: known for raw_id in raws
             if (known := _known(client, raw_id, epoch, mtime, cache, present)) is not None}
    if not found:
        return {}
    results: dict[str, NormalizeResult] = {}
    entries = []
    with out.open("wb") as file:
        writer = ArchiveWriter(file, epoch)
        writer.add_dir("blobs/")
        writer.add_dir("blobs/sha256/")
        for raw_id, known in found.items():
            diff_ids = tuple(diff_id for diff_id, _ in known.layers)
            chains = chain_ids(diff_ids)
            for chain in chains:
                writer.add_placeholder(chain)
            image_id = "sha256:" + hashlib.sha256(known.config).hexdigest()
            writer.add_file(blob_path(image_id), known.config)
            entries.append({"Config": blob_path(image_id), "RepoTags": None,
                            "Layers": [placeholder_path(chain) for chain in chains]})
            layers = tuple(LayerResult(index, source, diff_id, chain, size, 0, "present", 0.0)
                           for index, (source, (diff_id, size), chain)
                           in enumerate(zip(known.sources, known.layers, chains)))
            results[raw_id] = NormalizeResult(out, image_id, diff_ids, known.config, (), layers,
                                              0, known.seconds, raw_id)
        writer.add_file("manifest.json", canonical_json(entries))
        writer.close()
    return results
