"""Model server as a process: draining on SIGTERM, limits from the environment,
PTSERVE_REQUIRE_GPU, bad settings and the health probe.

Starts ``python -m ptserve`` with this interpreter, so it needs torch and aiohttp
here (it skips otherwise); the live-container tests are in test_serve.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("aiohttp")

SERVER = Path(__file__).resolve().parents[2] / "server"

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class Spin(torch.nn.Module):
    """Busy for ``n`` small matrix products, so a request stays in flight a while."""

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        y = torch.full((64, 64), 1.0 / 64)
        for _ in range(int(n.item())):
            y = torch.tanh(y @ y)
        return y.sum().reshape(1)


@pytest.fixture(scope="module")
def spin_repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("spin")
    (root / "spin" / "1").mkdir(parents=True)
    config = {
        "inputs": [{"name": "n", "datatype": "INT64", "shape": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    }
    (root / "spin" / "config.json").write_text(json.dumps(config))
    torch.jit.script(Spin()).save(str(root / "spin" / "1" / "model.pt"))
    return root


def child_pythonpath() -> str:
    """This checkout's server package first, then whatever the tests run with."""
    return os.pathsep.join(filter(None, [str(SERVER), os.environ.get("PYTHONPATH")]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A ``python -m ptserve`` child process on a free port."""

    def __init__(self, repository: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **os.environ,
            "PYTHONPATH": child_pythonpath(),
            "PTSERVE_PORT": str(self.port),
            "PTSERVE_MODEL_REPOSITORY": str(repository),
            **env,
        }
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ptserve"], env=self.env, stderr=stderr
            )
        deadline = time.monotonic() + 60
        while self.request("GET", "/v2/health/live", check=False)[0] != 200:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, check: bool = True) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            if check:
                raise
            return 0, b""
        finally:
            conn.close()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while self.request("GET", "/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def spin(self, n: int) -> tuple[int, bytes]:
        body = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [n]}]}
        return self.request("POST", "/v2/models/spin/infer", json.dumps(body).encode())

    def inflight(self) -> float:
        text = self.request("GET", "/metrics")[1].decode()
        line = next(x for x in text.splitlines() if x.startswith("ptserve_inflight_requests "))
        return float(line.split()[1])

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def spin_count(server: Server, seconds: float) -> int:
    """How many spin iterations take about ``seconds`` on this machine."""
    started = time.monotonic()
    assert server.spin(500)[0] == 200
    per_iteration = max((time.monotonic() - started) / 500, 1e-6)
    return max(500, int(seconds / per_iteration))


def in_background(server: Server, n: int) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(server.spin(n)))
    thread.start()
    deadline = time.monotonic() + 30
    while server.inflight() < 1:
        assert time.monotonic() < deadline, "request never became in flight"
        time.sleep(0.02)
    return thread, result


def test_sigterm_drains_in_flight_requests(spin_repository, tmp_path):
    server = Server(spin_repository, tmp_path / "log", PTSERVE_DRAIN_SECONDS="60")
    try:
        server.wait_ready()
        thread, result = in_background(server, spin_count(server, 2.0))
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while server.request("GET", "/v2/health/live", check=False)[0] != 0:
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        thread.join(60)
        assert result and result[0][0] == 200, result
        assert json.loads(result[0][1])["outputs"][0]["name"] == "y"
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    events = [e["event"] for e in server.events()]
    assert events.index("draining") < events.index("stopped")


def test_busy_server_answers_503(spin_repository, tmp_path):
    server = Server(spin_repository, tmp_path / "log", PTSERVE_MAX_INFLIGHT="1")
    try:
        server.wait_ready()
        thread, result = in_background(server, spin_count(server, 1.5))
        status, data = server.spin(1)
        assert status == 503
        assert "server is busy" in json.loads(data)["error"]
        thread.join(60)
        assert result[0][0] == 200
        assert server.spin(1)[0] == 200
    finally:
        assert server.stop() == 0


def test_body_limit_from_environment(spin_repository, tmp_path):
    server = Server(spin_repository, tmp_path / "log", PTSERVE_MAX_BODY_BYTES="1000")
    try:
        server.wait_ready()
        status, data = server.request("POST", "/v2/models/spin/infer", b" " * 1001)
        assert status == 413
        assert "larger than the 1000-byte limit" in json.loads(data)["error"]
        chunks = iter([b" " * 600, b" " * 600])  # no Content-Length: chunked upload
        status, data = server.request("POST", "/v2/models/spin/infer", chunks)
        assert status == 413
        assert "larger than the 1000-byte limit" in json.loads(data)["error"]
        assert server.spin(1)[0] == 200
    finally:
        assert server.stop() == 0


def probe_status(env: dict) -> int:
    """Exit status of the container health probe."""
    probe = [sys.executable, "-m", "ptserve.healthcheck"]
    return subprocess.run(probe, env=env, timeout=30, capture_output=True, check=False).returncode


def test_healthcheck_probe(spin_repository, tmp_path):
    server = Server(spin_repository, tmp_path / "log")
    try:
        server.wait_ready()
        assert probe_status(server.env) == 0
        assert probe_status({**server.env, "PTSERVE_PORT": str(free_port())}) == 1
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_require_gpu_without_gpu(spin_repository, tmp_path):
    server = Server(spin_repository, tmp_path / "log", PTSERVE_REQUIRE_GPU="1")
    try:
        time.sleep(1)
        status, data = server.request("GET", "/v2/health/ready")
        assert status == 503 and "PTSERVE_REQUIRE_GPU=1" in json.loads(data)["error"]
        status, data = server.request("GET", "/v2/models/spin/ready")
        assert status == 503 and "no CUDA device is visible" in json.loads(data)["error"]
        assert probe_status(server.env) == 1
    finally:
        assert server.stop() == 0
    gpu_lines = [e for e in server.events() if e["event"] == "gpu_required"]
    assert len(gpu_lines) == 1 and gpu_lines[0]["level"] == "error"
    assert not [e for e in server.events() if e["event"] == "model_loaded"]


def test_bad_setting_exits_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SERVER), "PTSERVE_WORKERS": "many"}
    done = subprocess.run([sys.executable, "-m", "ptserve"], env=env, timeout=60,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "invalid_setting" and "PTSERVE_WORKERS" in line["reason"]
