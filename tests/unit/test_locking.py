"""Pure parts of locking: Debian version order, package indexes, lock file surgery."""

from __future__ import annotations

import pytest

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.lock import debian
from pytorch_cuda.lock import locking
from pytorch_cuda.matrix import load_matrix


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
    text = ("Package: tini\nVersion: 0.19.0-1\nArchitecture: amd64\nFilename: pool/main/t/tini/"
            "tini_0.19.0-1_amd64.deb\nSHA256: ab12\n\nPackage: make\nVersion: 4.3-4.1\n\nFilename: x\n")
    assert debian.parse_packages(text) == [
        {"Package": "tini", "Version": "0.19.0-1", "Filename": "pool/main/t/tini/tini_0.19.0-1_amd64.deb",
         "SHA256": "ab12"},
        {"Package": "make", "Version": "4.3-4.1"}]


def test_a_deb_is_located_in_the_archive_that_has_it(monkeypatch):
    mirrors = debian.Mirrors("http://a.example/debian", "http://s.example/debian-security")
    index = "Package: apt\nVersion: {}\nFilename: pool/{}/apt.deb\nSHA256: {}\n"
    monkeypatch.setattr(debian, "_indexes", lambda *args: (
        (mirrors.archive, index.format("2.6.1", "main", "11")),
        (mirrors.security, index.format("2.6.2", "updates", "22"))))
    assert debian.locate_deb(mirrors, "bookworm", "apt", "2.6.2") == (
        "http://s.example/debian-security/pool/updates/apt.deb", "22")
    with pytest.raises(UserError, match=r"^apt=9 is not in Debian bookworm at http://a\.example/debian$"):
        debian.locate_deb(mirrors, "bookworm", "apt", "9")
    assert debian.deb_name("openssh-server", "1:9.2p1-2") == "openssh-server_9.2p1-2_amd64.deb"


def test_the_apt_lock_names_the_package_managers_deb_by_hash(tmp_path, monkeypatch):
    os_ = load_matrix(VERSIONS).default_cell.os
    lock = tmp_path / "apt.txt"
    lock.write_text(f"# pins\n{names.PACKAGE_MANAGER}=2.6.2 sha256:{'a' * 64}\ntini=0.19.0-1\n")
    monkeypatch.setattr(locking, "apt_lock_path", lambda os_: lock)
    assert locking.apt_pins(os_) == {names.PACKAGE_MANAGER: "2.6.2", "tini": "0.19.0-1"}
    assert locking.package_manager_deb(os_) == ("2.6.2", "a" * 64)
    lock.write_text(f"{names.PACKAGE_MANAGER}=2.6.2\n")
    assert locking.package_manager_deb(os_) is None


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
