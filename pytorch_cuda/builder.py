"""`build.py build`: build images on the engine with live progress; tag only on success."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import docker
import docker.errors

from . import base, buildenv, debian, gitinfo, locking, reproducible
from .context import write_context
from .errors import UserError
from .matrix import Cell, Image
from .paths import STATE
from .progress import human_bytes, say, table

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)")
LAYER_RE = re.compile(r"^ ---> ([0-9a-f]{12})$")
APT_GONE_RE = re.compile(r"Version '([^']+)' for '([^']+)' was not found")
TAIL_LINES = 40


@dataclass
class BuildResult:
    """One built image."""

    image: Image
    image_id: str
    size: int
    seconds: float
    normalize_seconds: float


@dataclass
class BuildOptions:
    """What the user chose on the command line."""

    ca_cert: str | None = None
    mirror: str | None = None
    security_mirror: str | None = None
    quiet: bool = False
    no_cache: bool = False
    normalize: bool = True


def build_labels(image: Image, base_id: str) -> dict[str, str]:
    """Labels only the build knows: creation time, source revision and the base's digest."""
    epoch = gitinfo.source_date_epoch()
    return {
        "org.opencontainers.image.created":
            datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.revision": gitinfo.revision(),
        "org.opencontainers.image.source": gitinfo.source_url(),
        "org.opencontainers.image.base.digest": base_id,
    }


class _Stream:
    """Follows one build's output: steps, stages, the tail for errors, the image ID."""

    def __init__(self, image: Image, quiet: bool) -> None:
        self.image = image
        self.quiet = quiet
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.step = "starting"
        self.stage = "-"
        self.image_id: str | None = None
        self.error: str | None = None
        self.stage_images: dict[str, str] = {}

    def feed(self, chunk: dict) -> None:
        if "error" in chunk or "errorDetail" in chunk:
            self.error = chunk.get("error") or chunk["errorDetail"].get("message", "")
            return
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        for line in chunk.get("stream", "").splitlines():
            self._line(line)

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self.tail.append(line)
        layer = LAYER_RE.match(line)
        if layer:
            self.stage_images[self.stage] = layer.group(1)
        match = STEP_RE.match(line)
        if match:
            instruction = match.group(3)
            if instruction.upper().startswith("FROM "):
                words = instruction.split()
                self.stage = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
            self.step = f"step {match.group(1)}/{match.group(2)} [{self.stage}]"
            say(f"{self.image.name} {self.step}: {instruction[:100]}")
        elif not self.quiet:
            print(f"    {line}", flush=True)


def build_raw(client: docker.DockerClient, image: Image, context: Path, base_id: str,
              options: BuildOptions) -> tuple[str, dict[str, str]]:
    """Run the engine's build of one image; return the raw image ID and each stage's image."""
    stream = _Stream(image, options.quiet)
    try:
        with context.open("rb") as ctx:
            for chunk in client.api.build(
                fileobj=ctx, custom_context=True,
                dockerfile=f"images/{image.cell.id}/{image.variant}/Dockerfile",
                buildargs=buildenv.build_args(image.cell),
                labels=build_labels(image, base_id), rm=True, forcerm=True, pull=False,
                nocache=options.no_cache, decode=True,
            ):
                stream.feed(chunk)
                if stream.error:
                    break
    except docker.errors.APIError as exc:
        stream.error = str(exc.explanation or exc)
    if stream.error or not stream.image_id:
        raise UserError(_failure(image, stream))
    return stream.image_id, stream.stage_images


def build_image(client: docker.DockerClient, image: Image, context: Path, base_id: str,
                options: BuildOptions) -> BuildResult:
    """Build (and normalize) one image; tag it only when all of that succeeded."""
    started = time.monotonic()
    say(f"building {image.name} -> {image.ref()}")
    try:
        raw_id, stages = build_raw(client, image, context, base_id, options)
        raw = client.images.get(raw_id)
        keep_cache(client, image, raw_id, stages)
        built_seconds = time.monotonic() - started
        normalize_seconds = 0.0
        final = raw
        if options.normalize:
            normalized = reproducible.normalize(client, raw.id, image.name,
                                                reproducible.since_of(image.cell))
            final = client.images.get(normalized.image_id)
            normalize_seconds = normalized.seconds
    except (KeyboardInterrupt, UserError):
        _untag(client, image)
        raise
    for tag in image.tags:
        final.tag(image.cell.matrix.repository, tag)
    seconds = time.monotonic() - started
    say(f"built {image.name} {final.id[:19]} ({human_bytes(final.attrs['Size'])}, "
        f"build {built_seconds:.0f} s + normalize {normalize_seconds:.0f} s); "
        f"tagged {', '.join(image.tags)}")
    return BuildResult(image, final.id, final.attrs["Size"], seconds, normalize_seconds)


def keep_cache(client: docker.DockerClient, image: Image, raw_id: str,
               stages: dict[str, str]) -> None:
    """Tag the raw build and its side stages (builder, variant env): they are the build cache."""
    repository = f"{image.cell.matrix.repository}-cache"
    client.images.get(raw_id).tag(repository, f"{image.cell.id}-{image.variant}")
    for stage in ("builder", f"{image.variant}-env"):
        if stage in stages:
            client.images.get(stages[stage]).tag(repository, f"{image.cell.id}-{stage}")


def _failure(image: Image, stream: _Stream) -> str:
    text = "\n".join(stream.tail)
    gone = APT_GONE_RE.search(text + (stream.error or ""))
    if gone:
        return (f"{image.name}: apt package {gone.group(2)}={gone.group(1)} is no longer on the "
                "mirror; 'python build.py lock' refreshes the pins")
    return (f"{image.name} failed at {stream.step}: {(stream.error or 'no image produced').strip()}"
            f"\n--- last lines of the build output ---\n{text}\n--- no tag was applied ---")


def _untag(client: docker.DockerClient, image: Image) -> None:
    """Remove this image's tags so none points at a stale or half-built image."""
    for tag in image.tags:
        try:
            client.images.remove(image.ref(tag), noprune=True)
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError:
            continue


def prune(client: docker.DockerClient, bases: set[str]) -> int:
    """Remove this project's dangling images (replaced builds and their stages); return bytes."""
    reclaimed = 0
    for image in client.images.list(filters={"dangling": True}):
        layers = image.attrs["RootFS"].get("Layers") or []
        if (layers and layers[0] in bases) or "io.pytorch-cuda.cell" in (image.labels or {}):
            try:
                client.images.remove(image.id)
                reclaimed += image.attrs["Size"]
            except docker.errors.APIError:
                continue
    return reclaimed


@contextmanager
def prepared(client: docker.DockerClient, cell: Cell, options: BuildOptions) -> Iterator[tuple[Path, str]]:
    """A cell's lock checked, its base present and its build context written: (context, base ID)."""
    locking.require_locked(cell)
    mirrors = debian.host_mirrors(options.mirror, options.security_mirror)
    base_id = base.ensure_base(client, cell, mirrors)
    ca = buildenv.ca_bundle(options.ca_cert)
    if ca:
        say(f"using the CA bundle {ca} in builder stages only")
    STATE.mkdir(parents=True, exist_ok=True)
    context = STATE / f"context-{cell.id}.tar"
    write_context(cell, ca, context, gitinfo.source_date_epoch())
    try:
        yield context, base_id
    finally:
        context.unlink(missing_ok=True)


def base_layers(client: docker.DockerClient, base_id: str) -> set[str]:
    """The first layer of a base: what every image built on it starts with."""
    return {client.images.get(base_id).attrs["RootFS"]["Layers"][0]}


def build(client: docker.DockerClient, images: list[Image], options: BuildOptions) -> list[BuildResult]:
    """Build images cell by cell (base first), print the summary table."""
    results: list[BuildResult] = []
    cells = {i.cell.id: i.cell for i in images}
    bases: set[str] = set()
    for cell in cells.values():
        with prepared(client, cell, options) as (context, base_id):
            bases |= base_layers(client, base_id)
            for image in (i for i in images if i.cell.id == cell.id):
                results.append(build_image(client, image, context, base_id, options))
    reclaimed = prune(client, bases)
    if reclaimed:
        say(f"pruned replaced images of this project ({human_bytes(reclaimed)})")
    print(table(["cell", "variant", "image ID", "size", "time", "of which normalize"],
                [[r.image.cell.id, r.image.variant, r.image_id[7:19], human_bytes(r.size),
                  f"{r.seconds:.0f} s", f"{r.normalize_seconds:.0f} s"] for r in results]))
    return results
