"""Build time: cold builds of the default cell against a naive Dockerfile, and rebuilds.

* cold: the cell's wheels downloaded into an empty wheelhouse, dev with no build
  cache at all (the base image is kept), then prod with only what the dev build
  just made as its cache (`cache_from`), as a first `make image` on a fresh
  machine would; versus a naive single-stage
  Dockerfile (below), also with no cache, on the stock base a hand-written
  image starts from (bootstrapped like the project's, with apt and nothing
  else). Runs alternate.
* no-op: dev and prod again from the unchanged context, cache on.
* dev-only change: dev with one LABEL added at the top of its final stage,
  so every step of that stage runs again; the build output is searched for
  pip's "Downloading" lines from an index (no Python package may come again).

Every image is tagged under the bench repository and removed at the end, with
every intermediate image these builds created; the project's own tags and
their parents are never touched.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pytorch_cuda.base import bootstrap
from pytorch_cuda.build import buildenv, builder, wheelhouse
from pytorch_cuda.build.stream import BuildOutput
from pytorch_cuda.core import names
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import human_bytes, say
from pytorch_cuda.repro import roundtrip

from . import sizes
from .session import BenchError, Session
from .stats import ratio, rotated, summary

DEV_STAGE_RE = re.compile(r"^FROM \S+ AS dev[ \t]*$", re.MULTILINE | re.IGNORECASE)
DISK_NEEDED = 30_000_000_000  # a cold dev image, its saved raw copy and its normalized copy

NAIVE_DOCKERFILE = """\
FROM {base}
RUN apt-get update && apt-get install -y python{python} python{python}-venv \\
 && rm -rf /var/lib/apt/lists/*
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
COPY ca.crt /tmp/ca.crt
RUN python{python} -m venv /venv \\
 && if [ -s /tmp/ca.crt ]; then export PIP_CERT=/tmp/ca.crt; fi \\
 && /venv/bin/pip install --no-cache-dir {torch}
ENV PATH=/venv/bin:$PATH
"""


@dataclass
class Built:
    """One build through the engine's API, as this module follows it."""

    name: str
    tag: str
    image_id: str = ""
    seconds: float = 0.0
    output: BuildOutput = field(default_factory=BuildOutput)  # steps, cache hits, downloads
    own_cache: bool = False  # cache hits can only be images this run made (cache_from)
    normalize_seconds: float = 0.0
    normalize_saved: bool = False  # normalization saved the raw build (its layers were not all known)
    final_id: str = ""  # the normalized image where the project normalizes, else image_id

    @property
    def total_seconds(self) -> float:
        return self.seconds + self.normalize_seconds


def build(session: Session, context: bytes, dockerfile: str, name: str, *, nocache: bool,
          buildargs: dict[str, str], labels: dict[str, str] | None = None,
          cache_from: list[str] | None = None) -> Built:
    """Build one image from a context tar through the builder, tagged `bench:name`; time it."""
    built = Built(name, session.bench_tag(name), own_cache=bool(cache_from))

    def step(number: str, total: str, _stage: str, instruction: str) -> None:
        say(f"  {name} step {number}/{total}: {instruction[:90]}")

    output = BuildOutput(on_step=step)
    say(f"building {name} ({'no cache' if nocache else 'cache on'}"
        f"{', cache from this run only' if cache_from else ''})")
    session.track_image(built.tag)
    started = time.monotonic()
    try:
        builder.run_build(session.client, io.BytesIO(context), dockerfile, output,
                          tag=built.tag, buildargs=buildargs, labels=labels or {},
                          nocache=nocache, cache_from=cache_from)
    finally:
        # images restored from this run's own cache (cache_from) are this run's too
        for layer in [*output.created, *(output.reused if built.own_cache else [])]:
            session.track_image(layer)
    built.seconds = time.monotonic() - started
    built.image_id = output.image_id or ""
    built.output = output
    if output.error or not built.image_id:
        tail = "\n".join(output.tail)
        raise BenchError(f"building {name} failed: {(output.error or 'no image').strip()}\n"
                         f"--- last lines of the build output ---\n{tail}")
    say(f"built {name} in {built.seconds:.1f} s ({built.output.cached_steps}/{built.output.steps} steps "
        f"from cache, {len(built.output.python_downloads)} pip download lines)")
    return built


NORMALIZES = builder.BuildOptions().normalize


def normalize(session: Session, *builds: Built) -> None:
    """Normalize raw builds together as `build.py build` does (with its shortcuts), timing it;
    each build gets its share of the time (see `roundtrip.normalize_all`)."""
    for built in builds:
        built.final_id = built.image_id
    if not NORMALIZES:
        return
    done = roundtrip.normalize_all(session.client, {b.image_id: b.name for b in builds},
                                   roundtrip.since_of(session.cell))
    for built in builds:
        built.normalize_seconds = done[built.image_id].seconds
        built.normalize_saved = done[built.image_id].saved
        built.final_id = done[built.image_id].image_id
        session.track_image(built.final_id)


def discard(session: Session, builds: list[Built]) -> None:
    """Remove the images of some builds now (disk space between runs).

    Cache hits are removed only where they can be this run's own (cache_from builds):
    elsewhere they are the project's cached stages, which must stay.
    """
    refs = [r for b in builds for r in (*b.output.created, *(b.output.reused if b.own_cache else ()), b.tag,
                                         *([b.final_id] if b.final_id else []))]
    session.discard(refs)


def with_dev_change(context: bytes, dockerfile: str, line: str) -> bytes:
    """A copy of a context tar whose `dockerfile` has `line` right after `FROM ... AS dev`."""
    out = io.BytesIO()
    found = False
    with tarfile.open(fileobj=io.BytesIO(context)) as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            handle = src.extractfile(member) if member.isfile() else None
            data = handle.read() if handle else None
            if member.name == dockerfile and data is not None:
                text = data.decode()
                match = DEV_STAGE_RE.search(text)
                if not match:
                    raise BenchError(f"{dockerfile} has no `FROM ... AS dev` line to change after")
                text = text[:match.end()] + "\n" + line + text[match.end():]
                data = text.encode()
                member.size = len(data)
                found = True
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    if not found:
        raise BenchError(f"the build context has no {dockerfile}")
    return out.getvalue()


def naive_context(session: Session, ca: bytes, base: str) -> tuple[bytes, str]:
    """The naive single-stage Dockerfile on `base` (with the host CA bundle for pip) as a context
    tar."""
    cell = session.cell
    text = NAIVE_DOCKERFILE.format(base=base, python=cell.os.python, torch=cell.torch_requirement)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("Dockerfile", text.encode()), ("ca.crt", ca)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), text


def _check_disk(session: Session) -> None:
    """Warn when a cold build (raw image, saved and normalized copies) may not fit."""
    for folder in (Path(tempfile.gettempdir()), STATE):
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < DISK_NEEDED:
            session.notes.append(f"only {human_bytes(free)} was free in {folder} at the start of "
                                 f"the build part; a cold build needs about "
                                 f"{human_bytes(DISK_NEEDED)}")
            say(f"warning: {session.notes[-1]}")




def _times(built: list[Built]) -> dict:
    return {"seconds": summary([b.total_seconds for b in built]),
            "build_s": summary([b.seconds for b in built]),
            "normalize_s": summary([b.normalize_seconds for b in built])}


def measure(session: Session, runs: int, build_runs: int) -> dict:
    """No-op and dev-only rebuilds, then cold project builds alternating with naive ones."""
    cell = session.cell
    _check_disk(session)
    options = builder.BuildOptions()
    ca = buildenv.ca_bundle(options.ca_cert)
    args = buildenv.build_args()
    result: dict = {"runs": runs, "build_runs": build_runs, "normalizes": NORMALIZES}
    with builder.prepared(session.client, cell, options) as (path, base_id):
        context = path.read_bytes()
        labels = {img.variant: builder.build_labels(img, base_id) for img in (session.dev, session.prod)}
        _rebuilds(session, result, context, args, labels, runs, build_runs)
    result.update(_cold(session, context, ca, args, labels, build_runs))
    return result


def _rebuilds(session: Session, result: dict, context: bytes, args: dict[str, str],
              labels: dict[str, dict[str, str]], runs: int, build_runs: int) -> None:
    """No-op rebuilds of both variants and rebuilds of dev after a dev-only change."""
    cell = session.cell
    noop: dict[str, list[Built]] = {"dev": [], "prod": []}
    for turn in range(runs):
        for variant in rotated(["dev", "prod"], turn):
            image = cell.image(variant)
            got = build(session, context, names.dockerfile_path(image), f"noop-{variant}-{turn}",
                        nocache=False, buildargs=args, labels=labels[variant])
            normalize(session, got)
            noop[variant].append(got)
            discard(session, [got])
    result["noop"] = {variant: {
        **_times(built), "steps": built[-1].output.steps, "cached_steps": built[-1].output.cached_steps,
        "same_image_as_tagged": built[-1].final_id == session.image_id(cell.image(variant).ref()),
        "python_download_lines": len(built[-1].output.python_downloads),
    } for variant, built in noop.items()}

    changes: list[Built] = []
    for turn in range(build_runs):
        line = f'LABEL {names.label("bench-change")}="{turn}-{time.time_ns()}"'
        changed = with_dev_change(context, names.dockerfile_path(session.dev), line)
        got = build(session, changed, names.dockerfile_path(session.dev), f"devchange-{turn}",
                    nocache=False, buildargs=args, labels=labels["dev"])
        normalize(session, got)
        changes.append(got)
        discard(session, [got])
    result["dev_change"] = {
        **_times(changes),
        "change": f'LABEL {names.label("bench-change")}="<run>-<time>" inserted after '
                  "`FROM runtime AS dev`",
        "steps": changes[-1].output.steps, "rebuilt_steps": changes[-1].output.steps - changes[-1].output.cached_steps,
        "python_download_lines": sum(len(b.output.python_downloads) for b in changes),
        "python_download_examples": [x for b in changes for x in b.output.python_downloads][:10],
        "apt_fetches": changes[-1].output.apt_fetches,
        "normalize_saved": changes[-1].normalize_saved,
    }


def _cold(session: Session, context: bytes, ca: Path | None, args: dict[str, str],
          labels: dict[str, dict[str, str]], build_runs: int) -> dict:
    """Cold project builds (from an empty wheelhouse) alternating with naive builds."""
    cell = session.cell
    result: dict = {}
    mirrors = builder.archive(cell, builder.BuildOptions())
    bootstrap.ensure_base(session.client, cell, mirrors, stock=True)
    naive_ctx, naive_text = naive_context(session, ca.read_bytes() if ca else b"",
                                          names.base_ref(cell) + bootstrap.STOCK_SUFFIX)
    cold: list[tuple[Built, Built]] = []
    wheels_s: list[float] = []
    naive: list[Built] = []
    for turn in range(build_runs):
        last = turn == build_runs - 1
        for kind in rotated(["project", "naive"], turn):
            if kind == "naive":
                got = build(session, naive_ctx, "Dockerfile", f"naive-{turn}", nocache=True,
                            buildargs=args)
                naive.append(got)
                if not last:
                    discard(session, [got])
                continue
            with tempfile.TemporaryDirectory(dir=STATE, prefix="bench-wheelhouse-") as tmp:
                started = time.monotonic()
                wheelhouse.fill(cell, ca, mirrors, Path(tmp))
                wheels_s.append(time.monotonic() - started)
                with wheelhouse.serving(session.client, Path(tmp)):
                    dev = build(session, context, names.dockerfile_path(session.dev),
                                f"cold-dev-{turn}", nocache=True, buildargs=args,
                                labels=labels["dev"])
                    prod = build(session, context, names.dockerfile_path(session.prod),
                                 f"cold-prod-{turn}", nocache=False, buildargs=args,
                                 labels=labels["prod"], cache_from=dev.output.created)
            normalize(session, dev, prod)
            cold.append((dev, prod))
            discard(session, [prod, dev])
    totals = [w + d.total_seconds + p.total_seconds for w, (d, p) in zip(wheels_s, cold, strict=True)]
    result["cold"] = {
        "total_s": summary(totals),
        "wheels_s": summary(wheels_s),
        "build_s": summary([d.seconds + p.seconds for d, p in cold]),
        "normalize_s": summary([d.normalize_seconds + p.normalize_seconds for d, p in cold]),
        "dev": _times([d for d, _ in cold]), "prod": _times([p for _, p in cold]),
        "prod_cached_steps": cold[-1][1].output.cached_steps, "prod_steps": cold[-1][1].output.steps,
        "reproduces_tagged": {
            variant: built.final_id == session.image_id(cell.image(variant).ref())
            for variant, built in (("dev", cold[-1][0]), ("prod", cold[-1][1]))},
        "normalize_saved": {"dev": cold[-1][0].normalize_saved, "prod": cold[-1][1].normalize_saved},
    }
    result["naive"] = {"seconds": summary([b.seconds for b in naive]), "dockerfile": naive_text}
    result["ratio_cold_vs_naive"] = ratio(result["cold"]["total_s"]["median"],
                                          result["naive"]["seconds"]["median"])
    result["ratio_cold_build_only_vs_naive"] = ratio(result["cold"]["build_s"]["median"],
                                                     result["naive"]["seconds"]["median"])
    say("measuring the naive image's size")
    layers = sizes.layer_sizes(session.client, [naive[-1].tag])
    result["naive_image"] = sizes.image_figures(session.client, naive[-1].tag, layers)
    discard(session, naive[-1:])
    return result
