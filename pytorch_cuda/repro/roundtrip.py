"""Reproducible images: each build is saved, normalized (canonical layers and config) and
loaded back, so the same source gives the same image ID."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core import gitinfo
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import human_bytes, say
from pytorch_cuda.matrix import Cell
from pytorch_cuda.repro.chains import chains_of
from pytorch_cuda.repro.normalize import NormalizeResult, normalize_archive

WORK = STATE / "normalize"
LAYER_CACHE = STATE / "normalize-cache"
MAPPING = STATE / "normalized.json"


@dataclass
class Normalized:
    """A normalized image and what it took."""

    image_id: str
    seconds: float
    reused: bool
    result: NormalizeResult | None = None


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


def save(client: docker.DockerClient, image_id: str, path: Path) -> None:
    """`docker save` one image to a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for chunk in client.api.get_image(image_id, chunk_size=8 << 20):
            out.write(chunk)


def write_normalized(client: docker.DockerClient, raw_id: str, name: str, out: Path,
                     since: int) -> NormalizeResult:
    """Save a raw build and write its normalized archive to `out`; layers whose chain the
    engine already has are left out (the archive then loads only into this engine).

    Files newer than `since` (the base's epoch: so, made by this build) get SOURCE_DATE_EPOCH
    as their mtime; older ones (shipped in the base or in packages) keep theirs. Unlike a plain
    clamp, this does not depend on when the build ran relative to the commit."""
    epoch = gitinfo.source_date_epoch()
    WORK.mkdir(parents=True, exist_ok=True)
    raw = WORK / f"{raw_id[7:19]}.raw.tar"
    try:
        say(f"{name}: saving the raw build for normalization")
        save(client, raw_id, raw)
        say(f"{name}: normalizing layers and config (SOURCE_DATE_EPOCH={epoch})")
        present = chains_of(
            [i.attrs["RootFS"].get("Layers") or [] for i in client.images.list(all=True)])
        return normalize_archive(raw, out, epoch, LAYER_CACHE, present_chains=present,
                                 mtime=since)
    except OSError as exc:
        raise UserError(f"{name}: normalization failed ({exc}); is there room in {WORK}?") from None
    finally:
        raw.unlink(missing_ok=True)


def normalize(client: docker.DockerClient, raw_id: str, name: str, since: int) -> Normalized:
    """The normalized twin of a raw build, loaded (reused when normalized before)."""
    started = time.monotonic()
    known = _mapping().get(raw_id)
    if known and _exists(client, known):
        say(f"{name}: normalized before ({known[7:19]})")
        return Normalized(known, time.monotonic() - started, True)
    out = WORK / f"{raw_id[7:19]}.tar"
    try:
        result = write_normalized(client, raw_id, name, out, since)
        say(f"{name}: loading the normalized image {result.image_id[7:19]}")
        with out.open("rb") as data:
            loaded = client.images.load(data)
        if not loaded or loaded[0].id != result.image_id:
            got = loaded[0].id if loaded else "nothing"
            raise UserError(f"{name}: the engine loaded {got}, not the normalized "
                            f"{result.image_id}")
    except OSError as exc:
        raise UserError(f"{name}: loading the normalized image failed ({exc})") from None
    finally:
        out.unlink(missing_ok=True)
    _remember(raw_id, result.image_id)
    seconds = time.monotonic() - started
    say(f"{name}: normalized to {result.image_id[7:19]} in {seconds:.0f} s "
        f"({human_bytes(result.size)})")
    return Normalized(result.image_id, seconds, False, result)
