"""testinfra on containers: a host per container, and the views the images have no tools for.

testinfra's docker backend runs every probe with ``docker exec`` (``docker://[user@]ID``).
``host.process`` needs ``ps`` and ``host.socket`` needs ``ss`` or ``netstat``: prod ships
none of them (and dev ships no ``ss``/``netstat``), so processes of prod and the listening
sockets of both variants are read from ``/proc`` through the same host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import testinfra
from docker.models.containers import Container
from testinfra.host import Host

if TYPE_CHECKING:
    from pytorch_cuda.matrix import Image

# prod's runtime flags from the README, plus resource limits.
HARDENED = {
    "read_only": True, "tmpfs": {"/tmp": "rw,size=256m"}, "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"], "pids_limit": 256, "mem_limit": "4g",
    "nano_cpus": 1_000_000_000,
}
TCP_LISTEN = "0A"
# One line per process: pid, real uid, comm, command line (NULs, tabs, newlines as spaces).
_PROC_TABLE = r"""for d in /proc/[0-9]*; do
  uid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "$d/status" 2>/dev/null) || continue
  [ -n "$uid" ] || continue
  printf '%s\t%s\t%s\t%s\n' "${d#/proc/}" "$uid" "$(cat "$d/comm" 2>/dev/null)" \
    "$(tr '\0\t\n' '   ' < "$d/cmdline" 2>/dev/null)"
done"""


def app_user(image: Image) -> dict:
    """The unprivileged user of both variants, as versions.yaml names it (name, uid)."""
    return image.cell.matrix.raw["project"]["user"]


def docker_host(container: Container, user: str | None = None) -> Host:
    """A testinfra host running commands in `container` as `user` (default: the image's USER)."""
    return testinfra.get_host(f"docker://{user}@{container.id}" if user else
                              f"docker://{container.id}")


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it."""

    pid: int
    uid: int
    comm: str
    args: str


def proc_table(host: Host) -> list[Proc]:
    """Every process of the host's PID namespace, read from /proc (no ps needed)."""
    procs = []
    for line in host.check_output(_PROC_TABLE).splitlines():
        pid, uid, comm, args = (line.split("\t") + ["", "", ""])[:4]
        procs.append(Proc(int(pid), int(uid), comm, args.strip()))
    return procs


def listening_tcp_ports(host: Host) -> set[int]:
    """TCP ports in LISTEN state (IPv4 and IPv6), read from /proc/net/tcp{,6}."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        file = host.file(table)
        if not file.exists:
            continue
        for row in file.content_string.splitlines()[1:]:
            fields = row.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(host: Host, container: Container, ports: set[int], timeout: float = 90) -> None:
    """Wait until every port in `ports` listens in the container; fail with its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ports <= listening_tcp_ports(host):
            return
        container.reload()
        if container.status != "running":
            break
        time.sleep(1)
    logs = container.logs().decode(errors="replace")[-3000:]
    image = container.attrs["Config"]["Image"]
    raise AssertionError(f"{image}: ports {sorted(ports)} do not listen:\n{logs}")
