"""The build driver on the real engine: a failed build leaves no tag behind."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

from pytorch_cuda.core import gitinfo, names
from pytorch_cuda.repro import known

from .conftest import (CHECK_ENV, CHECK_MOUNTS, checks_command, clone_project, failing_build,
                       tag_targets, write_expect)
from .containers import TrackedContainer


def test_broken_package_pin_fails_and_leaves_no_tag(prod_image, client, tmp_path):
    """A lock pinning a version that does not exist: exit 2, the step named, no tag left."""
    clone = clone_project(tmp_path / "clone")
    lock = clone / "locks" / prod_image.cell.id / "prod.txt"
    text = lock.read_text()
    assert "aiohttp==" in text
    lock.write_text(text.replace("aiohttp==", "aiohttp==0.0.0.dev0+", 1))
    proc, left = failing_build(client, prod_image, clone)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{prod_image.name} failed at step" in proc.stderr, proc.stderr[-3000:]
    assert "[prod-env]" in proc.stderr and "no tag was applied" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not left, f"tags left behind after a failed build: {left}"


def test_a_pin_changed_by_hand_is_named(prod_image, client, tmp_path):
    """An image whose numpy was altered after the build fails the pin check, naming numpy."""
    derived = "pytorch-cuda-broken:numpy"
    dockerfile = (
        f"FROM {prod_image.ref()}\nUSER 0\n"
        "RUN sed -i 's/^Version: 2.3.3$/Version: 2.3.2/' "
        "/opt/venv/lib/python*/site-packages/numpy-2.3.3.dist-info/METADATA\n")
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=derived, rm=True)
    try:
        expect = write_expect(prod_image, tmp_path)
        result = TrackedContainer(client, derived).run_json(
            checks_command("all", "--expect", "/expect/expect.json"), entrypoint=[],
            environment=CHECK_ENV,
            volumes={**CHECK_MOUNTS, str(expect.parent): {"bind": "/expect", "mode": "ro"}})
        failed = [p for p in result["pins"] if not p["passed"]]
        assert [(p["name"], p["expected"], p["actual"]) for p in failed] == [
            ("packages.numpy", "2.3.3", "2.3.2")]
    finally:
        client.images.remove(image.id, force=True)


def test_an_apt_pin_the_mirror_never_had_stops_before_building(prod_image, client, tmp_path):
    """A pin to a version the live mirror never had: exit 2 before any build, both ways out named."""
    clone = clone_project(tmp_path / "clone")
    lock = clone / "locks" / prod_image.cell.os.name / "apt.txt"
    lock.write_text(lock.read_text().replace("\ntini=", "\ntini=0.0.0-never+", 1))
    before = tag_targets(client, prod_image)
    env = {k: v for k, v in os.environ.items() if k != "PTC_DEBIAN_SNAPSHOT_MIRROR"}
    proc = subprocess.run(
        [sys.executable, "build.py", "build", prod_image.cell.id, "--variant", "prod", "--quiet"],
        cwd=clone, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: locks/{prod_image.cell.os.name}/apt.txt: tini=0.0.0-never+")
    assert " is not in the Debian mirror " in error
    assert "--snapshot-mirror URL or PTC_DEBIAN_SNAPSHOT_MIRROR" in error
    assert "'python build.py lock'" in error
    assert "using the live Debian mirror" in proc.stderr  # said once, before anything else
    assert "step 1/" not in proc.stderr
    assert tag_targets(client, prod_image) == before


def test_the_config_rebuilt_without_a_save_is_the_normalized_one(any_image, client):
    """The raw build kept as build cache, read through inspect and history only, normalizes to
    the tagged image's config byte for byte: what lets a rebuild of known layers skip the save."""
    raw = client.images.get(f"{names.cache_repository(any_image.cell)}:{names.cache_tag(any_image)}")
    tagged = client.images.get(any_image.ref())
    config = known.normalized_config(client, raw.id, tagged.attrs["RootFS"]["Layers"],
                                     gitinfo.source_date_epoch())
    assert config is not None
    assert "sha256:" + hashlib.sha256(config).hexdigest() == tagged.id
