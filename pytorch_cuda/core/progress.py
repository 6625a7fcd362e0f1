"""Progress lines with elapsed time, and readable result tables."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def elapsed() -> str:
    """Time since the command started, as m:ss."""
    seconds = int(time.monotonic() - _START)
    return f"{seconds // 60}:{seconds % 60:02d}"


def say(message: str) -> None:
    """One progress line on stderr, stamped with the elapsed time."""
    print(f"[{elapsed()}] {message}", file=sys.stderr, flush=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def human_bytes(size: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as registries report)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1000
    return f"{size:.2f} TB"
