"""Strict YAML loading: no aliases, no duplicate keys, line numbers for every key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pytorch_cuda.core.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases (and so alias bombs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem="YAML aliases are not allowed", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)


_CONSTRUCTOR = _StrictLoader("")


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], source: str) -> Any:
    """Convert a composed node to plain Python, recording the line of each key path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _CONSTRUCTOR.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise UserError(
                    f"{source} line {key_node.start_mark.line + 1}: {path or 'top level'} "
                    "has a key that is not a string"
                )
            child = f"{path}.{key}" if path else key
            if key in result:
                raise UserError(
                    f"{source} line {key_node.start_mark.line + 1}: duplicate key {child}"
                )
            result[key] = _to_python(value_node, child, lines, source)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, f"{path}[{i}]", lines, source) for i, item in enumerate(node.value)
        ]
    return _CONSTRUCTOR.construct_object(node, deep=True)


def load(path: Path) -> tuple[Any, dict[str, int]]:
    """Load a YAML file strictly; return its data and a key-path -> line map."""
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: invalid YAML ({exc})") from None
    if node is None:
        raise UserError(f"{source}: the file is empty")
    lines: dict[str, int] = {}
    return _to_python(node, "", lines, source), lines
