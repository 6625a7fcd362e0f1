"""Model server: dynamic batching and the widened unsigned datatypes (needs torch)."""

from __future__ import annotations

import asyncio
import importlib
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numpy")

batching = importlib.import_module("ptserve.batching")
codec = importlib.import_module("ptserve.codec")
errors = importlib.import_module("ptserve.errors")
modelconfig = importlib.import_module("ptserve.modelconfig")
repository = importlib.import_module("ptserve.repository")
runtime = importlib.import_module("ptserve.runtime")
tensors = importlib.import_module("ptserve.tensors")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

CPU = torch.device("cpu")
CONFIG_RAW = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 8, 8]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "n", "datatype": "INT64", "shape": [-1]}],
    "max_batch_size": 16,
    "dynamic_batching": {"max_queue_delay_microseconds": 20000},
}
CONFIG = modelconfig.parse_config(CONFIG_RAW)


class Conv(torch.nn.Module):
    """A small conv net with two outputs per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return y, (x > 0).flatten(1).sum(1)


class Sum(torch.nn.Module):
    """Collapses the batch: its output cannot be split between requests."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum().reshape(1, 1).expand(1, 4), x.flatten().long()[:1]


def version_of(module: torch.nn.Module) -> object:
    version = repository.ModelVersion("m", 1, Path("/models/m/1"), ())
    version.set_ready(torch.jit.script(module.eval()))
    return version


def run_concurrently(version, inputs: list[torch.Tensor], sizes: list[int]) -> list:
    """Submit every input at once to one Batcher; each request's outputs (or exception)."""
    rt = runtime.Runtime(CPU)

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = batching.Batcher(
                lambda batch: rt.forward_batch("m", CONFIG, version, batch),
                pool, CONFIG.max_batch_size, CONFIG.dynamic_batching, sizes.append,
            )
            jobs = [batcher.submit([x]) for x in inputs]
            try:
                return await asyncio.gather(*jobs, return_exceptions=True)
            finally:
                batcher.close()

    return asyncio.run(main())


def test_batched_answers_equal_unbatched_ones():
    torch.manual_seed(0)
    version = version_of(Conv())
    inputs = [torch.randn(n, 3, 8, 8) for n in (1, 3, 1, 2, 5, 1, 4, 2)]
    sizes: list[int] = []
    results = run_concurrently(version, inputs, sizes)
    assert len(sizes) < len(inputs) and sum(sizes) == 19 and max(sizes) <= 16
    rt = runtime.Runtime(CPU)
    for x, (outputs, seconds) in zip(inputs, results, strict=True):
        alone, _ = rt.forward("m", CONFIG, version, [x])
        assert seconds > 0 and outputs.keys() == alone.keys()
        torch.testing.assert_close(outputs["y"], alone["y"], rtol=1e-6, atol=1e-6)
        assert torch.equal(outputs["n"], alone["n"])


def test_different_trailing_shapes_never_share_a_batch():
    version = version_of(Conv())
    inputs = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4), torch.randn(2, 3, 8, 8)]
    sizes: list[int] = []
    results = run_concurrently(version, inputs, sizes)
    assert sorted(sizes) == [1, 3]
    assert [r[0]["y"].shape[0] for r in results] == [1, 1, 2]


def test_a_request_of_batch_size_zero_is_answered():
    sizes: list[int] = []
    results = run_concurrently(version_of(Conv()), [torch.randn(0, 3, 8, 8)], sizes)
    assert sizes == [0] and results[0][0]["y"].shape == (0, 4)


def test_a_full_batch_leaves_before_the_queue_delay():
    config = modelconfig.parse_config({
        **{key: CONFIG_RAW[key] for key in ("inputs", "outputs")},
        "max_batch_size": 4,
        "dynamic_batching": {"max_queue_delay_microseconds": 60_000_000,
                             "preferred_batch_size": [4]},
    })
    rt, version, sizes = runtime.Runtime(CPU), version_of(Conv()), []

    async def main() -> list:
        with ThreadPoolExecutor(2) as pool:
            batcher = batching.Batcher(
                lambda batch: rt.forward_batch("m", config, version, batch),
                pool, config.max_batch_size, config.dynamic_batching, sizes.append,
            )
            try:
                return await asyncio.wait_for(
                    asyncio.gather(*(batcher.submit([torch.randn(2, 3, 8, 8)])
                                     for _ in range(4))), 30)
            finally:
                batcher.close()

    assert len(asyncio.run(main())) == 4 and sizes == [4, 4]


def test_unsplittable_outputs_fail_every_request_of_the_batch():
    results = run_concurrently(version_of(Sum()), [torch.ones(1, 3, 8, 8)] * 3, [])
    for result in results:
        assert isinstance(result, errors.ApiError) and result.status == 500
        assert "first dimension is not the batch size 3" in result.message


def spec(datatype: str) -> modelconfig.TensorSpec:
    return modelconfig.TensorSpec("t", modelconfig.DATATYPES[datatype], (-1,))


@pytest.mark.parametrize(
    "datatype, fmt, values, dtype",
    [
        ("INT16", "<2h", [-(2**15), 2**15 - 1], torch.int16),
        ("UINT16", "<2H", [0, 2**16 - 1], torch.int32),
        ("UINT32", "<2I", [0, 2**32 - 1], torch.int64),
        ("UINT64", "<2Q", [0, 2**63 - 1], torch.int64),
    ],
)
def test_unsigned_types_are_widened_and_round_trip(datatype, fmt, values, dtype):
    raw = struct.pack(fmt, *values)
    for data in (raw, values):
        t = tensors.to_torch(codec.InputTensor(spec(datatype), (2,), data), CPU)
        assert t.dtype == dtype and t.tolist() == values
    binary = tensors.from_torch(t, codec.RequestedOutput(spec(datatype), True))
    assert binary.data == raw
    assert tensors.from_torch(t, codec.RequestedOutput(spec(datatype), False)).data == values


def test_uint64_beyond_int64_is_refused():
    raw = struct.pack("<Q", 2**64 - 1)
    with pytest.raises(errors.ApiError, match=r"outside the UINT64 range .*\(int64 tensors in the model\)"):
        tensors.to_torch(codec.InputTensor(spec("UINT64"), (1,), raw), CPU)
