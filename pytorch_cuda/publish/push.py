"""`build.py publish`: push tested images to a registry, full tags first, then aliases.

- Only images whose ID has a passing test record (records.py) are published.
- Full tags are immutable. Before anything is pushed, each full tag's manifest is read from the
  registry: when it exists, the image it describes (its config digest, which is the engine's image
  ID) must be the local image, else publishing stops naming both. A manifest digest cannot be known
  before a push (it depends on how layers get compressed), the image ID can, and it identifies the
  content exactly. So a refused publish pushes nothing and leaves no tag behind.
- The engine pushes the full tags (credentials: `docker login`, or PTC_REGISTRY_USER and
  PTC_REGISTRY_PASSWORD); each one is then read back and checked against the pushed digest and the
  image ID. Only then are aliases (and the dated tag <full>-YYYYMMDD) moved, by putting the verified
  manifest bytes under them through the registry API, so an alias never names an image whose full
  tag is missing, even after an interruption; publishing again finishes an interrupted release.
- The release date is --date, else the day of SOURCE_DATE_EPOCH, else today (UTC).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import docker
import docker.errors
import requests

from pytorch_cuda.core import gitinfo, names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import human_bytes, say, table
from pytorch_cuda.matrix import Image
from pytorch_cuda.publish import pkgdiff, release, retry
from pytorch_cuda.publish.registry import (
    ENV_SOURCE,
    Credentials,
    Manifest,
    RegistryClient,
    Target,
    find_credentials,
    parse_target,
)
from pytorch_cuda.publish.retry import RegistryError, classify_message
from pytorch_cuda.suite import records

RELEASES = STATE / "releases"
FULL = "full"
ALIAS = "alias"
PROGRESS_EVERY = 30.0
DONE_STATUSES = ("Pushed", "Layer already exists", "Mounted from")

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """Where to publish, which date the release has, whether to add dated tags, where to record it."""

    target: Target
    date: str
    dated: bool
    manifest_dir: Path = RELEASES


@dataclass(frozen=True)
class Step:
    """One tag to put: a full tag (phase FULL) or an alias (phase ALIAS) of an image."""

    phase: str
    image: Image
    tag: str


@dataclass
class Candidate:
    """A local image on its way out, and what the registry said about it."""

    image: Image
    image_id: str
    labels: dict[str, str]
    packages: pkgdiff.Packages
    existing: Manifest | None = None
    pushed: str | None = None
    aliases: list[str] = field(default_factory=list)


def make_options(registry: str, date: str | None, dated: bool, manifest_dir: str | None) -> Options:
    """Options from the command line, checked before the engine is needed."""
    return Options(parse_target(registry), release.release_date(date), dated or bool(date),
                   Path(manifest_dir) if manifest_dir else RELEASES)


def tag_plan(images: list[Image], date: str | None) -> list[Step]:
    """Every full tag first, then every alias (and the dated tag when `date` is given)."""
    fulls = [Step(FULL, i, i.full_tag) for i in images]
    aliases = [Step(ALIAS, i, t) for i in images
               for t in [*i.aliases, *([names.dated_tag(i.full_tag, date)] if date else [])]]
    return fulls + aliases


def publish(client: docker.DockerClient, images: list[Image], options: Options) -> list[Candidate]:
    """Publish `images`; refuse untested ones and changed full tags before anything is pushed."""
    target = options.target
    candidates = {i.name: _candidate(client, i) for i in images}
    credentials = find_credentials(target.host)
    where = f"{target.host}/{_repo(target, images[0])}"
    say(f"publishing {len(images)} image(s) to {where} "
        + (f"with credentials from {credentials.source}" if credentials else "without credentials"))
    api = RegistryClient(target, credentials)
    plan = tag_plan(images, options.date if options.dated else None)
    fulls = [candidates[s.image.name] for s in plan if s.phase == FULL]
    for cand in fulls:
        _check_full(api, target, cand)
    for cand in fulls:
        if not cand.existing:
            cand.pushed = _push(client, target, cand, credentials)
    verified = {c.image.name: _verify(api, target, c) for c in fulls}
    say(f"all {len(fulls)} full tag(s) are in the registry and verified; moving aliases")
    for step in (s for s in plan if s.phase == ALIAS):
        _move_alias(api, target, candidates[step.image.name], verified[step.image.name], step.tag)
    _record(target, options, fulls, verified)
    print(table(["image", "full tag", "digest", "status", "aliases"],
                [[c.image.name, c.image.full_tag, verified[c.image.name].digest,
                  "unchanged" if c.existing else "pushed", str(len(c.aliases))] for c in fulls]))
    return fulls


def _candidate(client: docker.DockerClient, image: Image) -> Candidate:
    """The local image of `image`, refused unless its ID passed the test suite."""
    try:
        local = client.images.get(image.ref())
    except docker.errors.ImageNotFound:
        raise UserError(f"{image.ref()} is not built; run 'python build.py test {image.cell.id} "
                        "--build' first") from None
    if not records.passed(local.id, path=records.RECORDS):
        raise UserError(f"refusing to publish {image.ref()} (image {local.id}): it has no passing "
                        f"test record; run 'python build.py test {image.cell.id}' first")
    say(f"{image.name}: {image.ref()} ({local.id[:19]}) passed the tests")
    labels = local.attrs.get("Config", {}).get("Labels") or {}
    return Candidate(image, local.id, labels, pkgdiff.read_packages(client, local.id))


def _repo(target: Target, image: Image) -> str:
    """The image's repository path in the registry, e.g. team/pytorch-cuda."""
    return target.repository(image.cell.matrix.repository)


def _registry(action: Callable[[], T], what: str, outcome: str = "no alias was moved") -> T:
    """Run a registry action with retries; failures become one sentence naming `what`."""
    try:
        return retry.retry(action, what)
    except RegistryError as exc:
        tries = f" after {retry.ATTEMPTS} attempts" if exc.kind == retry.TRANSIENT else ""
        raise UserError(f"{what} failed{tries}: {exc}; {outcome}") from None


def _check_full(api: RegistryClient, target: Target, cand: Candidate) -> None:
    """Refuse when the full tag holds another image; note when it already holds this one."""
    image, repo = cand.image, _repo(target, cand.image)
    ref = f"{target.host}/{repo}:{image.full_tag}"
    existing = _registry(lambda: api.manifest(repo, image.full_tag), f"checking {ref}")
    if existing is None:
        say(f"{image.name}: {ref} is free")
        return
    if existing.config_digest != cand.image_id:
        raise UserError(
            f"refusing to publish {image.ref()}: full tags are immutable and {ref} already holds "
            f"manifest {existing.digest} (image {existing.config_digest or 'an index'}), while the "
            f"local image is {cand.image_id}; nothing was pushed")
    say(f"{image.name}: {ref} already holds this image ({existing.digest[:19]}); not pushing it again")
    cand.existing = existing


def _push(client: docker.DockerClient, target: Target, cand: Candidate,
          credentials: Credentials | None) -> str:
    """Push the full tag through the engine (retrying transient failures); return its digest."""
    repo = f"{target.host}/{_repo(target, cand.image)}"
    tag = cand.image.full_tag
    auth = ({"username": credentials.username, "password": credentials.password}
            if credentials and credentials.source == ENV_SOURCE else None)
    had_ref = f"{repo}:{tag}" in (client.images.get(cand.image_id).attrs.get("RepoTags") or [])
    client.api.tag(cand.image_id, repo, tag)
    try:
        return _registry(lambda: _push_once(client, repo, tag, auth, cand.image.name),
                         f"pushing {repo}:{tag}")
    finally:
        if not had_ref:
            client.api.remove_image(f"{repo}:{tag}", noprune=True)


class _PushProgress:
    """Follows one push stream: layers done, bytes sent, the digest, the first error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: dict[str, int] = {}
        self.done: dict[str, str] = {}
        self.digest: str | None = None
        self.error: str | None = None
        self._last = time.monotonic()

    def feed(self, message: dict) -> None:
        if "error" in message or "errorDetail" in message:
            self.error = self.error or message.get("error") or message["errorDetail"].get("message", "")
            return
        aux = message.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = aux["Digest"]
        layer, status = message.get("id"), message.get("status", "")
        if layer and status == "Pushing":
            self.sent[layer] = int(message.get("progressDetail", {}).get("current") or 0)
        elif layer and status.startswith(DONE_STATUSES) and layer not in self.done:
            self.done[layer] = status
            say(f"{self.name}: layer {layer}: {status}")
        if time.monotonic() - self._last >= PROGRESS_EVERY:
            self._last = time.monotonic()
            say(f"{self.name}: {len(self.done)} layer(s) done, {human_bytes(sum(self.sent.values()))} sent")


def _push_once(client: docker.DockerClient, repo: str, tag: str, auth: dict | None, name: str) -> str:
    """One push; every message of the stream is read and any error fails it."""
    progress = _PushProgress(name)
    say(f"{name}: pushing {repo}:{tag}")
    try:
        for message in client.api.push(repo, tag, stream=True, decode=True, auth_config=auth):
            progress.feed(message)
    except docker.errors.APIError as exc:
        text = str(exc.explanation or exc)
        raise RegistryError(text, classify_message(text)) from None
    except requests.exceptions.RequestException as exc:
        raise RegistryError(f"the engine connection failed ({exc})", retry.TRANSIENT) from None
    if progress.error:
        raise RegistryError(progress.error.strip(), classify_message(progress.error))
    if not progress.digest:
        raise RegistryError("the engine reported no manifest digest", retry.FATAL)
    new = sum(1 for s in progress.done.values() if s == "Pushed")
    say(f"{name}: pushed {repo}:{tag} = {progress.digest} ({new} new layer(s) of {len(progress.done)})")
    return progress.digest


def _verify(api: RegistryClient, target: Target, cand: Candidate) -> Manifest:
    """Read the full tag back and check it is the digest pushed and the local image ID."""
    repo = _repo(target, cand.image)
    ref = f"{target.host}/{repo}:{cand.image.full_tag}"
    manifest = _registry(lambda: api.manifest(repo, cand.image.full_tag), f"reading back {ref}")
    expected = cand.pushed or (cand.existing.digest if cand.existing else "")
    if manifest is None or manifest.digest != expected or manifest.config_digest != cand.image_id:
        found = f"{manifest.digest} (image {manifest.config_digest})" if manifest else "nothing"
        raise UserError(f"{ref} does not read back as published: the registry holds {found}, "
                        f"expected {expected} (image {cand.image_id}); no alias was moved")
    say(f"{cand.image.name}: verified {ref} = {manifest.digest}")
    return manifest


def _move_alias(api: RegistryClient, target: Target, cand: Candidate, manifest: Manifest,
                alias: str) -> None:
    """Put the verified manifest bytes under an alias and check the digest the registry reports."""
    repo = _repo(target, cand.image)
    digest = _registry(lambda: api.put_manifest(repo, alias, manifest),
                       f"moving {target.host}/{repo}:{alias}",
                       "every alias moved so far names a verified full tag; publish again to finish")
    if digest != manifest.digest:
        raise UserError(f"{target.host}/{repo}:{alias} was stored as {digest}, not {manifest.digest}")
    cand.aliases.append(alias)
    say(f"{cand.image.name}: {alias} -> {digest[:19]}")


def _record(target: Target, options: Options, published: list[Candidate],
            verified: dict[str, Manifest]) -> None:
    """Write the release manifest (JSON and Markdown) and say where."""
    repository = f"{target.host}/{_repo(target, published[0].image)}"
    images = [{
        "name": c.image.name, "cell": c.image.cell.id, "variant": c.image.variant,
        "tag": c.image.full_tag, "ref": f"{repository}:{c.image.full_tag}",
        "digest": verified[c.image.name].digest, "image_id": c.image_id,
        "aliases": c.aliases, "pins": release.pins(c.labels), "packages": c.packages,
    } for c in published]
    manifest = release.assemble(options.manifest_dir, options.date, repository, gitinfo.revision(), images)
    json_path, md_path = release.write(options.manifest_dir, manifest)
    since = f"package changes since {manifest['previous']}" if manifest["previous"] else "no earlier release"
    say(f"release manifest: {json_path} and {md_path.name} ({since})")
