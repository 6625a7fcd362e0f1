"""Python package indexes, taken from the host's configuration or the environment."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from .matrix import Cell

PIP_CONFIG_FILES = (
    Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"),
    Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf",
)


def default_index() -> str | None:
    """The host's default index URL, or None for the installer's built-in default."""
    for var in ("PTC_INDEX_DEFAULT", "PIP_INDEX_URL", "UV_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var]
    for path in (Path(os.environ["PIP_CONFIG_FILE"]),) if os.environ.get("PIP_CONFIG_FILE") else (
        PIP_CONFIG_FILES
    ):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in ("install", "global"):
            if parser.has_option(section, "index-url"):
                return parser.get(section, "index-url")
    return None


def env_var(index: str) -> str:
    """The environment variable that gives a named index's URL."""
    return "PTC_INDEX_" + index.upper().replace("-", "_")


def cell_index(cell: Cell) -> tuple[str | None, str | None]:
    """(URL of the cell's wheel index or None for the default, missing-variable name or None)."""
    if cell.cuda.index == "default":
        return default_index(), None
    url = os.environ.get(env_var(cell.cuda.index))
    return (url, None) if url else (None, env_var(cell.cuda.index))
