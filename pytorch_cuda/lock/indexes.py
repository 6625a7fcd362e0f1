"""Python package indexes, taken from the host's configuration or the environment."""

from __future__ import annotations

import os

from pytorch_cuda.core import pipconfig
from pytorch_cuda.matrix import Cell


def default_index() -> str | None:
    """The host's default index URL, or None for the installer's built-in default."""
    for var in ("PTC_INDEX_DEFAULT", "PIP_INDEX_URL", "UV_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return pipconfig.option("index-url", ("install", "global"))


def env_var(index: str) -> str:
    """The environment variable that gives a named index's URL."""
    return "PTC_INDEX_" + index.upper().replace("-", "_")


def cell_index(cell: Cell) -> tuple[str | None, str | None]:
    """(URL of the cell's wheel index or None for the default, missing-variable name or None)."""
    if cell.cuda.index == "default":
        return default_index(), None
    url = os.environ.get(env_var(cell.cuda.index))
    return (url, None) if url else (None, env_var(cell.cuda.index))


def pip_index_args(cell: Cell) -> list[str]:
    """The installer's index options for a cell: its index, and the default one beside a named one."""
    url, _ = cell_index(cell)
    args = ["--index-url", url] if url else []
    if cell.cuda.index != "default" and default_index():
        args += ["--extra-index-url", default_index() or ""]
    return args
