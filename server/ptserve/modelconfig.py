"""Tensor datatypes and the per-model ``config.json`` (inputs and outputs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DataType:
    """A KServe v2 tensor datatype: its size in bytes and what JSON values it takes."""

    name: str
    itemsize: int
    kind: str  # "float", "int" or "bool"
    low: int = 0
    high: int = 0
    note: str = ""  # how torch holds it, when it has no dtype of its own

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


DATATYPES: dict[str, DataType] = {
    dt.name: dt
    for dt in (
        DataType("BOOL", 1, "bool"),
        DataType("UINT8", 1, "int", 0, 2**8 - 1),
        DataType("UINT16", 2, "int", 0, 2**16 - 1, "int32 tensors in the model"),
        DataType("UINT32", 4, "int", 0, 2**32 - 1, "int64 tensors in the model"),
        # torch has no usable uint64: values must fit int64, which the model sees.
        DataType("UINT64", 8, "int", 0, 2**63 - 1, "int64 tensors in the model"),
        DataType("INT8", 1, "int", -(2**7), 2**7 - 1),
        DataType("INT16", 2, "int", -(2**15), 2**15 - 1),
        DataType("INT32", 4, "int", -(2**31), 2**31 - 1),
        DataType("INT64", 8, "int", -(2**63), 2**63 - 1),
        DataType("FP16", 2, "float"),
        DataType("BF16", 2, "float"),
        DataType("FP32", 4, "float"),
        DataType("FP64", 8, "float"),
    )
}


BYTES_REFUSED = (
    "datatype BYTES (strings) is not supported: ptserve serves numeric tensors; "
    "encode text as UINT8 or INT64 tokens"
)


class ConfigError(ValueError):
    """config.json is missing, unreadable or does not describe the model's tensors."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared input or output; -1 in ``shape`` matches any size."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    allow_non_finite: bool = False

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete ``shape`` fits this spec (same rank, fixed dims equal)."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape)
        )

    def metadata(self) -> dict[str, Any]:
        """The tensor's entry in the model metadata answer."""
        return {"name": self.name, "datatype": self.datatype.name, "shape": list(self.shape)}


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's ``dynamic_batching``: how long a request may wait to be batched."""

    max_queue_delay_seconds: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    """The model's inputs (in the order ``forward`` takes them), outputs and batching.

    ``max_batch_size`` 0 means no limit on a request's first dimension.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching | None = None

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)


_INPUT_KEYS = {"name", "datatype", "shape", "allow_non_finite"}
_OUTPUT_KEYS = {"name", "datatype", "shape"}
_CONFIG_KEYS = {"inputs", "outputs", "max_batch_size", "dynamic_batching"}
_BATCHING_KEYS = {"max_queue_delay_microseconds", "preferred_batch_size"}


def _spec(raw: Any, where: str, keys: set[str]) -> TensorSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; allowed: {sorted(keys)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a non-empty string 'name'")
    datatype = DATATYPES.get(str(raw.get("datatype")))
    if raw.get("datatype") == "BYTES":
        raise ConfigError(f"{where} ({name}): {BYTES_REFUSED}")
    if datatype is None:
        raise ConfigError(
            f"{where} ({name}) has datatype {raw.get('datatype')!r}; "
            f"expected one of {sorted(DATATYPES)}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        type(dim) is int and dim >= -1 for dim in shape
    ):
        raise ConfigError(f"{where} ({name}) needs 'shape', a list of integers >= -1")
    allow = raw.get("allow_non_finite", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"{where} ({name}) has a non-boolean 'allow_non_finite'")
    return TensorSpec(name, datatype, tuple(shape), allow)


def _specs(raw: Any, key: str, keys: set[str]) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"'{key}' must be a non-empty list")
    specs = tuple(_spec(item, f"{key}[{i}]", keys) for i, item in enumerate(raw))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"'{key}' names {duplicates} more than once")
    return specs


def _positive_int(value: Any, where: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{where} must be a positive integer, not {json.dumps(value)}")
    return value


def _dynamic_batching(raw: Any, max_batch_size: int) -> DynamicBatching:
    if not isinstance(raw, dict):
        raise ConfigError("'dynamic_batching' must be an object")
    unknown = sorted(set(raw) - _BATCHING_KEYS)
    if unknown:
        raise ConfigError(
            f"'dynamic_batching' has unknown keys {unknown}; allowed: {sorted(_BATCHING_KEYS)}"
        )
    if not max_batch_size:
        raise ConfigError("'dynamic_batching' needs 'max_batch_size'")
    delay = raw.get("max_queue_delay_microseconds", 0)
    if type(delay) not in (int, float) or not 0 <= delay < 10**8:
        raise ConfigError(
            "'max_queue_delay_microseconds' must be a number from 0 to 100000000, "
            f"not {json.dumps(delay)}"
        )
    preferred = raw.get("preferred_batch_size", [])
    if not isinstance(preferred, list):
        raise ConfigError("'preferred_batch_size' must be a list of positive integers")
    sizes = tuple(_positive_int(n, "every 'preferred_batch_size'") for n in preferred)
    if any(n > max_batch_size for n in sizes):
        raise ConfigError(
            f"'preferred_batch_size' {list(sizes)} exceeds max_batch_size {max_batch_size}"
        )
    return DynamicBatching(delay / 1e6, tuple(sorted(set(sizes))))


def _check_batchable(config: ModelConfig) -> None:
    """Batching concatenates along the first dimension: every tensor needs it variable."""
    for spec in config.inputs + config.outputs:
        if not spec.shape or spec.shape[0] != -1:
            raise ConfigError(
                f"'{spec.name}' has shape {list(spec.shape)}, but batching "
                "(max_batch_size) needs every input and output to start with a -1 dimension"
            )


def parse_config(raw: Any) -> ModelConfig:
    """Validate a decoded config.json document."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"config.json has unknown keys {unknown}; allowed: {', '.join(sorted(_CONFIG_KEYS))}"
        )
    max_batch_size = 0
    if "max_batch_size" in raw:
        max_batch_size = _positive_int(raw["max_batch_size"], "'max_batch_size'")
    batching = None
    if "dynamic_batching" in raw:
        batching = _dynamic_batching(raw["dynamic_batching"], max_batch_size)
    config = ModelConfig(
        inputs=_specs(raw.get("inputs"), "inputs", _INPUT_KEYS),
        outputs=_specs(raw.get("outputs"), "outputs", _OUTPUT_KEYS),
        max_batch_size=max_batch_size,
        dynamic_batching=batching,
    )
    if max_batch_size:
        _check_batchable(config)
    return config


def load_config(path: Path) -> ModelConfig:
    """Read and validate ``path``; raises ConfigError with the reason."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid JSON: {exc}") from None
    return parse_config(raw)
