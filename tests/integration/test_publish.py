"""Publishing against a real registry (Debian's docker-registry on loopback) with tiny images.

These tests need the engine and the docker-registry program, not the project's built images:
each makes scratch images of a few bytes that carry a package record and the pin labels.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import bcrypt
import docker
import docker.errors
import pytest
import yaml

from pytorch_cuda.publish import push
from pytorch_cuda.suite import records
from pytorch_cuda.publish import retry
from pytorch_cuda.cli import main
from pytorch_cuda.matrix import Image, load_matrix
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.publish.registry import ENV_PASSWORD, ENV_USER

from .localregistry import PASSWORD, USER, LocalRegistry

REPOSITORY = "ptc-publish-test"
NAMESPACE = "ptc"
DATE = "20260102"
BASE_PACKAGES = {"apt": {"libc6": "2.36-9", "tini": "0.19.0-1"}, "pip": {"numpy": "2.3.3", "torch": "2.8.0"}}


@pytest.fixture
def auth_registry(registry_program: str, registry_root: Path):
    """A running registry that requires USER/PASSWORD (htpasswd, bcrypt); always stopped."""
    htpasswd = registry_root / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    reg = LocalRegistry(registry_program, registry_root, htpasswd)
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the real retry count but shrink the backoff so failing tests stay fast."""
    monkeypatch.setattr(retry, "BASE_DELAY", 0.05)


@pytest.fixture
def versions_file(tmp_path: Path) -> Path:
    """The real matrix with a test repository name, so no real image tag is touched."""
    data = yaml.safe_load(VERSIONS.read_text())
    data["project"]["repository"] = REPOSITORY
    path = tmp_path / "versions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def images(versions_file: Path) -> list[Image]:
    """The default cell's dev and prod images (under the test repository)."""
    return load_matrix(versions_file).default_cell.images()


@pytest.fixture(autouse=True)
def records_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private test-record file and release-manifest directory in place of the project's."""
    path = tmp_path / "test-records.json"
    monkeypatch.setattr(records, "RECORDS", path)
    monkeypatch.setattr(push, "RELEASES", tmp_path / "releases")
    return path


def _tiny_context(image: Image, packages: dict, nonce: str) -> io.BytesIO:
    labels = {f"io.pytorch-cuda.{k}": v for k, v in {
        "torch": image.cell.matrix.torch_version, "cuda": image.cell.cuda.version,
        "cudnn": image.cell.matrix.cudnn, "python": image.cell.os.python,
        "os": f"{image.cell.os.distro}-{image.cell.os.version}-{image.cell.os.name}",
        "variant": image.variant, "test-nonce": nonce}.items()}
    dockerfile = ("FROM scratch\nCOPY packages.json /usr/share/pytorch-cuda/packages.json\nLABEL "
                  + " ".join(f'{k}="{v}"' for k, v in labels.items()) + "\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()),
                           ("packages.json", json.dumps(packages).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@pytest.fixture
def make_image(client: docker.DockerClient):
    """Build tiny images under given references; every one is removed (all its tags) afterwards."""
    made: list[str] = []

    def make(image: Image, ref: str, packages: dict | None = None) -> str:
        built, _ = client.images.build(
            fileobj=_tiny_context(image, packages or BASE_PACKAGES, uuid.uuid4().hex),
            custom_context=True, tag=ref, rm=True, forcerm=True)
        made.append(built.id)
        return built.id

    yield make
    for image_id in made:
        for container in client.containers.list(all=True, filters={"ancestor": image_id}):
            container.remove(force=True)
        try:
            client.images.remove(image_id, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def built(images: list[Image], make_image) -> dict[str, str]:
    """Tiny dev and prod images under their full tags: image name -> image ID."""
    return {i.name: make_image(i, i.ref()) for i in images}


def _tested(built: dict[str, str], images: list[Image], records_file: Path) -> None:
    records.record_pass({i.ref(): built[i.name] for i in images}, path=records_file)


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _publish(capsys, versions_file: Path, registry: LocalRegistry, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "--versions", str(versions_file), "publish",
                "--registry", f"{registry.address}/{NAMESPACE}", *extra)


def _repo() -> str:
    return f"{NAMESPACE}/{REPOSITORY}"


def test_publish_then_pull_back_by_digest(capsys, client, registry, versions_file, images, built,
                                          records_file, tmp_path):
    """Full tags, aliases and the dated tag name one digest; pulled back, it is the same image."""
    _tested(built, images, records_file)
    manifests = tmp_path / "releases"
    code, out, err = _publish(capsys, versions_file, registry, "--date", DATE,
                              "--manifest-dir", str(manifests))
    assert code == 0, err
    for image in images:
        digest = registry.digest(_repo(), image.full_tag)
        assert digest, f"{image.full_tag} is missing"
        for alias in [*image.aliases, f"{image.full_tag}-{DATE}"]:
            assert registry.digest(_repo(), alias) == digest, alias
        pulled = client.images.pull(f"{registry.address}/{_repo()}@{digest}")
        assert pulled.id == built[image.name]
        assert digest in out
    leftovers = [t for i in client.images.list() for t in i.tags if t.startswith(registry.address)]
    assert leftovers == [], "publish left its temporary engine tags behind"
    release = json.loads((manifests / f"release-{DATE}.json").read_text())
    assert {i["digest"] for i in release["images"]} == {registry.digest(_repo(), i.full_tag) for i in images}
    assert release["images"][0]["pins"]["torch"] == images[0].cell.matrix.torch_version
    assert release["previous"] is None
    markdown = (manifests / f"release-{DATE}.md").read_text()
    assert "| tag | digest | torch | cuda | cudnn | python | os |" in markdown

    # The next release: nothing to push again; package changes come from the previous manifest.
    release["images"][0]["packages"]["pip"]["numpy"] = "2.3.2"
    (manifests / f"release-{DATE}.json").write_text(json.dumps(release))
    code, out, err = _publish(capsys, versions_file, registry, "--date", "20260109",
                              "--manifest-dir", str(manifests))
    assert code == 0, err
    assert out.count("unchanged") == 2
    later = json.loads((manifests / "release-20260109.json").read_text())
    assert later["previous"] == f"release-{DATE}.json"
    assert later["changes"][release["images"][0]["name"]]["pip"]["changed"] == {"numpy": ["2.3.2", "2.3.3"]}
    assert "| pip | numpy | changed | 2.3.2 | 2.3.3 |" in (manifests / "release-20260109.md").read_text()


def test_untested_image_is_refused(capsys, registry, versions_file, images, built, records_file):
    """An image ID without a passing record is refused before the registry is contacted."""
    dev, prod = images
    records.record_pass({prod.ref(): built[prod.name]}, path=records_file)
    code, _, err = _publish(capsys, versions_file, registry)
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert dev.ref() in message and built[dev.name] in message and "no passing test record" in message
    assert registry.requests() == [("GET", "/v2/", 200)]  # only the fixture's readiness probe


def test_conflicting_full_tag_is_refused(capsys, client, registry, versions_file, images, built,
                                         records_file, make_image):
    """A full tag holding another image is never overwritten; both digests are named."""
    _tested(built, images, records_file)
    dev = images[0]
    other = make_image(dev, f"{registry.address}/{_repo()}:{dev.full_tag}")
    pushed = list(client.api.push(f"{registry.address}/{_repo()}", dev.full_tag, stream=True, decode=True))
    assert not [m for m in pushed if "error" in m], pushed
    before = registry.digest(_repo(), dev.full_tag)
    code, _, err = _publish(capsys, versions_file, registry, "--dated")
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert before in message and other in message and built[dev.name] in message
    assert "immutable" in message
    assert registry.digest(_repo(), dev.full_tag) == before
    assert registry.tags(_repo()) == [dev.full_tag], "a refused publish left a tag behind"


def test_registry_down_is_a_clear_error(capsys, registry, versions_file, images, built, records_file):
    """Connection refused is retried a bounded number of times, then named; nothing is published."""
    _tested(built, images, records_file)
    registry.stop()
    started = time.monotonic()
    code, _, err = _publish(capsys, versions_file, registry)
    assert code == 2
    assert time.monotonic() - started < 30
    message = err.strip().splitlines()[-1]
    assert "does not answer" in message and f"after {retry.ATTEMPTS} attempts" in message
    assert err.count("retrying in") == retry.ATTEMPTS - 1
    registry.start()
    assert registry.tags(_repo()) == []


def test_wrong_credentials_fail_once(capsys, monkeypatch, auth_registry, versions_file, images, built,
                                     records_file):
    """Rejected credentials are reported at once (no retries) and never printed."""
    _tested(built, images, records_file)
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, "wrong-password-123")
    code, out, err = _publish(capsys, versions_file, auth_registry)
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert "rejected the credentials" in message and ENV_USER in message
    assert "wrong-password-123" not in out + err
    calls = [r for r in auth_registry.requests() if r[1] != "/v2/"]
    assert len(calls) <= 2 and all(status == 401 for _, _, status in calls), calls
    assert "retrying" not in err


def test_missing_credentials_are_named(capsys, monkeypatch, auth_registry, versions_file, images, built,
                                       records_file, tmp_path):
    """Without credentials the error says where they come from."""
    _tested(built, images, records_file)
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    code, _, err = _publish(capsys, versions_file, auth_registry)
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert "requires credentials" in message and f"docker login {auth_registry.address}" in message
    assert auth_registry.tags(_repo()) == []


def test_right_credentials_publish(capsys, monkeypatch, auth_registry, versions_file, images, built,
                                   records_file):
    """Credentials from the environment reach both the engine's push and the registry API."""
    _tested(built, images, records_file)
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    code, out, err = _publish(capsys, versions_file, auth_registry, "--variant", "prod")
    assert code == 0, err
    prod = images[1]
    assert sorted(auth_registry.tags(_repo())) == sorted(prod.tags)
    assert PASSWORD not in out + err


def test_aliases_wait_for_every_full_tag(capsys, monkeypatch, registry, versions_file, images, built,
                                         records_file):
    """The registry going away after the first full tag leaves no alias at all."""
    _tested(built, images, records_file)
    real_push = push._push_once

    def push_then_lose_registry(*args, **kwargs):
        digest = real_push(*args, **kwargs)
        registry.stop()
        return digest

    monkeypatch.setattr(push, "_push_once", push_then_lose_registry)
    code, _, err = _publish(capsys, versions_file, registry, "--dated")
    assert code == 2
    assert "no alias was moved" in err.strip().splitlines()[-1]
    registry.start()
    dev, prod = images
    assert registry.tags(_repo()) == [dev.full_tag]


def test_interrupt_before_aliases_leaves_none(capsys, monkeypatch, client, registry, versions_file,
                                              images, built, records_file):
    """Ctrl-C between the phases: full tags stay (they are immutable and tested), no alias moved."""
    _tested(built, images, records_file)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(push, "_verify", interrupted)
    code, _, _ = _publish(capsys, versions_file, registry)
    assert code == 130
    assert registry.tags(_repo()) == sorted(i.full_tag for i in images)
    leftovers = [t for i in client.images.list() for t in i.tags if t.startswith(registry.address)]
    assert leftovers == []


def test_diff_lists_package_changes(capsys, images, make_image):
    """`diff` reads each image's package record without running it."""
    dev = images[0]
    changed = {"apt": {"libc6": "2.36-10", "curl": "7.88"}, "pip": {"numpy": "2.3.3"}}
    a = make_image(dev, f"{REPOSITORY}:diff-a")
    b = make_image(dev, f"{REPOSITORY}:diff-b", changed)
    code, out, _ = _run(capsys, "diff", f"{REPOSITORY}:diff-a", f"{REPOSITORY}:diff-b", "--json")
    assert code == 0
    changes = json.loads(out)["changes"]
    assert changes["apt"] == {"added": {"curl": "7.88"}, "removed": {"tini": "0.19.0-1"},
                              "changed": {"libc6": ["2.36-9", "2.36-10"]}}
    assert changes["pip"]["removed"] == {"torch": "2.8.0"}
    code, out, _ = _run(capsys, "diff", a, b)
    assert code == 0 and "libc6" in out and "apt: 1 added, 1 removed, 1 changed" in out
    code, _, err = _run(capsys, "diff", f"{REPOSITORY}:diff-a", f"{REPOSITORY}:no-such-tag")
    assert code == 2 and "is not on the engine" in err
