"""Container health probe: ``python -m ptserve.healthcheck`` exits 0 iff the server is ready.

Asks ``GET /v2/health/ready`` on 127.0.0.1 at ``PTSERVE_PORT`` (default 8000).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from ptserve.settings import port_from_env


def is_ready(port: int, timeout: float = 5.0) -> bool:
    """True if the readiness endpoint answers 200."""
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    """0 when ready, 1 otherwise (including a bad PTSERVE_PORT)."""
    try:
        port = port_from_env()
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    ready = is_ready(port)
    if not ready:
        print(f"healthcheck: server on port {port} is not ready", file=sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    raise SystemExit(main())
