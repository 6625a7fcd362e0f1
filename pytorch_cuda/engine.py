"""The Docker engine: found, or set up where the machine allows it (root on Debian)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from .errors import UserError
from .paths import STATE
from .progress import say

DOCKERD_LOG = STATE / "dockerd.log"


def _ping() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except (docker.errors.DockerException, OSError):
        return None


def _can_install() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists()


def apt_install(*packages: str) -> None:
    """Install Debian packages on the host (root on Debian only), saying so."""
    if not _can_install():
        raise UserError(f"{', '.join(packages)} is needed and this machine cannot install it "
                        "(root on Debian is required); install it and retry")
    say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            raise UserError(f"'{' '.join(cmd[:3])} {' '.join(packages)}' failed: {tail}")


def ensure_tool(command: str, package: str) -> str:
    """The path of a host tool, installing its Debian package when missing."""
    path = shutil.which(command)
    if not path:
        apt_install(package)
        path = shutil.which(command)
    if not path:
        raise UserError(f"{command} is still missing after installing {package}")
    return path


def ensure_engine() -> docker.DockerClient:
    """A client of a running engine; on root Debian, install and start dockerd when none answers."""
    client = _ping()
    if client:
        return client
    if os.environ.get("DOCKER_HOST") or not _can_install():
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
