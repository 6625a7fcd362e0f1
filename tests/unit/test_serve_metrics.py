"""Model server: Prometheus text format, settings and JSON log lines (pure Python)."""

from __future__ import annotations

import importlib
import io
import json
import logging
import re
from pathlib import Path

import pytest

logs = importlib.import_module("ptserve.logs")
metrics = importlib.import_module("ptserve.metrics")
settings = importlib.import_module("ptserve.settings")

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? \S+$')


def test_format_value():
    assert metrics.format_value(3.0) == "3"
    assert metrics.format_value(0.25) == "0.25"
    assert metrics.format_value(float("inf")) == "+Inf"
    assert metrics.format_value(float("-inf")) == "-Inf"
    assert metrics.format_value(float("nan")) == "NaN"


def test_escape_label():
    assert metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_counter_and_gauge():
    counter = metrics.Counter("t_total", "Things.", ("model", "code"))
    counter.inc(("m", "200"))
    counter.inc(("m", "200"), 2)
    counter.inc(('we"ird', "400"))
    text = counter.render()
    assert text.startswith("# HELP t_total Things.\n# TYPE t_total counter\n")
    assert 't_total{model="m",code="200"} 3\n' in text
    assert 't_total{model="we\\"ird",code="400"} 1\n' in text
    with pytest.raises(ValueError):
        counter.inc(("only-one",))
    gauge = metrics.Gauge("g", "G.")
    gauge.set(5)
    gauge.set(2.5)
    assert gauge.render().endswith("g 2.5\n")


def test_histogram_is_cumulative():
    hist = metrics.Histogram("h_seconds", "H.", ("model",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value, ("m",))
    lines = hist.render().splitlines()
    assert lines[2:] == [
        'h_seconds_bucket{model="m",le="0.1"} 2',
        'h_seconds_bucket{model="m",le="1"} 3',
        'h_seconds_bucket{model="m",le="+Inf"} 4',
        'h_seconds_sum{model="m"} 3.65',
        'h_seconds_count{model="m"} 4',
    ]


def test_server_metrics_render_valid_exposition():
    server = metrics.ServerMetrics()
    server.requests.inc(("m", "200"))
    server.request_seconds.observe(0.002, ("m",))
    server.inference_seconds.observe(0.001, ("m",))
    server.gpu_memory.set(1024, ("0",))
    server.model_ready.set(1, ("m", "1"))
    text = server.render()
    for name in (
        "ptserve_requests_total",
        "ptserve_request_duration_seconds",
        "ptserve_inference_duration_seconds",
        "ptserve_inflight_requests",
        "ptserve_gpu_memory_allocated_bytes",
        "ptserve_model_ready",
    ):
        assert f"# TYPE {name} " in text
    assert "ptserve_inflight_requests 0\n" in text
    assert 'ptserve_gpu_memory_allocated_bytes{device="0"} 1024\n' in text
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line


def test_settings_defaults_and_overrides():
    assert settings.Settings.from_env({}) == settings.Settings()
    parsed = settings.Settings.from_env(
        {
            "PTSERVE_MODEL_REPOSITORY": "/srv/models",
            "PTSERVE_PORT": "9000",
            "PTSERVE_WORKERS": "4",
            "PTSERVE_MAX_INFLIGHT": "8",
            "PTSERVE_MAX_BODY_BYTES": "1024",
            "PTSERVE_DRAIN_SECONDS": "1.5",
            "PTSERVE_REQUIRE_GPU": "1",
            "PTSERVE_ALLOW_TF32": "true",
        }
    )
    assert parsed.model_repository == Path("/srv/models")
    assert (parsed.port, parsed.workers, parsed.max_inflight) == (9000, 4, 8)
    assert (parsed.max_body_bytes, parsed.drain_seconds) == (1024, 1.5)
    assert parsed.require_gpu and parsed.allow_tf32


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"PTSERVE_PORT": "http"}, "PTSERVE_PORT='http' is not an integer"),
        ({"PTSERVE_PORT": "70000"}, "not a TCP port"),
        ({"PTSERVE_WORKERS": "0"}, "PTSERVE_WORKERS=0 must be at least 1"),
        ({"PTSERVE_DRAIN_SECONDS": "-1"}, "non-negative"),
        ({"PTSERVE_REQUIRE_GPU": "maybe"}, "must be 1 or 0"),
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
