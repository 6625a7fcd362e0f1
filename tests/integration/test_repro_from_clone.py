"""A published image verifies from a fresh clone: publish, forget it locally, rebuild, compare.

One no-cache rebuild of the default prod image, so it runs in `make repro` (`--repro`), not in
the main suite. It proves three things at once: another clone of the same commit (another path,
another remote) rebuilds the image the first clone built; the image that reached a registry is
that image; and `verify-repro --against REGISTRY/IMAGE@DIGEST` works where the image is not local.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from pytorch_cuda.core import names
from pytorch_cuda.core.paths import ROOT, VERSIONS
from pytorch_cuda.matrix import load_matrix

from .localregistry import LocalRegistry

NAMESPACE = "ptc-repro"
FREE_FOR_REBUILD = 40_000_000_000


@pytest.fixture
def repro_enabled(request: pytest.FixtureRequest) -> None:
    if not request.config.getoption("--repro"):
        pytest.skip("the rebuild from a fresh clone runs in `make repro` (pytest --repro)")


def _driver(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run([sys.executable, "build.py", *argv], cwd=cwd, env=env, text=True,
                          capture_output=True, check=False)


def _free_disk(client: docker.DockerClient, image) -> None:
    """A no-cache rebuild needs room (its own stages, a saved and a normalized archive): when the
    engine's disk runs short, drop this cell's build cache, which that rebuild cannot use."""
    root = client.info().get("DockerRootDir", "/var/lib/docker")
    if shutil.disk_usage(root).free >= FREE_FOR_REBUILD:
        return
    for tag in client.images.list(names.cache_repository(image.cell)):
        for ref in tag.tags:
            if ref.split(":", 1)[1].startswith(image.cell.id):
                client.images.remove(ref, noprune=False)


def test_published_prod_image_verifies_from_a_fresh_clone(repro_enabled, client: docker.DockerClient,
                                                          registry: LocalRegistry, tmp_path: Path):
    image = load_matrix(VERSIONS).default_cell.image("prod")
    local = client.images.get(image.ref())
    target = f"{registry.address}/{NAMESPACE}"

    published = _driver(ROOT, "publish", image.cell.id, "--variant", "prod", "--registry", target)
    assert published.returncode == 0, published.stderr[-3000:]
    repository = f"{NAMESPACE}/{image.cell.matrix.repository}"
    digest = registry.digest(repository, image.full_tag)
    assert digest, f"{repository}:{image.full_tag} is not in the registry"

    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "remote", "set-url", "origin",
                    "https://example.org/someone/fork.git"], check=True)
    client.images.remove(local.id, force=True)  # as on a machine that never had it
    _free_disk(client, image)
    try:
        verified = _driver(clone, "verify-repro", image.cell.id, "--variant", "prod",
                           "--against", f"{target}/{image.cell.matrix.repository}@{digest}")
        print(verified.stdout)
        assert verified.returncode == 0, (verified.stdout + verified.stderr)[-4000:]
        assert f"{image.name}: reproducible: image {local.id}" in verified.stdout
    finally:  # give the machine its image back (the same ID), pulled again if need be
        published = f"{target}/{image.cell.matrix.repository}@{digest}"
        try:
            pulled = client.images.get(published)
        except docker.errors.ImageNotFound:
            pulled = client.images.pull(published)
        for tag in image.tags:
            pulled.tag(image.cell.matrix.repository, tag)
        assert client.images.get(image.ref()).id == local.id
