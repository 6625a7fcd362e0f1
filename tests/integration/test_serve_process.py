"""Model server as a process: draining on SIGTERM, limits from the environment,
PTSERVE_REQUIRE_GPU, bad settings, the health probe, hostile clients over raw
sockets and dynamic batching.

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
        assert status == 400 and "PTSERVE_REQUIRE_GPU=1" in json.loads(data)["error"]
        status, data = server.request("GET", "/v2/models/spin/ready")
        assert status == 400 and "no CUDA device is visible" in json.loads(data)["error"]
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


# --- hostile clients, over raw sockets ---------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send ``data`` on a fresh connection; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            headers = dict(
                line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
            )
            if int(headers.get("content-length", -1)) == len(body):
                return int(head.split()[1]), headers, body
    raise AssertionError(f"no whole answer: {answer!r}")


def partial_upload(port: int) -> socket.socket:
    """A connection that promised 1000 body bytes and sent 10."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"")
    return sock


def assert_no_traceback(server: Server) -> None:
    for event in server.events():
        assert "exception" not in event, event
        assert event["level"] != "error", event


MALFORMED = {
    "negative Content-Length": b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: -5\r\n\r\n",
    "non-numeric Content-Length": b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: ten\r\n\r\n",
    "Content-Length with Transfer-Encoding": b"POST /v2/models/spin/infer HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "garbage request line": b"\x16\x03\x01 garbage\r\n\r\n",
    "oversize header": b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "NUL in path": b"GET /v2/\x00/health HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.fixture(scope="module")
def spin_server(spin_repository, tmp_path_factory):
    server = Server(spin_repository, tmp_path_factory.mktemp("log") / "log",
                    PTSERVE_MAX_INFLIGHT="2", PTSERVE_BODY_TIMEOUT_SECONDS="2")
    server.wait_ready()
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_gets_a_json_error(spin_server, case):
    status, headers, body = raw_exchange(spin_server.port, MALFORMED[case])
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"].startswith("malformed HTTP request: ")
    assert spin_server.spin(1)[0] == 200
    assert_no_traceback(spin_server)


def test_stalled_uploads_hold_no_inflight_slot(spin_server):
    stalled = [partial_upload(spin_server.port) for _ in range(6)]
    try:
        time.sleep(0.3)
        assert spin_server.spin(1)[0] == 200  # only 2 slots, 6 stalled uploads
        for sock in stalled:
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert "PTSERVE_BODY_TIMEOUT_SECONDS" in error
    finally:
        for sock in stalled:
            sock.close()
    assert_no_traceback(spin_server)


def test_client_disconnect_mid_body_is_one_info_line(spin_server):
    before = len(spin_server.events())
    partial_upload(spin_server.port).close()
    deadline = time.monotonic() + 10
    while not [e for e in spin_server.events()[before:] if e["event"] == "client_disconnected"]:
        assert time.monotonic() < deadline, "no client_disconnected line"
        time.sleep(0.05)
    assert spin_server.spin(1)[0] == 200
    new = spin_server.events()[before:]
    assert [e["level"] for e in new if e["event"] == "client_disconnected"] == ["info"]
    assert not [e for e in new if e["event"] == "access" and e["status"] >= 500]
    assert_no_traceback(spin_server)


@pytest.mark.parametrize(
    "content_type, status",
    [(None, 200), ("application/json", 200), ("application/json; charset=utf-8", 200),
     ("text/plain", 415), ("application/x-www-form-urlencoded", 415)],
)
def test_content_type_of_json_bodies(spin_server, content_type, status):
    body = json.dumps({"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [1]}]})
    headers = {"Content-Type": content_type} if content_type else {}
    got, data = spin_server.request("POST", "/v2/models/spin/infer", body.encode(), headers)
    assert got == status, data
    if status == 415:
        assert "send JSON as application/json" in json.loads(data)["error"]


def test_ragged_data_is_400_naming_the_input(spin_server):
    body = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [[1], []]}]}
    status, data = spin_server.request("POST", "/v2/models/spin/infer", json.dumps(body).encode())
    assert status == 400 and "input 'n' 'data' is ragged" in json.loads(data)["error"]


def test_model_repository_extension(spin_server):
    meta = json.loads(spin_server.request("GET", "/v2")[1])
    assert "model_repository" in meta["extensions"]
    status, data = spin_server.request("POST", "/v2/repository/index", b"{}")
    assert status == 200 and json.loads(data)[0]["state"] == "READY"
    status, data = spin_server.request("POST", "/v2/repository/models/spin/unload", b"{}")
    assert status == 400 and "not supported" in json.loads(data)["error"]


# --- dynamic batching --------------------------------------------------------------


class SmallConv(torch.nn.Module):
    """A small conv net: 3x8x8 images to 4 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


CONV_IO = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 8, 8]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}
BATCHING = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 5000}}


@pytest.fixture(scope="module")
def conv_repository(tmp_path_factory) -> Path:
    """The same conv model unbatched, batched, and batched with a bad config."""
    root = tmp_path_factory.mktemp("conv")
    torch.manual_seed(0)
    module = torch.jit.script(SmallConv().eval())
    configs = {
        "plain": CONV_IO,
        "batched": {**CONV_IO, **BATCHING},
        "badbatch": {**CONV_IO, "max_batch_size": 8,
                     "dynamic_batching": {"max_queue_delay_microseconds": "soon"}},
    }
    for name, config in configs.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(config))
        module.save(str(root / name / "1" / "model.pt"))
    return root


def conv_body(x: torch.Tensor) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape),
              "data": x.flatten().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def test_batched_answers_equal_unbatched_ones(conv_repository, tmp_path):
    server = Server(conv_repository, tmp_path / "log")
    try:
        time.sleep(1)
        torch.manual_seed(1)
        inputs = [torch.randn(n, 3, 8, 8) for n in (1, 2, 1, 3, 1, 1, 4, 2) * 3]
        results: dict[tuple[str, int], tuple[int, bytes]] = {}

        def send(model: str, index: int) -> None:
            path = f"/v2/models/{model}/infer"
            results[model, index] = server.request("POST", path, conv_body(inputs[index]))

        threads = [threading.Thread(target=send, args=(model, i))
                   for model in ("plain", "batched") for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i, x in enumerate(inputs):
            plain, batched = results["plain", i], results["batched", i]
            assert plain[0] == batched[0] == 200, (plain, batched)
            a, b = (json.loads(r[1])["outputs"][0] for r in (plain, batched))
            assert a["shape"] == b["shape"] == [x.shape[0], 4]
            assert torch.allclose(torch.tensor(a["data"]), torch.tensor(b["data"]),
                                  rtol=1e-6, atol=1e-6)
        metrics = server.request("GET", "/metrics")[1].decode()
        count = next(line for line in metrics.splitlines()
                     if line.startswith('ptserve_batch_size_count{model="batched"}'))
        assert float(count.split()[1]) < len(inputs), "no request shared a batch"

        status, data = server.request("POST", "/v2/models/batched/infer",
                                      conv_body(torch.zeros(9, 3, 8, 8)))
        assert status == 400 and "more than the model's max_batch_size 8" in data.decode()
    finally:
        assert server.stop() == 0


def test_bad_batching_config_makes_the_model_not_ready(conv_repository, tmp_path):
    server = Server(conv_repository, tmp_path / "log")
    try:
        time.sleep(1)
        fragment = "'max_queue_delay_microseconds' must be a number"
        for method, path, status in (("GET", "/v2/models/badbatch/ready", 400),
                                     ("GET", "/v2/models/badbatch", 503),
                                     ("POST", "/v2/models/badbatch/infer", 503)):
            got, data = server.request(method, path, conv_body(torch.zeros(1, 3, 8, 8)))
            assert got == status and fragment in json.loads(data)["error"], (path, data)
        assert server.request("POST", "/v2/models/plain/infer",
                              conv_body(torch.zeros(1, 3, 8, 8)))[0] == 200
    finally:
        assert server.stop() == 0
    lines = [e for e in server.events() if e["event"] == "model_unusable"]
    assert len(lines) == 1 and fragment in lines[0]["reason"]
