"""What a build borrows from the host: the CA bundle and proxy settings (builder stages only)."""

from __future__ import annotations

import os
from pathlib import Path

from pytorch_cuda.core import pipconfig
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.lock import indexes
from pytorch_cuda.matrix import Cell

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


def build_args(cell: Cell) -> dict[str, str]:
    """Proxy variables (which Docker keeps out of history) and the cell's indexes."""
    args = {}
    for var in PROXY_VARS:
        for name in (var, var.lower()):
            if os.environ.get(name):
                args[name] = os.environ[name]
    url, _ = indexes.cell_index(cell)
    if url:
        args["PIP_INDEX_URL"] = url
    if cell.cuda.index != "default" and indexes.default_index():
        args["PIP_EXTRA_INDEX_URL"] = indexes.default_index() or ""
    return args


def secret_values(cell: Cell) -> list[str]:
    """Build-time values that must never appear in a final image."""
    return [v for k, v in build_args(cell).items() if k.upper() in PROXY_VARS and v]
