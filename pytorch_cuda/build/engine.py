"""The Docker engine: found, or installed and started where the machine allows it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import docker
import docker.errors

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.host import apt_install, can_install
from pytorch_cuda.core.paths import STATE
from pytorch_cuda.core.progress import say

DOCKERD_LOG = STATE / "dockerd.log"


def _ping() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def ensure_engine() -> docker.DockerClient:
    """A client of a running engine; on root Debian, install and start dockerd when none answers."""
    client = _ping()
    if client:
        return client
    if os.environ.get("DOCKER_HOST") or not can_install():
        raise UserError("no Docker engine answers (is dockerd running and is DOCKER_HOST right?) "
                        "and this machine cannot start one itself (root on Debian is required)")
    dockerd = shutil.which("dockerd") or (apt_install("docker.io") or shutil.which("dockerd"))
    if not dockerd:
        raise UserError("dockerd is missing after installing docker.io")
    STATE.mkdir(parents=True, exist_ok=True)
    say(f"starting the Docker engine in the background (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen([dockerd], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        client = _ping()
        if client:
            say(f"Docker engine {client.version().get('Version', '?')} is up")
            return client
        time.sleep(1)
    raise UserError(f"dockerd did not answer within 90 s; see {DOCKERD_LOG}")
