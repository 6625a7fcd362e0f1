"""Reproducible images: each build is saved, normalized (canonical layers and config) and
loaded back, so the same source gives the same image ID."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core import gitinfo
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import human_bytes, say
from pytorch_cuda.matrix import Cell
from pytorch_cuda.repro import known
from pytorch_cuda.repro.chains import chains_of
from pytorch_cuda.repro.normalize import NormalizeResult, normalize_images

WORK = STATE / "normalize"
LAYER_CACHE = STATE / "normalize-cache"
MAPPING = STATE / "normalized.json"
LOADED_RE = re.compile(r"^Loaded image ID: (sha256:[0-9a-f]{64})$", re.MULTILINE)


@dataclass
class Normalized:
    """A normalized image and what it took."""

    image_id: str
    seconds: float
    reused: bool
    result: NormalizeResult | None = None
    saved: bool = True  # False: reused, or made without a save (every layer known)


def since_of(cell: Cell) -> int:
    """What counts as made by the build: newer than the base's pinned epoch (0: everything)."""
    return cell.os.bootstrap_epoch or 0


def _mapping() -> dict[str, str]:
    try:
        return json.loads(MAPPING.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _remember(raw_id: str, image_id: str) -> None:
    mapping = _mapping()
    mapping[raw_id] = image_id
    MAPPING.parent.mkdir(parents=True, exist_ok=True)
    tmp = MAPPING.with_suffix(".tmp")
    tmp.write_text(json.dumps(mapping, indent=1, sort_keys=True))
    tmp.replace(MAPPING)


def _exists(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def save(client: docker.DockerClient, image_ids: Sequence[str], path: Path) -> None:
    """`docker save` images into one archive (a layer they share is in it once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The engine's save of one or several images; the SDK's get_image takes only one.
    response = client.api._get(client.api._url("/images/get"),
                               params={"names": list(image_ids)}, stream=True)
    chunks = client.api._stream_raw_result(response, 8 << 20, False)
    with path.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)


def load(client: docker.DockerClient, path: Path) -> set[str]:
    """`docker load` an archive; the IDs of the images it loaded. (The SDK's `images.load`
    misses all but one when the engine reports several images in one message.)"""
    loaded: set[str] = set()
    with path.open("rb") as data:
        for message in client.api.load_image(data):
            if "error" in message:
                raise UserError(f"the engine could not load {path.name}: {message['error']}")
            loaded.update(LOADED_RE.findall(message.get("stream", "")))
    return loaded


def _present(client: docker.DockerClient) -> set[str]:
    """The layer chains the engine holds."""
    return chains_of(
        [i.attrs["RootFS"].get("Layers") or [] for i in client.images.list(all=True)])


def write_normalized(client: docker.DockerClient, raw_id: str, name: str, out: Path,
                     since: int) -> NormalizeResult:
    """Save a raw build and write its normalized archive to `out`; layers whose chain the
    engine already has are left out (the archive then loads only into this engine).

    Files newer than `since` (the base's epoch: so, made by this build) get SOURCE_DATE_EPOCH
    as their mtime; older ones (shipped in the base or in packages) keep theirs. Unlike a plain
    clamp, this does not depend on when the build ran relative to the commit."""
    return write_normalized_all(client, {raw_id: name}, out, since)[raw_id]


def write_normalized_all(client: docker.DockerClient, raws: Mapping[str, str], out: Path,
                         since: int) -> dict[str, NormalizeResult]:
    """`write_normalized` for several raw builds ({raw ID: name}) saved into one archive and
    normalized into one, so a layer they share is saved, rewritten and written once."""
    epoch = gitinfo.source_date_epoch()
    label = " and ".join(raws.values())
    WORK.mkdir(parents=True, exist_ok=True)
    raw = WORK / f"{next(iter(raws))[7:19]}.raw.tar"
    try:
        say(f"{label}: saving the raw build{'s' if len(raws) > 1 else ''} for normalization")
        save(client, list(raws), raw)
        say(f"{label}: normalizing layers and config (SOURCE_DATE_EPOCH={epoch})")
        results = normalize_images(raw, out, epoch, LAYER_CACHE, present_chains=_present(client),
                                   mtime=since)
    except OSError as exc:
        raise UserError(f"{label}: normalization failed ({exc}); is there room in {WORK}?") from None
    finally:
        raw.unlink(missing_ok=True)
    by_raw = {result.source_id: result for result in results}
    if set(by_raw) != set(raws):
        raise UserError(f"{label}: the engine saved {', '.join(by_raw)}, not {', '.join(raws)}")
    return by_raw


def _normalize_known(client: docker.DockerClient, raws: Mapping[str, str], epoch: int,
                     since: int) -> dict[str, Normalized]:
    """The normalized twins of those raw builds whose every layer was normalized before and is
    present, loaded without saving anything (see `known`); the others are left out."""
    if not raws:
        return {}
    begun = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / f"{next(iter(raws))[7:19]}.known.tar"
    try:
        results = known.write_known(client, raws, out, epoch, since, LAYER_CACHE,
                                    _present(client), STATE)
        loaded = load(client, out) if results else set()
    except OSError as exc:
        raise UserError(f"{' and '.join(raws.values())}: loading the normalized images failed "
                        f"({exc})") from None
    finally:
        out.unlink(missing_ok=True)
    done: dict[str, Normalized] = {}
    for raw_id, result in results.items():
        if result.image_id not in loaded:
            continue  # the full normalization below makes it
        _remember(raw_id, result.image_id)
        seconds = (time.monotonic() - begun) / len(results)
        done[raw_id] = Normalized(result.image_id, seconds, False, result, saved=False)
        say(f"{raws[raw_id]}: normalized to {result.image_id[7:19]} without a save "
            f"(all {len(result.layers)} layers known, {seconds:.1f} s)")
    return done


def normalize(client: docker.DockerClient, raw_id: str, name: str, since: int) -> Normalized:
    """The normalized twin of a raw build, loaded (reused when normalized before)."""
    return normalize_all(client, {raw_id: name}, since)[raw_id]


def normalize_all(client: docker.DockerClient, raws: Mapping[str, str],
                  since: int) -> dict[str, Normalized]:
    """The normalized twins of raw builds ({raw ID: name}), loaded; those normalized before are
    reused, the others saved, normalized and loaded together (one copy of a shared layer).

    Each image's `seconds` is its share of the shared work: what it took alone (reuse, its own
    layers and config) plus the save and load in proportion to the bytes it added."""
    started = time.monotonic()
    done: dict[str, Normalized] = {}
    for raw_id, name in raws.items():
        earlier = _mapping().get(raw_id)
        if earlier and _exists(client, earlier):
            say(f"{name}: normalized before ({earlier[7:19]})")
            done[raw_id] = Normalized(earlier, time.monotonic() - started, True, saved=False)
    todo = {raw_id: name for raw_id, name in raws.items() if raw_id not in done}
    epoch = gitinfo.source_date_epoch()
    done.update(_normalize_known(client, todo, epoch, since))
    todo = {raw_id: name for raw_id, name in todo.items() if raw_id not in done}
    if not todo:
        return {raw_id: done[raw_id] for raw_id in raws}
    begun = time.monotonic()
    label = " and ".join(todo.values())
    out = WORK / f"{next(iter(todo))[7:19]}.tar"
    try:
        results = write_normalized_all(client, todo, out, since)
        say(f"{label}: loading {human_bytes(out.stat().st_size)} of normalized images")
        loaded = load(client, out)
        missing = [r.image_id for r in results.values() if r.image_id not in loaded]
        if missing:
            raise UserError(f"{label}: the engine did not load the normalized "
                            f"{', '.join(missing)} (it loaded {', '.join(loaded) or 'nothing'})")
    except OSError as exc:
        raise UserError(f"{label}: loading the normalized images failed ({exc})") from None
    finally:
        out.unlink(missing_ok=True)
    known.check(client, STATE, results, epoch)
    shared = time.monotonic() - begun - sum(r.seconds for r in results.values())
    written = {raw_id: sum(layer.written for layer in r.layers) for raw_id, r in results.items()}
    total = sum(written.values())
    for raw_id, result in results.items():
        _remember(raw_id, result.image_id)
        share = written[raw_id] / total if total else 1 / len(results)
        done[raw_id] = Normalized(result.image_id, result.seconds + shared * share, False, result)
        say(f"{todo[raw_id]}: normalized to {result.image_id[7:19]} "
            f"({human_bytes(written[raw_id])} of layers written)")
    say(f"{label}: normalized in {time.monotonic() - begun:.0f} s")
    return {raw_id: done[raw_id] for raw_id in raws}
