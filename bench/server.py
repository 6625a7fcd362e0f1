"""The prod model server under load: throughput, latency and memory.

One prod container serves the bench model repository. After a warm-up, each
round sends `requests` inferences from `clients` concurrent tritonclient HTTP
clients (one per thread, alternating the controlflow and smallconv models and
their reference inputs), and times every request. The server's resident memory
(VmRSS of its Python process) is read before the warm-up and after the last
round. The clients run on the same machine as the server and share its CPUs.

Then, side by side in the same image on a small conv model (`SCRIPT`, written
by the image's own torch): ptserve without and with dynamic batching, and the
hand-written alternative, a Flask app served by waitress (from the host's pip,
mounted read-only: the prod image has no pip). Every target gets the same
pre-encoded JSON requests from wrk (one thread, keep-alive connections, a Lua
script that posts the body) for a fixed time per round: it takes far less of
the shared CPUs than Python clients would. The in-process call of the model,
timed inside the container, is the floor for the overhead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytorch_cuda.core.host import ensure_tool
from pytorch_cuda.core.progress import human_bytes, say

from . import startup
from .session import BenchError, Session, free_port
from .stats import percentile, summary

WARMUP_REQUESTS = 200
COMPARE_CLIENTS = 32
COMPARE_SECONDS = 10
WARMUP_SECONDS = 2
SINGLE_CLIENT_SECONDS = 5
FLASK_PACKAGES = ("flask==3.1.2", "waitress==3.0.2")

WRK_SCRIPT = """-- POST the body file named by the first script argument; print the figures as JSON.
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  wrk.headers["Content-Type"] = "application/json"
  f:close()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, '
    .. '"socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""

SCRIPT = '''"""Bench helper run inside the prod image: write the conv models, time an
in-process call, or serve the model with Flask (the hand-written alternative)."""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPE = [3, 16, 16]


class SmallConv(torch.nn.Module):
    """3x16x16 images to 10 scores: a stem and `depth` 3x3 conv layers of `width` channels."""

    def __init__(self, width, depth):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.body = torch.nn.Sequential(*[
            torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU())
            for _ in range(depth)])
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).mean(dim=(2, 3)))


def models(out, width, depth):
    torch.manual_seed(0)
    module = torch.jit.script(SmallConv(width, depth).eval())
    io = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1] + SHAPE}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]}
    batched = {**io, "max_batch_size": 32,
               "dynamic_batching": {"max_queue_delay_microseconds": 2000,
                                    "preferred_batch_size": [32]}}
    for name, config in (("conv", io), ("conv_batched", batched)):
        (out / name / "1").mkdir(parents=True)
        (out / name / "config.json").write_text(json.dumps(config))
        module.save(str(out / name / "1" / "model.pt"))
    print(json.dumps({"models": ["conv", "conv_batched"]}))


def timed(model, batch, calls):
    x = torch.randn([batch] + SHAPE)
    times = []
    with torch.inference_mode():
        for turn in range(calls + calls // 10):
            start = time.perf_counter()
            model(x)
            if turn >= calls // 10:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def inprocess(path):
    model = torch.jit.load(path).eval()
    figures = {"median_ms": timed(model, 1, 1000), "batch32_ms": timed(model, 32, 200)}
    torch.set_num_threads(1)  # as each of the server's two workers runs on a 2-CPU host
    figures.update(one_thread_ms=timed(model, 1, 1000), one_thread_batch32_ms=timed(model, 32, 200))
    print(json.dumps(figures))


def flask(path):
    import waitress
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    model = torch.jit.load(path).eval()

    @app.post("/predict")
    def predict():
        body = request.get_json()
        x = torch.tensor(body["data"], dtype=torch.float32).reshape(body["shape"])
        with torch.inference_mode():
            y = model(x)
        return jsonify({"shape": list(y.shape), "data": y.flatten().tolist()})

    waitress.serve(app, host="0.0.0.0", port=8000, threads=8)


if __name__ == "__main__":
    {"models": lambda: models(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])),
     "inprocess": lambda: inprocess(sys.argv[2]),
     "flask": lambda: flask(sys.argv[2])}[sys.argv[1]]()
'''


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


def run_clients(worker: Callable[[int], None], clients: int, barrier: threading.Barrier) -> float:
    """Run `clients` load threads that start together at `barrier`; the seconds they took."""
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
    return elapsed


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

    elapsed = run_clients(worker, clients, barrier)
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
    comparisons = [compare(session, runs, model) for model in COMPARE_MODELS]
    return {
        "compare": comparisons,
        "requests": requests, "clients": clients, "runs": runs,
        "warmup_requests": WARMUP_REQUESTS, "gpu": bool(session.gpu_kwargs()),
        "req_per_s": summary([r["req_per_s"] for r in rounds]),
        "p50_ms": summary([r["p50_ms"] for r in rounds]),
        "p99_ms": summary([r["p99_ms"] for r in rounds]),
        "errors": sum(r["errors"] for r in rounds),
        "rounds": rounds,
        "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
    }


# --- ptserve with and without batching, against a Flask app --------------------------


def _bodies() -> dict[str, bytes]:
    """The same 1x3x16x16 image as a KServe v2 request and as the Flask app's JSON."""
    values = np.random.default_rng(0).standard_normal(3 * 16 * 16).round(4).tolist()
    shape = [1, 3, 16, 16]
    kserve = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": values}]}
    return {"kserve": json.dumps(kserve).encode(),
            "flask": json.dumps({"shape": shape, "data": values}).encode()}


class Wrk:
    """wrk on the host (installed when missing) with the bench's POST script."""

    def __init__(self, work: Path) -> None:
        self.path = ensure_tool("wrk", "wrk")
        version = subprocess.run([self.path, "-v"], capture_output=True, text=True, check=False)
        self.version = " ".join(version.stdout.split()[:2]) or "wrk"
        self.script = work / "post.lua"
        self.script.write_text(WRK_SCRIPT)
        self.work = work

    def load(self, port: int, path: str, body: bytes, seconds: int, clients: int) -> dict:
        """POSTs of `body` for `seconds` over `clients` keep-alive connections; req/s, p50, p99."""
        body_file = self.work / f"body-{len(body)}.json"
        if not body_file.exists():
            body_file.write_bytes(body)
        cmd = [self.path, "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "120s",
               "-s", str(self.script), f"http://127.0.0.1:{port}{path}", "--", str(body_file)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=seconds + 300, env={**os.environ, "LC_ALL": "C"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
            raise BenchError(f"wrk failed on {path}: {tail}")
        got = json.loads(lines[-1])
        errors = got["non_2xx"] + got["socket_errors"]
        if got["requests"] <= errors:
            raise BenchError(f"no request to {path} succeeded ({got['non_2xx']} non-2xx "
                             f"answers, {got['socket_errors']} socket errors)")
        return {"requests": got["requests"],
                "req_per_s": (got["requests"] - errors) / (got["us"] / 1e6),
                "p50_ms": got["p50_us"] / 1000, "p99_ms": got["p99_us"] / 1000,
                "errors": errors, "non_2xx": got["non_2xx"],
                "socket_errors": got["socket_errors"]}


def _flask_site(session: Session) -> Path:
    """Flask and waitress installed by the host's pip into a folder to mount."""
    site = session.scratch("flask")
    say(f"installing {' and '.join(FLASK_PACKAGES)} for the Flask comparison")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                           "--target", str(site), *FLASK_PACKAGES],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"pip could not install {FLASK_PACKAGES}: "
                         + " | ".join(done.stderr.strip().splitlines()[-2:]))
    return site


def _wait_http(session: Session, container, port: int, path: str, body: bytes) -> None:
    startup.wait_for(session, container, f"http://127.0.0.1:{port}{path}", body,
                     time.monotonic())


@dataclass(frozen=True)
class ConvModel:
    """A `SmallConv` of the bench script: `depth` 3x3 conv layers of `width` channels."""

    width: int
    depth: int

    @property
    def title(self) -> str:
        return (f"SmallConv, {self.depth} 3x3 conv layers of {self.width} channels, "
                "1x3x16x16 FP32, JSON")


COMPARE_MODELS = (ConvModel(8, 10), ConvModel(16, 16))
"""A light model (the HTTP and JSON work of a request dominates) and a heavier one
(the model dominates); both small, both batch well."""


def compare(session: Session, runs: int, model: ConvModel) -> dict:
    """ptserve unbatched, batched and a Flask app on one conv model, same image, same clients."""
    work = session.scratch(f"server-compare-{model.width}x{model.depth}")
    (work / "serve_bench.py").write_text(SCRIPT)
    repo = work / "models"
    repo.mkdir()
    repo.chmod(0o777)
    image = session.prod.ref()
    scripts = {str(work): {"bind": "/bench", "mode": "ro"}}
    session.run(image, ["python", "/bench/serve_bench.py", "models", "/bench/models",
                        str(model.width), str(model.depth)],
                volumes={str(work): {"bind": "/bench", "mode": "rw"}})
    models = {**scripts, str(repo): {"bind": "/models", "mode": "ro"}}
    out, _ = session.run(image, ["python", "/bench/serve_bench.py", "inprocess",
                                 "/models/conv/1/model.pt"], volumes=models)
    inprocess = json.loads(out)
    inprocess_ms = inprocess["median_ms"]
    bodies = _bodies()
    site = _flask_site(session)
    wrk = Wrk(work)
    results: dict[str, dict] = {}

    port = free_port()
    container = session.start(image, ports={"8000/tcp": ("127.0.0.1", port)}, volumes=models)
    try:
        _wait_http(session, container, port, "/v2/models/conv_batched/infer", bodies["kserve"])
        for name in ("conv", "conv_batched"):
            path = f"/v2/models/{name}/infer"
            wrk.load(port, path, bodies["kserve"], WARMUP_SECONDS, COMPARE_CLIENTS)
            rounds = [wrk.load(port, path, bodies["kserve"], COMPARE_SECONDS, COMPARE_CLIENTS)
                      for _ in range(runs)]
            results[name] = _rounds(rounds)
        single = wrk.load(port, "/v2/models/conv/infer", bodies["kserve"],
                          SINGLE_CLIENT_SECONDS, 1)
    finally:
        session.remove(container)

    port = free_port()
    container = session.start(
        image, ["python", "/bench/serve_bench.py", "flask", "/models/conv/1/model.pt"],
        ports={"8000/tcp": ("127.0.0.1", port)},
        volumes={**models, str(site): {"bind": "/site", "mode": "ro"}},
        environment={"PYTHONPATH": "/site"})
    try:
        _wait_http(session, container, port, "/predict", bodies["flask"])
        wrk.load(port, "/predict", bodies["flask"], WARMUP_SECONDS, COMPARE_CLIENTS)
        results["flask"] = _rounds([wrk.load(port, "/predict", bodies["flask"], COMPARE_SECONDS,
                                             COMPARE_CLIENTS) for _ in range(runs)])
        flask_single = wrk.load(port, "/predict", bodies["flask"], SINGLE_CLIENT_SECONDS, 1)
    finally:
        session.remove(container)

    rate = {name: r["req_per_s"]["median"] for name, r in results.items()}
    figures = {
        "clients": COMPARE_CLIENTS, "seconds": COMPARE_SECONDS, "runs": runs,
        "client": f"{wrk.version} (one thread, Lua POST script)",
        "model": model.title, "targets": results,
        "inprocess_ms": inprocess_ms, "inprocess_batch32_ms": inprocess["batch32_ms"],
        "model_batch_gain": 32 * inprocess_ms / inprocess["batch32_ms"],
        "one_thread_ms": inprocess["one_thread_ms"],
        "one_thread_batch32_ms": inprocess["one_thread_batch32_ms"],
        "model_batch_gain_one_thread":
            32 * inprocess["one_thread_ms"] / inprocess["one_thread_batch32_ms"],
        "single_client_p50_ms": {"ptserve": single["p50_ms"], "flask": flask_single["p50_ms"]},
        "overhead_ms": {"ptserve": single["p50_ms"] - inprocess_ms,
                        "flask": flask_single["p50_ms"] - inprocess_ms},
        "batching_speedup": rate["conv_batched"] / rate["conv"],
        "vs_flask": rate["conv_batched"] / rate["flask"],
        "unbatched_vs_flask": rate["conv"] / rate["flask"],
    }
    say(f"{model.title}, {COMPARE_CLIENTS} clients: ptserve {rate['conv']:.0f} req/s, batched "
        f"{rate['conv_batched']:.0f} req/s ({figures['batching_speedup']:.2f}x), Flask "
        f"{rate['flask']:.0f} req/s; 1 client: +{figures['overhead_ms']['ptserve']:.2f} ms "
        f"over an in-process call ({inprocess_ms:.2f} ms)")
    return figures


def _rounds(rounds: list[dict]) -> dict:
    return {"requests": sum(r["requests"] for r in rounds),
            "req_per_s": summary([r["req_per_s"] for r in rounds]),
            "p50_ms": summary([r["p50_ms"] for r in rounds]),
            "p99_ms": summary([r["p99_ms"] for r in rounds]),
            "errors": sum(r["errors"] for r in rounds),
            "non_2xx": sum(r["non_2xx"] for r in rounds),
            "socket_errors": sum(r["socket_errors"] for r in rounds)}
