"""The leave-out step's own logic, on this machine's files (no torch, no Docker)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

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
