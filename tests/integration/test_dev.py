"""dev with real clients: the Jupyter token over HTTP, SSH logins with paramiko, docker stop.

Users, files, packages, processes, sockets and sshd settings: test_dev_infra.py (testinfra).
"""

from __future__ import annotations

import io
import re
import socket
import time
import urllib.error
import urllib.request

import paramiko
import pytest

USER = "app"


def _port(container, private: int) -> int:
    container.reload()
    return int(container.ports[f"{private}/tcp"][0]["HostPort"])


def _wait_banner(port: int, timeout: float = 60) -> None:
    """Wait until sshd itself answers (the engine's proxy accepts before it does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"sshd does not answer on 127.0.0.1:{port} after {timeout} s")


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _jupyter(helper, **kwargs):
    container = helper.start(ports={"8888/tcp": ("127.0.0.1", None)}, **kwargs)
    port = _port(container, 8888)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if _status(f"http://127.0.0.1:{port}/api") == 200:
                return container, port
        except OSError:
            pass
        container.reload()
        assert container.status == "running", container.logs().decode()[-2000:]
        time.sleep(1)
    raise AssertionError(f"JupyterLab did not answer:\n{container.logs().decode()[-2000:]}")


def test_jupyter_requires_the_token(dev_image, containers):
    _, port = _jupyter(containers(dev_image), environment={"JUPYTER_TOKEN": "s3cret-t0ken"})
    url = f"http://127.0.0.1:{port}/api/contents"
    assert _status(url) == 403, f"{dev_image.name}: API answered without a token"
    assert _status(url, "wrong") == 403, f"{dev_image.name}: API answered a wrong token"
    assert _status(url, "s3cret-t0ken") == 200, f"{dev_image.name}: API refused the right token"


def test_jupyter_token_from_file(dev_image, containers, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-123\n")
    token_file.chmod(0o644)
    container, port = _jupyter(
        containers(dev_image), environment={"JUPYTER_TOKEN_FILE": "/run/secrets/token"},
        volumes={str(token_file): {"bind": "/run/secrets/token", "mode": "ro"}})
    assert _status(f"http://127.0.0.1:{port}/api/contents", "from-a-file-123") == 200


def test_jupyter_random_token_is_printed(dev_image, containers):
    container, port = _jupyter(containers(dev_image))
    match = re.search(r"Jupyter token \(random[^)]*\): ([0-9a-f]{48})", container.logs().decode())
    assert match, f"{dev_image.name}: no random token in the log"
    assert _status(f"http://127.0.0.1:{port}/api/contents", match.group(1)) == 200


def test_empty_token_is_refused(dev_image, containers):
    code, out = containers(dev_image).run(None, environment={"JUPYTER_TOKEN": ""}, timeout=60)
    assert code == 2 and "JUPYTER_TOKEN is empty" in out, f"{dev_image.name}: exit {code}: {out}"


def _key() -> tuple[paramiko.PKey, str]:
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(_ed25519_pem()))
    return key, f"{key.get_name()} {key.get_base64()} test"


def _ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()).decode()


def _ssh(port: int, username: str, **auth) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=port, username=username, timeout=20, allow_agent=False,
                   look_for_keys=False, banner_timeout=30, auth_timeout=20, **auth)
    return client


def _sshd(helper, **kwargs):
    container = helper.start(ports={"22/tcp": ("127.0.0.1", None)}, **kwargs)
    port = _port(container, 22)
    _wait_banner(port)
    return container, port


@pytest.fixture
def ssh_container(dev_image, containers):
    key, public = _key()
    container, port = _sshd(containers(dev_image), environment={"SSH_AUTHORIZED_KEYS": public,
                                                               "JUPYTER_TOKEN": "x-token"})
    return container, port, key


def test_ssh_key_login_works(dev_image, ssh_container):
    _, port, key = ssh_container
    with _ssh(port, USER, pkey=key) as client:
        _, stdout, stderr = client.exec_command(
            "id -un; python -c 'import torch; print(torch.__version__)'")
        out = stdout.read().decode().split()
        err = stderr.read().decode()
    assert out == [USER, dev_image.cell.torch_version_reported], f"{dev_image.name}: {out} {err}"


def test_ssh_refuses_wrong_key_password_and_root(dev_image, ssh_container):
    _, port, key = ssh_container
    wrong, _ = _key()
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(port, USER, pkey=wrong)
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(port, USER, password="password")
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(port, "root", pkey=key)


def test_ssh_keys_from_a_mounted_file(dev_image, containers, tmp_path):
    key, public = _key()
    keys = tmp_path / "authorized_keys"
    keys.write_text(public + "\n")
    keys.chmod(0o644)
    _, port = _sshd(containers(dev_image), environment={"JUPYTER_TOKEN": "x-token"},
                    volumes={str(keys): {"bind": "/run/secrets/authorized_keys", "mode": "ro"}})
    with _ssh(port, USER, pkey=key) as client:
        _, stdout, _ = client.exec_command("id -un")
        assert stdout.read().decode().strip() == USER


def test_init_stops_in_grace(dev_image, containers):
    container = containers(dev_image).start(environment={"JUPYTER_TOKEN": "x-token"})
    time.sleep(3)
    started = time.monotonic()
    container.stop(timeout=10)
    took = time.monotonic() - started
    container.reload()
    code = container.attrs["State"]["ExitCode"]
    assert took < 10 and code != 137, (
        f"{dev_image.name}: docker stop took {took:.1f} s (exit {code}); SIGTERM was not handled")
