"""Integration fixtures: real images on a real engine, containers that are always removed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from testinfra.host import Host

from pytorch_cuda.lock import locking
from pytorch_cuda.build import wheelhouse
from pytorch_cuda.build.engine import ensure_engine
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.host import ensure_tool
from pytorch_cuda.matrix import Cell, Image, load_matrix
from pytorch_cuda.core.paths import ROOT, VERSIONS

from .containers import TrackedContainer
from .localregistry import LocalRegistry
from .infra import docker_host

CHECKS_DIR = ROOT / "tests" / "incontainer"
PIP_DIR = Path(__import__("pip").__file__).parent


def _cells(config: pytest.Config) -> list[Cell]:
    matrix = load_matrix(VERSIONS)
    ids = config.getoption("--cell")
    return [matrix.cell(c) for c in ids] if ids else [matrix.default_cell]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize image fixtures over the selected cells (and variants)."""
    cells = _cells(metafunc.config)
    if "any_image" in metafunc.fixturenames:
        images = [i for c in cells for i in c.images()]
        metafunc.parametrize("any_image", images, ids=[i.name for i in images], indirect=True,
                             scope="module")
    for variant in ("dev", "prod"):
        name = f"{variant}_image"
        if name in metafunc.fixturenames:
            images = [c.image(variant) for c in cells]
            metafunc.parametrize(name, images, ids=[i.name for i in images], indirect=True,
                                 scope="module")


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    """A client of the engine (started if the machine allows it)."""
    return ensure_engine()


def _ensure_built(client: docker.DockerClient, image: Image) -> Image:
    try:
        client.images.get(image.ref())
    except docker.errors.ImageNotFound:
        pytest.fail(f"{image.ref()} is not built: run 'python build.py build {image.cell.id}'")
    return image


@pytest.fixture(scope="module")
def any_image(request: pytest.FixtureRequest, client: docker.DockerClient) -> Image:
    """Every selected image, dev and prod."""
    return _ensure_built(client, request.param)


@pytest.fixture(scope="module")
def dev_image(request: pytest.FixtureRequest, client: docker.DockerClient) -> Image:
    """The dev image of each selected cell."""
    return _ensure_built(client, request.param)


@pytest.fixture(scope="module")
def prod_image(request: pytest.FixtureRequest, client: docker.DockerClient) -> Image:
    """The prod image of each selected cell."""
    return _ensure_built(client, request.param)


@pytest.fixture
def containers(client: docker.DockerClient):
    """A factory of TrackedContainer helpers; all their containers are removed afterwards."""
    helpers: list[TrackedContainer] = []

    def make(image: Image) -> TrackedContainer:
        helper = TrackedContainer(client, image.ref())
        helpers.append(helper)
        return helper

    yield make
    for helper in helpers:
        helper.cleanup()


@pytest.fixture(scope="module")
def infra_host(client: docker.DockerClient):
    """A factory: start a tracked container of an image, return it and its testinfra host
    (commands run as `user`, else as the image's USER); removed after the module."""
    helpers: list[TrackedContainer] = []

    def start(image: Image, user: str | None = None, **run_kwargs: Any) -> tuple[Container, Host]:
        helper = TrackedContainer(client, image.ref())
        helpers.append(helper)
        container = helper.start(**run_kwargs)
        return container, docker_host(container, user)

    yield start
    for helper in helpers:
        helper.cleanup()


CHECK_MOUNTS = {
    str(CHECKS_DIR): {"bind": "/checks", "mode": "ro"},
    str(PIP_DIR): {"bind": "/tools/pip", "mode": "ro"},
}
CHECK_ENV = {"PYTHONPATH": "/checks", "PYTHONDONTWRITEBYTECODE": "1"}


def checks_command(*args: str) -> list[str]:
    """The in-image check code, run by the image's own Python."""
    return ["python", "-m", "ptc_checks", *args]


def pip_command(*args: str) -> list[str]:
    """pip, mounted at test time (prod ships none), run by the image's own Python."""
    return ["python", "-c", "import sys; sys.path.insert(0, '/tools'); "
            "from pip._internal.cli.main import main; sys.exit(main())", *args]


def left_out_dists(image: Image) -> set[str]:
    """The distributions an image leaves out of the shared environment (lower case)."""
    if image.variant != "prod":
        return set()
    return {r["dist"].lower() for r in image.cell.matrix.leave_out() if "dist" in r}


def expected_pins(image: Image) -> dict:
    """What versions.yaml and the locks say the image must report."""
    cell, matrix = image.cell, image.cell.matrix
    major, minor, patch = (int(x) for x in matrix.cudnn.split(".")[:3])
    packages = {}
    for group in ("runtime", image.variant):
        packages.update(locking.locked_versions(locking.pip_lock_path(cell, group)))
    for name in left_out_dists(image):
        packages.pop(name, None)
    return {
        "python": cell.os.python,
        "torch": cell.torch_version_reported,
        "cuda": cell.cuda.major_minor,
        "cudnn": major * 10000 + minor * 100 + patch,
        "nccl": matrix.nccl,
        "arch_list": cell.cuda.arch_list,
        "os_id": cell.os.distro,
        "os_version_id": cell.os.version,
        "os_codename": cell.os.name,
        "packages": packages,
    }


def write_expect(image: Image, tmp_path: Path) -> Path:
    """The expectations as a file the in-image checks read."""
    path = tmp_path / "expect.json"
    path.write_text(json.dumps(expected_pins(image)))
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return path


def _gpu_reason() -> str | None:
    if not shutil.which("nvidia-smi"):
        return "no GPU on this machine (nvidia-smi not found)"
    if subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode != 0:
        return "no GPU on this machine (nvidia-smi -L failed)"
    return None


@pytest.fixture
def gpu(request: pytest.FixtureRequest) -> dict:
    """Run kwargs that give a container the GPUs; skip (or fail under --require-gpu) without."""
    reason = _gpu_reason()
    if reason:
        if request.config.getoption("--require-gpu"):
            pytest.fail(f"--require-gpu: {reason}")
        pytest.skip(f"CUDA test skipped: {reason}; GPU runners use --require-gpu")
    return {"device_requests": [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A temporary folder any container user may write to."""
    path = tmp_path_factory.mktemp(name)
    path.chmod(0o777)
    return path


def make_models(prod_image: Image, client: docker.DockerClient, out: Path, *flags: str) -> Path:
    """Model repository ``out`` written by the prod image's torch (make_models.py ``flags``)."""
    helper = TrackedContainer(client, prod_image.ref())
    try:
        code, logs = helper.run(
            ["python", "/make_models.py", "/out", *flags], entrypoint=[], environment=CHECK_ENV,
            volumes={**CHECK_MOUNTS, str(Path(__file__).with_name("make_models.py")):
                     {"bind": "/make_models.py", "mode": "ro"},
                     str(out): {"bind": "/out", "mode": "rw"}})
    finally:
        helper.cleanup()
    assert code == 0, f"{prod_image.name}: making the test models failed:\n{logs[-3000:]}"
    return out


@pytest.fixture(scope="module")
def model_repo(prod_image: Image, client: docker.DockerClient,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository made by the prod image's own torch (with reference outputs)."""
    return make_models(prod_image, client, shared_dir(tmp_path_factory, "models"))


def _serve(client: docker.DockerClient, image: Image, repo: Path, ready: bool):
    """Start the prod image's server on a loopback port; wait for ready (or live)."""
    helper = TrackedContainer(client, image.ref())
    container = helper.start(ports={"8000/tcp": ("127.0.0.1", None)},
                             volumes={str(repo): {"bind": "/models", "mode": "ro"}})
    container.reload()
    url = f"http://127.0.0.1:{container.ports['8000/tcp'][0]['HostPort']}"
    probe = "/v2/health/ready" if ready else "/v2/health/live"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + probe, timeout=5) as response:
                if response.status == 200:
                    return helper, container, url
        except (OSError, urllib.error.HTTPError):
            pass
        container.reload()
        if container.status != "running":
            break
        time.sleep(1)
    logs = container.logs().decode(errors="replace")[-3000:]
    helper.cleanup()
    raise AssertionError(f"{image.name}: the server did not become {probe}:\n{logs}")


@pytest.fixture(scope="module")
def serve_container(prod_image: Image, client: docker.DockerClient, model_repo: Path):
    """A running prod container serving the test models."""
    helper, container, url = _serve(client, prod_image, model_repo, ready=True)
    yield container, url
    helper.cleanup()


@pytest.fixture(scope="module")
def serve_url(serve_container) -> str:
    """Base URL of the prod server under test."""
    return serve_container[1]


@pytest.fixture(scope="module")
def serve_models(model_repo: Path) -> dict[str, Path]:
    """Model name -> its reference outputs, computed in-process in the image."""
    return {name: model_repo / "reference.json" for name in ("controlflow", "smallconv")}


@pytest.fixture(scope="module")
def serve_rss(serve_container):
    """A probe of the server container's resident memory in bytes."""
    container = serve_container[0]

    def rss() -> int:
        stats = container.stats(stream=False)["memory_stats"]
        detail = stats.get("stats", {})
        return int(detail.get("rss") or detail.get("anon") or stats.get("usage", 0))
    return rss


@pytest.fixture(scope="module")
def serve_broken_url(prod_image: Image, client: docker.DockerClient,
                     tmp_path_factory: pytest.TempPathFactory):
    """A second server whose repository holds models that fail to load."""
    repo = make_models(prod_image, client, shared_dir(tmp_path_factory, "broken"), "--broken")
    helper, _, url = _serve(client, prod_image, repo, ready=False)
    yield url
    helper.cleanup()


@pytest.fixture(scope="module")
def custom_op_dir(prod_image: Image, client: docker.DockerClient,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A custom C++ operator and a model using it, compiled in the cell's dev image."""
    dev = prod_image.cell.image("dev")
    _ensure_built(client, dev)
    out = shared_dir(tmp_path_factory, "customop")
    helper = TrackedContainer(client, dev.ref())
    try:
        result = helper.run_json(
            checks_command("customop", "build", "--out", "/op"), entrypoint=[],
            volumes={**CHECK_MOUNTS, str(out): {"bind": "/op", "mode": "rw"}},
            environment=CHECK_ENV)
    finally:
        helper.cleanup()
    assert result.get("ok"), f"{dev.name}: building the custom operator failed: {result}"
    return out


@pytest.fixture(scope="session")
def registry_program() -> str:
    """The docker-registry program (installed with apt-get where the machine allows)."""
    try:
        return ensure_tool("docker-registry", "docker-registry")
    except UserError as exc:
        pytest.skip(f"no docker-registry program: {exc}")


@pytest.fixture
def registry_root():
    """A private directory for the registry's config, storage and log, always removed."""
    root = Path(tempfile.mkdtemp(prefix="ptc-registry-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def registry(registry_program: str, registry_root: Path):
    """A running registry without authentication; always stopped."""
    reg = LocalRegistry(registry_program, registry_root)
    reg.start()
    yield reg
    reg.stop()


def clone_project(target: Path) -> Path:
    """A fresh clone of this repository's commit at `target`, to break without harm."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
    return target


def tag_targets(client: docker.DockerClient, image: Image) -> dict[str, str | None]:
    """The image ID each of an image's tags names now (None where the tag is absent)."""
    out: dict[str, str | None] = {}
    for tag in image.tags:
        try:
            out[tag] = client.images.get(image.ref(tag)).id
        except docker.errors.ImageNotFound:
            out[tag] = None
    return out


def failing_build(client: docker.DockerClient, image: Image,
                  clone: Path) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Build `image` in a broken clone, where it must fail and so untag it; the real image is kept
    and gets its tags back. Returns the build's process and the tags it left behind."""
    before = tag_targets(client, image)
    keep = "pytorch-cuda-test-keep"
    client.images.get(image.ref()).tag(keep, "failing-build")  # untagging must not delete it
    try:
        proc = subprocess.run(
            [sys.executable, "build.py", "build", image.cell.id, "--variant", image.variant,
             "--quiet", "--no-normalize", "--wheelhouse", str(wheelhouse.DEFAULT)],
            cwd=clone, capture_output=True, text=True, timeout=1800, check=False)
        left = {tag: target for tag, target in tag_targets(client, image).items() if target}
    finally:
        for tag, target in before.items():
            if target:
                client.images.get(target).tag(image.cell.matrix.repository, tag)
        client.images.remove(f"{keep}:failing-build", noprune=True)
    return proc, left
