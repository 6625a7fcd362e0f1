"""Server settings read from ``PTSERVE_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8000


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, floor: str = "") -> int:
    """``name`` as an integer of at least ``minimum`` (which is ``floor``'s value, if named)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        of = f", the value of {floor}" if floor else ""
        raise ValueError(f"{name}={value} must be at least {minimum}{of}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, positive: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name}={raw} must be a finite {kind} number")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={raw!r} must be 1 or 0")


def port_from_env(env: Mapping[str, str] = os.environ) -> int:
    """The listening port, ``PTSERVE_PORT`` (default 8000)."""
    port = _int(env, "PTSERVE_PORT", DEFAULT_PORT, 1)
    if port > 65535:
        raise ValueError(f"PTSERVE_PORT={port} is not a TCP port")
    return port


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset included)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    model_repository: Path = Path("/models")
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    workers: int = 2
    max_inflight: int = 64
    max_body_bytes: int = 64 * 1024 * 1024
    max_buffered_bytes: int = 256 * 1024 * 1024
    drain_seconds: float = 20.0
    body_timeout_seconds: float = 30.0
    header_timeout_seconds: float = 30.0
    require_gpu: bool = False
    allow_tf32: bool = False
    torch_threads: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from ``env``; raises ValueError naming a bad variable."""
        workers = _int(env, "PTSERVE_WORKERS", 2, 1)
        max_body = _int(env, "PTSERVE_MAX_BODY_BYTES", cls.max_body_bytes, 1)
        return cls(
            model_repository=Path(env.get("PTSERVE_MODEL_REPOSITORY") or "/models"),
            port=port_from_env(env),
            workers=workers,
            max_inflight=_int(env, "PTSERVE_MAX_INFLIGHT", 64, 1),
            max_body_bytes=max_body,
            max_buffered_bytes=_int(env, "PTSERVE_MAX_BUFFERED_BYTES",
                                    max(cls.max_buffered_bytes, max_body), max_body,
                                    "PTSERVE_MAX_BODY_BYTES"),
            drain_seconds=_float(env, "PTSERVE_DRAIN_SECONDS", 20.0),
            body_timeout_seconds=_float(env, "PTSERVE_BODY_TIMEOUT_SECONDS", 30.0, positive=True),
            header_timeout_seconds=_float(env, "PTSERVE_HEADER_TIMEOUT_SECONDS", 30.0,
                                          positive=True),
            require_gpu=_flag(env, "PTSERVE_REQUIRE_GPU"),
            allow_tf32=_flag(env, "PTSERVE_ALLOW_TF32"),
            torch_threads=_int(env, "PTSERVE_TORCH_THREADS", max(1, usable_cpus() // workers), 1),
        )
