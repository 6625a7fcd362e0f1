"""prod: SIGTERM (docker stop) drains the model server and the container exits 0."""

from __future__ import annotations

import time


def test_docker_stop_exits_cleanly(serve_container):
    container, _ = serve_container
    started = time.monotonic()
    container.stop(timeout=30)
    took = time.monotonic() - started
    container.reload()
    state = container.attrs["State"]
    logs = container.logs().decode(errors="replace")[-2000:]
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} after SIGTERM:\n{logs}"
    assert took < 30, f"docker stop took {took:.1f} s: SIGTERM was not handled"
