"""Facts about the machine and the engine a report was measured on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone

import docker


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the system has them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpus() -> list[str]:
    """GPUs `nvidia-smi -L` lists on this machine (empty without one)."""
    if not shutil.which("nvidia-smi"):
        return []
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] \
        if proc.returncode == 0 else []


def machine(client: docker.DockerClient) -> dict:
    """CPU, memory, kernel, engine and date of this run."""
    info = client.info()
    version = client.version()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "engine_version": version.get("Version"),
        "engine_api_version": version.get("ApiVersion"),
        "storage_driver": info.get("Driver"),
        "cgroup_version": info.get("CgroupVersion"),
        "engine_cpus": info.get("NCPU"),
        "engine_memory_bytes": info.get("MemTotal"),
        "gpus": gpus(),
    }
