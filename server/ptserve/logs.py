"""One-line JSON logs on stderr: ``{"ts", "level", "event", ...fields}``."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

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


class LineHandler(logging.Handler):
    """Writes formatted records to a stream, one line each.

    Lines logged on an event loop are written together once the loop has run
    its ready callbacks (one write for the access lines of many requests);
    lines logged elsewhere are written at once, after any still pending.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record))
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None or (self._loop is not None and self._loop is not loop):
                self._write()
            elif self._loop is None:
                self._loop = loop
                loop.call_soon(self.flush)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)

    def flush(self) -> None:
        """Write the pending lines."""
        with self.lock:
            self._write()

    def _write(self) -> None:
        self._loop = None
        lines, self._pending = self._pending, []
        if lines:
            lines.append("")
            self.stream.write("\n".join(lines))
            self.stream.flush()


def setup(level: int = logging.INFO) -> None:
    """Send all logging to stderr as JSON lines."""
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log(level: int, event: str, *, exc_info: bool = False, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` at ``level`` (a ``logging`` constant)."""
    if _LOGGER.isEnabledFor(level):
        # makeRecord and handle, as Logger.log does, without its caller lookup.
        record = _LOGGER.makeRecord(
            _LOGGER.name, level, "", 0, event, (), sys.exc_info() if exc_info else None,
            extra={"fields": fields},
        )
        _LOGGER.handle(record)


def info(event: str, **fields: Any) -> None:
    """Log an informational event."""
    log(logging.INFO, event, **fields)


def warning(event: str, **fields: Any) -> None:
    """Log a warning event."""
    log(logging.WARNING, event, **fields)


def error(event: str, **fields: Any) -> None:
    """Log an error event."""
    log(logging.ERROR, event, **fields)
