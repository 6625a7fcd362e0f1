"""Model server: Prometheus metrics, settings and JSON log lines (pure Python)."""

from __future__ import annotations

import asyncio
import dataclasses

import importlib
import io
import json
import logging
import re
from pathlib import Path

import pytest

logs = importlib.import_module("ptserve.logs")
repository = importlib.import_module("ptserve.repository")
settings = importlib.import_module("ptserve.settings")

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? \S+$')


def server_metrics(gpus: list) -> object:
    """ServerMetrics over a repository of one ready and one failed model version."""
    pytest.importorskip("prometheus_client")
    metrics = importlib.import_module("ptserve.metrics")
    repo = repository.Repository(Path("/models"))
    model = repository.Model("m", None)
    for number, ready in ((1, True), (2, False)):
        version = repository.ModelVersion("m", number, Path(f"/models/m/{number}"), ())
        if ready:
            version.set_ready(object())
        else:
            version.set_unavailable("broken")
        model.versions[number] = version
    repo.models["m"] = model
    return metrics.ServerMetrics(repo, lambda: gpus)


def test_metrics_keep_their_names_and_add_process_metrics():
    server = server_metrics([])
    server.requests.labels("m", "200").inc()
    server.request_seconds.labels("m").observe(0.002)
    server.inference_seconds.labels("m").observe(0.001)
    server.batch_size.labels("m").observe(8)
    body, content_type = server.render(None)
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    for name in (
        "ptserve_requests_total",
        "ptserve_request_duration_seconds",
        "ptserve_inference_duration_seconds",
        "ptserve_batch_size",
        "ptserve_inflight_requests",
        "ptserve_model_ready",
        "process_resident_memory_bytes",
        "python_info",
    ):
        assert f"# TYPE {name} " in text, name
    assert 'ptserve_requests_total{code="200",model="m"} 1.0' in text
    assert 'ptserve_model_ready{model="m",version="1"} 1.0' in text
    assert 'ptserve_model_ready{model="m",version="2"} 0.0' in text
    assert "_created" not in text and "ptserve_gpu" not in text
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line


def test_gpu_metrics_per_device_and_utilization_only_when_known():
    runtime = pytest.importorskip("ptserve.runtime")
    gpus = [
        runtime.GpuStats(0, 1024, 2048, 4096, 8192, 37.0),
        runtime.GpuStats(1, 1, 2, 3, 4, None),
    ]
    text = server_metrics(gpus).render(None)[0].decode()
    assert 'ptserve_gpu_memory_allocated_bytes{device="0"} 1024.0' in text
    assert 'ptserve_gpu_memory_total_bytes{device="1"} 4.0' in text
    assert 'ptserve_gpu_utilization_percent{device="0"} 37.0' in text
    assert 'ptserve_gpu_utilization_percent{device="1"}' not in text


def test_openmetrics_on_request():
    body, content_type = server_metrics([]).render("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_settings_defaults_and_overrides():
    defaults = settings.Settings.from_env({})
    share = max(1, settings.usable_cpus() // 2)
    assert defaults == dataclasses.replace(settings.Settings(), torch_threads=share)
    parsed = settings.Settings.from_env(
        {
            "PTSERVE_MODEL_REPOSITORY": "/srv/models",
            "PTSERVE_PORT": "9000",
            "PTSERVE_WORKERS": "4",
            "PTSERVE_MAX_INFLIGHT": "8",
            "PTSERVE_MAX_BODY_BYTES": "1024",
            "PTSERVE_MAX_BUFFERED_BYTES": "4096",
            "PTSERVE_DRAIN_SECONDS": "1.5",
            "PTSERVE_BODY_TIMEOUT_SECONDS": "2.5",
            "PTSERVE_HEADER_TIMEOUT_SECONDS": "4",
            "PTSERVE_REQUIRE_GPU": "1",
            "PTSERVE_ALLOW_TF32": "true",
            "PTSERVE_TORCH_THREADS": "3",
        }
    )
    assert parsed.torch_threads == 3
    assert parsed.model_repository == Path("/srv/models")
    assert (parsed.port, parsed.workers, parsed.max_inflight) == (9000, 4, 8)
    assert (parsed.max_body_bytes, parsed.max_buffered_bytes, parsed.drain_seconds) == (
        1024, 4096, 1.5)
    assert defaults.max_buffered_bytes == 4 * defaults.max_body_bytes == 256 * 1024 * 1024
    big = settings.Settings.from_env({"PTSERVE_MAX_BODY_BYTES": str(10**9)})
    assert big.max_buffered_bytes == 10**9  # the budget always takes one largest body
    assert (parsed.body_timeout_seconds, parsed.header_timeout_seconds) == (2.5, 4.0)
    assert parsed.require_gpu and parsed.allow_tf32


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"PTSERVE_PORT": "http"}, "PTSERVE_PORT='http' is not an integer"),
        ({"PTSERVE_PORT": "70000"}, "not a TCP port"),
        ({"PTSERVE_WORKERS": "0"}, "PTSERVE_WORKERS=0 must be at least 1"),
        ({"PTSERVE_DRAIN_SECONDS": "-1"}, "non-negative"),
        ({"PTSERVE_BODY_TIMEOUT_SECONDS": "0"}, "PTSERVE_BODY_TIMEOUT_SECONDS=0 must be a finite positive"),
        ({"PTSERVE_BODY_TIMEOUT_SECONDS": "inf"}, "finite positive"),
        ({"PTSERVE_HEADER_TIMEOUT_SECONDS": "-3"}, "PTSERVE_HEADER_TIMEOUT_SECONDS=-3 must be a finite positive"),
        ({"PTSERVE_REQUIRE_GPU": "maybe"}, "must be 1 or 0"),
        ({"PTSERVE_MAX_BODY_BYTES": "1000", "PTSERVE_MAX_BUFFERED_BYTES": "999"},
         "PTSERVE_MAX_BUFFERED_BYTES=999 must be at least 1000, the value of "
         "PTSERVE_MAX_BODY_BYTES"),
    ],
)
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(ValueError) as info:
        settings.Settings.from_env(env)
    assert fragment in str(info.value)


def test_port_from_env():
    assert settings.port_from_env({}) == 8000
    assert settings.port_from_env({"PTSERVE_PORT": "8123"}) == 8123


def test_json_log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("ptserve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logs.info("model_loaded", model="m", version=1)
        logging.getLogger("aiohttp.server").handlers[:] = [handler]
        logging.getLogger("aiohttp.server").warning("plain %s", "text")
    finally:
        logger.removeHandler(handler)
        logging.getLogger("aiohttp.server").handlers[:] = []
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "model_loaded" and first["level"] == "info"
    assert (first["model"], first["version"]) == ("m", 1)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["ts"])
    assert second["event"] == "log" and second["message"] == "plain text"
    assert second["logger"] == "aiohttp.server" and second["level"] == "warning"


def test_line_handler_writes_a_loops_lines_together():
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    handler = logs.LineHandler(Stream())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("ptserve.test_line_handler")
    logger.addHandler(handler)
    logger.propagate = False

    async def burst() -> int:
        for n in range(3):
            logger.warning("line %d", n)
        pending = len(writes)
        await asyncio.sleep(0)
        return pending

    try:
        logger.warning("before")
        assert asyncio.run(burst()) == 1
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert writes == ["before\n", "line 0\nline 1\nline 2\n", "after\n"]
