"""Startup: from `docker run` to the first answer the prod image gives.

Each run starts fresh containers of the prod image, in a rotating order, and
times from the create call to: the model server's first successful inference
(and its readiness), `python -c "import torch"` exiting, and `true` exiting
(the engine's own cost of a container). One unmeasured round comes first, so
every figure is taken with a warm page cache.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

from pytorch_cuda.core.progress import say

from .session import BenchError, Session, free_port
from .stats import ratio, rotated, summary

INFER_BODY = json.dumps({"inputs": [
    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 300
KINDS = ("server", "import_torch", "true")


def http_status(url: str, body: bytes | None = None, timeout: float = 5) -> int:
    """The HTTP status of one request, or 0 when nothing answered."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return 0


def start_server(session: Session, repo_kwargs: dict) -> tuple:
    """Start a prod server on a free loopback port; (container, base URL, start time)."""
    port = free_port()
    started = time.monotonic()
    container = session.start(session.prod.ref(), ports={"8000/tcp": ("127.0.0.1", port)},
                              **repo_kwargs, **session.gpu_kwargs())
    return container, f"http://127.0.0.1:{port}", started


def wait_for(session: Session, container, url: str, body: bytes | None, started: float) -> float:
    """Seconds from `started` until `url` answers 200; raise if the server dies or stalls."""
    checked = time.monotonic()
    while time.monotonic() - started < TIMEOUT_SECONDS:
        if http_status(url, body) == 200:
            return time.monotonic() - started
        if time.monotonic() - checked > 1:
            checked = time.monotonic()
            container.reload()
            if container.status != "running":
                logs = container.logs().decode(errors="replace").strip().splitlines()[-3:]
                raise BenchError(f"the prod server stopped before answering: {' | '.join(logs)}")
        time.sleep(POLL_SECONDS)
    raise BenchError(f"the prod server gave no answer at {url} within {TIMEOUT_SECONDS} s")


def repo_mount(session: Session) -> dict:
    """Run arguments that mount the bench model repository at /models (read-only)."""
    return {"volumes": {str(session.model_repo()): {"bind": "/models", "mode": "ro"}}}


def _server_once(session: Session) -> dict:
    container, url, started = start_server(session, repo_mount(session))
    try:
        running = time.monotonic() - started
        first = wait_for(session, container, f"{url}/v2/models/controlflow/infer", INFER_BODY,
                         started)
        ready = wait_for(session, container, f"{url}/v2/health/ready", None, started)
    finally:
        session.remove(container)
    return {"server_running": running, "first_inference": first, "ready": ready}


def _command_once(session: Session, command: list[str]) -> float:
    started = time.monotonic()
    container = session.start(session.prod.ref(), command, **session.gpu_kwargs())
    try:
        code = container.wait(timeout=TIMEOUT_SECONDS)["StatusCode"]
        seconds = time.monotonic() - started
    finally:
        session.remove(container)
    if code != 0:
        raise BenchError(f"{' '.join(command)} exited {code} in {session.prod.ref()}")
    return seconds


def measure(session: Session, runs: int) -> dict:
    """Median (min, max) of `runs` side-by-side runs of each startup figure."""
    session.model_repo()
    session.gpu_kwargs()
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("first_inference", "ready", "server_running",
                                        "import_torch", "true")}
    for turn in range(runs + 1):
        counted = turn > 0
        say(f"startup round {turn}/{runs}" + ("" if counted else " (warm-up, not counted)"))
        for kind in rotated(list(KINDS), turn):
            if kind == "server":
                got = _server_once(session)
            elif kind == "import_torch":
                got = {"import_torch": _command_once(session, ["python", "-c", "import torch"])}
            else:
                got = {"true": _command_once(session, ["true"])}
            if counted:
                for key, value in got.items():
                    samples[key].append(value)
    figures = {key: summary(values) for key, values in samples.items()}
    figures["ratio_first_inference_vs_import_torch"] = ratio(
        figures["first_inference"]["median"], figures["import_torch"]["median"])
    figures["runs"] = runs
    figures["gpu"] = bool(session.gpu_kwargs())
    return figures
