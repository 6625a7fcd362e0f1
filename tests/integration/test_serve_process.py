"""The prod image's model server as a process: draining on SIGTERM, limits from the
environment, PTSERVE_REQUIRE_GPU, bad settings, the health probe, hostile clients over
raw sockets and dynamic batching.

Each server is a container of the prod image (its own server, torch and entrypoint),
reached on its bridge address, so raw sockets talk to the server itself with no
port proxy in between. The models are made by the image's own torch.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import random
import socket
import threading
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import docker
import pytest

from pytorch_cuda.matrix import Image

from .conftest import make_models, shared_dir
from .containers import TrackedContainer

PORT = 8000  # the server's default port in the image


@pytest.fixture(scope="module")
def spin_repository(prod_image: Image, client: docker.DockerClient,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the ``spin`` model only."""
    return make_models(prod_image, client, shared_dir(tmp_path_factory, "spin"), "--spin")


@pytest.fixture(scope="module")
def conv_repository(prod_image: Image, client: docker.DockerClient,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same conv net unbatched (``plain``), batched, and badly batched."""
    return make_models(prod_image, client, shared_dir(tmp_path_factory, "conv"), "--batching")


class Server:
    """The prod image's server in a container of its own, with ``env`` set."""

    def __init__(self, client: docker.DockerClient, image: Image, repository: Path,
                 run_options: dict | None = None, **env: str) -> None:
        self.helper = TrackedContainer(client, image.ref())
        self.container = self.helper.start(
            environment=env, volumes={str(repository): {"bind": "/models", "mode": "ro"}},
            **(run_options or {}))
        self.container.reload()
        self.host = self.container.attrs["NetworkSettings"]["IPAddress"]
        self.port = PORT
        self.terminated = False
        self.final_logs: str | None = None
        deadline = time.monotonic() + 120
        while self.request("GET", "/v2/health/live", check=False)[0] != 200:
            self.container.reload()
            assert self.container.status == "running", self.logs()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)

    def connect(self, timeout: float = 30) -> socket.socket:
        """A raw connection to the server."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict | None = None, check: bool = True) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
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
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)

    def wait_model(self, *models: str) -> None:
        """Until each of ``models`` is ready (others may never be)."""
        deadline = time.monotonic() + 60
        for model in models:
            while self.request("GET", f"/v2/models/{model}/ready")[0] != 200:
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.1)

    def spin(self, n: int) -> tuple[int, bytes]:
        body = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [n]}]}
        return self.request("POST", "/v2/models/spin/infer", json.dumps(body).encode())

    def inflight(self) -> float:
        text = self.request("GET", "/metrics")[1].decode()
        line = next(x for x in text.splitlines() if x.startswith("ptserve_inflight_requests "))
        return float(line.split()[1])

    def logs(self) -> str:
        """The server's log (kept once the container is removed)."""
        if self.final_logs is not None:
            return self.final_logs
        return self.container.logs(stdout=False, stderr=True).decode(errors="replace")

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.logs().splitlines()]

    def terminate(self) -> None:
        """SIGTERM to the container (tini passes it on to the server); once only, as a
        second one stops the server at once."""
        if not self.terminated:
            self.terminated = True
            self.container.kill(signal="SIGTERM")

    def probe(self, **env: str) -> int:
        """Exit status of the image's health probe, run in the container."""
        return self.container.exec_run(["python", "-m", "ptserve.healthcheck"],
                                       environment=env).exit_code

    def stop(self) -> int:
        """SIGTERM, then the server's exit status; the container is removed, its log kept."""
        try:
            self.container.reload()
            if self.container.status == "running":
                self.terminate()
            status = self.container.wait(timeout=60)["StatusCode"]
            self.final_logs = self.logs()
            return status
        finally:
            self.helper.cleanup()


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


@pytest.fixture
def serve(prod_image: Image, client: docker.DockerClient):
    """Start servers of the prod image (``serve(repository, **env)``); all removed after."""
    servers: list[Server] = []

    def start(repository: Path, run_options: dict | None = None, **env: str) -> Server:
        servers.append(Server(client, prod_image, repository, run_options, **env))
        return servers[-1]
    yield start
    for server in servers:
        server.helper.cleanup()


def test_sigterm_drains_in_flight_requests(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_DRAIN_SECONDS="60")
    try:
        server.wait_ready()
        thread, result = in_background(server, spin_count(server, 2.0))
        server.terminate()
        deadline = time.monotonic() + 5
        while server.request("GET", "/v2/health/live", check=False)[0] != 0:
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        thread.join(60)
        assert result and result[0][0] == 200, result
        assert json.loads(result[0][1])["outputs"][0]["name"] == "y"
    finally:
        assert server.stop() == 0
    events = [e["event"] for e in server.events()]  # the whole log, kept after the stop
    assert events.index("draining") < events.index("stopped")


def test_busy_server_answers_503(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_MAX_INFLIGHT="1")
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


def test_body_limit_from_environment(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_MAX_BODY_BYTES="1000")
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


def test_healthcheck_probe(serve, spin_repository):
    server = serve(spin_repository)
    try:
        server.wait_ready()
        assert server.probe() == 0
        assert server.probe(PTSERVE_PORT=str(PORT + 1)) == 1  # nothing listens there
    finally:
        assert server.stop() == 0


def test_require_gpu_without_gpu(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_REQUIRE_GPU="1")  # the container sees no GPU
    try:
        time.sleep(1)
        status, data = server.request("GET", "/v2/health/ready")
        assert status == 400 and "PTSERVE_REQUIRE_GPU=1" in json.loads(data)["error"]
        status, data = server.request("GET", "/v2/models/spin/ready")
        assert status == 400 and "no CUDA device is visible" in json.loads(data)["error"]
        assert server.probe() == 1
    finally:
        assert server.stop() == 0
    events = server.events()
    gpu_lines = [e for e in events if e["event"] == "gpu_required"]
    assert len(gpu_lines) == 1 and gpu_lines[0]["level"] == "error"
    assert not [e for e in events if e["event"] == "model_loaded"]


def test_bad_setting_exits_2(prod_image: Image, client: docker.DockerClient):
    helper = TrackedContainer(client, prod_image.ref())
    try:
        code, logs = helper.run(None, environment={"PTSERVE_WORKERS": "many"}, timeout=60)
    finally:
        helper.cleanup()
    assert code == 2, logs
    line = json.loads(logs.strip().splitlines()[-1])
    assert line["event"] == "invalid_setting" and "PTSERVE_WORKERS" in line["reason"]


# --- hostile clients, over raw sockets ---------------------------------------------


def raw_exchange(server: Server, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data`` on a fresh connection; (status, headers, body) of the answer."""
    with server.connect() as sock:
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


def partial_upload(server: Server) -> socket.socket:
    """A connection that promised 1000 body bytes and sent 10."""
    sock = server.connect()
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
def spin_server(prod_image: Image, client: docker.DockerClient, spin_repository: Path):
    server = Server(client, prod_image, spin_repository, PTSERVE_MAX_INFLIGHT="2", PTSERVE_BODY_TIMEOUT_SECONDS="2",
                    PTSERVE_HEADER_TIMEOUT_SECONDS="2")
    server.wait_ready()
    try:
        yield server
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_http_gets_a_json_error(spin_server, case):
    status, headers, body = raw_exchange(spin_server, MALFORMED[case])
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"].startswith("malformed HTTP request: ")
    assert spin_server.spin(1)[0] == 200
    assert_no_traceback(spin_server)


def test_request_heads_past_the_limit_get_431(spin_server):
    start = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    pads = [b"X-Pad-%d: %s\r\n" % (i, b"a" * 8000) for i in range(9)]  # each line legal
    status, headers, body = raw_exchange(spin_server, start + b"".join(pads))
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["error"].endswith("request head is larger than 65536 bytes")
    status, _, body = raw_exchange(spin_server, start + b"".join(pads[:7]) + b"\r\n")
    assert (status, json.loads(body)) == (200, {"live": True})  # 56 KB heads still pass
    assert spin_server.spin(1)[0] == 200
    assert_no_traceback(spin_server)


def test_expect_headers_get_json_answers(spin_server):
    start = b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\n"
    status, _, body = raw_exchange(spin_server, start + b"Expect: 200-ok\r\n"
                                   b"Content-Length: 2\r\n\r\n{}")
    assert status == 417 and "only 100-continue" in json.loads(body)["error"]
    # A body over the limit is refused before the client sends it.
    status, _, body = raw_exchange(spin_server, start + b"Expect: 100-continue\r\n"
                                   b"Content-Length: 100000000\r\n\r\n")
    assert status == 413 and "PTSERVE_MAX_BODY_BYTES" in json.loads(body)["error"]
    body = json.dumps({"inputs": [{"name": "n", "datatype": "INT64", "shape": [1],
                                   "data": [1]}]}).encode()
    with spin_server.connect() as sock:
        sock.sendall(start + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
    assert_no_traceback(spin_server)


def test_stalled_uploads_hold_no_inflight_slot(spin_server):
    stalled = [partial_upload(spin_server) for _ in range(6)]
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


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closed ``sock`` (without an answer) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False


def test_stalled_request_heads_and_idle_connections_are_closed(spin_server):
    before = len(spin_server.events())
    silent = spin_server.connect()
    half_head = spin_server.connect()
    half_head.sendall(b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
    answered = http.client.HTTPConnection(spin_server.host, spin_server.port, timeout=30)
    answered.request("GET", "/v2/health/ready")
    assert answered.getresponse().read() is not None
    assert answered.sock is not None  # kept alive after its answer
    started = time.monotonic()
    try:
        assert spin_server.spin(1)[0] == 200
        for sock in (silent, half_head, answered.sock):
            assert closed_within(sock, 10)
        assert time.monotonic() - started < 10  # PTSERVE_HEADER_TIMEOUT_SECONDS=2
    finally:
        silent.close()
        half_head.close()
        answered.close()
    assert spin_server.spin(1)[0] == 200
    timeouts = [e for e in spin_server.events()[before:] if e["event"] == "header_timeout"]
    assert [(e["level"], e["seconds"]) for e in timeouts] == [("info", 2.0)] * 2
    assert_no_traceback(spin_server)


def test_client_disconnect_mid_body_is_one_info_line(spin_server):
    before = len(spin_server.events())
    partial_upload(spin_server).close()
    deadline = time.monotonic() + 10
    while not [e for e in spin_server.events()[before:] if e["event"] == "client_disconnected"]:
        assert time.monotonic() < deadline, "no client_disconnected line"
        time.sleep(0.05)
    assert spin_server.spin(1)[0] == 200
    new = spin_server.events()[before:]
    assert [e["level"] for e in new if e["event"] == "client_disconnected"] == ["info"]
    assert not [e for e in new if e["event"] == "access" and e["status"] >= 500]
    assert_no_traceback(spin_server)


def test_bodies_held_at_once_stay_within_the_budget(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_MAX_BODY_BYTES="100000",
                   PTSERVE_MAX_BUFFERED_BYTES="150000")
    server.wait_ready()
    head = (b"POST /v2/models/spin/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n")
    held = server.connect()  # promises 100,000 bytes, sends 10: holds them of the budget
    held.sendall(head + b"Content-Length: 100000\r\n\r\n{\"inputs\"")
    try:
        time.sleep(0.3)
        # Refused from its head alone, before a byte of its body was sent.
        status, _, body = raw_exchange(server, head + b"Content-Length: 60000\r\n\r\n")
        assert status == 503 and "PTSERVE_MAX_BUFFERED_BYTES" in json.loads(body)["error"]
        chunk = b"%x\r\n%s\r\n" % (20000, b" " * 20000)
        status, _, body = raw_exchange(server, head + b"Transfer-Encoding: chunked\r\n\r\n"
                                       + chunk * 3)
        assert status == 503 and "PTSERVE_MAX_BUFFERED_BYTES" in json.loads(body)["error"]
        assert server.spin(1)[0] == 200  # small requests still fit
    finally:
        held.close()
    deadline = time.monotonic() + 10
    while True:  # the budget comes back once the stalled upload is gone
        status, data = server.request("POST", "/v2/models/spin/infer", b" " * 60000)
        if status != 503:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.1)
    assert status == 400 and "not valid JSON" in json.loads(data)["error"]
    assert_no_traceback(server)


def test_answers_not_taken_are_charged_then_dropped(serve, spin_repository):
    small_buffers = {"sysctls": {"net.ipv4.tcp_wmem": "4096 16384 16384"}}
    server = serve(spin_repository, small_buffers, PTSERVE_MAX_BODY_BYTES="1000000",
                   PTSERVE_MAX_BUFFERED_BYTES="1000000", PTSERVE_BODY_TIMEOUT_SECONDS="3")
    server.wait_ready()
    before = len(server.events())
    body = json.dumps({"inputs": [{"name": "n", "datatype": "INT64", "shape": [1],
                                   "data": [1_000_000]}]}).encode()  # a 4 MB answer
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((server.host, server.port))
    try:
        sock.sendall(b"POST /v2/models/fill/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 10
        while (answer := server.spin(1))[0] == 200:  # until the unread answer is charged
            assert time.monotonic() < deadline, "the unread answer was never charged"
            time.sleep(0.05)
        assert answer[0] == 503 and "PTSERVE_MAX_BUFFERED_BYTES" in json.loads(answer[1])["error"]
        deadline = time.monotonic() + 15
        while server.spin(1)[0] != 200:  # the budget comes back once the reader is dropped
            assert time.monotonic() < deadline, "the unread answer was never dropped"
            time.sleep(0.1)
    finally:
        sock.close()
    dropped = [e for e in server.events()[before:] if e["event"] == "client_disconnected"]
    assert len(dropped) == 1 and "did not take its" in dropped[0]["reason"], dropped
    assert_no_traceback(server)


def test_compressed_bodies_are_inflated_within_the_limit(serve, spin_repository):
    server = serve(spin_repository, PTSERVE_MAX_BODY_BYTES="100000")
    server.wait_ready()
    body = json.dumps({"inputs": [{"name": "n", "datatype": "INT64", "shape": [1],
                                   "data": [3]}]}).encode()
    plain = server.request("POST", "/v2/models/spin/infer", body)
    assert plain[0] == 200
    bomb = gzip.compress(b" " * 50_000_000)  # 49 KB that inflate to 50 MB

    def post(data: bytes, encoding: str) -> tuple[int, str]:
        status, answer = server.request("POST", "/v2/models/spin/infer", data,
                                        {"Content-Encoding": encoding})
        return status, "" if status == 200 else json.loads(answer)["error"]

    assert server.request("POST", "/v2/models/spin/infer", gzip.compress(body),
                          {"Content-Encoding": "gzip"}) == plain
    assert server.request("POST", "/v2/models/spin/infer", zlib.compress(body),
                          {"Content-Encoding": "deflate"}) == plain
    status, error = post(bomb, "gzip")
    assert status == 413 and "PTSERVE_MAX_BODY_BYTES" in error
    assert post(gzip.compress(body)[:-9], "gzip") == (
        400, "request body ends before its compressed data does")
    status, error = post(b"not gzip at all", "gzip")
    assert status == 400 and error.startswith("request body is not valid compressed data")
    status, error = post(body, "br")
    assert status == 415 and "Content-Encoding br is not accepted" in error
    assert server.request("POST", "/v2/models/spin/infer", body) == plain
    assert_no_traceback(server)


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


def conv_body(images: list[float], count: int) -> bytes:
    """An infer request of ``count`` 3x16x16 images (``images``: their values, flat)."""
    tensor = {"name": "image", "datatype": "FP32", "shape": [count, 3, 16, 16], "data": images}
    return json.dumps({"inputs": [tensor]}).encode()


def test_batched_answers_equal_unbatched_ones(serve, conv_repository):
    server = serve(conv_repository)
    try:
        server.wait_model("plain", "batched")
        rng = random.Random(1)
        counts = [1, 2, 1, 3, 1, 1, 4, 2] * 3
        inputs = [[rng.uniform(-1, 1) for _ in range(n * 3 * 16 * 16)] for n in counts]
        results: dict[tuple[str, int], tuple[int, bytes]] = {}

        def send(model: str, index: int) -> None:
            path = f"/v2/models/{model}/infer"
            results[model, index] = server.request("POST", path,
                                                   conv_body(inputs[index], counts[index]))

        threads = [threading.Thread(target=send, args=(model, i))
                   for model in ("plain", "batched") for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i, count in enumerate(counts):
            plain, batched = results["plain", i], results["batched", i]
            assert plain[0] == batched[0] == 200, (plain, batched)
            a, b = (json.loads(r[1])["outputs"][0] for r in (plain, batched))
            assert a["shape"] == b["shape"] == [count, 10]
            assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6)
                       for x, y in zip(a["data"], b["data"], strict=True))
        metrics = server.request("GET", "/metrics")[1].decode()
        count = next(line for line in metrics.splitlines()
                     if line.startswith('ptserve_batch_size_count{model="batched"}'))
        assert float(count.split()[1]) < len(inputs), "no request shared a batch"

        status, data = server.request("POST", "/v2/models/batched/infer",
                                      conv_body([0.0] * 9 * 3 * 16 * 16, 9))
        assert status == 400 and "more than the model's max_batch_size 8" in data.decode()
    finally:
        assert server.stop() == 0


def test_bad_batching_config_makes_the_model_not_ready(serve, conv_repository):
    server = serve(conv_repository)
    try:
        server.wait_model("plain")
        fragment = "'max_queue_delay_microseconds' must be a number"
        one = conv_body([0.0] * 3 * 16 * 16, 1)
        for method, path, status in (("GET", "/v2/models/badbatch/ready", 400),
                                     ("GET", "/v2/models/badbatch", 503),
                                     ("POST", "/v2/models/badbatch/infer", 503)):
            got, data = server.request(method, path, one)
            assert got == status and fragment in json.loads(data)["error"], (path, data)
        assert server.request("POST", "/v2/models/plain/infer", one)[0] == 200
    finally:
        assert server.stop() == 0
    lines = [e for e in server.events() if e["event"] == "model_unusable"]
    assert len(lines) == 1 and fragment in lines[0]["reason"]
