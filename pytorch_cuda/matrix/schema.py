"""A small declarative checker: every error names the file, the key path and the line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pytorch_cuda.core.errors import UserError

VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Str:
    """A string, optionally matching a pattern described as `what`."""

    pattern: re.Pattern[str] | None = None
    what: str = "a string"


@dataclass(frozen=True)
class Int:
    """An integer (not a bool)."""


@dataclass(frozen=True)
class Num:
    """A positive number (integer or decimal, not a bool)."""


@dataclass(frozen=True)
class ListOf:
    """A list whose items all match `item`."""

    item: Any
    min_items: int = 0


@dataclass(frozen=True)
class MapOf:
    """A mapping with free-form keys matching `key` and values matching `value`."""

    value: Any
    key: Str = Str(NAME_RE, "a lower-case name")
    min_items: int = 1


@dataclass(frozen=True)
class Fields:
    """A mapping with fixed keys; keys in `optional` may be absent."""

    fields: dict[str, Any]
    optional: frozenset[str] = frozenset()


VERSION = Str(VERSION_RE, "a version such as 2.8.0")
NAME = Str(NAME_RE, "a lower-case name")


class Checker:
    """Checks parsed YAML against a schema, reporting file, key path and line."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: str, message: str) -> UserError:
        """Build the error for `path`, with the nearest known line number."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        line = self.lines.get(probe)
        where = f" line {line}" if line else ""
        return UserError(f"{self.source}{where}: {path or 'top level'}: {message}")

    def check(self, value: Any, spec: Any, path: str = "") -> None:
        """Raise UserError at the first place `value` does not match `spec`."""
        if isinstance(spec, Str):
            if not isinstance(value, str):
                raise self.fail(path, f"must be {spec.what}, not {_kind(value)} {value!r}")
            if spec.pattern and not spec.pattern.match(value):
                raise self.fail(path, f"{value!r} is not {spec.what}")
        elif isinstance(spec, Int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(path, f"must be an integer, not {_kind(value)} {value!r}")
        elif isinstance(spec, Num):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise self.fail(path, f"must be a positive number, not {_kind(value)} {value!r}")
        elif isinstance(spec, ListOf):
            if not isinstance(value, list):
                raise self.fail(path, f"must be a list, not {_kind(value)}")
            if len(value) < spec.min_items:
                raise self.fail(path, f"must list at least {spec.min_items} item(s)")
            for i, item in enumerate(value):
                self.check(item, spec.item, f"{path}[{i}]")
        elif isinstance(spec, MapOf):
            if not isinstance(value, dict):
                raise self.fail(path, f"must be a mapping, not {_kind(value)}")
            if len(value) < spec.min_items:
                raise self.fail(path, f"must have at least {spec.min_items} entry")
            for key, item in value.items():
                self.check(key, spec.key, f"{path}.{key}")
                self.check(item, spec.value, f"{path}.{key}")
        elif isinstance(spec, Fields):
            if not isinstance(value, dict):
                raise self.fail(path, f"must be a mapping, not {_kind(value)}")
            for key in value:
                if key not in spec.fields:
                    known = ", ".join(spec.fields)
                    raise self.fail(_join(path, key), f"unknown key (expected one of: {known})")
            for key, item_spec in spec.fields.items():
                if key not in value:
                    if key in spec.optional:
                        continue
                    raise self.fail(path, f"missing key {key!r}")
                self.check(value[key], item_spec, _join(path, key))
        else:  # pragma: no cover - a schema bug, not bad input
            raise TypeError(f"unknown schema node {spec!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "nothing",
    }.get(type(value), type(value).__name__)
