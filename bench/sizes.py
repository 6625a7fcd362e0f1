"""Image sizes: uncompressed, compressed as a registry stores them, shared, and the floor.

Compressed sizes are measured, not estimated: every layer that `docker save`
writes is streamed through gzip at level 6 (the level `docker push` uses). The
layer is cut into 1 MiB blocks that are deflated in parallel, each primed with
the 32 KiB before it, as pigz does: a valid gzip stream whose size is within
0.01 % of one zlib stream's and within 0.2 % of GNU gzip -6's. Results are kept
per layer digest in bench/work/, so a layer is compressed once, whatever image
shares it and however many runs ask.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import docker

from pytorch_cuda.core.progress import human_bytes, say

from .session import BenchError, Session

GZIP_LEVEL = 6
BLOCK = 1 << 20
WINDOW = 32 * 1024
GZIP_FRAME = 18  # 10-byte header and 8-byte trailer around the deflate stream
WORK = Path(__file__).resolve().parent / "work"
CACHE = WORK / "gzip-layers.json"
VENV_PREFIX = "/opt/venv"
# Libraries that load only once CUDA kernels run (measured on an H200 for TorchScript inference:
# cuDNN's sub-libraries and NVRTC's builtins): the CPU floor plus these is the GPU floor.
GPU_ONLY = ("nvidia/cudnn/lib/libcudnn_engines_precompiled.so.*",
            "nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.*",
            "nvidia/cudnn/lib/libcudnn_graph.so.*", "nvidia/cudnn/lib/libcudnn_heuristic.so.*",
            "nvidia/cudnn/lib/libcudnn_ops.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.*")


def _deflated(dictionary: bytes, block: bytes, last: bool) -> int:
    """Bytes of one raw-deflate block, primed with the data before it."""
    if dictionary:
        engine = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY,
                                  dictionary)
    else:
        engine = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    return len(engine.compress(block)) + len(engine.flush(zlib.Z_FINISH if last else
                                                            zlib.Z_SYNC_FLUSH))


class GzipCounter:
    """Counts the bytes of a gzip stream of everything fed to it, deflating in parallel."""

    def __init__(self, pool: ThreadPoolExecutor, workers: int) -> None:
        self.pool = pool
        self.inflight = 2 * workers
        self.pending: deque[Future] = deque()
        self.buffer = bytearray()
        self.previous = b""
        self.total = GZIP_FRAME

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) > BLOCK:
            self._submit(bytes(self.buffer[:BLOCK]), last=False)
            del self.buffer[:BLOCK]

    def _submit(self, block: bytes, last: bool) -> None:
        self.pending.append(self.pool.submit(_deflated, self.previous, block, last))
        self.previous = block[-WINDOW:]
        while len(self.pending) > self.inflight:
            self.total += self.pending.popleft().result()

    def finish(self) -> int:
        self._submit(bytes(self.buffer), last=True)
        while self.pending:
            self.total += self.pending.popleft().result()
        return self.total


def _load_cache() -> dict[str, dict]:
    try:
        return json.loads(CACHE.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _store_cache(cache: dict[str, dict]) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    tmp.replace(CACHE)


def _save_stream(client: docker.DockerClient, refs: list[str]):
    """The raw `docker save` tar stream of several images at once (shared layers once)."""
    api = client.api
    response = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
    api._raise_for_status(response)
    return response


def layer_sizes(client: docker.DockerClient, refs: list[str]) -> dict[str, dict]:
    """diff_id -> {tar_bytes, gzip_bytes} for every layer of `refs`, compressing only new ones."""
    wanted = {ref: client.images.get(ref).attrs["RootFS"]["Layers"] for ref in refs}
    cache = _load_cache()
    missing = {d for layers in wanted.values() for d in layers if d not in cache}
    if missing:
        to_save = [ref for ref, layers in wanted.items() if missing & set(layers)]
        workers = max(1, os.cpu_count() or 1)
        say(f"compressing {len(missing)} layer(s) of {', '.join(to_save)} with gzip -{GZIP_LEVEL} "
            f"({workers} threads; known layers come from {CACHE.name})")
        response = _save_stream(client, to_save)
        try:
            with ThreadPoolExecutor(workers) as pool, \
                    tarfile.open(fileobj=response.raw, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    digest, counter = hashlib.sha256(), GzipCounter(pool, workers)
                    started = last_note = time.monotonic()
                    done = 0
                    for chunk in iter(lambda: handle.read(BLOCK), b""):
                        digest.update(chunk)
                        counter.feed(chunk)
                        done += len(chunk)
                        if time.monotonic() - last_note > 30:
                            last_note = time.monotonic()
                            say(f"  ... {human_bytes(done)} of {human_bytes(member.size)} "
                                f"({done / (last_note - started) / 1e6:.0f} MB/s)")
                    gzip_bytes = counter.finish()
                    diff_id = f"sha256:{digest.hexdigest()}"
                    if diff_id in missing:
                        cache[diff_id] = {"tar_bytes": member.size, "gzip_bytes": gzip_bytes}
                        _store_cache(cache)
                        if member.size > 50_000_000:
                            seconds = time.monotonic() - started
                            say(f"  layer {diff_id[7:19]}: {human_bytes(member.size)} -> "
                                f"{human_bytes(gzip_bytes)} in {seconds:.0f} s")
        finally:
            response.close()
    absent = {d for layers in wanted.values() for d in layers if d not in cache}
    if absent:
        raise BenchError(f"docker save did not yield {len(absent)} layer(s) of {', '.join(refs)}")
    return {d: cache[d] for layers in wanted.values() for d in layers}


def image_figures(client: docker.DockerClient, ref: str, layers: dict[str, dict]) -> dict:
    """Uncompressed (engine) and compressed (sum of unique gzip layers) size of one image."""
    image = client.images.get(ref)
    unique = list(dict.fromkeys(image.attrs["RootFS"]["Layers"]))
    return {
        "ref": ref, "id": image.id, "size_bytes": image.attrs["Size"], "layers": len(unique),
        "layer_tar_bytes": sum(layers[d]["tar_bytes"] for d in unique),
        "compressed_bytes": sum(layers[d]["gzip_bytes"] for d in unique),
        "diff_ids": unique,
    }


def shared(a: dict, b: dict, layers: dict[str, dict]) -> dict:
    """Layers two images share (same diff_id): what a registry or a host stores once."""
    common = [d for d in a["diff_ids"] if d in set(b["diff_ids"])]
    return {"layers": len(common),
            "layer_tar_bytes": sum(layers[d]["tar_bytes"] for d in common),
            "compressed_bytes": sum(layers[d]["gzip_bytes"] for d in common),
            "same_base_layer": bool(a["diff_ids"]) and bool(b["diff_ids"])
            and a["diff_ids"][0] == b["diff_ids"][0]}


def floor(session: Session) -> dict:
    """Base image plus the files `import torch` and TorchScript really load, in the prod image."""
    say("finding the files torch loads in the prod image (the size floor)")
    probe = session.run_json(session.prod.ref(), ["python", "/bench/floor.py"],
                             **session.gpu_kwargs())
    loaded: dict[str, int] = probe["loaded"]
    venv = {p: s for p, s in loaded.items() if p.startswith(VENV_PREFIX)}
    others = sorted(p for p in loaded if not p.startswith(VENV_PREFIX))
    script = 'for f in "$@"; do [ -e "$f" ] && echo "$f"; done; true'
    out, _ = session.run(session.base_ref, ["sh", "-c", script, "sh", *others])
    in_base = set(out.split())
    added = {p: loaded[p] for p in others if p not in in_base}
    base_size = session.client.images.get(session.base_ref).attrs["Size"]
    venv_installed = sum(probe["installed"].values())
    site = f"{VENV_PREFIX}/lib/python{session.cell.os.python}/site-packages"
    out, _ = session.run(session.prod.ref(), ["sh", "-c", 'for f in $@; do [ -e "$f" ] && stat -c "%s %n" "$f"; done; true', "sh",
                                              *(f"{site}/{g}" for g in GPU_ONLY)],
                         entrypoint=[])
    gpu_only = {name: int(size) for size, name in (line.split(" ", 1) for line in out.split("\n")
                                                     if line.strip()) if name not in loaded}
    floor_bytes = base_size + sum(venv.values()) + sum(added.values())
    return {
        "devices": probe["devices"],
        "base_ref": session.base_ref,
        "base_bytes": base_size,
        "venv_loaded_bytes": sum(venv.values()),
        "venv_loaded_files": len(venv),
        "venv_installed_bytes": venv_installed,
        "venv_installed_files": sum(probe["installed_files"].values()),
        "other_loaded_bytes": sum(added.values()),
        "other_loaded_files": len(added),
        "other_loaded_in_base_files": len(others) - len(added),
        "floor_bytes": floor_bytes,
        "gpu_only_bytes": sum(gpu_only.values()),
        "gpu_only_files": sorted(gpu_only),
        "gpu_floor_bytes": floor_bytes + sum(gpu_only.values()),
        "largest_loaded": sorted(([p, s] for p, s in venv.items()), key=lambda x: -x[1])[:12],
        "largest_not_loaded": probe["largest_not_loaded"],
    }


def measure(session: Session, extra: dict[str, str] | None = None) -> dict:
    """Sizes of dev, prod (and `extra` name -> ref), what dev and prod share, and the floor."""
    refs = {"dev": session.dev.ref(), "prod": session.prod.ref(), **(extra or {})}
    layers = layer_sizes(session.client, [*refs.values(), session.base_ref])
    images = {name: image_figures(session.client, ref, layers) for name, ref in refs.items()}
    images["base"] = image_figures(session.client, session.base_ref, layers)
    result = {"images": images, "dev_prod_shared": shared(images["dev"], images["prod"], layers),
              "floor": floor(session)}
    if not result["dev_prod_shared"]["same_base_layer"]:
        session.notes.append("dev and prod were built on different base images (their first "
                             "layers differ), so they share no layers; `make image` rebuilds "
                             "both on the current base")
    return result
