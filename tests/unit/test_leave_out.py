"""The leave-out step's own logic, on this machine's files (no torch, no Docker)."""

from __future__ import annotations

import functools
import http.server
import importlib.machinery
import importlib.util
import os
import sys
import threading
from pathlib import Path

import pytest

from pytorch_cuda.build import wheelhouse
from pytorch_cuda.core.paths import IMAGE_FILES

SCRIPT = IMAGE_FILES / "build" / "leave-out"


@pytest.fixture(scope="module")
def leave_out():
    loader = importlib.machinery.SourceFileLoader("leave_out", str(SCRIPT))
    spec = importlib.util.spec_from_loader("leave_out", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _elf_with_needed() -> Path:
    """A shared library of this machine that needs another (the Python library or libssl)."""
    candidates = [Path(sys.executable).resolve(), *Path("/usr/lib/x86_64-linux-gnu").glob("libssl.so.*")]
    return next(p for p in candidates if p.is_file())


def test_reads_dt_needed_of_a_real_elf_file(leave_out):
    needed = leave_out.needed(_elf_with_needed())
    assert "libc.so.6" in needed or "libcrypto.so.3" in needed


def test_anything_but_elf_needs_nothing(leave_out, tmp_path):
    text = tmp_path / "notes.so.txt"
    text.write_text("not a library")
    assert leave_out.needed(text) == []


def test_a_stale_rule_stops_with_one_sentence(leave_out, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        leave_out.matches(tmp_path, "path:nothing/here")
    assert stopped.value.code == 1
    assert capsys.readouterr().out.strip() == (
        f"leave-out: rule path:nothing/here matches nothing in {tmp_path}; the list is stale")


def test_a_path_rule_takes_globs(leave_out, tmp_path):
    for name in ("nvidia/a/include/x.h", "nvidia/b/include/y.h", "nvidia/b/lib/z.so"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = leave_out.matches(tmp_path, "path:nvidia/*/include")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["nvidia/a/include",
                                                                  "nvidia/b/include"]


def test_path_rules_name_a_path_or_what_lies_under_it(leave_out):
    patterns = [p.split("/") for p in ("torch/include", "nvidia/*/include", "torch/bin/protoc*")]
    assert leave_out.named(("torch", "include", "ATen", "x.h"), patterns)
    assert leave_out.named(("nvidia", "cublas", "include", "cublas.h"), patterns)
    assert leave_out.named(("torch", "bin", "protoc-3.13.0.0"), patterns)
    assert not leave_out.named(("torch", "lib", "libtorch.so"), patterns)
    assert not leave_out.named(("nvidia", "include"), patterns)


def test_a_wheel_name_stands_for_every_tag_it_combines(leave_out):
    assert leave_out.wheel_tags("numpy-2.3.3-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl") == {
        "cp311-cp311-manylinux_2_27_x86_64", "cp311-cp311-manylinux_2_28_x86_64"}


def _demo(site: Path, wheels: Path, header: bytes, padding: int = 0, record_pyc: bool = True) -> None:
    """An installed distribution `demo` (RECORD lists a header and, as pip writes it, the
    compiled module) and its wheel on a wheel page, `padding` bytes of other data stored before
    the header."""
    import base64
    import hashlib
    import py_compile
    import zipfile

    def record_hash(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    source = b"VALUE = 1\n"
    (site / "demo" / "include").mkdir(parents=True)
    (site / "demo" / "__init__.py").write_bytes(source)
    (site / "demo" / "include" / "demo.h").write_bytes(header)
    pyc = py_compile.compile(str(site / "demo" / "__init__.py"), doraise=True,
                             invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    pyc_path = Path(pyc).relative_to(site).as_posix()
    info = site / "demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "RECORD").write_text(
        f"demo/__init__.py,{record_hash(source)},{len(source)}\n"
        f"demo/include/demo.h,{record_hash(header)},{len(header)}\n"
        + (f"{pyc_path},{record_hash(Path(pyc).read_bytes())},\n" if record_pyc else "")
        + "demo-1.0.dist-info/RECORD,,\n")
    wheel = wheels / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", source)
        if padding:
            zf.writestr("demo/data.bin", os.urandom(padding))
        zf.writestr("demo/include/demo.h", b"#define DEMO 1\n")


class _Counting(wheelhouse._Handler):
    """The wheelhouse's handler, counting the bytes of file data it sends."""

    sent = 0

    def copyfile(self, source, outputfile) -> None:
        data = source.read()
        type(self).sent += len(data)
        outputfile.write(data)


@pytest.fixture()
def wheel_page(tmp_path: Path):
    """A wheel page served over HTTP from tmp_path/wheels by the wheelhouse's handler."""
    (tmp_path / "wheels").mkdir()
    _Counting.sent = 0
    handler = functools.partial(_Counting, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}/wheels/"
        server.shutdown()


def test_files_left_out_come_back_from_the_locked_wheel(leave_out, tmp_path, wheel_page, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    site = tmp_path / "site"
    _demo(site, tmp_path / "wheels", b"#define DEMO 1\n")
    pyc = next((site / "demo" / "__pycache__").glob("*.pyc"))
    (site / "demo" / "include" / "demo.h").unlink()
    pyc.unlink()
    assert leave_out.restore_files(site, wheel_page, [["demo", "include"], ["demo", "__pycache__"]]) == 2
    assert (site / "demo" / "include" / "demo.h").read_bytes() == b"#define DEMO 1\n"
    assert pyc.exists()
    assert leave_out.restore_files(site, wheel_page, [["demo", "include"]]) == 0  # nothing missing


def test_a_module_put_back_is_compiled_though_record_omits_its_pyc(leave_out, tmp_path, wheel_page,
                                                                  monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")  # as uv installs: RECORD lists no .pyc
    site = tmp_path / "site"
    _demo(site, tmp_path / "wheels", b"#define DEMO 1\n", record_pyc=False)
    pyc = next((site / "demo" / "__pycache__").glob("*.pyc"))
    compiled = pyc.read_bytes()
    (site / "demo" / "__init__.py").unlink()
    pyc.unlink()
    assert leave_out.restore_files(site, wheel_page, [["demo", "__init__.py"]]) == 1
    assert pyc.read_bytes() == compiled  # hash-based, as the installer wrote it


def test_only_the_members_put_back_cross_the_network(leave_out, tmp_path, wheel_page, monkeypatch):
    monkeypatch.setattr(leave_out.RemoteFile, "BLOCK", 64 << 10)
    site = tmp_path / "site"
    _demo(site, tmp_path / "wheels", b"#define DEMO 1\n", padding=4 << 20)
    (site / "demo" / "include" / "demo.h").unlink()
    assert leave_out.restore_files(site, wheel_page, [["demo", "include"]]) == 1
    assert (site / "demo" / "include" / "demo.h").read_bytes() == b"#define DEMO 1\n"
    wheel = tmp_path / "wheels" / "demo-1.0-py3-none-any.whl"
    assert wheel.stat().st_size > 4 << 20 and _Counting.sent < 200 << 10


def test_a_server_without_byte_ranges_stops_the_step(leave_out, tmp_path, capsys):
    site = tmp_path / "site"
    (tmp_path / "wheels").mkdir()
    _demo(site, tmp_path / "wheels", b"#define DEMO 1\n")
    (site / "demo" / "include" / "demo.h").unlink()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *_: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        page = f"http://127.0.0.1:{server.server_address[1]}/wheels/"
        with pytest.raises(SystemExit):
            leave_out.restore_files(site, page, [["demo", "include"]])
        server.shutdown()
    assert "does not serve byte ranges (HTTP 200)" in capsys.readouterr().out


def test_a_file_that_is_not_the_recorded_one_stops_the_step(leave_out, tmp_path, wheel_page, capsys):
    site = tmp_path / "site"
    _demo(site, tmp_path / "wheels", b"#define OTHER 2\n")  # RECORD names other bytes
    (site / "demo" / "include" / "demo.h").unlink()
    with pytest.raises(SystemExit):
        leave_out.restore_files(site, wheel_page, [["demo", "include"]])
    assert "demo/include/demo.h put back for demo does not match its RECORD" in capsys.readouterr().out


def test_a_compiled_file_put_back_is_hash_based(leave_out, tmp_path, wheel_page, monkeypatch, capsys):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)  # timestamp-based: not reproducible
    site = tmp_path / "site"
    _demo(site, tmp_path / "wheels", b"#define DEMO 1\n")
    next((site / "demo" / "__pycache__").glob("*.pyc")).unlink()
    with pytest.raises(SystemExit):
        leave_out.restore_files(site, wheel_page, [["demo", "__pycache__"]])
    assert "is not a hash-based .pyc of its source" in capsys.readouterr().out
