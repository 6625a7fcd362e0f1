"""Publishing logic without Docker: tag plan, retries, dates, registry auth, manifests, diffs."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytorch_cuda.core import names
from pytorch_cuda.publish import pkgdiff
from pytorch_cuda.publish import push
from pytorch_cuda.publish import release
from pytorch_cuda.publish import retry
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.matrix import load_matrix
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.publish.registry import (DOCKER_MANIFEST, ENV_PASSWORD, ENV_USER, Credentials, Manifest, RegistryClient, Target, digest_of, find_credentials, parse_target)
from pytorch_cuda.publish.retry import AUTH, FATAL, TRANSIENT, RegistryError

IMAGE_ID = "sha256:" + "ab" * 32


@pytest.fixture
def images():
    """The default cell's images from the real matrix."""
    return load_matrix(VERSIONS).default_cell.images()


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the backoff waits instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", waits.append)
    return waits


def test_tag_plan_puts_every_full_tag_before_any_alias(images):
    plan = push.tag_plan(images, "20260102")
    phases = [s.phase for s in plan]
    assert phases == [push.FULL] * len(images) + [push.ALIAS] * (len(phases) - len(images))
    assert [s.tag for s in plan[:len(images)]] == [i.full_tag for i in images]
    for image in images:
        aliases = [s.tag for s in plan if s.phase == push.ALIAS and s.image == image]
        assert aliases == [*image.aliases, f"{image.full_tag}-20260102"]


def test_tag_plan_without_date_has_no_dated_tag(images):
    tags = [s.tag for s in push.tag_plan(images, None)]
    assert tags == [i.full_tag for i in images] + [a for i in images for a in i.aliases]


def test_dated_tag():
    assert names.dated_tag("2.8.0-cu128-dev", "20260102") == "2.8.0-cu128-dev-20260102"


def test_release_date(monkeypatch: pytest.MonkeyPatch):
    assert release.release_date("20240229") == "20240229"
    for bad in ("2026-01-02", "20261301", "2026010", "202601021"):
        with pytest.raises(UserError, match="YYYYMMDD"):
            release.release_date(bad)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert release.release_date(None) == "19700102"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        release.release_date(None)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert release.release_date(None) == datetime.now(timezone.utc).strftime("%Y%m%d")


@pytest.mark.parametrize("status,kind", [(401, AUTH), (403, AUTH), (429, TRANSIENT), (500, TRANSIENT),
                                         (502, TRANSIENT), (503, TRANSIENT), (400, FATAL), (404, FATAL)])
def test_classify_status(status: int, kind: str):
    assert retry.classify_status(status) == kind


@pytest.mark.parametrize("message,kind", [
    ("unauthorized: authentication required", AUTH),
    ("denied: requested access to the resource is denied", AUTH),
    ("no basic auth credentials", AUTH),
    ('Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused', TRANSIENT),
    ("read tcp 10.0.0.2:4711->10.0.0.9:443: read: connection reset by peer", TRANSIENT),
    ("received unexpected HTTP status: 503 Service Unavailable", TRANSIENT),
    ("net/http: TLS handshake timeout", TRANSIENT),
    ("Patch https://registry.example.org/v2/x/blobs/uploads/1: EOF", TRANSIENT),
    ("toomanyrequests: rate limit exceeded", TRANSIENT),
    ("manifest invalid: manifest invalid", FATAL),
    ("An image does not exist locally with the tag: registry.example.org/x", FATAL),
])
def test_classify_message(message: str, kind: str):
    assert retry.classify_message(message) == kind


def test_backoff_doubles():
    assert retry.delays(4, 1.0) == [1.0, 2.0, 4.0]


def test_retry_recovers_from_transient_failures(no_sleep: list[float]):
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RegistryError("connection refused", TRANSIENT)
        return "ok"

    assert retry.retry(flaky, "pushing x") == "ok"
    assert no_sleep == [retry.BASE_DELAY, 2 * retry.BASE_DELAY]


def test_retry_gives_up_after_the_bound(no_sleep: list[float]):
    calls = []

    def down() -> None:
        calls.append(1)
        raise RegistryError("connection refused", TRANSIENT)

    with pytest.raises(RegistryError):
        retry.retry(down, "pushing x")
    assert len(calls) == retry.ATTEMPTS and len(no_sleep) == retry.ATTEMPTS - 1


def test_retry_never_repeats_auth_failures(no_sleep: list[float]):
    calls = []

    def rejected() -> None:
        calls.append(1)
        raise RegistryError("unauthorized", AUTH)

    with pytest.raises(RegistryError):
        retry.retry(rejected, "checking x")
    assert calls == [1] and no_sleep == []


def test_parse_target():
    target = parse_target("127.0.0.1:5000/team/sub")
    assert (target.host, target.namespace) == ("127.0.0.1:5000", "team/sub")
    assert target.base_url == "http://127.0.0.1:5000/v2"
    assert target.ref("pytorch-cuda", "v2.8") == "127.0.0.1:5000/team/sub/pytorch-cuda:v2.8"
    remote = parse_target("registry.example.org/team/")
    assert remote.base_url == "https://registry.example.org/v2"
    assert remote.repository("pytorch-cuda") == "team/pytorch-cuda"
    assert parse_target("localhost:5000").repository("x") == "x"
    for bad in ("nohost", "team/pytorch", "registry.example.org/Team", "", "host:port/x"):
        with pytest.raises(UserError, match="--registry"):
            parse_target(bad)


def test_credentials_from_env_and_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv(ENV_USER, raising=False)
    monkeypatch.delenv(ENV_PASSWORD, raising=False)
    assert find_credentials("registry.example.org") is None
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"registry.example.org": {
        "auth": base64.b64encode(b"robot:s3cret").decode()}}}))
    found = find_credentials("registry.example.org")
    assert (found.username, found.password) == ("robot", "s3cret")
    assert "s3cret" not in repr(found)
    monkeypatch.setenv(ENV_USER, "ci")
    with pytest.raises(UserError, match=ENV_PASSWORD):
        find_credentials("registry.example.org")
    monkeypatch.setenv(ENV_PASSWORD, "token")
    assert find_credentials("registry.example.org").source.startswith(ENV_USER)


def test_manifest_config_digest():
    body = json.dumps({"mediaType": DOCKER_MANIFEST, "config": {"digest": IMAGE_ID}}).encode()
    assert Manifest(digest_of(body), DOCKER_MANIFEST, body).config_digest == IMAGE_ID
    index = Manifest("sha256:1", "application/vnd.oci.image.index.v1+json", b"{}")
    assert index.config_digest is None


class _FakeRegistry(BaseHTTPRequestHandler):
    """A token-auth registry: /token gives a token for the right password; manifests need it."""

    manifest = json.dumps({"mediaType": DOCKER_MANIFEST, "config": {"digest": IMAGE_ID}}).encode()
    hits: list[str] = []
    fail_with = 0

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.hits.append(self.path.split("?")[0])
        if self.fail_with:
            self._reply(self.fail_with, b"{}")
        elif self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(b"robot:right").decode()
            ok = self.headers.get("Authorization") == good and "scope=repository" in self.path
            self._reply(200 if ok else 401, json.dumps({"token": "t0k"}).encode())
        elif self.headers.get("Authorization") != "Bearer t0k":
            host = self.headers["Host"]
            self._reply(401, b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}',
                        {"WWW-Authenticate": f'Bearer realm="http://{host}/token",service="fake"'})
        elif self.path.endswith("/missing"):
            self._reply(404, b"{}")
        else:
            self._reply(200, self.manifest, {"Content-Type": DOCKER_MANIFEST,
                                             "Docker-Content-Digest": digest_of(self.manifest)})

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        return


@pytest.fixture
def fake_registry():
    """A fake token-auth registry on a loopback port."""
    _FakeRegistry.hits = []
    _FakeRegistry.fail_with = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Target("127.0.0.1", server.server_address[1], "team")
    server.shutdown()
    server.server_close()


def test_registry_token_auth(fake_registry: Target):
    client = RegistryClient(fake_registry, Credentials("robot", "right", "test"))
    found = client.manifest("team/x", "v1")
    assert found.config_digest == IMAGE_ID and found.media_type == DOCKER_MANIFEST
    assert client.manifest("team/x", "missing") is None
    assert _FakeRegistry.hits.count("/token") == 1  # the token is reused for the same scope


def test_registry_wrong_credentials_fail_once(fake_registry: Target):
    client = RegistryClient(fake_registry, Credentials("robot", "wrong", "test"))
    with pytest.raises(RegistryError) as caught:
        client.manifest("team/x", "v1")
    assert caught.value.kind == AUTH and "rejected the credentials" in str(caught.value)
    assert "wrong" not in str(caught.value)
    assert _FakeRegistry.hits == ["/v2/team/x/manifests/v1", "/token"]


def test_registry_server_errors_are_transient(fake_registry: Target):
    _FakeRegistry.fail_with = 503
    with pytest.raises(RegistryError) as caught:
        RegistryClient(fake_registry, None).manifest("team/x", "v1")
    assert caught.value.kind == TRANSIENT


def test_registry_down_is_transient():
    with pytest.raises(RegistryError) as caught:
        RegistryClient(Target("127.0.0.1", 9, "team"), None).manifest("team/x", "v1")
    assert caught.value.kind == TRANSIENT and "does not answer" in str(caught.value)


def _fake_engine(messages: list[dict]):
    return SimpleNamespace(api=SimpleNamespace(push=lambda *a, **k: iter(messages)))


def test_push_stream_errors_fail_the_push():
    stream = [{"status": "The push refers to repository [x]"},
              {"status": "Pushed", "id": "abc", "progressDetail": {}},
              {"error": "unauthorized: authentication required",
               "errorDetail": {"message": "unauthorized: authentication required"}},
              {"progressDetail": {}, "aux": {"Tag": "t", "Digest": "sha256:1", "Size": 1}}]
    with pytest.raises(RegistryError) as caught:
        push._push_once(_fake_engine(stream), "r", "t", None, "cell/dev")
    assert caught.value.kind == AUTH
    refused = [{"errorDetail": {"message": "dial tcp: connect: connection refused"}}]
    with pytest.raises(RegistryError) as caught:
        push._push_once(_fake_engine(refused), "r", "t", None, "cell/dev")
    assert caught.value.kind == TRANSIENT


def test_push_stream_digest():
    stream = [{"status": "Pushed", "id": "abc"}, {"aux": {"Tag": "t", "Digest": "sha256:9", "Size": 1}}]
    assert push._push_once(_fake_engine(stream), "r", "t", None, "cell/dev") == "sha256:9"
    with pytest.raises(RegistryError, match="no manifest digest"):
        push._push_once(_fake_engine(stream[:1]), "r", "t", None, "cell/dev")


def test_package_diff():
    old = {"apt": {"a": "1", "b": "1", "c": "1"}, "pip": {"torch": "2.7.1"}}
    new = {"apt": {"b": "1", "c": "2", "d": "1"}, "pip": {"torch": "2.8.0", "numpy": "2.3.3"}}
    changes = pkgdiff.diff(old, new)
    assert changes["apt"] == {"added": {"d": "1"}, "removed": {"a": "1"}, "changed": {"c": ["1", "2"]}}
    assert changes["pip"] == {"added": {"numpy": "2.3.3"}, "removed": {}, "changed": {"torch": ["2.7.1", "2.8.0"]}}
    assert pkgdiff.rows(changes)[0] == ["apt", "d", "added", "-", "1"]
    assert pkgdiff.summary(changes) == "apt: 1 added, 1 removed, 1 changed; pip: 1 added, 0 removed, 1 changed"
    assert pkgdiff.rows(pkgdiff.diff(old, old)) == []


def _entry(name: str, torch: str, digest: str) -> dict:
    return {"name": name, "cell": "cu128-bookworm", "variant": name.split("/")[1],
            "tag": f"{torch}-{name.replace('/', '-')}", "ref": f"r/x:{torch}", "digest": digest,
            "image_id": IMAGE_ID, "aliases": ["v2.8"],
            "pins": {"torch": torch, "cuda": "12.8.1", "cudnn": "9.10.2.21", "python": "3.11",
                     "os": "debian-12-bookworm"},
            "packages": {"apt": {"tini": "0.19"}, "pip": {"torch": torch}}}


def test_release_manifest_and_markdown(tmp_path: Path):
    first = release.assemble(tmp_path, "20260101", "r/x", "abc", [_entry("c/dev", "2.7.1", "sha256:1")])
    assert first["previous"] is None and first["changes"] == {}
    release.write(tmp_path, first)
    assert "No earlier release manifest" in (tmp_path / "release-20260101.md").read_text()

    second = release.assemble(tmp_path, "20260108", "r/x", "def", [_entry("c/dev", "2.8.0", "sha256:2")])
    release.write(tmp_path, second)
    release.write(tmp_path, release.assemble(tmp_path, "20260108", "r/x", "def",
                                             [_entry("c/prod", "2.8.0", "sha256:3")]))
    merged = json.loads((tmp_path / "release-20260108.json").read_text())
    assert [i["name"] for i in merged["images"]] == ["c/dev", "c/prod"]  # same day: merged by name
    assert second["previous"] == "release-20260101.json"
    assert second["changes"]["c/dev"]["pip"]["changed"] == {"torch": ["2.7.1", "2.8.0"]}
    markdown = (tmp_path / "release-20260108.md").read_text()
    assert "| `2.8.0-c-dev` | `sha256:2` | 2.8.0 | 12.8.1 | 9.10.2.21 | 3.11 | debian-12-bookworm |" in markdown
    assert "| pip | torch | changed | 2.7.1 | 2.8.0 |" in markdown
    assert "### c/prod\n\nNew in this release." in markdown
    assert release.previous(tmp_path, "20260101") is None


def test_broken_release_manifest_is_named(tmp_path: Path):
    (tmp_path / "release-20260101.json").write_text("{not json")
    with pytest.raises(UserError, match="release-20260101.json"):
        release.assemble(tmp_path, "20260102", "r/x", "abc", [])


def test_publish_bad_input_exits_2_without_docker(run_cli):
    code, _, err = run_cli("publish", "--registry", "nohost")
    assert code == 2 and "--registry 'nohost'" in err
    code, _, err = run_cli("publish", "--registry", "registry.example.org/team", "--date", "2026-01-02")
    assert code == 2 and "YYYYMMDD" in err
