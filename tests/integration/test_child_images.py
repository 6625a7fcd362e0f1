"""The README's child-image examples, built as written (from the tested prod image) and run.

The Dockerfiles are the ```dockerfile blocks of the README's "### prod" section, in order: a model
copied into the image, then a child with its own command. Only the FROM line is pointed at the
prod image under test. Every image and container made here is removed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import pytest

from .containers import TrackedContainer
from .infra import HARDENED, app_user, docker_host, proc_table

README = Path(__file__).resolve().parents[2] / "README.md"
MODEL = "mymodel"
WORKER = '''import signal
import sys
import time

import torch

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"worker ready: torch {torch.__version__}", flush=True)
while True:
    time.sleep(1)
'''


def readme_dockerfiles() -> list[str]:
    """The ```dockerfile blocks of the README's "### prod" section."""
    text = README.read_text()
    section = text.split("\n### prod\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```dockerfile\n(.*?)^```$", section, flags=re.S | re.M)


@pytest.fixture(scope="module")
def examples() -> dict[str, str]:
    """The README's two child Dockerfiles by role."""
    blocks = readme_dockerfiles()
    assert len(blocks) == 2, f'README "### prod" has {len(blocks)} dockerfile blocks, expected 2'
    return dict(zip(("model", "worker"), blocks))


def _from_tested_image(prod_image, dockerfile: str) -> str:
    """`dockerfile` with its FROM (a tag of the default prod image) naming `prod_image`."""
    first, rest = dockerfile.split("\n", 1)
    default = prod_image.cell.matrix.default_cell.image("prod")
    assert first in {f"FROM {default.ref(tag)}" for tag in default.tags}, (
        f"README example starts with {first!r}, not FROM a tag of the prod image")
    return f"FROM {prod_image.ref()}\n{rest}"


@contextmanager
def _child(client: docker.DockerClient, context: Path) -> Iterator[str]:
    """Build `context` (classic builder) under a throwaway tag; remove the image afterwards."""
    tag = f"pytorch-cuda-child-test:{uuid.uuid4().hex[:12]}"
    try:
        client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        yield tag
    finally:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def _infer(url: str, case: dict) -> dict:
    body = json.dumps({"inputs": case["inputs"]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_model_copied_into_a_child_is_served(prod_image, client, examples, model_repo, tmp_path):
    (tmp_path / "Dockerfile").write_text(_from_tested_image(prod_image, examples["model"]))
    shutil.copytree(model_repo / "controlflow", tmp_path / MODEL)
    reference = json.loads((model_repo / "reference.json").read_text())["controlflow"]
    with _child(client, tmp_path) as tag:
        helper = TrackedContainer(client, tag)
        try:
            container = helper.start(ports={"8000/tcp": ("127.0.0.1", None)}, **HARDENED)
            status = helper.wait_healthy(container)
            logs = container.logs().decode(errors="replace")[-3000:]
            assert status == "healthy", f"{prod_image.name}: the child is {status!r}:\n{logs}"
            model = docker_host(container).file(f"/models/{MODEL}/1/model.pt")
            assert (model.user, model.mode & 0o022) == ("root", 0), (
                f"{prod_image.name}: model.pt is {model.user} {oct(model.mode)}: the server "
                "could change it")
            container.reload()
            url = f"http://127.0.0.1:{container.ports['8000/tcp'][0]['HostPort']}"
            cases = [c for c in reference["cases"] if c["version"] == reference["default_version"]]
            assert cases, f"reference.json has no case of version {reference['default_version']}"
            for case in cases:
                answer = _infer(url, case)
                assert (answer["model_name"], answer["model_version"]) == (
                    MODEL, reference["default_version"])
                got, want = answer["outputs"][0]["data"], case["outputs"][0]["data"]
                assert len(got) == len(want) and all(
                    math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-5) for g, w in zip(got, want)), (
                    f"{prod_image.name}: {case['name']}: {got} != {want}")
        finally:
            helper.cleanup()


def test_child_with_its_own_command_has_no_failing_health_check(prod_image, client, examples,
                                                                tmp_path):
    (tmp_path / "Dockerfile").write_text(_from_tested_image(prod_image, examples["worker"]))
    (tmp_path / "worker.py").write_text(WORKER)
    with _child(client, tmp_path) as tag:
        check = client.images.get(tag).attrs["Config"].get("Healthcheck") or {}
        assert check.get("Test") == ["NONE"], f"{prod_image.name}: the child's health check: {check}"
        helper = TrackedContainer(client, tag)
        try:
            container = helper.start(**HARDENED)
            deadline = time.monotonic() + 120
            while b"worker ready" not in container.logs() and time.monotonic() < deadline:
                time.sleep(1)
            container.reload()
            logs = container.logs().decode(errors="replace")[-3000:]
            assert container.status == "running" and "worker ready: torch" in logs, (
                f"{prod_image.name}: the worker is {container.status}:\n{logs}")
            assert "Health" not in container.attrs["State"], (
                f"{prod_image.name}: the worker has a health check: "
                f"{container.attrs['State']['Health']}")
            procs = proc_table(docker_host(container))
            assert [p.comm for p in procs if p.pid == 1] == ["tini"], procs
            workers = [p for p in procs if p.args == "python /app/worker.py"]
            uid = app_user(prod_image)["uid"]
            assert [p.uid for p in workers] == [uid], f"{prod_image.name}: worker: {procs}"
        finally:
            helper.cleanup()
