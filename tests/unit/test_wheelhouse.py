"""The wheelhouse: which locked wheels a cell lacks, and serving it (no Docker, no index)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import urllib.request
from pathlib import Path

import pytest

from pytorch_cuda.build import wheelhouse
from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import TOOLS_LOCK, VERSIONS
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import load_matrix


@pytest.mark.parametrize(("filename", "python", "ok"), [
    ("torch-2.8.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl", "3.11", True),
    ("torch-2.8.0+cu128-cp313-cp313-manylinux_2_28_x86_64.whl", "3.11", False),
    ("six-1.17.0-py2.py3-none-any.whl", "3.13", True),
    ("numpy-2.3.3-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.11", True),
    ("markupsafe-3.0.4-cp311-cp311-macosx_11_0_arm64.whl", "3.11", False),
    ("cryptography-46.0.0-cp39-abi3-manylinux_2_28_x86_64.whl", "3.11", True),
    ("cryptography-46.0.0-cp39-abi3-manylinux_2_34_x86_64.whl", "3.11", False),  # newer than the locks' platform
])
def test_a_wheel_is_usable_only_on_the_locks_python_and_platform(filename, python, ok):
    assert wheelhouse.compatible(filename, python) is ok


def test_the_platforms_start_at_the_locks_platform():
    arch, _, tag = locking.PLATFORM.partition("-")
    assert wheelhouse.platforms()[0] == f"{tag}_{arch}"
    assert f"manylinux2014_{arch}" in wheelhouse.platforms()


def test_a_wheel_counts_only_when_its_hash_is_locked_and_it_installs_here():
    cell = load_matrix(VERSIONS).default_cell
    tag = f"cp{cell.os.python.replace('.', '')}"
    locks = {locking.pip_lock_path(cell, g) for g in locking.GROUPS} | {TOOLS_LOCK}
    locked = wheelhouse.locked(cell)
    assert set(locked) == locks and locked[TOOLS_LOCK] == [locking.installer()]
    assert set(wheelhouse.missing(cell, {})) == locks
    every = {sha: f"x-1-{tag}-{tag}-manylinux_2_17_x86_64.whl"
             for rs in locked.values() for r in rs for sha in r.hashes}
    assert wheelhouse.missing(cell, every) == {}
    wrong_python = {sha: "x-1-cp39-cp39-manylinux_2_17_x86_64.whl" for sha in every}
    assert set(wheelhouse.missing(cell, wrong_python)) == locks
    runtime = locking.pip_lock_path(cell, "runtime")
    torch = next(r for r in locked[runtime] if r.name == "torch")
    without_torch = {sha: name for sha, name in every.items() if sha not in torch.hashes}
    assert wheelhouse.missing(cell, without_torch) == {runtime: [torch]}


def test_hashes_are_kept_beside_the_wheels_and_follow_a_changed_file(tmp_path: Path):
    wheel = tmp_path / "a-1-py3-none-any.whl"
    wheel.write_bytes(b"one")
    first = wheelhouse.wheel_hashes(tmp_path)
    assert first == {wheelhouse.sha256_file(wheel): wheel.name}
    assert (tmp_path / wheelhouse.HASHES_FILE).exists()
    wheel.write_bytes(b"other content")
    assert wheelhouse.wheel_hashes(tmp_path) == {wheelhouse.sha256_file(wheel): wheel.name}


class _Networks:
    def __init__(self, gateway: str | None) -> None:
        self.gateway = gateway

    def get(self, name: str):
        assert name == "bridge"
        config = [{"Subnet": "127.0.0.0/8", "Gateway": self.gateway}] if self.gateway else []
        return type("Network", (), {"attrs": {"IPAM": {"Config": config}}})()


class _Client:
    def __init__(self, gateway: str | None = "127.0.0.1") -> None:
        self.networks = _Networks(gateway)


def test_the_wheelhouse_serves_wheels_and_inputs_by_hash(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(names, "WHEELHOUSE_PORT", 0)  # any free port: read it back below
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"wheel")
    lock = locking.pip_lock_path(load_matrix(VERSIONS).default_cell, "runtime")
    sha = wheelhouse.sha256_file(lock)
    with wheelhouse.serving(_Client(), tmp_path) as (host, port):
        base = f"http://{host}:{port}"
        listing = urllib.request.urlopen(base + names.WHEELS_PATH).read().decode()
        assert 'href="a-1-py3-none-any.whl"' in listing
        assert urllib.request.urlopen(f"{base}{names.INPUTS_PATH}{sha}").read() == lock.read_bytes()
    with pytest.raises(OSError):
        urllib.request.urlopen(base + names.WHEELS_PATH, timeout=2)


def test_a_busy_port_is_one_sentence(tmp_path: Path, monkeypatch):
    with wheelhouse.http.server.HTTPServer(("127.0.0.1", 0), wheelhouse._Handler) as busy:
        monkeypatch.setattr(names, "WHEELHOUSE_PORT", busy.server_address[1])
        with pytest.raises(UserError, match=r"cannot serve the wheelhouse on 127\.0\.0\.1:\d+"):
            with wheelhouse.serving(_Client(), tmp_path):
                pass


def test_an_engine_without_a_bridge_is_one_sentence():
    with pytest.raises(UserError, match="no default 'bridge' network"):
        wheelhouse.bridge_gateway(_Client(None))


def test_a_locked_wheel_the_index_does_not_give_is_one_sentence(tmp_path: Path, monkeypatch):
    cell = load_matrix(VERSIONS).default_cell
    monkeypatch.setattr(wheelhouse, "_download", lambda *args: None)  # the index gave nothing
    monkeypatch.setattr(wheelhouse, "_fill_package_manager", lambda *args: None)
    with pytest.raises(UserError, match=rf"^locks/{cell.id}/runtime\.txt: no wheel of \S+==\S+ "
                                         r"matches its hashes for this cell's Python and platform$"):
        wheelhouse.fill(cell, None, debian.Mirrors("http://127.0.0.1:9", "http://127.0.0.1:9"),
                        tmp_path)


def test_the_lock_files_download_side_by_side_and_a_failure_is_one_sentence(tmp_path: Path,
                                                                              monkeypatch):
    cell = load_matrix(VERSIONS).default_cell
    locks = list(wheelhouse.locked(cell))
    together = threading.Barrier(len(locks), timeout=10)  # broken unless every lock's download runs at once
    dev = locking.pip_lock_path(cell, "dev")

    def download(cell_, lock, requirements, ca, wheels):
        together.wait()
        if lock == dev:
            raise UserError(f"cannot download the locked wheels of {cell_.id} (dev)")

    monkeypatch.setattr(wheelhouse, "_download", download)
    monkeypatch.setattr(wheelhouse, "_fill_package_manager", lambda *args: None)
    with pytest.raises(UserError, match=r"^cannot download the locked wheels of \S+ \(dev\)$"):
        wheelhouse.fill(cell, None, debian.Mirrors("http://127.0.0.1:9", "http://127.0.0.1:9"),
                        tmp_path)
    assert not together.broken


class _Archive(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def _locked_deb(tmp_path: Path, monkeypatch, data: bytes, locked_sha: str):
    """A cell whose lock names the package manager's .deb, served from a real HTTP archive."""
    cell = load_matrix(VERSIONS).default_cell
    version = locking.apt_pins(cell.os)[names.PACKAGE_MANAGER]
    pool = tmp_path / "archive"
    pool.mkdir()
    (pool / "the.deb").write_bytes(data)
    monkeypatch.setattr(locking, "package_manager_deb", lambda os_: (version, locked_sha))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Archive, directory=str(pool)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/the.deb"
    monkeypatch.setattr(debian, "locate_deb", lambda *args: (url, locked_sha))
    return cell, server


def test_the_package_manager_deb_is_downloaded_and_checked(tmp_path: Path, monkeypatch):
    data = b"a deb"
    cell, server = _locked_deb(tmp_path, monkeypatch, data, hashlib.sha256(data).hexdigest())
    with server:
        wheelhouse._fill_package_manager(cell, debian.Mirrors("x", "x"), tmp_path / "house")
        name = debian.deb_name(names.PACKAGE_MANAGER, locking.package_manager_deb(cell.os)[0])
        assert (tmp_path / "house" / names.DEBS_PATH.strip("/") / name).read_bytes() == data
        server.shutdown()  # present and intact: no second download
        wheelhouse._fill_package_manager(cell, debian.Mirrors("x", "x"), tmp_path / "house")


def test_a_package_manager_deb_with_another_hash_is_one_sentence(tmp_path: Path, monkeypatch):
    cell, server = _locked_deb(tmp_path, monkeypatch, b"tampered", "0" * 64)
    with server, pytest.raises(UserError, match=rf"^locks/{cell.os.name}/apt\.txt: "
                                                 rf"{names.PACKAGE_MANAGER}=\S+ from \S+ has sha256 "
                                                 r"[0-9a-f]{64}, not the locked one$"):
        wheelhouse._fill_package_manager(cell, debian.Mirrors("x", "x"), tmp_path / "house")
    assert not list((tmp_path / "house").rglob("*.deb"))
    server.shutdown()
