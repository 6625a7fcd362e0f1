"""Pure parts of locking: Debian version order, package indexes, lock file surgery."""

from __future__ import annotations

import pytest

from pytorch_cuda.lock import debian
from pytorch_cuda.lock import locking


@pytest.mark.parametrize("a, b, expected", [
    ("1.0", "1.0", 0),
    ("1.0-1", "1.0-2", -1),
    ("1:1.0", "2.0", 1),
    ("1.0~rc1", "1.0", -1),
    ("3.11.2-6+deb12u9", "3.11.2-6+deb12u10", -1),
    ("2:4.0.2-3", "2:4.0.2-3", 0),
    ("590-2.1~deb12u2", "590-2.1", -1),
    ("1.0a", "1.0", 1),
])
def test_debian_version_order(a, b, expected):
    assert debian.compare_versions(a, b) == expected
    assert debian.compare_versions(b, a) == -expected


def test_parse_packages_index():
    text = "Package: tini\nVersion: 0.19.0-1\nArchitecture: amd64\n\nPackage: make\nVersion: 4.3-4.1\n"
    assert debian.parse_packages(text) == [("tini", "0.19.0-1"), ("make", "4.3-4.1")]


def test_mirrors_from_an_apt_config(tmp_path, monkeypatch):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    monkeypatch.setattr(debian, "APT_DIR", tmp_path)
    monkeypatch.delenv("PTC_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("PTC_DEBIAN_SECURITY_MIRROR", raising=False)
    mirrors = debian.host_mirrors()
    assert mirrors.archive == "http://mirror.example/debian"
    assert mirrors.sources("trixie")[2] == "deb http://mirror.example/debian-security trixie-security main"
    assert debian.host_mirrors("http://other.example/debian").archive == "http://other.example/debian"


def test_no_mirror_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "APT_DIR", tmp_path)
    monkeypatch.delenv("PTC_DEBIAN_MIRROR", raising=False)
    with pytest.raises(Exception, match="no Debian mirror is configured"):
        debian.host_mirrors()


def test_variant_lock_drops_runtime_packages():
    text = ("jinja2==3.1.6 \\\n    --hash=sha256:aa\nninja==1.13.0 \\\n    --hash=sha256:bb \\\n"
            "    --hash=sha256:cc\ntorch==2.8.0 \\\n    --hash=sha256:dd\n")
    kept = locking._without(text, {"torch", "jinja2"})
    assert kept == "ninja==1.13.0 \\\n    --hash=sha256:bb \\\n    --hash=sha256:cc\n"


def test_locked_versions_normalises_names(tmp_path):
    lock = tmp_path / "x.txt"
    lock.write_text("# header\nTyping_Extensions==4.16.0 \\\n    --hash=sha256:aa\n")
    assert locking.locked_versions(lock) == {"typing-extensions": "4.16.0"}
