"""The host's wheelhouse: every locked wheel, downloaded once on the host by pip and checked against
the lock's hashes, served to build steps over the engine's bridge network. So no build step needs
the network, a proxy or the build CA to install Python packages, a final stage installs its
environment where it ends up (no builder stage, no copy of it), and a machine that has the wheels
rebuilds without reaching an index. It also holds the locked .deb of the package manager, which
the base does not keep and dev installs back."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import IMAGE_FILES, LOCKS, ROOT, STATE, TOOLS_LOCK
from pytorch_cuda.core.progress import human_bytes, say
from pytorch_cuda.lock import debian, indexes, locking
from pytorch_cuda.matrix import Cell

DEFAULT = STATE / "wheelhouse"
SERVED_INPUTS = (LOCKS, IMAGE_FILES / "build")
"""What build steps fetch by SHA-256 from the wheelhouse's inputs folder (a final stage must not
COPY its inputs: a COPY into an existing folder stamps it with the time of the copy)."""
HASHES_FILE = ".hashes.json"


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def platforms() -> list[str]:
    """The wheel platforms the locks were resolved for (locking.PLATFORM and every older one)."""
    arch, _, tag = locking.PLATFORM.partition("-")
    newest = int(tag.rsplit("_", 1)[1])
    return [*(f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)),
            f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]


def wheel_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 -> file name of the wheels in a folder (hashes kept beside them, by size and mtime)."""
    cache_path = folder / HASHES_FILE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    fresh = {}
    stale = []
    for path in sorted(folder.glob("*.whl")):
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        entry = cache.get(path.name)
        if entry and entry[:2] == key:
            fresh[path.name] = entry
        else:
            stale.append((path, key))
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # hashlib hashes large blocks without the GIL
        for (path, key), sha in zip(stale, pool.map(sha256_file, (p for p, _ in stale)), strict=True):
            fresh[path.name] = [*key, sha]
    if fresh != cache:
        cache_path.write_text(json.dumps(fresh, indent=0, sort_keys=True))
    return {entry[2]: name for name, entry in fresh.items()}


def runs_here(filename: str) -> bool:
    """Whether a wheel's platform tags name the locks' platform (or any)."""
    return bool(set(filename.removesuffix(".whl").split("-")[-1].split(".")) & {*platforms(), "any"})


def compatible(filename: str, python: str) -> bool:
    """Whether a wheel (by its file name's tags) installs on CPython `python` (e.g. '3.11') on
    the locks' platform."""
    pys, abis = (set(part.split(".")) for part in filename.removesuffix(".whl").split("-")[-3:-1])
    version = python.replace(".", "")
    minor = int(python.split(".")[1])
    cpython = {f"cp{version}"} | ({f"cp3{m}" for m in range(minor + 1)} if "abi3" in abis else set())
    return (bool(pys & (cpython | {"py3", f"py{version}"}))
            and bool(abis & {f"cp{version}", "abi3", "none"}) and runs_here(filename))


def locked(cell: Cell) -> dict[Path, list[locking.Locked]]:
    """The locked requirements a build of the cell installs, per lock file: its runtime, dev and
    prod locks, and the uv that installs them."""
    return {**{locking.pip_lock_path(cell, group): locking.locked_requirements(
                   locking.pip_lock_path(cell, group)) for group in locking.GROUPS},
            TOOLS_LOCK: [locking.installer()]}


def missing(cell: Cell, have: dict[str, str],
            wanted: dict[Path, list[locking.Locked]] | None = None) -> dict[Path, list[locking.Locked]]:
    """Per lock file, the locked requirements (`wanted`, default: the cell's) with no wheel in
    `have` (SHA-256 -> file name) that matches one of their hashes and installs on the cell's
    Python."""
    usable = {sha for sha, name in have.items() if compatible(name, cell.os.python)}
    absent = {lock: [r for r in requirements if not r.hashes & usable]
              for lock, requirements in (wanted or locked(cell)).items()}
    return {lock: requirements for lock, requirements in absent.items() if requirements}


def fill(cell: Cell, ca: Path | None, mirrors: debian.Mirrors, root: Path = DEFAULT) -> None:
    """Download the locked wheels of a cell and its package manager's .deb where the wheelhouse
    lacks them; stop if any is still absent."""
    _fill_package_manager(cell, mirrors, root)
    wheels = root / names.WHEELS_PATH.strip("/")
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = locked(cell)
    absent = missing(cell, wheel_hashes(wheels), wanted)
    for lock, requirements in absent.items():
        say(f"wheelhouse: downloading {len(requirements)} locked wheel(s) of {cell.id} "
            f"{lock.relative_to(ROOT)} ({', '.join(r.name for r in requirements[:4])}"
            f"{', ...' if len(requirements) > 4 else ''})")
    if absent:
        # One download per lock file, side by side: one alone is bound by its per-file latency.
        with ThreadPoolExecutor(len(absent)) as pool:
            list(pool.map(lambda item: _download(cell, *item, ca, wheels), absent.items()))
    have = wheel_hashes(wheels)
    still = missing(cell, have, wanted)
    if still:
        lock, requirements = next(iter(still.items()))
        raise UserError(f"{lock.relative_to(ROOT)}: no wheel of {requirements[0].name}=="
                        f"{requirements[0].version} matches its hashes for this cell's Python "
                        "and platform")
    count = sum(len(requirements) for requirements in wanted.values())
    size = sum((wheels / name).stat().st_size for name in have.values())
    say(f"wheelhouse: the {count} locked wheels of {cell.id} are on this machine "
        f"({root.name}/ holds {human_bytes(size)})")


def _fill_package_manager(cell: Cell, mirrors: debian.Mirrors, root: Path) -> None:
    """Download the locked package-manager .deb from the Debian archive unless it is here."""
    locked_deb = locking.package_manager_deb(cell.os)
    if not locked_deb or not cell.os.suite:
        return
    version, sha = locked_deb
    name = debian.deb_name(names.PACKAGE_MANAGER, version)
    folder = root / names.DEBS_PATH.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists() and sha256_file(target) == sha:
        return
    url, _ = debian.locate_deb(mirrors, cell.os.suite, names.PACKAGE_MANAGER, version)
    say(f"wheelhouse: downloading {name}")
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise UserError(f"{locking.apt_lock_path(cell.os).relative_to(ROOT)}: "
                        f"{names.PACKAGE_MANAGER}={version} from {url} has sha256 {got}, not the "
                        "locked one")
    scratch = target.with_suffix(".tmp")
    scratch.write_bytes(data)
    scratch.replace(target)


def _download(cell: Cell, lock: Path, requirements: list[locking.Locked], ca: Path | None,
              wheels: Path) -> None:
    """pip download, hash-checked, into a scratch folder; only complete wheels move in."""
    python = cell.os.python
    with tempfile.TemporaryDirectory(dir=wheels.parent, prefix=".download-") as tmp:
        listing = Path(tmp) / "requirements.txt"
        listing.write_text("".join(r.text for r in requirements))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--only-binary", ":all:", "--progress-bar", "off", "--disable-pip-version-check",
               "--python-version", python, "--implementation", "cp",
               "--abi", f"cp{python.replace('.', '')}", "--abi", "abi3", "--abi", "none",
               *(arg for p in platforms() for arg in ("--platform", p)),
               "--dest", tmp, "-r", str(listing), *indexes.pip_index_args(cell)]
        if ca:
            cmd += ["--cert", str(ca)]
        # The host's pip settings (find-links, constraints, ...) must not change what is fetched.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            raise UserError(f"cannot download the locked wheels of {cell.id} "
                            f"({lock.relative_to(ROOT)}): {tail}")
        for path in Path(tmp).glob("*.whl"):
            path.replace(wheels / path.name)


def bridge_gateway(client: docker.DockerClient) -> str:
    """The host's address on the engine's default bridge network, which build steps reach."""
    try:
        configs = client.networks.get("bridge").attrs["IPAM"]["Config"] or []
    except docker.errors.NotFound:
        configs = []
    for config in configs:
        if config.get("Gateway"):
            return config["Gateway"].split("/")[0]
    raise UserError("the engine has no default 'bridge' network with a gateway address; build "
                    "steps reach the wheelhouse through it (start dockerd without --bridge=none)")


def extra_hosts(client: docker.DockerClient) -> dict[str, str]:
    """The host entry every build container gets: the wheelhouse's name -> the bridge gateway."""
    return {names.WHEELHOUSE_HOST: bridge_gateway(client)}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files and single byte ranges of them (dev's put-back reads a few members of a
    wheel), no access log on the terminal."""

    def send_head(self) -> io.BytesIO | None:  # type: ignore[override]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        if start > end:
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        return


def _publish_installer(root: Path) -> None:
    """Put the locked uv wheel that runs on the locks' platform at tools/uv.whl (if it is here)."""
    hashes = locking.installer().hashes
    folder = root / names.WHEELS_PATH.strip("/")
    found = sorted(name for sha, name in (wheel_hashes(folder) if folder.is_dir() else {}).items()
                   if sha in hashes and runs_here(name))
    if found:
        target = root / names.TOOLS_PATH.strip("/") / names.UV_WHEEL
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_suffix(".tmp")
        shutil.copyfile(folder / found[0], scratch)
        scratch.replace(target)


def _publish_inputs(root: Path) -> None:
    """Put every file a step may fetch at inputs/<sha256>, and the uv wheel at tools/uv.whl."""
    _publish_installer(root)
    folder = root / names.INPUTS_PATH.strip("/")
    folder.mkdir(parents=True, exist_ok=True)
    for top in SERVED_INPUTS:
        for path in sorted(p for p in top.rglob("*") if p.is_file()):
            target = folder / sha256_file(path)
            if not target.exists():
                scratch = target.with_suffix(".tmp")
                shutil.copyfile(path, scratch)
                scratch.replace(target)


@contextmanager
def serving(client: docker.DockerClient, root: Path = DEFAULT) -> Iterator[tuple[str, int]]:
    """Serve the wheelhouse on the bridge gateway at the fixed port while the block runs; the
    block gets the address it is served at."""
    gateway = bridge_gateway(client)
    _publish_inputs(root)
    try:
        server = http.server.ThreadingHTTPServer(
            (gateway, names.WHEELHOUSE_PORT), functools.partial(_Handler, directory=str(root)))
    except OSError as exc:
        raise UserError(f"cannot serve the wheelhouse on {gateway}:{names.WHEELHOUSE_PORT}, the "
                        f"engine's bridge ({exc.strerror}); another build of this project may be "
                        "running: wait for it to finish") from None
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
