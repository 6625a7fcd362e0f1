"""Model server: tensor conversion, model loading and inference (needs torch)."""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numpy")

codec = importlib.import_module("ptserve.codec")
errors = importlib.import_module("ptserve.errors")
modelconfig = importlib.import_module("ptserve.modelconfig")
repository = importlib.import_module("ptserve.repository")
runtime = importlib.import_module("ptserve.runtime")
tensors = importlib.import_module("ptserve.tensors")


CPU = torch.device("cpu")

# Newer torch releases deprecate TorchScript; the image's torch still serves it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def spec(datatype: str, shape=(-1,), allow_non_finite=False) -> modelconfig.TensorSpec:
    datatype_ = modelconfig.DATATYPES[datatype]
    return modelconfig.TensorSpec("t", datatype_, tuple(shape), allow_non_finite)


def test_json_and_binary_inputs_become_tensors():
    t = tensors.to_torch(codec.InputTensor(spec("FP32", (-1, 2)), (2, 2), [1, 2, 3, 4.5]), CPU)
    assert t.dtype == torch.float32 and t.shape == (2, 2) and t[1, 1].item() == 4.5
    raw = struct.pack("<3q", -1, 0, 2**40)
    t = tensors.to_torch(codec.InputTensor(spec("INT64"), (3,), raw), CPU)
    assert t.tolist() == [-1, 0, 2**40]
    t = tensors.to_torch(codec.InputTensor(spec("BOOL"), (2,), b"\x01\x00"), CPU)
    assert t.tolist() == [True, False]
    assert tensors.to_torch(codec.InputTensor(spec("FP16"), (0,), b""), CPU).shape == (0,)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e6])
def test_non_finite_inputs_are_rejected(value):
    datatype = "FP16" if value == 1e6 else "FP32"
    with pytest.raises(errors.ApiError) as info:
        tensors.to_torch(codec.InputTensor(spec(datatype), (2,), [1.0, value]), CPU)
    assert info.value.status == 400
    assert "input 't' contains NaN or infinite values" in info.value.message
    lenient = spec(datatype, allow_non_finite=True)
    allowed = tensors.to_torch(codec.InputTensor(lenient, (2,), [1.0, value]), CPU)
    assert not bool(torch.isfinite(allowed).all())


def test_non_finite_binary_inputs_are_rejected():
    with pytest.raises(errors.ApiError, match="NaN or infinite"):
        nan = struct.pack("<f", float("nan"))
        tensors.to_torch(codec.InputTensor(spec("FP32"), (1,), nan), CPU)


def test_values_too_large_for_the_dtype():
    with pytest.raises(errors.ApiError, match="input 't' has values that FP32 cannot hold"):
        tensors.to_torch(codec.InputTensor(spec("FP32"), (1,), [10**400]), CPU)


def test_outputs_as_json_or_bytes():
    out_spec = spec("FP32", (-1, 2))
    value = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    as_json = tensors.from_torch(value, codec.RequestedOutput(out_spec, binary=False))
    assert (as_json.shape, as_json.data) == ((1, 2), [1.0, 2.0])
    as_bytes = tensors.from_torch(value, codec.RequestedOutput(out_spec, binary=True))
    assert as_bytes.data == struct.pack("<2f", 1.0, 2.0)
    bf16 = tensors.from_torch(torch.tensor([1.0]), codec.RequestedOutput(spec("BF16"), binary=True))
    assert bf16.data == struct.pack("<H", 0x3F80)


def test_summarize():
    assert runtime.summarize(RuntimeError("\nUnknown builtin op: a::b.\nCould not find")) == (
        "Unknown builtin op: a::b."
    )
    assert runtime.summarize(RuntimeError("bad file. This is long.")) == "bad file."
    assert runtime.summarize(RuntimeError("trace\nRuntimeError: shapes differ"), last=True) == (
        "RuntimeError: shapes differ"
    )
    assert runtime.summarize(ValueError()) == "ValueError"


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.sum().reshape(1)


class NeedsOp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.ptserve_unit.triple(x)


CONFIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
    "outputs": [
        {"name": "twice", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "total", "datatype": "FP32", "shape": [1]},
    ],
}


def write(root: Path, name: str, module=None, raw: bytes | None = None, version: int = 1) -> Path:
    directory = root / name / str(version)
    directory.mkdir(parents=True)
    (root / name / "config.json").write_text(json.dumps(CONFIG))
    if module is not None:
        torch.jit.script(module).save(str(directory / "model.pt"))
    if raw is not None:
        (directory / "model.pt").write_bytes(raw)
    return directory


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> repository.Repository:
    root = tmp_path_factory.mktemp("models")
    write(root, "good", Double())
    write(root, "corrupt", raw=b"garbage")
    write(root, "nofile")
    library = torch.library.Library("ptserve_unit", "DEF")
    library.define("triple(Tensor x) -> Tensor")
    library.impl("triple", lambda x: x * 3, "CompositeExplicitAutograd")
    write(root, "customop", NeedsOp())
    badlib = write(root, "badlib", Double())
    (badlib / "lib").mkdir()
    (badlib / "lib" / "broken.so").write_bytes(b"not a shared object")
    # A fresh process would not know ptserve_unit::triple; this one does, so
    # drop it from the dispatcher before loading.
    del library
    repo = repository.Repository.scan(root)
    runtime.Runtime(CPU).load_all(repo)
    return repo


def test_load_outcomes(loaded):
    versions = {name: m.versions[1] for name, m in loaded.models.items()}
    assert versions["good"].state is repository.State.READY
    assert not versions["good"].module.training
    unavailable = repository.State.UNAVAILABLE
    reasons = {name: v.reason for name, v in versions.items() if v.state is unavailable}
    assert set(reasons) == {"corrupt", "nofile", "customop", "badlib"}
    assert reasons["corrupt"].startswith("failed to load: PytorchStreamReader")
    assert "model.pt does not exist" in reasons["nofile"]
    assert "Unknown builtin op: ptserve_unit::triple" in reasons["customop"]
    assert "cannot load custom-operator library broken.so" in reasons["badlib"]
    assert loaded.not_ready_reason().startswith("model 'badlib' version 1: failed to load")


def test_infer_runs_the_model(loaded):
    model = loaded.models["good"]
    body = json.dumps(
        {"id": "r", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                                "data": [1, 2, 3, 4]}],
         "outputs": [{"name": "total"}, {"name": "twice"}]}
    ).encode()
    reply = runtime.Runtime(CPU).infer("good", model.config, model.versions[1], body, None)
    answer = json.loads(reply.body)
    assert reply.header_length is None and reply.inference_seconds >= 0
    assert answer["id"] == "r" and answer["model_version"] == "1"
    assert answer["outputs"] == [
        {"name": "total", "datatype": "FP32", "shape": [1], "data": [10.0]},
        {"name": "twice", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 8.0]},
    ]


def test_model_errors_become_500(loaded, tmp_path):
    model = loaded.models["good"]
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    ).encode()

    class Fails:
        def __call__(self, x):
            raise RuntimeError("Traceback...\nRuntimeError: shapes cannot be multiplied")

    class Single:
        def __call__(self, x):
            return x

    version = model.versions[1]
    for module, fragment in (
        (Fails(), "inference failed for model 'good': RuntimeError: shapes cannot be multiplied"),
        (Single(), "does not match the outputs ['twice', 'total']"),
    ):
        fake = type(version)(version.model, version.version, version.path, ())
        fake.set_ready(module)
        with pytest.raises(errors.ApiError) as info:
            runtime.Runtime(CPU).infer("good", model.config, fake, body, None)
        assert info.value.status == 500 and fragment in info.value.message


def test_required_gpu_blocks_loading(tmp_path):
    write(tmp_path, "good", Double())
    repo = repository.Repository.scan(tmp_path)
    runtime.Runtime(CPU, blocked=runtime.GPU_REQUIRED).load_all(repo)
    version = repo.models["good"].versions[1]
    assert version.state is repository.State.UNAVAILABLE and version.reason == runtime.GPU_REQUIRED
    if not torch.cuda.is_available():
        assert runtime.Runtime.create(require_gpu=True).blocked == runtime.GPU_REQUIRED
        assert runtime.Runtime.create(require_gpu=False).blocked == ""
        assert runtime.Runtime(CPU).gpu_stats() == []
