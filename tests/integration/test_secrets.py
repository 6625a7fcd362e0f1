"""No build secret in any layer, the history or the config of a final image."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pytorch_cuda.build import buildenv
from pytorch_cuda.repro.saved import open_saved_image

PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
# A whole PEM block (libraries carry the BEGIN line alone as a parser constant).
PRIVATE_KEY_RE = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY)-----\s+"
    rb"[A-Za-z0-9+/=:,\-\s]{64,}?-----END \1-----")
MAX_SCANNED_FILE = 8 * 2**20  # certificates and keys are small files
DEBIAN_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


def _certs(data: bytes) -> set[bytes]:
    return {re.sub(rb"\s+", b"", m.group(1)) for m in PEM_RE.finditer(data)}


@pytest.fixture(scope="module")
def layers(any_image, client, tmp_path_factory):
    """(layer index, path, bytes) of every small regular file in every layer."""
    archive = tmp_path_factory.mktemp("save") / "image.tar"
    with archive.open("wb") as out:
        for chunk in client.api.get_image(any_image.ref()):
            out.write(chunk)
    files = []
    with open_saved_image(archive) as saved:
        for layer in saved.layers:
            for member in layer.members():
                name = member.name.removeprefix("./")
                if member.isfile() and member.size <= MAX_SCANNED_FILE:
                    data = os.pread(layer.fd, member.size, layer.offset + member.offset_data)
                    files.append((layer.index, name, data))
                elif not member.isfile():
                    files.append((layer.index, name, b""))
        config = saved.config
    archive.unlink()
    return files, config


def _public_roots() -> set[bytes]:
    """Public roots the host knows (its distribution's root store, certifi's and pip's), to tell
    them apart from a private CA an administrator added to the bundle."""
    import certifi
    from pip._vendor import certifi as pip_certifi

    stores = [Path(certifi.where()), Path(pip_certifi.where()),
              *Path("/usr/share/ca-certificates").rglob("*.crt")]
    return set().union(*(_certs(p.read_bytes()) for p in stores if p.is_file()))


@pytest.fixture(scope="module")
def build_only_certs(layers):
    """Certificates of the build's CA bundle that no public root store has: the private CA."""
    ca = buildenv.ca_bundle(None)
    if not ca:
        pytest.skip("no CA bundle was used by the build on this host")
    files, _ = layers
    debian = set().union(*(_certs(d) for _, p, d in files if p == DEBIAN_BUNDLE))
    extra = _certs(ca.read_bytes()) - debian - _public_roots()
    if not extra:
        pytest.skip("the build's CA bundle holds only public roots: no private CA to look for")
    return extra


def test_build_ca_is_in_no_layer(any_image, layers, build_only_certs):
    files, _ = layers
    leaked = [f"layer {i}: {p}" for i, p, d in files
              if p.endswith("build-ca.crt") or (_certs(d) & build_only_certs)]
    assert not leaked, f"{any_image.name}: the build's CA is in the image: {leaked[:5]}"


def test_history_and_config_hold_no_build_settings(any_image, layers, client):
    _, config = layers
    text = json.dumps(config["config"]) + json.dumps(config.get("history", []))
    values = buildenv.secret_values()
    for needle in ["PIP_CERT", "build-ca", "PIP_INDEX_URL=", *values]:
        assert needle not in text, f"{any_image.name}: {needle!r} is in the image config or history"
    env = " ".join(config["config"].get("Env") or [])
    assert not re.search(r"(?i)(proxy|token|password|secret)=", env), (
        f"{any_image.name}: ENV carries a proxy or secret: {env}")


def test_no_ssh_host_keys_in_any_layer(any_image, layers):
    files, _ = layers
    keys = [f"layer {i}: {p}" for i, p, _ in files
            if re.search(r"etc/ssh/ssh_host_.*_key", p) and not p.split("/")[-1].startswith(".wh.")]
    assert not keys, f"{any_image.name}: SSH host keys ship in the image: {keys}"


def test_prod_has_no_private_keys(any_image, layers):
    if any_image.variant != "prod":
        pytest.skip("dev ships third-party test fixtures (e.g. tornado's test key); prod must not")
    files, _ = layers
    # Compiled libraries are left out: gnutls carries a public self-test key in its code.
    found = [f"layer {i}: {p}" for i, p, d in files
             if not d.startswith(b"\x7fELF") and PRIVATE_KEY_RE.search(d)]
    assert not found, f"{any_image.name}: private keys in the image: {found[:5]}"


def test_scan_sees_the_debian_bundle(any_image, layers):
    """Guard against a scan that cannot fail: it must find the image's own certificates."""
    files, _ = layers
    assert any(p == DEBIAN_BUNDLE and _certs(d) for _, p, d in files), (
        f"{any_image.name}: the layer scan did not find {DEBIAN_BUNDLE}")
