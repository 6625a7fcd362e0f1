"""prod, inspected with testinfra: the image at rest (as root), and the server run with the
README's flags (read-only, no capabilities, no new privileges), probed as the image's uid 1000."""

from __future__ import annotations

import pytest
from testinfra.host import Host

from .infra import HARDENED, app_user, listening_tcp_ports, proc_table, wait_listening

PORT = 8000
PACKAGES = ["tini", "python3.11", "libgomp1"]
NOT_INSTALLED = ["apt", "openssh-server", "gcc", "gcc-12", "g++", "g++-12", "cpp", "make", "sudo",
                 "python3-pip", "python3.11-venv"]
NOT_IN_PROD = ["sshd", "jupyter", "jupyter-lab", "gcc", "g++", "cc", "c++", "make", "apt",
               "apt-get", "pip", "pip3", "sudo"]


@pytest.fixture(scope="module")
def user(prod_image) -> dict:
    """The unprivileged user versions.yaml names (name, uid)."""
    return app_user(prod_image)


@pytest.fixture(scope="module")
def at_rest(prod_image, infra_host) -> Host:
    """The image's files as shipped: an idle container (no entrypoint), inspected as root."""
    return infra_host(prod_image, "root", command=["sleep", "infinity"], entrypoint=[])[1]


@pytest.fixture(scope="module")
def running(prod_image, infra_host) -> Host:
    """The server under the README's hardened flags (on the image's empty /models), once it
    listens; probed as the image's USER."""
    container, host = infra_host(prod_image, **HARDENED)
    wait_listening(host, container, {PORT})
    return host


def test_app_user_and_group(prod_image, at_rest, user):
    app = at_rest.user(user["name"])
    assert app.exists, f"{prod_image.name}: no user {user['name']}"
    assert (app.uid, app.gid, app.group) == (user["uid"], user["uid"], user["name"]), (
        f"{prod_image.name}: {user['name']} is uid {app.uid}, gid {app.gid} ({app.group})")
    assert (app.home, app.shell) == ("/nonexistent", "/usr/sbin/nologin"), (
        f"{prod_image.name}: home {app.home}, shell {app.shell}")
    assert not at_rest.file(app.home).exists, f"{prod_image.name}: {app.home} exists"
    group = at_rest.group(user["name"])
    assert group.exists and group.gid == user["uid"], f"{prod_image.name}: group {user['name']}"


def test_no_account_has_a_usable_password(prod_image, at_rest):
    usable = [line.split(":")[0] for line in at_rest.file("/etc/shadow").content_string.splitlines()
              if line and line.split(":")[1][:1] not in ("!", "*")]
    assert not usable, f"{prod_image.name}: accounts with a password: {usable}"


def test_models_directory_belongs_to_app(prod_image, at_rest, user):
    models = at_rest.file("/models")
    assert models.is_directory, f"{prod_image.name}: no /models"
    assert (models.user, models.group, models.mode) == (user["name"], user["name"], 0o755), (
        f"{prod_image.name}: /models is {models.user}:{models.group} {oct(models.mode)}")


def test_packages_present_and_absent(prod_image, at_rest):
    missing = [name for name in PACKAGES if not at_rest.package(name).is_installed]
    assert not missing, f"{prod_image.name}: packages not installed: {missing}"
    present = [name for name in NOT_INSTALLED if at_rest.package(name).is_installed]
    assert not present, f"{prod_image.name}: packages that must not ship: {present}"


def test_no_setuid_or_setgid_files(prod_image, at_rest):
    found = at_rest.check_output("find / -xdev -type f -perm /6000")
    assert found == "", f"{prod_image.name}: setuid/setgid files:\n{found}"


def test_runs_as_app(prod_image, running, user):
    current = running.user()
    assert (current.name, current.uid, current.gid) == (user["name"], user["uid"], user["uid"]), (
        f"{prod_image.name}: runs as {current.name} ({current.uid}:{current.gid})")


@pytest.mark.parametrize("tool", NOT_IN_PROD)
def test_tool_absent(prod_image, running, tool):
    assert not running.exists(tool), (
        f"{prod_image.name}: {tool} is present at {running.check_output('command -v ' + tool)}")


def test_no_pip_module(prod_image, running):
    result = running.run("python -m pip --version")
    assert result.rc != 0, f"{prod_image.name}: python -m pip works: {result.stdout}"


def test_check_code_is_not_shipped(prod_image, running):
    spec = running.check_output("python -c 'import importlib.util as u; print(u.find_spec(\"pytest\"))'")
    assert spec == "None", f"{prod_image.name}: pytest is installed ({spec})"


def test_processes_and_their_users(prod_image, running, user):
    procs = proc_table(running)
    init = [p for p in procs if p.pid == 1]
    assert init and init[0].comm == "tini", f"{prod_image.name}: PID 1 is {init}"
    assert [p for p in procs if "-m ptserve" in p.args], f"{prod_image.name}: no ptserve: {procs}"
    uids = {p.uid for p in procs}
    assert uids == {user["uid"]}, f"{prod_image.name}: processes run as uids {sorted(uids)}"


def test_listening_sockets(prod_image, running):
    assert listening_tcp_ports(running) == {PORT}, f"{prod_image.name}: listening ports differ"
