"""The prod model server under load: throughput, latency and memory.

One prod container serves the bench model repository. After a warm-up, each
round sends `requests` inferences from `clients` concurrent tritonclient HTTP
clients (one per thread, alternating the controlflow and smallconv models and
their reference inputs), and times every request. The server's resident memory
(VmRSS of its Python process) is read before the warm-up and after the last
round. The clients run on the same machine as the server and share its CPUs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from pytorch_cuda.core.progress import human_bytes, say

from . import startup
from .session import BenchError, Session
from .stats import percentile, summary

WARMUP_REQUESTS = 200


def server_rss(container) -> int:
    """Resident memory of the Python processes in the container, in bytes."""
    result = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/status"], demux=False)
    total, name = 0, ""
    for line in result.output.decode(errors="replace").splitlines():
        if line.startswith("Name:"):
            name = line.split(None, 1)[1] if len(line.split()) > 1 else ""
        elif line.startswith("VmRSS:") and name.startswith("python"):
            total += int(line.split()[1]) * 1024
    return total


def _cases(repo: Path) -> list[tuple[str, str, str, np.ndarray]]:
    """(model, version, input name, input array) of every reference case."""
    reference = json.loads((repo / "reference.json").read_text())
    cases = []
    for model in ("controlflow", "smallconv"):
        for case in reference[model]["cases"]:
            tensor = case["inputs"][0]
            array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            cases.append((model, case["version"], tensor["name"], array))
    return cases


def load_round(netloc: str, cases: list, requests: int, clients: int) -> dict:
    """`requests` inferences from `clients` threads; latencies (ms), wall time, errors."""
    import tritonclient.http as httpclient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        connection = httpclient.InferenceServerClient(url=netloc, network_timeout=120)
        mine, failed = [], []
        try:
            jobs = []
            for n in range(index, requests, clients):
                model, version, name, array = cases[n % len(cases)]
                infer_input = httpclient.InferInput(name, list(array.shape), "FP32")
                infer_input.set_data_from_numpy(array)
                jobs.append((model, version, infer_input))
            barrier.wait()
            for model, version, infer_input in jobs:
                start = time.perf_counter()
                try:
                    connection.infer(model, [infer_input], model_version=version)
                    mine.append((time.perf_counter() - start) * 1000)
                except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                    failed.append(f"{model}: {exc}")
        finally:
            connection.close()
            with lock:
                latencies.extend(mine)
                errors.extend(failed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=900)
    elapsed = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        raise BenchError(f"load clients were still running after {elapsed:.0f} s")
    if not latencies:
        raise BenchError(f"no request succeeded; first error: {errors[0] if errors else '?'}")
    return {"requests": requests, "ok": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "seconds": elapsed,
            "req_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies)}


def measure(session: Session, runs: int, requests: int, clients: int) -> dict:
    """Rounds of load against one prod server; req/s and latency per round, RSS around them."""
    repo = session.model_repo()
    cases = _cases(repo)
    container, url, started = startup.start_server(session, startup.repo_mount(session))
    try:
        startup.wait_for(session, container, f"{url}/v2/health/ready", None, started)
        rss_before = server_rss(container)
        netloc = url.split("://", 1)[1]
        say(f"server warm-up: {WARMUP_REQUESTS} requests from {clients} clients")
        load_round(netloc, cases, WARMUP_REQUESTS, clients)
        rounds = []
        for turn in range(runs):
            got = load_round(netloc, cases, requests, clients)
            say(f"server round {turn + 1}/{runs}: {got['req_per_s']:.0f} req/s, "
                f"p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms, {got['errors']} errors")
            rounds.append(got)
        rss_after = server_rss(container)
    finally:
        session.remove(container)
    say(f"server RSS {human_bytes(rss_before)} before, {human_bytes(rss_after)} after")
    return {
        "requests": requests, "clients": clients, "runs": runs,
        "warmup_requests": WARMUP_REQUESTS, "gpu": bool(session.gpu_kwargs()),
        "req_per_s": summary([r["req_per_s"] for r in rounds]),
        "p50_ms": summary([r["p50_ms"] for r in rounds]),
        "p99_ms": summary([r["p99_ms"] for r in rounds]),
        "errors": sum(r["errors"] for r in rounds),
        "rounds": rounds,
        "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
    }
