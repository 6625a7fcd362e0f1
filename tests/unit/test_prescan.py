"""Layers scanned while a save is still being written (pure logic, no engine)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pytorch_cuda.repro import prescan
from pytorch_cuda.repro.normalize import normalize_images, scan_layer
from pytorch_cuda.repro.saved import open_saved_images

from test_normalize import EPOCH, two_images

WHEN = 1_700_000_000


def write_slowly(path: Path, data: bytes, scanner: prescan.SaveScanner, chunk: int,
                 stop_at: int | None = None) -> None:
    """Write `data` to `path` in chunks as a save does, telling the scanner each time."""
    with path.open("wb") as out:
        for start in range(0, len(data) if stop_at is None else stop_at, chunk):
            out.write(data[start:start + chunk])
            out.flush()
            scanner.grow(out.tell())
            time.sleep(0.001)


@pytest.fixture(autouse=True)
def small_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prescan, "MIN_LAYER_BYTES", 1)


@pytest.mark.parametrize("layout", ["legacy", "oci"])
@pytest.mark.parametrize("mtime", ["clamp", WHEN + 50])
def test_scanned_while_written_as_after(tmp_path: Path, layout: str, mtime: object) -> None:
    data, _ = two_images(WHEN, layout)
    src = tmp_path / "save.tar"
    src.touch()
    with prescan.SaveScanner(src, EPOCH, mtime) as scanner:  # type: ignore[arg-type]
        write_slowly(src, data, scanner, 700)
    with open_saved_images(src) as images:
        layers = {(layer.offset, layer.size): layer for image in images for layer in image.layers}
        buffer = memoryview(bytearray(1 << 16))
        expected = {key: scan_layer(layer, EPOCH, mtime, buffer)  # type: ignore[arg-type]
                    for key, layer in layers.items()}
    assert scanner.results == expected and len(expected) == 3
    plain = normalize_images(src, tmp_path / "plain.tar", EPOCH, mtime=mtime)  # type: ignore[arg-type]
    fast = normalize_images(src, tmp_path / "fast.tar", EPOCH, mtime=mtime,  # type: ignore[arg-type]
                            scanned=scanner.results)
    assert [r.image_id for r in fast] == [r.image_id for r in plain]
    assert (tmp_path / "fast.tar").read_bytes() == (tmp_path / "plain.tar").read_bytes()


def test_scanned_layers_decide_present_chains_without_reading(tmp_path: Path) -> None:
    data, _ = two_images(WHEN, "legacy")
    (src := tmp_path / "save.tar").write_bytes(data)
    first = normalize_images(src, tmp_path / "first.tar", EPOCH)
    present = set(first[0].chain_ids) | set(first[1].chain_ids)
    with prescan.SaveScanner(src, EPOCH, "clamp") as scanner:
        scanner.grow(len(data))
    results = normalize_images(src, tmp_path / "again.tar", EPOCH, present_chains=present,
                               scanned=scanner.results)
    assert [r.image_id for r in results] == [r.image_id for r in first]
    assert {layer.action for r in results for layer in r.layers} <= {"present", "repeated"}


def test_a_save_that_fails_midway_stops_the_scan(tmp_path: Path) -> None:
    data, _ = two_images(WHEN, "legacy")
    src = tmp_path / "save.tar"
    src.touch()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="engine went away"):
        with prescan.SaveScanner(src, EPOCH, "clamp") as scanner:
            write_slowly(src, data, scanner, 512, stop_at=len(data) // 2)
            raise RuntimeError("engine went away")
    assert time.monotonic() - started < 30
    assert not [t for t in threading.enumerate() if t.name == "save-scanner"]
    assert len(scanner.results) < 3


def test_a_truncated_archive_ends_the_scan(tmp_path: Path) -> None:
    data, _ = two_images(WHEN, "legacy")
    (src := tmp_path / "save.tar").write_bytes(data[: len(data) // 2])
    with prescan.SaveScanner(src, EPOCH, "clamp") as scanner:
        scanner.grow(len(data) // 2)
    assert len(scanner.results) < 3


def test_members_that_are_not_layer_tars_are_skipped(tmp_path: Path) -> None:
    data, _ = two_images(WHEN, "oci")  # its config and manifest blobs are JSON
    (src := tmp_path / "save.tar").write_bytes(data)
    with prescan.SaveScanner(src, EPOCH, "clamp") as scanner:
        scanner.grow(len(data))
    assert len(scanner.results) == 3
