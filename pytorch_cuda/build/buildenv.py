"""What a build borrows from the host: the CA bundle (for downloading wheels on the host) and proxy
settings (for apt in build steps)."""

from __future__ import annotations

import os
from pathlib import Path

from pytorch_cuda.core import pipconfig
from pytorch_cuda.core.errors import UserError

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY")


def ca_bundle(option: str | None) -> Path | None:
    """The CA bundle pip needs behind a TLS-inspecting proxy, or None."""
    if option:
        path = Path(option)
        if not path.is_file():
            raise UserError(f"--ca-cert {option}: no such file")
        return path
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return Path(os.environ[var])
    cert = pipconfig.option("cert")
    return Path(cert) if cert and Path(cert).is_file() else None


def build_args() -> dict[str, str]:
    """The host's proxy variables, for apt in build steps (Docker keeps them out of history)."""
    return {name: os.environ[name] for var in PROXY_VARS for name in (var, var.lower())
            if os.environ.get(name)}


def secret_values() -> list[str]:
    """Build-time values that must never appear in a final image."""
    return list(build_args().values())
