"""Registry failures sorted into kinds: transient ones are retried with backoff, the rest stop at once."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

from pytorch_cuda.core.progress import say

TRANSIENT = "transient"
AUTH = "auth"
FATAL = "fatal"

ATTEMPTS = 4
BASE_DELAY = 2.0

T = TypeVar("T")

_AUTH_RE = re.compile(r"unauthori[sz]ed|authentication required|denied|no basic auth credentials|"
                      r"forbidden|status:? 40[13]\b")
_TRANSIENT_RE = re.compile(
    r"connection refused|connection reset|connection aborted|broken pipe|timed? ?out|timeout|"
    r"\beof\b|temporar(y|ily)|service unavailable|bad gateway|gateway timeout|internal server error|"
    r"too many requests|toomanyrequests|status:? (429|5\d\d)\b|remote end closed")


class RegistryError(Exception):
    """A failed registry operation and its kind (TRANSIENT, AUTH or FATAL)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify_status(status: int) -> str:
    """The kind of an HTTP status: 401/403 auth, 429 and 5xx transient, others fatal."""
    if status in (401, 403):
        return AUTH
    if status == 429 or 500 <= status < 600:
        return TRANSIENT
    return FATAL


def classify_message(text: str) -> str:
    """The kind of an error message (as the engine's push stream reports them)."""
    lowered = text.lower()
    if _AUTH_RE.search(lowered):
        return AUTH
    if _TRANSIENT_RE.search(lowered):
        return TRANSIENT
    return FATAL


def delays(attempts: int = ATTEMPTS, base: float = BASE_DELAY) -> list[float]:
    """Seconds to wait before each retry: base, 2*base, 4*base, ..."""
    return [base * 2 ** i for i in range(attempts - 1)]


def retry(action: Callable[[], T], what: str) -> T:
    """Run `action`; retry TRANSIENT RegistryErrors with exponential backoff, re-raise the rest."""
    for attempt, wait in enumerate(delays(ATTEMPTS, BASE_DELAY), 1):
        try:
            return action()
        except RegistryError as exc:
            if exc.kind != TRANSIENT:
                raise
            say(f"{what}: {exc} (attempt {attempt} of {ATTEMPTS}); retrying in {wait:g} s")
            time.sleep(wait)
    return action()
