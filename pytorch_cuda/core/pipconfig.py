"""The host's pip configuration, read once for every option the driver takes from it."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

CONFIG_FILES = (
    Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"),
    Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf",
)


def config_files() -> tuple[Path, ...]:
    """The files pip reads: PIP_CONFIG_FILE when set, else the usual places."""
    if os.environ.get("PIP_CONFIG_FILE"):
        return (Path(os.environ["PIP_CONFIG_FILE"]),)
    return CONFIG_FILES


def option(name: str, sections: tuple[str, ...] = ("global",)) -> str | None:
    """The first value of `name` in the given sections of pip's configuration files, or None."""
    for path in config_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in sections:
            if parser.has_option(section, name):
                return parser.get(section, name)
    return None
