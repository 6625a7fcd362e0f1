"""prod: a non-root image config, healthy under a hardened runtime, custom operators.

Users, files, packages, tools, processes and sockets: test_prod_infra.py (testinfra).
"""

from __future__ import annotations

from .conftest import CHECK_ENV, CHECK_MOUNTS, checks_command
from .infra import HARDENED


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
