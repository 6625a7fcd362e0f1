"""Model server against a live instance: KServe v2 over HTTP, as tritonclient speaks it.

Fixtures come from the caller's conftest:

- ``serve_url``: base URL of a running server (``http://127.0.0.1:8000``) whose
  model repository was written by ``make_models.py`` (no ``--broken``).
- ``serve_models``: model name -> path of the ``reference.json`` written by
  ``make_models.py`` (the file's top-level keys are model names).
- ``serve_broken_url`` (optional): a server whose repository was written with
  ``make_models.py --broken``; the tests that need it skip when it is absent.
- ``serve_max_body_bytes`` (optional): the server's PTSERVE_MAX_BODY_BYTES,
  64 MiB when absent.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

np = pytest.importorskip("numpy")
httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

RTOL, ATOL = 1e-4, 1e-5
DEFAULT_MAX_BODY = 64 * 1024 * 1024
LOAD_REQUESTS, LOAD_CLIENTS = 2000, 32
RSS_GROWTH_LIMIT = 64 * 2**20  # "flat": allocator noise only, no per-request growth


def optional_fixture(request: pytest.FixtureRequest, name: str, default=None):
    """A fixture's value, or ``default`` (or a skip) when the conftest lacks it."""
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        if default is None:
            pytest.skip(f"fixture {name} is not provided")
        return default


def reference(serve_models: dict, name: str) -> dict:
    return json.loads(Path(serve_models[name]).read_text())[name]


@pytest.fixture(scope="module")
def triton(serve_url):
    """A tritonclient HTTP client for the server (not named ``client``: the
    integration conftest uses that name for its container engine)."""
    connection = httpclient.InferenceServerClient(url=urlsplit(serve_url).netloc)
    yield connection
    connection.close()


def call(base_url: str, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    """One raw HTTP exchange on a fresh connection."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def error_of(data: bytes) -> str:
    answer = json.loads(data)
    assert set(answer) >= {"error"}, answer
    assert isinstance(answer["error"], str) and answer["error"]
    return answer["error"]


def infer_json(base_url: str, model: str, body: dict, version: str | None = None):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return call(base_url, "POST", path, json.dumps(body).encode(),
                {"Content-Type": "application/json"})


def check_case(answer: dict, case: dict) -> None:
    by_name = {out["name"]: out for out in answer["outputs"]}
    for want in case["outputs"]:
        got = by_name[want["name"]]
        assert got["datatype"] == want["datatype"] and got["shape"] == want["shape"]
        np.testing.assert_allclose(got["data"], want["data"], rtol=RTOL, atol=ATOL)


def assert_still_serving(serve_url: str, serve_models: dict) -> None:
    """A good JSON request right after a bad one still succeeds."""
    ref = reference(serve_models, "controlflow")
    case = next(c for c in ref["cases"] if c["version"] == ref["default_version"])
    status, data, _ = infer_json(serve_url, "controlflow", {"inputs": case["inputs"]})
    assert status == 200, data
    check_case(json.loads(data), case)


# --- happy path with tritonclient -------------------------------------------------


def test_server_live_and_ready(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()


def test_server_metadata(triton):
    meta = triton.get_server_metadata()
    assert meta["name"] == "ptserve"
    assert isinstance(meta["version"], str) and meta["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata(triton, serve_models):
    for name in ("controlflow", "smallconv"):
        ref = reference(serve_models, name)
        case = ref["cases"][0]
        for version in ("", ref["default_version"]):
            meta = triton.get_model_metadata(name, version)
            assert meta["name"] == name
            assert meta["platform"] == "pytorch_torchscript"
            assert ref["default_version"] in meta["versions"]
            assert {c["version"] for c in ref["cases"]} <= set(meta["versions"])
            for kind in ("inputs", "outputs"):
                assert [(t["name"], t["datatype"]) for t in meta[kind]] == [
                    (t["name"], t["datatype"]) for t in case[kind]
                ]
                for tensor in meta[kind]:
                    assert tensor["shape"][0] == -1


def test_model_ready(triton, serve_models):
    for name in serve_models:
        assert triton.is_model_ready(name)
        for version in {c["version"] for c in reference(serve_models, name)["cases"]}:
            assert triton.is_model_ready(name, version)
    assert not triton.is_model_ready("no_such_model")
    assert not triton.is_model_ready("controlflow", "999")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", ["controlflow", "smallconv"])
def test_inference_matches_reference(triton, serve_models, name, binary):
    ref = reference(serve_models, name)
    for case in ref["cases"]:
        versions = [case["version"]] + ([""] if case["version"] == ref["default_version"] else [])
        for version in versions:
            inputs = []
            for tensor in case["inputs"]:
                value = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                infer_input = httpclient.InferInput(tensor["name"], tensor["shape"], "FP32")
                infer_input.set_data_from_numpy(value, binary_data=binary)
                inputs.append(infer_input)
            outputs = [httpclient.InferRequestedOutput(t["name"], binary_data=binary)
                       for t in case["outputs"]]
            result = triton.infer(name, inputs, model_version=version, outputs=outputs,
                                  request_id=f"{name}-{case['name']}")
            answer = result.get_response()
            assert answer["model_name"] == name
            assert answer["model_version"] == case["version"]
            assert answer["id"] == f"{name}-{case['name']}"
            for want in case["outputs"]:
                got = result.as_numpy(want["name"])
                assert list(got.shape) == want["shape"]
                expected = np.asarray(want["data"], dtype=np.float32).reshape(want["shape"])
                np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_controlflow_takes_both_branches(triton, serve_models):
    ref = reference(serve_models, "controlflow")
    version = ref["default_version"]
    cases = {c["name"]: c for c in ref["cases"] if c["version"] == version}
    got = {}
    for name, case in cases.items():
        tensor = case["inputs"][0]
        infer_input = httpclient.InferInput(tensor["name"], tensor["shape"], "FP32")
        infer_input.set_data_from_numpy(
            np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        )
        got[name] = triton.infer("controlflow", [infer_input]).as_numpy("output")
    assert (got["relu_branch"] >= 0).all()
    assert (got["plain_branch"] < 0).any()


def test_repository_index(serve_url, serve_models):
    status, data, _ = call(serve_url, "POST", "/v2/repository/index", b"{}")
    assert status == 200
    rows = json.loads(data)
    assert {row["name"] for row in rows} >= set(serve_models)
    assert all(row["state"] == "READY" for row in rows)


# --- bad requests: status, error text, and the server keeps serving ---------------


def tensor(data, shape=(1, 4), datatype="FP32", name="input") -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


GOOD_DATA = [1.0, 2.0, 3.0, 4.0]

BAD_REQUESTS = {
    "unknown_model": ("/v2/models/no_such_model/infer", {"inputs": [tensor(GOOD_DATA)]},
                      404, ["unknown model 'no_such_model'"]),
    "unknown_version": ("/v2/models/controlflow/versions/999/infer",
                        {"inputs": [tensor(GOOD_DATA)]}, 404, ["no version '999'"]),
    "malformed_json": ("/v2/models/controlflow/infer", b'{"inputs": [', 400,
                       ["not valid JSON"]),
    "missing_input": ("/v2/models/controlflow/infer", {"inputs": []}, 400,
                      ["missing input 'input'"]),
    "unknown_input": ("/v2/models/controlflow/infer",
                      {"inputs": [tensor(GOOD_DATA), tensor(GOOD_DATA, name="bogus")]}, 400,
                      ["unknown input 'bogus'"]),
    "wrong_datatype": ("/v2/models/controlflow/infer",
                       {"inputs": [tensor(GOOD_DATA, datatype="FP64")]}, 400,
                       ["input 'input'", "FP64", "expects FP32"]),
    "wrong_rank": ("/v2/models/controlflow/infer", {"inputs": [tensor(GOOD_DATA, shape=(4,))]},
                   400, ["input 'input' has shape [4]", "[-1, 4]"]),
    "wrong_fixed_dim": ("/v2/models/controlflow/infer",
                        {"inputs": [tensor(GOOD_DATA * 2, shape=(1, 8))]}, 400,
                        ["input 'input' has shape [1, 8]", "[-1, 4]"]),
    "data_length": ("/v2/models/controlflow/infer",
                    {"inputs": [tensor(GOOD_DATA[:3])]}, 400,
                    ["input 'input' has 3 values", "needs 4"]),
    "non_numeric": ("/v2/models/controlflow/infer",
                    {"inputs": [tensor(["one", 2.0, 3.0, 4.0])]}, 400,
                    ["input 'input' element 0", '"one"', "numbers"]),
    "nan": ("/v2/models/controlflow/infer",
            (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",'
             b' "data": [1.0, NaN, 3.0, 4.0]}]}'), 400,
            ["input 'input' contains NaN or infinite values"]),
    "infinity": ("/v2/models/controlflow/infer",
                 (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",'
                  b' "data": [1.0, 2.0, -Infinity, 4.0]}]}'), 400,
                 ["input 'input' contains NaN or infinite values"]),
    "not_an_object": ("/v2/models/controlflow/infer", b"[1, 2, 3]", 400, ["JSON object"]),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request(serve_url, serve_models, case):
    path, body, status, fragments = BAD_REQUESTS[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got_status, data, response = call(serve_url, "POST", path, raw,
                                      {"Content-Type": "application/json"})
    assert got_status == status, data
    assert response.getheader("Content-Type", "").startswith("application/json")
    message = error_of(data)
    for fragment in fragments:
        assert fragment in message
    assert_still_serving(serve_url, serve_models)


def test_unknown_model_metadata_and_routes(serve_url, serve_models):
    status, data, _ = call(serve_url, "GET", "/v2/models/no_such_model")
    assert status == 404 and "unknown model 'no_such_model'" in error_of(data)
    status, data, _ = call(serve_url, "GET", "/v2/models/controlflow/versions/999/ready")
    assert status == 404 and "no version '999'" in error_of(data)
    status, data, _ = call(serve_url, "GET", "/v2/no/such/endpoint")
    assert status == 404 and "no endpoint GET /v2/no/such/endpoint" in error_of(data)
    assert_still_serving(serve_url, serve_models)


def test_tritonclient_sees_error_text(triton):
    infer_input = httpclient.InferInput("input", [1, 8], "FP32")
    infer_input.set_data_from_numpy(np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("controlflow", [infer_input])
    assert info.value.status() == "400"
    assert "input 'input' has shape [1, 8]" in info.value.message()


def test_body_over_limit(request, serve_url, serve_models):
    limit = optional_fixture(request, "serve_max_body_bytes", DEFAULT_MAX_BODY)
    status, data, _ = call(serve_url, "POST", "/v2/models/controlflow/infer",
                           b" " * (limit + 1), {"Content-Type": "application/json"})
    assert status == 413
    assert f"larger than the {limit}-byte limit" in error_of(data)
    assert_still_serving(serve_url, serve_models)


# --- metrics and load --------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def scrape(serve_url: str) -> dict[str, float]:
    status, data, response = call(serve_url, "GET", "/metrics")
    assert status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    samples = {}
    for line in data.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics(serve_url, serve_models):
    before = scrape(serve_url)
    assert_still_serving(serve_url, serve_models)
    call(serve_url, "POST", "/v2/models/controlflow/infer", b"{broken")
    after = scrape(serve_url)

    def grew(key: str) -> bool:
        return after.get(key, 0) > before.get(key, 0)

    assert grew('ptserve_requests_total{code="200",model="controlflow"}')
    assert grew('ptserve_requests_total{code="400",model="controlflow"}')
    assert grew('ptserve_request_duration_seconds_count{model="controlflow"}')
    assert grew('ptserve_request_duration_seconds_bucket{le="+Inf",model="controlflow"}')
    assert grew('ptserve_inference_duration_seconds_count{model="controlflow"}')
    assert after["ptserve_inflight_requests"] == 0
    assert after["process_resident_memory_bytes"] > 0
    assert after['ptserve_model_ready{model="controlflow",version="1"}'] == 1
    gpu = {k: v for k, v in after.items() if k.startswith("ptserve_gpu_memory_allocated_bytes")}
    if gpu:  # a GPU is visible: the models' weights live there
        assert gpu['ptserve_gpu_memory_allocated_bytes{device="0"}'] > 0


def test_load(request, serve_url, serve_models):
    """LOAD_REQUESTS inferences from LOAD_CLIENTS concurrent clients, all correct, memory flat."""
    rss = optional_fixture(request, "serve_rss", default=lambda: 0)
    cases = [(name, case) for name in ("controlflow", "smallconv")
             for case in reference(serve_models, name)["cases"]]
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()
    netloc = urlsplit(serve_url).netloc

    def worker(index: int) -> None:
        connection = httpclient.InferenceServerClient(url=netloc, network_timeout=120)
        try:
            for n in range(index, LOAD_REQUESTS, LOAD_CLIENTS):
                name, case = cases[n % len(cases)]
                tensor = case["inputs"][0]
                infer_input = httpclient.InferInput(tensor["name"], tensor["shape"], "FP32")
                infer_input.set_data_from_numpy(
                    np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                )
                try:
                    result = connection.infer(name, [infer_input], model_version=case["version"])
                    want = case["outputs"][0]
                    np.testing.assert_allclose(
                        result.as_numpy(want["name"]),
                        np.asarray(want["data"], dtype=np.float32).reshape(want["shape"]),
                        rtol=RTOL, atol=ATOL,
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is collected
                    with lock:
                        errors.append(f"{name} #{n}: {exc}")
                with lock:
                    done[0] += 1
        finally:
            connection.close()

    rss_before = rss()
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - started
    rss_after = rss()
    print(f"load: {done[0]} requests from {LOAD_CLIENTS} clients in {elapsed:.1f}s "
          f"({done[0] / elapsed:.0f} req/s), {len(errors)} errors; server RSS "
          f"{rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after")
    assert not any(thread.is_alive() for thread in threads), "load clients did not finish"
    assert done[0] == LOAD_REQUESTS
    assert errors == [], errors[:5]
    assert scrape(serve_url)["ptserve_inflight_requests"] == 0
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (
        f"server RSS grew {(rss_after - rss_before) / 2**20:.0f} MiB under load")


# --- a repository with models that fail to load (optional second server) ----------


def test_broken_models_are_reported(request, serve_url):
    broken_url = optional_fixture(request, "serve_broken_url")
    status, data, _ = call(broken_url, "GET", "/v2/health/ready")
    assert status == 400 and "not ready" in error_of(data)
    status, data, _ = call(broken_url, "GET", "/v2/health/live")
    assert status == 200

    status, data, _ = call(broken_url, "GET", "/v2/models/broken_customop/ready")
    answer = json.loads(data)
    assert status == 400 and answer["ready"] is False
    assert "Unknown builtin op: ptserve_test::scale2" in answer["error"]
    status, data, _ = call(broken_url, "GET", "/v2/models/broken_corrupt")
    assert status == 503 and "failed to load" in error_of(data)
    status, data, _ = call(broken_url, "POST", "/v2/models/broken_customop/infer",
                           json.dumps({"inputs": [tensor(GOOD_DATA)]}).encode())
    assert status == 503 and "is not ready" in error_of(data)

    status, data, _ = call(broken_url, "POST", "/v2/repository/index", b"")
    states = {row["name"]: row["state"] for row in json.loads(data)}
    assert states["broken_customop"] == states["broken_corrupt"] == "UNAVAILABLE"
    assert states["controlflow"] == "READY"
    status, data, _ = infer_json(broken_url, "controlflow", {"inputs": [tensor(GOOD_DATA)]})
    assert status == 200, data
