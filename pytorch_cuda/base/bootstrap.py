"""The OS base image: bootstrapped from the Debian archive with mmdebstrap, or pulled by digest.

A bootstrapped base holds the packages every image runs with (the matrix's runtime apt packages, at
their locked versions) and no package manager: mmdebstrap installs it to set the base up and the
base purges it, so no later step deletes a file of a shared layer (prod needs no apt) and every
layer is the same in every build. dev installs it back from its locked .deb."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.host import ensure_tool
from pytorch_cuda.core.paths import ROOT, STATE
from pytorch_cuda.core.progress import say
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import Cell

INCLUDE = ("ca-certificates",)
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
)
INPUTS_LABEL = names.label("base-inputs")
STOCK_SUFFIX = "-stock"


def ensure_base(client: docker.DockerClient, cell: Cell, mirrors: debian.Mirrors,
                stock: bool = False) -> str:
    """Make the cell's base image present; return its image ID. `stock`: the plain bootstrap a
    hand-written Dockerfile starts from instead (apt kept, no runtime packages; the bench's
    naive image), tagged STOCK_SUFFIX after the base's tag."""
    ref = names.base_ref(cell) + (STOCK_SUFFIX if stock else "")
    if cell.os.base_image:
        return _pull_by_digest(client, ref)
    epoch = cell.os.bootstrap_epoch or 0
    purge = "" if stock else names.PACKAGE_MANAGER
    inputs = {
        "suite": cell.os.suite, "variant": cell.os.bootstrap_variant,
        "include": list(INCLUDE) if stock else includes(cell),
        "purge": purge, "shadow": names.SHADOW_DATES,
        "dpkg": DPKG_OPTS, "sources": mirrors.sources(cell.os.suite or ""), "epoch": epoch,
        "volatile": names.VOLATILE_FILES,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    try:
        image = client.images.get(ref)
        if image.labels.get(INPUTS_LABEL) == key:
            say(f"base {ref} is current ({image.id[:19]})")
            return image.id
    except docker.errors.ImageNotFound:
        pass
    return _bootstrap(client, cell, mirrors, ref, key, epoch, inputs["include"], purge)


def includes(cell: Cell) -> list[str]:
    """What the bootstrap installs besides the variant's packages: INCLUDE, the runtime apt
    packages and the package manager, the last two at their locked versions."""
    pins = locking.apt_pins(cell.os)
    wanted = [*cell.matrix.apt_packages(cell.os, "runtime"), names.PACKAGE_MANAGER]
    unpinned = [name for name in wanted if name not in pins]
    if unpinned or not locking.package_manager_deb(cell.os):
        path = locking.apt_lock_path(cell.os).relative_to(ROOT)
        raise UserError(f"{path} has no pin (with its sha256 for {names.PACKAGE_MANAGER}) for "
                        f"{', '.join(unpinned) or names.PACKAGE_MANAGER}: run 'python build.py lock'")
    return [*INCLUDE, *(f"{name}={pins[name]}" for name in wanted)]


def _pull_by_digest(client: docker.DockerClient, ref: str) -> str:
    if "@sha256:" not in ref:
        raise UserError(f"base image {ref} is not pinned by digest")
    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        pass
    say(f"pulling base {ref}")
    try:
        return client.images.pull(ref).id
    except docker.errors.APIError as exc:
        raise UserError(f"cannot pull base image {ref}: {exc.explanation}") from None


def _bootstrap(client: docker.DockerClient, cell: Cell, mirrors: debian.Mirrors, ref: str,
               key: str, epoch: int, include: list[str], purge: str) -> str:
    """Bootstrap a rootfs with mmdebstrap and load it as an image with a fixed config."""
    mmdebstrap = ensure_tool("mmdebstrap", "mmdebstrap")
    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=STATE, prefix="base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        cmd = [mmdebstrap, f"--variant={cell.os.bootstrap_variant}", "--mode=root",
               "--format=tar", f"--include={','.join(include)}",
               *(f"--dpkgopt={o}" for o in DPKG_OPTS),
               "--aptopt=Acquire::Languages \"none\"",
               *([f"--customize-hook=chroot \"$1\" dpkg --purge {purge}"] if purge else []),
               f"--customize-hook=cd \"$1\" && sed -i -E {shlex.quote(names.SHADOW_DATES)} "
               "etc/shadow && rm -rf " + " ".join(
                   path.lstrip("/") for path in names.VOLATILE_FILES),
               str(cell.os.suite), str(rootfs), *mirrors.sources(cell.os.suite or "")]
        say(f"bootstrapping {ref} from the Debian archive ({cell.os.suite}, mmdebstrap)")
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise UserError(f"mmdebstrap failed for {cell.os.suite}:\n{tail}")
        archive = Path(tmp) / "image.tar"
        image_id = write_image_archive(rootfs, archive, ref, epoch, {INPUTS_LABEL: key},
                                       f"mmdebstrap {cell.os.bootstrap_variant} {cell.os.suite}")
        with archive.open("rb") as data:
            client.images.load(data)
    say(f"base {ref} loaded ({image_id[:19]})")
    return image_id


def write_image_archive(layer: Path, archive: Path, ref: str, epoch: int,
                        labels: dict[str, str], created_by: str) -> str:
    """Write a one-layer `docker load` archive with a deterministic config; return the image ID."""
    digest = hashlib.sha256()
    with layer.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Env": [f"PATH={names.SYSTEM_PATH}"], "Cmd": ["bash"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created": created, "created_by": created_by}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [ref],
                 "Layers": [f"{digest.hexdigest()}/layer.tar"]}]
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, f"{image_id}.json", config_bytes, epoch)
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode(), epoch)
        info = tar.gettarinfo(str(layer), f"{digest.hexdigest()}/layer.tar")
        info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
        with layer.open("rb") as fh:
            tar.addfile(info, fh)
    return f"sha256:{image_id}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    tar.addfile(info, io.BytesIO(data))
