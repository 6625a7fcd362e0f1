"""Model server: config.json parsing and model-repository discovery (pure Python)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

errors = importlib.import_module("ptserve.errors")
modelconfig = importlib.import_module("ptserve.modelconfig")
repository = importlib.import_module("ptserve.repository")


GOOD = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4], "allow_non_finite": True}],
    "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
}


def test_parse_config():
    config = modelconfig.parse_config(GOOD)
    (x,), (y,) = config.inputs, config.outputs
    assert (x.name, x.datatype.name, x.shape, x.allow_non_finite) == ("x", "FP32", (-1, 4), True)
    assert (y.datatype.name, y.allow_non_finite) == ("INT64", False)
    assert config.input("x") is x and config.output("y") is y and config.input("y") is None
    assert x.matches((7, 4)) and not x.matches((7, 5)) and not x.matches((4,))
    assert x.metadata() == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"outputs": None}, "'outputs' must be a non-empty list"),
        ({"extra": 1}, "unknown keys ['extra']"),
        ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [1]}]}, "datatype 'FP8'"),
        ({"inputs": [{"name": "x", "datatype": ["FP32"], "shape": [1]}]}, "datatype ['FP32']"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "'shape'"),
        ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "non-empty string 'name'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "allow_nonfinite": True}]},
         "unknown keys ['allow_nonfinite']"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "allow_non_finite": 1}]},
         "non-boolean"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "allow_non_finite": True}]},
         "unknown keys"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}] * 2}, "more than once"),
        ({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1]}]}, "BYTES (strings) is not"),
        ({"max_batch_size": 0}, "'max_batch_size' must be a positive integer, not 0"),
        ({"max_batch_size": -4}, "positive integer, not -4"),
        ({"max_batch_size": "8"}, "positive integer, not \"8\""),
        ({"dynamic_batching": {}}, "'dynamic_batching' needs 'max_batch_size'"),
        ({"max_batch_size": 8, "dynamic_batching": []}, "'dynamic_batching' must be an object"),
        ({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": "100"}},
         "'max_queue_delay_microseconds' must be a number"),
        ({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": -1}},
         "must be a number from 0"),
        ({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [4, 0]}},
         "every 'preferred_batch_size' must be a positive integer, not 0"),
        ({"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [16]}},
         "exceeds max_batch_size 8"),
        ({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay": 5}},
         "unknown keys ['max_queue_delay']"),
        ({"max_batch_size": 8, "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 4]}]},
         "'x' has shape [4, 4], but batching (max_batch_size) needs every input and output"),
        ({"max_batch_size": 8, "outputs": [{"name": "y", "datatype": "FP32", "shape": []}]},
         "'y' has shape []"),
    ],
)
def test_bad_configs(change, fragment):
    with pytest.raises(modelconfig.ConfigError) as info:
        modelconfig.parse_config({**GOOD, **change})
    assert fragment in str(info.value)


def test_batching_config():
    config = modelconfig.parse_config({
        **GOOD, "max_batch_size": 16,
        "dynamic_batching": {"max_queue_delay_microseconds": 250, "preferred_batch_size": [8, 4]},
    })
    assert config.max_batch_size == 16
    assert config.dynamic_batching == modelconfig.DynamicBatching(0.00025, (4, 8))
    assert modelconfig.parse_config(GOOD).dynamic_batching is None


def test_bad_batching_config_makes_model_unavailable(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.json").write_text(json.dumps({**GOOD, "max_batch_size": 0}))
    repo = repository.Repository.scan(tmp_path)
    version = repo.models["m"].versions[1]
    assert version.state is repository.State.UNAVAILABLE
    assert "'max_batch_size' must be a positive integer" in version.reason
    assert "'max_batch_size'" in repo.not_ready_reason()


def test_load_config_reports_file_problems(tmp_path):
    with pytest.raises(modelconfig.ConfigError, match="cannot read config.json"):
        modelconfig.load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(modelconfig.ConfigError, match="not valid JSON"):
        modelconfig.load_config(tmp_path / "config.json")


def make_model(root: Path, name: str, versions=(1,), config=GOOD) -> Path:
    model = root / name
    model.mkdir(parents=True)
    (model / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for version in versions:
        (model / str(version)).mkdir()
        (model / str(version) / "model.pt").write_bytes(b"")
    return model


def test_scan_finds_models_versions_and_libraries(tmp_path):
    model = make_model(tmp_path, "m", versions=(1, 2, 10))
    (model / "ops.so").write_bytes(b"")
    (model / "10" / "lib").mkdir()
    (model / "10" / "lib" / "extra.so").write_bytes(b"")
    (model / "notes").mkdir()
    (tmp_path / ".hidden").mkdir()
    repo = repository.Repository.scan(tmp_path)
    assert list(repo.models) == ["m"]
    m = repo.models["m"]
    assert sorted(m.versions) == [1, 2, 10]
    assert m.default_version is m.versions[10]
    assert [p.name for p in m.versions[10].libraries] == ["ops.so", "extra.so"]
    assert [p.name for p in m.versions[1].libraries] == ["ops.so"]
    assert m.version(None) is m.versions[10]
    assert m.version("2") is m.versions[2]
    assert repo.not_ready_reason() == "models are still loading"


def test_unknown_model_and_version_are_404(tmp_path):
    make_model(tmp_path, "m", versions=(1,))
    repo = repository.Repository.scan(tmp_path)
    with pytest.raises(errors.ApiError) as info:
        repo.model("other")
    assert (info.value.status, info.value.message) == (404, "unknown model 'other'")
    for bad in ("3", "x", "²"):
        with pytest.raises(errors.ApiError) as info:
            repo.models["m"].version(bad)
        assert info.value.status == 404
        assert f"no version '{bad}'" in info.value.message


def test_readiness_and_index(tmp_path):
    make_model(tmp_path, "a", versions=(1, 2))
    make_model(tmp_path, "b")
    repo = repository.Repository.scan(tmp_path)
    for version in repo.versions():
        version.set_ready(object())
    assert repo.not_ready_reason() == ""
    repo.models["a"].versions[1].set_unavailable("failed to load: boom")
    assert repo.not_ready_reason() == "model 'a' version 1: failed to load: boom"
    assert repo.index()[0] == {
        "name": "a", "version": "1", "state": "UNAVAILABLE", "reason": "failed to load: boom"
    }
    assert [row["state"] for row in repo.index()] == ["UNAVAILABLE", "READY", "READY"]


def test_bad_config_makes_model_unavailable(tmp_path):
    make_model(tmp_path, "bad", config='{"inputs": []}')
    repo = repository.Repository.scan(tmp_path)
    version = repo.models["bad"].versions[1]
    assert version.state is repository.State.UNAVAILABLE
    assert version.reason.startswith("invalid config.json: 'inputs' must be a non-empty list")
    assert "invalid config.json" in repo.not_ready_reason()


def test_model_without_versions(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(GOOD))
    repo = repository.Repository.scan(tmp_path)
    assert "no numeric version directory" in repo.not_ready_reason()
    with pytest.raises(errors.ApiError) as info:
        repo.models["empty"].version(None)
    assert info.value.status == 503
    assert repo.index() == [
        {"name": "empty", "state": "UNAVAILABLE", "reason": repo.models["empty"].error}
    ]


def test_missing_or_empty_repository(tmp_path):
    assert "is not a directory" in repository.Repository.scan(tmp_path / "nope").not_ready_reason()
    assert "holds no model directories" in repository.Repository.scan(tmp_path).not_ready_reason()
