"""The Debian archive: mirrors from the host's apt configuration, package indexes, versions."""

from __future__ import annotations

import functools
import lzma
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.progress import say

APT_DIR = Path("/etc/apt")


SNAPSHOT_ENV = "PTC_DEBIAN_SNAPSHOT_MIRROR"


@dataclass(frozen=True)
class Mirrors:
    """Where the Debian archive and its security archive are served (a snapshot or live)."""

    archive: str
    security: str
    snapshot: str | None = None  # the archive time a snapshot mirror serves; None: live

    def entries(self, suite: str) -> list[tuple[str, str, str]]:
        """(base URL, distribution, component) of a suite, its updates and its security archive."""
        return [(self.archive, suite, "main"), (self.archive, f"{suite}-updates", "main"),
                (self.security, f"{suite}-security", "main")]

    def sources(self, suite: str) -> list[str]:
        """One-line apt sources; a snapshot's Release files are old on purpose (no Valid-Until)."""
        option = "[check-valid-until=no] " if self.snapshot else ""
        return [f"deb {option}{base} {dist} {component}"
                for base, dist, component in self.entries(suite)]

    def describe(self) -> str:
        """Which archive this is, for progress lines."""
        if self.snapshot:
            return f"the Debian archive as of {self.snapshot} (snapshot mirror {self.archive})"
        return (f"the live Debian mirror {self.archive} (no snapshot mirror configured: pins can "
                f"leave it; see --snapshot-mirror or {SNAPSHOT_ENV})")


def snapshot_mirrors(base: str, moment: datetime, suites: list[str], option: str) -> Mirrors:
    """A snapshot mirror's archive of `moment` (the URL layout of Debian's snapshot archive), checked to answer."""
    if not re.match(r"^https?://[^\s/]+", base):
        raise UserError(f"{option} {base}: not an http(s) URL")
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    root = base.rstrip("/")
    mirrors = Mirrors(f"{root}/archive/debian/{stamp}", f"{root}/archive/debian-security/{stamp}",
                      moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    for suite in suites:
        url = f"{mirrors.archive}/dists/{suite}/Release"
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                response.read(1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"{option} {base}: the snapshot mirror does not answer for {suite} "
                            f"at {mirrors.snapshot} ({url}: {reason})") from None
    return mirrors


def resolve_mirrors(moment: datetime, suites: list[str], archive: str | None = None,
                    security: str | None = None, snapshot: str | None = None) -> Mirrors:
    """The archive every step uses: a snapshot mirror of `moment` (option, else PTC_DEBIAN_SNAPSHOT_MIRROR
    unless --mirror is given), else the host's live mirror; said once in the progress output."""
    if snapshot:
        mirrors = snapshot_mirrors(snapshot, moment, suites, "--snapshot-mirror")
    elif os.environ.get(SNAPSHOT_ENV) and not archive:
        mirrors = snapshot_mirrors(os.environ[SNAPSHOT_ENV], moment, suites, SNAPSHOT_ENV)
    else:
        mirrors = host_mirrors(archive, security)
    say(f"using {mirrors.describe()}")
    return mirrors


def host_mirrors(archive: str | None = None, security: str | None = None) -> Mirrors:
    """Mirrors from options, else PTC_DEBIAN_MIRROR / PTC_DEBIAN_SECURITY_MIRROR, else apt's config."""
    archive = archive or os.environ.get("PTC_DEBIAN_MIRROR")
    security = security or os.environ.get("PTC_DEBIAN_SECURITY_MIRROR")
    if not (archive and security):
        found_archive, found_security = _from_apt_config()
        archive = archive or found_archive
        security = security or found_security
    if not archive:
        raise UserError(
            "no Debian mirror is configured: give --mirror URL or set PTC_DEBIAN_MIRROR "
            f"(none found in {APT_DIR}/sources.list*)"
        )
    return Mirrors(archive.rstrip("/"), (security or archive).rstrip("/"))


def _from_apt_config() -> tuple[str | None, str | None]:
    """The first archive and security URIs named in the host's apt sources."""
    entries: list[tuple[str, list[str]]] = []
    for path in sorted(APT_DIR.glob("sources.list.d/*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in stanza.splitlines()
                                if line and not line.startswith(("#", " ")))
            )
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    entries.append((uri, fields.get("suites", "").split()))
    list_files = [APT_DIR / "sources.list", *sorted(APT_DIR.glob("sources.list.d/*.list"))]
    for path in list_files:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                match = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if match:
                    entries.append((match.group(1), [match.group(2)]))
    archive = next((u for u, suites in entries
                    if any(not s.endswith("-security") for s in suites)), None)
    security = next((u for u, suites in entries
                     if any(s.endswith("-security") for s in suites)), None)
    return archive, security


@functools.lru_cache(maxsize=8)
def _indexes(mirrors: Mirrors, suite: str, arch: str) -> tuple[tuple[str, str], ...]:
    """(archive base URL, Packages text) of a suite, its updates and security archives."""
    found = []
    for base, dist, component in mirrors.entries(suite):
        url = f"{base}/dists/{dist}/{component}/binary-{arch}/Packages.xz"
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                text = lzma.decompress(response.read()).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and dist != suite:
                continue  # a suite without updates yet
            raise UserError(f"cannot read the package index {url}: {exc}") from None
        except (urllib.error.URLError, OSError, lzma.LZMAError) as exc:
            raise UserError(f"cannot read the package index {url}: {exc}") from None
        found.append((base, text))
    return tuple(found)


@functools.lru_cache(maxsize=8)
def fetch_versions(mirrors: Mirrors, suite: str, arch: str = "amd64") -> dict[str, frozenset[str]]:
    """Every version of every package in a suite, its updates and security archives."""
    found: dict[str, set[str]] = {}
    for _, text in _indexes(mirrors, suite, arch):
        for fields in parse_packages(text):
            found.setdefault(fields["Package"], set()).add(fields["Version"])
    return {name: frozenset(versions) for name, versions in found.items()}


def newest(versions: frozenset[str]) -> str:
    """The highest of some Debian versions."""
    return functools.reduce(lambda a, b: a if compare_versions(a, b) >= 0 else b, versions)


def fetch_packages(mirrors: Mirrors, suite: str, arch: str = "amd64") -> dict[str, str]:
    """The newest version of every package in a suite, its updates and security archives."""
    return {name: newest(v) for name, v in fetch_versions(mirrors, suite, arch).items()}


def locate_deb(mirrors: Mirrors, suite: str, name: str, version: str,
               arch: str = "amd64") -> tuple[str, str]:
    """(URL, SHA-256) of one version of a package's .deb in a suite's archives."""
    for base, text in _indexes(mirrors, suite, arch):
        for fields in parse_packages(text):
            if fields["Package"] == name and fields["Version"] == version and "SHA256" in fields:
                return f"{base}/{fields['Filename']}", fields["SHA256"]
    raise UserError(f"{name}={version} is not in Debian {suite} at {mirrors.archive}")


def deb_name(name: str, version: str, arch: str = "amd64") -> str:
    """Debian's file name of a package version's .deb (no epoch)."""
    return f"{name}_{version.partition(':')[2] or version}_{arch}.deb"


_FIELDS = ("Package", "Version", "Filename", "SHA256")


def parse_packages(text: str) -> list[dict[str, str]]:
    """The Package, Version, Filename and SHA256 fields of each stanza of a Packages index that
    names a package and a version."""
    stanzas = []
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and key in _FIELDS:
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            stanzas.append(fields)
    return stanzas


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256 if char else 0


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or revision string."""
    while a or b:
        a_text = re.match(r"^[^0-9]*", a).group(0)
        b_text = re.match(r"^[^0-9]*", b).group(0)
        for i in range(max(len(a_text), len(b_text))):
            diff = _order(a_text[i] if i < len(a_text) else "") - _order(
                b_text[i] if i < len(b_text) else "")
            if diff:
                return 1 if diff > 0 else -1
        a, b = a[len(a_text):], b[len(b_text):]
        a_num = re.match(r"^[0-9]*", a).group(0)
        b_num = re.match(r"^[0-9]*", b).group(0)
        if int(a_num or 0) != int(b_num or 0):
            return 1 if int(a_num or 0) > int(b_num or 0) else -1
        a, b = a[len(a_num):], b[len(b_num):]
    return 0


def compare_versions(a: str, b: str) -> int:
    """Compare two Debian versions like dpkg: -1, 0 or 1."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
        return int(epoch or 0), upstream, revision

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return 1 if ea > eb else -1
    return _compare_part(ua, ub) or _compare_part(ra, rb)
