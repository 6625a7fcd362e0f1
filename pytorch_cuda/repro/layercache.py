"""A persistent map from raw layer digests to their normalized form, to skip rewriting."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pytorch_cuda.repro.plan import MtimeMode

FORMAT_VERSION = 1
"""Bumped whenever the canonical form changes; part of every cache key."""


class LayerCache:
    """Remembers source diff_id -> normalized (diff_id, size) per epoch/mode.

    The map lives in ``<root>/layers.json``. A normalized layer maps to itself,
    so an image built on an already normalized base copies those layers
    verbatim. Normalized tars are kept in ``<root>/blobs/sha256/<hex>`` while
    they fit in ``keep_bytes``; adding one evicts the least recently used
    others down to that budget (a call keeping nothing evicts nothing).
    """

    def __init__(self, root: Path, keep_bytes: int = 0) -> None:
        self.root, self.keep_bytes = Path(root), keep_bytes
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._map = self._load()

    @staticmethod
    def key(diff_id: str, epoch: int, mtime: MtimeMode) -> str:
        return f"v{FORMAT_VERSION}:{mtime}:{epoch}:{diff_id}"

    def _load(self) -> dict[str, dict]:
        try:
            return json.loads((self.root / "layers.json").read_text())
        except FileNotFoundError:
            return {}

    def lookup(self, key: str) -> tuple[str, int] | None:
        found = self._map.get(key)
        return None if found is None else (found["diff_id"], found["size"])

    def kept(self, diff_id: str, size: int) -> Path | None:
        """The kept tar of a normalized layer, marked as just used."""
        path = self.blobs / diff_id.removeprefix("sha256:")
        try:
            if path.stat().st_size != size:
                return None
        except FileNotFoundError:
            return None
        os.utime(path)
        return path

    def has_room(self, size: int, pending: Mapping[str, Path]) -> bool:
        """Whether a tar of ``size`` fits the budget next to ``pending`` ones."""
        taken = sum(path.stat().st_size for path in pending.values())
        return taken + size <= self.keep_bytes

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def record(
        self, entries: Mapping[str, tuple[str, int]], kept: Mapping[str, Path]
    ) -> None:
        """Merge map entries and move kept tars (digest -> temp file) in place."""
        with self._locked():
            self._map = self._load()
            for key, (diff_id, size) in entries.items():
                self._map[key] = {"diff_id": diff_id, "size": size}
            path = self.root / "layers.json"
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._map, indent=1, sort_keys=True))
            os.replace(temporary, path)
            for digest, file in kept.items():
                os.replace(file, self.blobs / digest.removeprefix("sha256:"))
            if kept:
                self._evict({digest.removeprefix("sha256:") for digest in kept})

    def _evict(self, protect: set[str]) -> None:
        files = [p for p in self.blobs.iterdir() if not p.name.startswith(".")]
        stats = sorted(
            ((p.stat().st_mtime, p.stat().st_size, p) for p in files),
            key=lambda item: item[0],
        )
        total = sum(size for _, size, _ in stats)
        for _, size, path in stats:
            if total <= self.keep_bytes:
                break
            if path.name not in protect:
                path.unlink()
                total -= size
