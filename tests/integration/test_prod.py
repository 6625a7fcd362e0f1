"""prod: non-root, nothing serving does not need, healthy under a hardened runtime."""

from __future__ import annotations

import pytest

from .conftest import CHECK_ENV, CHECK_MOUNTS, checks_command

HARDENED = {
    "read_only": True, "tmpfs": {"/tmp": "rw,size=256m"}, "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"], "pids_limit": 256, "mem_limit": "4g",
    "nano_cpus": 1_000_000_000,
}
NOT_IN_PROD = ["sshd", "jupyter", "jupyter-lab", "gcc", "g++", "cc", "c++", "make", "apt",
               "apt-get", "pip", "pip3", "sudo"]


def test_image_config_user_is_not_root(prod_image, client):
    user = client.images.get(prod_image.ref()).attrs["Config"]["User"]
    assert user and user.split(":")[0] not in ("", "0", "root"), (
        f"{prod_image.name}: Config.User is {user!r}, expected a non-root user")


def test_runs_healthy_under_hardened_runtime(prod_image, containers, model_repo):
    helper = containers(prod_image)
    container = helper.start(volumes={str(model_repo): {"bind": "/models", "mode": "ro"}},
                             **HARDENED)
    status = helper.wait_healthy(container)
    logs = container.logs().decode(errors="replace")[-2000:]
    assert status == "healthy", f"{prod_image.name}: health is {status!r}:\n{logs}"
    uids = {line[0] for line in container.top(ps_args="-o uid,pid,comm")["Processes"]}
    assert uids and "0" not in uids, (
        f"{prod_image.name}: processes run as {sorted(uids)}, expected no root")


@pytest.mark.parametrize("tool", NOT_IN_PROD)
def test_tool_absent(prod_image, containers, tool):
    code, out = containers(prod_image).run(["sh", "-c", f"command -v {tool} || true"],
                                           entrypoint=[])
    assert out.strip() == "", f"{prod_image.name}: {tool} is present at {out.strip()}"


def test_no_setuid_or_setgid_files(prod_image, containers):
    code, out = containers(prod_image).run(
        ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"], entrypoint=[], user="0")
    assert out.strip() == "", f"{prod_image.name}: setuid/setgid files:\n{out}"


def test_check_code_is_not_shipped(prod_image, containers):
    code, out = containers(prod_image).run(
        ["python", "-c", "import importlib.util as u; print(u.find_spec('pytest'))"],
        entrypoint=[])
    assert out.strip() == "None", f"{prod_image.name}: pytest is installed ({out.strip()})"


def test_custom_operator_runs_only_with_its_library(prod_image, containers, custom_op_dir):
    helper = containers(prod_image)
    kwargs = {"volumes": {**CHECK_MOUNTS, str(custom_op_dir): {"bind": "/op", "mode": "ro"}},
              "environment": CHECK_ENV, "entrypoint": [], "read_only": True,
              "tmpfs": {"/tmp": ""}}
    loaded = helper.run_json(checks_command("customop", "run", "--dir", "/op"), **kwargs)
    assert loaded["ok"], f"{prod_image.name}: custom op model with its library: {loaded}"
    missing = helper.run_json(
        checks_command("customop", "run", "--dir", "/op", "--no-load"), **kwargs)
    assert missing["ok"], f"{prod_image.name}: without the library: {missing}"
    assert "Unknown builtin op" in str(missing), (
        f"{prod_image.name}: expected 'Unknown builtin op' without the library, got {missing}")
