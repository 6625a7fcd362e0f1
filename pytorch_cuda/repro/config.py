"""The canonical image config: fixed times, no build-host fields, sorted compact JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

DROPPED_CONFIG_KEYS = ("container", "container_config", "docker_version")
"""Top-level config fields that describe the build host, not the image."""

DROPPED_RUN_KEYS = ("Hostname", "Image")
"""``config`` fields set per build (container ID, parent image ID)."""


def rfc3339(epoch: int) -> str:
    """``epoch`` as RFC 3339 UTC with whole seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(value: object) -> bytes:
    """Sorted keys, compact separators, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def normalize_config(
    config: Mapping,
    diff_ids: Sequence[str],
    epoch: int,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The canonical config bytes: fixed times, no host fields, new diff_ids."""
    result = {k: v for k, v in config.items() if k not in DROPPED_CONFIG_KEYS}
    created = rfc3339(epoch)
    result["created"] = created
    result["history"] = [
        {**item, "created": created} for item in config.get("history") or []
    ]
    run = {
        k: v
        for k, v in (config.get("config") or {}).items()
        if k not in DROPPED_RUN_KEYS
    }
    if labels:
        run["Labels"] = {**(run.get("Labels") or {}), **labels}
    result["config"] = run
    result["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return canonical_json(result)
