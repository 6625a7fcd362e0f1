"""dev, inspected with testinfra: the image at rest, and containers run as the README runs them."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testinfra.host import Host

from pytorch_cuda.core import names
from pytorch_cuda.lock import locking

from .infra import app_user, listening_tcp_ports, wait_listening

PORTS = {22, 8888}
SSHD_HARDENED = ["passwordauthentication no", "kbdinteractiveauthentication no",
                 "permitrootlogin no", "permitemptypasswords no"]
PACKAGES = ["openssh-server", "g++", "make", "python3.11-dev", "git", "procps", "tini"]
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
KEY_COMMENT = "infra-test"


def _public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + f" {KEY_COMMENT}"


@pytest.fixture(scope="module")
def user(dev_image) -> dict:
    """The unprivileged user versions.yaml names (name, uid)."""
    return app_user(dev_image)


@pytest.fixture(scope="module")
def at_rest(dev_image, infra_host) -> Host:
    """The image's files as shipped: an idle container (no entrypoint), inspected as root."""
    return infra_host(dev_image, "root", command=["sleep", "infinity"], entrypoint=[])[1]


def _run_for_real(dev_image, infra_host) -> Host:
    """Start the image as the README does (token, key), wait until sshd and Jupyter listen."""
    container, host = infra_host(dev_image, environment={
        "JUPYTER_TOKEN": "infra-token", "SSH_AUTHORIZED_KEYS": _public_key()})
    wait_listening(host, container, PORTS)
    return host


@pytest.fixture(scope="module")
def running(dev_image, infra_host) -> Host:
    """A container started by the image's entrypoint with a token and a key, once both listen."""
    return _run_for_real(dev_image, infra_host)


def test_app_user_and_group(dev_image, at_rest, user):
    app = at_rest.user(user["name"])
    assert app.exists, f"{dev_image.name}: no user {user['name']}"
    assert (app.uid, app.gid, app.group) == (user["uid"], user["uid"], user["name"]), (
        f"{dev_image.name}: {user['name']} is uid {app.uid}, gid {app.gid} ({app.group})")
    assert (app.home, app.shell) == (f"/home/{user['name']}", "/bin/bash"), (
        f"{dev_image.name}: home {app.home}, shell {app.shell}")
    group = at_rest.group(user["name"])
    assert group.exists and group.gid == user["uid"], f"{dev_image.name}: group {user['name']}"
    home = at_rest.file(app.home)
    assert home.is_directory and (home.user, home.group) == (user["name"], user["name"]), (
        f"{dev_image.name}: {app.home} is {home.user}:{home.group}")


def test_no_account_has_a_usable_password(dev_image, at_rest):
    usable = [line.split(":")[0] for line in at_rest.file("/etc/shadow").content_string.splitlines()
              if line and line.split(":")[1][:1] not in ("!", "*")]
    assert not usable, f"{dev_image.name}: accounts with a password: {usable}"


def test_ssh_config_files(dev_image, at_rest):
    for path, mode in (("/etc/ssh/sshd_config", 0o644),
                       ("/etc/ssh/sshd_config.d/10-pytorch-cuda.conf", 0o644),
                       ("/usr/local/bin/dev-entrypoint", 0o755)):
        file = at_rest.file(path)
        assert file.is_file, f"{dev_image.name}: {path} is missing"
        assert (file.user, file.group, file.mode) == ("root", "root", mode), (
            f"{dev_image.name}: {path} is {file.user}:{file.group} {oct(file.mode)}")
    conf = at_rest.file("/etc/ssh/sshd_config.d/10-pytorch-cuda.conf")
    for line in ("PasswordAuthentication no", "PermitRootLogin no",
                 "AuthorizedKeysFile /etc/ssh/authorized_keys/%u"):
        assert conf.contains(f"^{line}$"), f"{dev_image.name}: sshd drop-in lacks {line!r}"


def test_no_host_keys_in_the_image(dev_image, at_rest):
    keys = [name for name in at_rest.file("/etc/ssh").listdir() if name.startswith("ssh_host_")]
    assert keys == [], f"{dev_image.name}: host keys ship in the image: {keys}"


def test_packages_present(dev_image, at_rest):
    missing = [name for name in PACKAGES if not at_rest.package(name).is_installed]
    assert not missing, f"{dev_image.name}: packages not installed: {missing}"


def test_the_package_manager_is_back_at_its_locked_version(dev_image, at_rest):
    version, _ = locking.package_manager_deb(dev_image.cell.os)
    package = at_rest.package(names.PACKAGE_MANAGER)
    assert package.is_installed and package.version == version, (
        f"{dev_image.name}: {names.PACKAGE_MANAGER} is not installed at its locked {version}")
    assert at_rest.run("apt-get check").rc == 0


def test_dev_tools_on_path(dev_image, at_rest):
    missing = [tool for tool in ("g++", "make", "ninja", "python", "jupyter-lab", "sshd")
               if not at_rest.exists(tool)]
    assert not missing, f"{dev_image.name}: not on PATH: {missing}"
    assert at_rest.file("/usr/include/python3.11/Python.h").is_file, (
        f"{dev_image.name}: no Python headers")


def test_processes_and_their_users(dev_image, running, user):
    init = running.process.get(pid=1)
    assert (init.comm, init.user) == ("tini", "root"), f"{dev_image.name}: PID 1 is {init}"
    assert running.process.filter(comm="sshd", user="root"), f"{dev_image.name}: sshd not running"
    jupyter = [p for p in running.process.filter(uid=user["uid"])
               if p.comm == "jupyter-lab"]
    assert len(jupyter) == 1, f"{dev_image.name}: jupyter-lab as uid {user['uid']}: {jupyter}"
    others = {(p.pid, p.user) for p in running.process.filter(user="root")
              if "jupyter" in p.args and p.comm != "tini"}
    assert not others, f"{dev_image.name}: Jupyter processes run as root: {others}"


def test_listening_sockets(dev_image, running):
    assert listening_tcp_ports(running) == PORTS, f"{dev_image.name}: listening ports differ"


def test_sshd_effective_config_is_hardened(dev_image, running):
    config = set(running.check_output("/usr/sbin/sshd -T").splitlines())
    missing = [line for line in SSHD_HARDENED if line not in config]
    assert not missing, f"{dev_image.name}: sshd -T lacks {missing}"


def test_runtime_keys_are_in_place(dev_image, running, user):
    private = running.file(HOST_KEY)
    assert (private.user, private.mode) == ("root", 0o600), (
        f"{dev_image.name}: {HOST_KEY} is {private.user} {oct(private.mode)}")
    authorized = running.file(f"/etc/ssh/authorized_keys/{user['name']}")
    assert (authorized.user, authorized.mode) == ("root", 0o644), (
        f"{dev_image.name}: {authorized.path} is {authorized.user} {oct(authorized.mode)}")
    assert authorized.contains(KEY_COMMENT), f"{dev_image.name}: the given key is not authorized"


def test_host_keys_are_fresh_per_container(dev_image, running, infra_host):
    other = _run_for_real(dev_image, infra_host)
    prints = {host.file(f"{HOST_KEY}.pub").content_string.split()[1] for host in (running, other)}
    assert len(prints) == 2, f"{dev_image.name}: two containers share a host key"


def test_init_reaps_orphans(dev_image, running):
    running.run("(sleep 1 &) ; true")
    time.sleep(3)
    zombies = [s for s in running.check_output("ps -eo stat=").split() if s.startswith("Z")]
    assert not zombies, f"{dev_image.name}: zombies are not reaped"
