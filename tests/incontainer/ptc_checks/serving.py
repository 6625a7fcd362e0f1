"""The model server (``python -m ptserve``) as a child process, driven with aiohttp.

Against a repository written by ``modelrepo`` (plus the custom-operator model
when there is one): every reference case as JSON and as binary tensors, each
model's default version, a short concurrent load, then SIGTERM while slow requests
(the ``spin`` model) are in flight: the server must answer them and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from .results import Check, check, close_check
from .torchscript import CROSS_DEVICE_ATOL, CROSS_DEVICE_RTOL

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
READY_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60
DRAIN_SECONDS = 10
DRAIN_REQUESTS = 4
SPIN_MODEL = "spin"
FILL_MODEL = "fill"
SPIN_CALIBRATION = 2000  # matrix products of the timing call
SPIN_TARGET_S = 0.5  # how long one drain request should take
SPIN_LIMITS = (1000, 2_000_000)
LOAD_MODEL = "smallconv"
LOG_TAIL_LINES = 20


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m ptserve`` on a free port, its JSON-lines log in a file."""

    def __init__(self, repository: Path, log: Path, device: str, pythonpath: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "PTSERVE_PORT": str(self.port),
            "PTSERVE_MODEL_REPOSITORY": str(repository),
            "PTSERVE_DRAIN_SECONDS": str(DRAIN_SECONDS),
        }
        if device == "cuda":
            env["PTSERVE_REQUIRE_GPU"] = "1"
        else:  # the internal CPU mode: keep the server off any GPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ptserve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def events(self) -> list[dict[str, Any]]:
        """The server's log lines that are JSON objects."""
        found = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def tail(self) -> list[str]:
        """The last lines of the server's log."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return text.splitlines()[-LOG_TAIL_LINES:]

    def kill(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(DRAIN_SECONDS + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def wait_ready(session: aiohttp.ClientSession, server: Server) -> float:
    """Seconds until /v2/health/ready answers 200; RuntimeError if the server dies or stalls."""
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.proc.returncode}")
        try:
            async with session.get(f"{server.url}/v2/health/ready") as response:
                if response.status == 200:
                    return time.monotonic() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S} s")


def encode(inputs: list[dict[str, Any]], outputs: list[str], binary: bool) -> tuple[bytes, dict]:
    """An infer request body and its headers; ``binary`` sends and asks for raw tensors."""
    wanted = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    if not binary:
        return json.dumps({"inputs": inputs, "outputs": wanted}).encode(), {}
    chunks, described = [], []
    for tensor in inputs:
        raw = np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).tobytes()
        chunks.append(raw)
        meta = {k: tensor[k] for k in ("name", "datatype", "shape")}
        described.append({**meta, "parameters": {"binary_data_size": len(raw)}})
    header = json.dumps({"inputs": described, "outputs": wanted}).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + b"".join(chunks), headers


def decode(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(response document, output name -> numpy array) of an infer answer."""
    length = int(header_length) if header_length else len(body)
    doc = json.loads(body[:length])
    arrays, offset = {}, length
    for out in doc.get("outputs", []):
        dtype, shape = DTYPES[out["datatype"]], out["shape"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(shape)
        else:
            raw = body[offset:offset + size]
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(shape)
            offset += size
    return doc, arrays


async def infer(
    session: aiohttp.ClientSession, url: str, model: str, version: str | None,
    inputs: list[dict[str, Any]], outputs: list[str], binary: bool,
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(HTTP status, document, arrays) of one infer call; ``version`` None: the default."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body, headers = encode(inputs, outputs, binary)
    async with session.post(url + path, data=body, headers=headers) as response:
        raw = await response.read()
        if response.status != 200:
            return response.status, {"error": raw.decode(errors="replace")[:300]}, {}
        doc, arrays = decode(raw, response.headers.get(HEADER_LENGTH))
        return response.status, doc, arrays


def compare(name: str, expected: list[dict[str, Any]], status: int, doc: dict[str, Any],
            arrays: Mapping[str, Any]) -> list[Check]:
    """One check per expected output (CPU eager reference vs the server's answer)."""
    import torch

    if status != 200:
        return [check(name, False, f"HTTP {status}: {doc.get('error')}")]
    checks = []
    for out in expected:
        want = torch.tensor(out["data"], dtype=torch.float64).reshape(out["shape"])
        got = arrays.get(out["name"])
        if got is None:
            checks.append(check(f"{name} {out['name']}", False, "output missing from the answer"))
            continue
        actual = torch.from_numpy(np.array(got, dtype=np.float64))
        checks.append(close_check(f"{name} {out['name']}", want, actual,
                                  rtol=CROSS_DEVICE_RTOL, atol=CROSS_DEVICE_ATOL))
    return checks


async def reference_checks(
    session: aiohttp.ClientSession, url: str, reference: Mapping[str, Any]
) -> list[Check]:
    """Every case as JSON and as binary tensors, then each model's default version."""
    checks: list[Check] = []
    for model, spec in reference.items():
        for case in spec["cases"]:
            outputs = [o["name"] for o in case["outputs"]]
            for binary in (False, True):
                name = f"serve {model} v{case['version']} {case['name']} " + (
                    "binary" if binary else "json")
                answer = await infer(session, url, model, case["version"], case["inputs"],
                                     outputs, binary)
                checks.extend(compare(name, case["outputs"], *answer))
        first = spec["cases"][0]
        status, doc, _ = await infer(session, url, model, None, first["inputs"],
                                     [o["name"] for o in first["outputs"]], False)
        version = doc.get("model_version")
        checks.append(check(
            f"serve {model} default version", status == 200 and version == spec["default_version"],
            f"HTTP {status}, model_version {version!r}, expected {spec['default_version']!r}"))
    return checks


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def load(url: str, case: Mapping[str, Any], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent clients posting one JSON case for ``seconds``: req/s, p50, p99."""
    body, headers = encode(case["inputs"], [o["name"] for o in case["outputs"]], False)
    path = f"{url}/v2/models/{LOAD_MODEL}/versions/{case['version']}/infer"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        end = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    async with session.post(path, data=body, headers=headers) as response:
                        await response.read()
                        outcome = "ok" if response.status == 200 else f"HTTP {response.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    outcome = type(exc).__name__
                if outcome == "ok":
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - began
    return {
        "model": LOAD_MODEL, "clients": clients, "seconds": round(elapsed, 3),
        "requests": len(latencies) + sum(errors.values()), "errors": sum(errors.values()),
        "error_kinds": errors, "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
    }


def add_spin_model(repository: Path) -> None:
    """The ``spin`` model (``models.Spin``): input ``n``, busy for ``n`` matrix products."""
    from . import modelrepo
    from .models import Spin

    config = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1]}],
              "outputs": [modelrepo.spec("y", [1])]}
    modelrepo.write_model(repository, SPIN_MODEL, 1, Spin(), config)


def add_fill_model(repository: Path) -> None:
    """The ``fill`` model (``models.Fill``): input ``n``, an answer of ``n`` values."""
    from . import modelrepo
    from .models import Fill

    config = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1]}],
              "outputs": [modelrepo.spec("y", [-1])]}
    modelrepo.write_model(repository, FILL_MODEL, 1, Fill(), config)


async def spin(session: aiohttp.ClientSession, url: str, n: int) -> str:
    """One ``spin`` request: "ok", or what went wrong."""
    inputs = [{"name": "n", "datatype": "INT64", "shape": [1], "data": [n]}]
    try:
        status, _, _ = await infer(session, url, SPIN_MODEL, None, inputs, ["y"], False)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    return "ok" if status == 200 else f"HTTP {status}"


async def inflight(session: aiohttp.ClientSession, url: str) -> int:
    """The server's ``ptserve_inflight_requests``."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    values = [line.split()[-1] for line in text.splitlines()
              if line.startswith("ptserve_inflight_requests")]
    return int(float(values[0])) if values else 0


async def drain(session: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    """SIGTERM while slow requests are in flight: their answers, the exit status, the time."""
    started = time.monotonic()
    await spin(session, server.url, SPIN_CALIBRATION)
    per_product = (time.monotonic() - started) / SPIN_CALIBRATION
    low, high = SPIN_LIMITS
    n = int(min(high, max(low, SPIN_TARGET_S / per_product)))
    tasks = [asyncio.create_task(spin(session, server.url, n)) for _ in range(DRAIN_REQUESTS)]
    deadline, seen = time.monotonic() + READY_TIMEOUT_S / 10, 0
    while seen < DRAIN_REQUESTS and time.monotonic() < deadline and not all(
            t.done() for t in tasks):
        seen = max(seen, await inflight(session, server.url))
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*tasks)
    loop = asyncio.get_running_loop()
    try:
        code = await loop.run_in_executor(None, server.proc.wait, DRAIN_SECONDS + 10)
    except subprocess.TimeoutExpired:
        code = None
    return {
        "exit_code": code, "seconds": round(time.monotonic() - started, 3),
        "spin_products": n, "in_flight_at_sigterm": seen, "requests": len(outcomes),
        "answered": outcomes.count("ok"), "outcomes": sorted(set(outcomes)),
        "stopped_logged": any(e.get("event") == "stopped" for e in server.events()),
    }


def gpu_memory(metrics: str) -> int | None:
    """Bytes in ``ptserve_gpu_memory_allocated_bytes`` (all devices), None when absent."""
    values = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("ptserve_gpu_memory_allocated_bytes")]
    return int(sum(values)) if values else None


async def prove(server: Server, reference: Mapping[str, Any], device: str, clients: int,
                seconds: float) -> tuple[list[Check], dict[str, Any]]:
    """Readiness, device, references, load and drain against a started server."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    facts: dict[str, Any] = {"models": sorted(reference)}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        facts["ready_s"] = round(await wait_ready(session, server), 3)
        listening = next((e for e in server.events() if e.get("event") == "listening"), {})
        facts["device"] = listening.get("device")
        checks = [check("serve ready", True, f"ready in {facts['ready_s']:.1f} s"),
                  check("serve device", str(facts["device"]).startswith(device),
                        f"server runs on {facts['device']}, expected {device}")]
        checks += await reference_checks(session, server.url, reference)
        async with session.get(f"{server.url}/metrics") as response:
            facts["gpu_memory_allocated_bytes"] = gpu_memory(await response.text())
        case = reference[LOAD_MODEL]["cases"][0]
        facts["load"] = await load(server.url, case, clients, seconds)
        lo = facts["load"]
        checks.append(check("serve load without errors", lo["errors"] == 0 and lo["requests"] > 0,
                            f"{lo['requests']} requests, {lo['errors']} errors {lo['error_kinds']}"))
        facts["drain"] = dr = await drain(session, server)
    passed = (dr["exit_code"] == 0 and dr["answered"] == dr["requests"]
              and dr["in_flight_at_sigterm"] == dr["requests"])
    checks.append(check(
        "serve drains on SIGTERM", passed,
        f"{dr['in_flight_at_sigterm']} of {dr['requests']} slow requests in flight at SIGTERM, "
        f"{dr['answered']} answered 200 ({', '.join(dr['outcomes'])}); exit status "
        f"{dr['exit_code']} after {dr['seconds']:.2f} s"))
    return checks, facts


def run(repository: Path, reference: Mapping[str, Any], device: str, clients: int,
        seconds: float, pythonpath: str) -> tuple[list[Check], dict[str, Any]]:
    """Start the server on ``repository``, prove it, and always stop it."""
    add_spin_model(repository)
    server = Server(repository, repository.parent / "ptserve.log", device, pythonpath)
    try:
        checks, facts = asyncio.run(prove(server, reference, device, clients, seconds))
    except Exception as exc:  # noqa: BLE001 - reported as a failed check with the log
        checks = [check("serve", False, f"{type(exc).__name__}: {exc}")]
        facts = {"models": sorted(reference)}
    finally:
        server.kill()
    if not all(c["passed"] for c in checks):
        facts["log_tail"] = server.tail()
    return checks, facts
