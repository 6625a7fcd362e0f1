"""`build.py build`: build images on the engine with live progress; tag only on success."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors

from pytorch_cuda.base import bootstrap
from pytorch_cuda.build import buildenv, wheelhouse
from pytorch_cuda.build.context import write_context
from pytorch_cuda.build.stream import BuildOutput
from pytorch_cuda.core import gitinfo, names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import human_bytes, say, table
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import Cell, Image
from pytorch_cuda.repro import roundtrip

LEAVE_OUT_MARK = "leave-out: "  # how templates/files/build/leave-out reports a failed check (only that)
APT_GONE_RE = re.compile(r"Version '([^']+)' for '([^']+)' was not found")


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
    snapshot_mirror: str | None = None
    quiet: bool = False
    no_cache: bool = False
    normalize: bool = True
    wheelhouse: Path = wheelhouse.DEFAULT


def build_labels(image: Image, base_id: str) -> dict[str, str]:
    """Labels only the build knows: creation time, the commit and the base's digest (never the
    checkout's path or remote, so every clone of a commit builds the same image)."""
    epoch = gitinfo.source_date_epoch()
    return {
        "org.opencontainers.image.created":
            datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.revision": gitinfo.revision(),
        "org.opencontainers.image.base.digest": base_id,
    }


def run_build(client: docker.DockerClient, context: BinaryIO, dockerfile: str,
              output: BuildOutput, **options: Any) -> BuildOutput:
    """Send a context tar to the engine's classic builder and follow its output.

    `options` go to the engine's build API (buildargs, labels, nocache, cache_from, tag);
    every build container can reach the wheelhouse by name. An API error ends up in
    `output.error` like an error inside the stream.
    """
    try:
        output.follow(client.api.build(
            fileobj=context, custom_context=True, dockerfile=dockerfile, rm=True, forcerm=True,
            pull=False, decode=True, extra_hosts=wheelhouse.extra_hosts(client), **options))
    except docker.errors.APIError as exc:
        output.error = output.error or str(exc.explanation or exc)
    return output


def build_raw(client: docker.DockerClient, image: Image, context: Path, base_id: str,
              options: BuildOptions) -> tuple[str, dict[str, str]]:
    """Run the engine's build of one image; return the raw image ID and each stage's image."""
    def step(number: str, total: str, stage: str, instruction: str) -> None:
        say(f"{image.name} step {number}/{total} [{stage}]: {instruction[:100]}")

    def line(text: str) -> None:
        print(f"    {text}", flush=True)

    output = BuildOutput(on_step=step, on_line=None if options.quiet else line)
    with context.open("rb") as ctx:
        run_build(client, ctx, names.dockerfile_path(image), output,
                  buildargs=buildenv.build_args(),
                  labels=build_labels(image, base_id), nocache=options.no_cache)
    if output.error or not output.image_id:
        raise UserError(_failure(image, output))
    return output.image_id, output.stage_images


def build_cell_images(client: docker.DockerClient, images: list[Image], context: Path,
                      base_id: str, options: BuildOptions) -> list[BuildResult]:
    """Build the images of one cell, normalize them together (one save and one load, so the
    heavy layers they share are copied once) and tag each only when all of that succeeded.

    When an image fails to build, the build stops there: the images built before it are
    still normalized and tagged, then the failure is raised; the failed image keeps no tag."""
    raws: dict[str, tuple[Image, float]] = {}
    failure: UserError | None = None
    try:
        for image in images:
            started = time.monotonic()
            say(f"building {image.name} -> {image.ref()}")
            try:
                raw_id, stages = build_raw(client, image, context, base_id, options)
            except UserError as exc:
                _untag(client, image)
                failure = exc
                break
            keep_cache(client, image, raw_id, stages)
            raws[raw_id] = (image, time.monotonic() - started)
        finals = {raw_id: (raw_id, 0.0) for raw_id in raws}
        if options.normalize and raws:
            since = roundtrip.since_of(images[0].cell)
            done = roundtrip.normalize_all(
                client, {raw_id: image.name for raw_id, (image, _) in raws.items()}, since)
            finals = {raw_id: (n.image_id, n.seconds) for raw_id, n in done.items()}
    except (KeyboardInterrupt, UserError):
        for image in images:
            _untag(client, image)
        raise
    results = []
    for raw_id, (image, built_seconds) in raws.items():
        final_id, normalize_seconds = finals[raw_id]
        final = client.images.get(final_id)
        for tag in image.tags:
            final.tag(image.cell.matrix.repository, tag)
        say(f"built {image.name} {final.id[:19]} ({human_bytes(final.attrs['Size'])}, "
            f"build {built_seconds:.0f} s + normalize {normalize_seconds:.0f} s); "
            f"tagged {', '.join(image.tags)}")
        results.append(BuildResult(image, final.id, final.attrs["Size"],
                                   built_seconds + normalize_seconds, normalize_seconds))
    if failure is not None:
        raise failure
    return results


def keep_cache(client: docker.DockerClient, image: Image, raw_id: str,
               stages: dict[str, str]) -> None:
    """Tag the raw build and its side stage (the variant env, where it has one): they are the
    build cache. A side stage's tag from an older Dockerfile that no longer has it is removed."""
    repository = names.cache_repository(image.cell)
    client.images.get(raw_id).tag(repository, names.cache_tag(image))
    stage = f"{image.variant}-env"
    if stage in stages:
        client.images.get(stages[stage]).tag(repository, names.cache_tag(image, stage))
        return
    try:
        client.images.remove(f"{repository}:{names.cache_tag(image, stage)}", noprune=True)
    except docker.errors.ImageNotFound:
        pass


def _failure(image: Image, stream: BuildOutput) -> str:
    text = "\n".join(stream.tail)
    left_out = [line for line in stream.tail if line.startswith(LEAVE_OUT_MARK)]
    if left_out:
        return (f"{image.name}: variants.prod.leave_out in versions.yaml: "
                f"{left_out[-1].removeprefix(LEAVE_OUT_MARK)}")
    gone = APT_GONE_RE.search(text + (stream.error or ""))
    if gone:
        return (f"{image.name}: apt package {gone.group(2)}={gone.group(1)} is not in the archive "
                f"the build reads; use a snapshot mirror (--snapshot-mirror URL or "
                f"{debian.SNAPSHOT_ENV}) or move the pins with 'python build.py lock'")
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


def prune(client: docker.DockerClient, bases: set[str], keep: frozenset[str] = frozenset()) -> int:
    """Remove this project's dangling images (replaced builds and their stages), except the IDs in
    `keep`; return bytes."""
    reclaimed = 0
    for image in client.images.list(filters={"dangling": True}):
        if image.id in keep:
            continue
        layers = image.attrs["RootFS"].get("Layers") or []
        if (layers and layers[0] in bases) or names.label("cell") in (image.labels or {}):
            try:
                client.images.remove(image.id)
                reclaimed += image.attrs["Size"]
            except docker.errors.APIError:
                continue
    return reclaimed


def archive(cell: Cell, options: BuildOptions) -> debian.Mirrors:
    """The Debian archive a build of the cell reads, by the options, the environment or the host."""
    return debian.resolve_mirrors(cell.matrix.snapshot, [cell.os.suite] if cell.os.suite else [],
                                  options.mirror, options.security_mirror, options.snapshot_mirror)


@contextmanager
def prepared(client: docker.DockerClient, cell: Cell, options: BuildOptions) -> Iterator[tuple[Path, str]]:
    """A cell's lock checked, its base present, its wheels in the wheelhouse and served, and its
    build context written: (context, base ID)."""
    locking.require_locked(cell)
    mirrors = archive(cell, options)
    locking.check_apt_pins(cell.os, mirrors)
    base_id = bootstrap.ensure_base(client, cell, mirrors)
    ca = buildenv.ca_bundle(options.ca_cert)
    if ca:
        say(f"using the CA bundle {ca} on this host only (downloading wheels)")
    wheelhouse.fill(cell, ca, mirrors, options.wheelhouse)
    STATE.mkdir(parents=True, exist_ok=True)
    context = STATE / f"context-{cell.id}.tar"
    write_context(cell, context, gitinfo.source_date_epoch())
    try:
        with wheelhouse.serving(client, options.wheelhouse):
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
            results += build_cell_images(client, [i for i in images if i.cell.id == cell.id],
                                         context, base_id, options)
    reclaimed = prune(client, bases)
    if reclaimed:
        say(f"pruned replaced images of this project ({human_bytes(reclaimed)})")
    print(table(["cell", "variant", "image ID", "size", "time", "of which normalize"],
                [[r.image.cell.id, r.image.variant, r.image_id[7:19], human_bytes(r.size),
                  f"{r.seconds:.0f} s", f"{r.normalize_seconds:.0f} s"] for r in results]))
    return results
