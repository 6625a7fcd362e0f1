"""One-line JSON logs on stderr: ``{"ts", "level", "event", ...fields}``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_LOGGER = logging.getLogger("ptserve")


class JsonFormatter(logging.Formatter):
    """Formats every record, ours or a library's, as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields is None:
            line["event"] = "log"
            line["logger"] = record.name
            line["message"] = record.getMessage()
        else:
            line["event"] = record.getMessage()
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, allow_nan=True)


def setup(level: int = logging.INFO) -> None:
    """Send all logging to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log(level: int, event: str, *, exc_info: bool = False, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` at ``level`` (a ``logging`` constant)."""
    _LOGGER.log(level, event, extra={"fields": fields}, exc_info=exc_info)


def info(event: str, **fields: Any) -> None:
    """Log an informational event."""
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    """Log a warning event."""
    log(logging.WARNING, event, **fields)


def error(event: str, **fields: Any) -> None:
    """Log an error event."""
    log(logging.ERROR, event, **fields)
