"""The Debian archive a build reads: snapshot mirrors and pins checked over real HTTP."""

from __future__ import annotations

import http.server
import lzma
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import IMAGES, LOCKS
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import load_matrix

MOMENT = datetime(2026, 11, 28, tzinfo=timezone.utc)
STAMP = "20261128T000000Z"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tiny snapshot mirror on loopback: (base URL, its root folder)."""
    root = tmp_path / "mirror"

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def publish_suite(root: Path, suite: str, packages: dict[str, str]) -> None:
    """Write the Release and Packages.xz of `suite` (main) as of STAMP."""
    dists = root / "archive" / "debian" / STAMP / "dists" / suite
    (dists / "main" / "binary-amd64").mkdir(parents=True)
    (dists / "Release").write_text(f"Suite: {suite}\n")
    index = "\n".join(f"Package: {n}\nVersion: {v}\n" for n, v in packages.items())
    (dists / "main" / "binary-amd64" / "Packages.xz").write_bytes(lzma.compress(index.encode()))


def test_snapshot_mirror_of_the_matrix_time(archive):
    base, root = archive
    publish_suite(root, "bookworm", {})
    mirrors = debian.snapshot_mirrors(base, MOMENT, ["bookworm"], "--snapshot-mirror")
    assert mirrors.archive == f"{base}/archive/debian/{STAMP}"
    assert mirrors.security == f"{base}/archive/debian-security/{STAMP}"
    assert mirrors.sources("bookworm")[0] == (
        f"deb [check-valid-until=no] {base}/archive/debian/{STAMP} bookworm main")
    assert "as of 2026-11-28T00:00:00Z" in mirrors.describe()


def test_a_snapshot_mirror_that_does_not_answer_stops_lock(run_cli, archive):
    base, _ = archive  # serves nothing: every Release is missing
    before = sorted(LOCKS.rglob("*")), sorted(IMAGES.rglob("*"))
    code, _, err = run_cli("lock", "cu128-bookworm", "--snapshot-mirror", base)
    assert code == 2
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: --snapshot-mirror {base}: the snapshot mirror does not "
                           "answer for bookworm at 2026-11-28T00:00:00Z")
    assert (sorted(LOCKS.rglob("*")), sorted(IMAGES.rglob("*"))) == before


def test_snapshot_mirror_must_be_a_url(monkeypatch):
    monkeypatch.setenv(debian.SNAPSHOT_ENV, "mirror-without-scheme")
    with pytest.raises(UserError, match=f"{debian.SNAPSHOT_ENV} mirror-without-scheme: not an "
                                        "http"):
        debian.resolve_mirrors(MOMENT, ["bookworm"])


def test_a_pin_the_archive_never_had_stops_the_build(archive, monkeypatch, tmp_path):
    base, root = archive
    publish_suite(root, "bookworm", {"tini": "0.19.0-1", "libgomp1": "12.2.0-14+deb12u1"})
    matrix = load_matrix(Path(__file__).resolve().parents[2] / "versions.yaml")
    os_ = matrix.default_cell.os
    locks = tmp_path / "locks"
    monkeypatch.setattr(locking, "LOCKS", locks)
    lock = locking.apt_lock_path(os_)
    lock.parent.mkdir(parents=True)
    lock.write_text("# apt pins\ntini=0.19.0-1\nlibgomp1=12.2.0-14+deb12u99\n")
    mirrors = debian.snapshot_mirrors(base, MOMENT, ["bookworm"], "--snapshot-mirror")
    monkeypatch.setattr(locking, "ROOT", tmp_path)
    with pytest.raises(UserError) as caught:
        locking.check_apt_pins(os_, mirrors)
    message = str(caught.value)
    assert message.startswith("locks/bookworm/apt.txt: libgomp1=12.2.0-14+deb12u99 is not in "
                              "the snapshot of 2026-11-28T00:00:00Z (it has 12.2.0-14+deb12u1)")
    assert "--snapshot-mirror URL or PTC_DEBIAN_SNAPSHOT_MIRROR" in message
    assert "python build.py lock" in message
    lock.write_text("tini=0.19.0-1\nlibgomp1=12.2.0-14+deb12u1\n")
    locking.check_apt_pins(os_, mirrors)  # every pin there: no error
