"""Conversion between decoded request tensors and torch tensors."""

from __future__ import annotations

import array

import numpy as np
import torch

from ptserve.codec import InputTensor, OutputTensor, RequestedOutput
from ptserve.errors import ApiError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.int32,
    "UINT32": torch.int64,
    "UINT64": torch.int64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
"""The dtype a model sees for each datatype (unsigned types torch lacks are widened)."""

WIRE_UNSIGNED: dict[str, np.dtype] = {
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
"""Little-endian layouts of the widened unsigned types in binary tensor data."""

ARRAY_CODES: dict[torch.dtype, str] = {
    torch.bool: "B",
    torch.uint8: "B",
    torch.int8: "b",
    torch.int16: "h",
    torch.int32: "i",
    torch.int64: "q",
    torch.float32: "f",
    torch.float64: "d",
}
"""``array`` typecodes with the layout of each dtype: JSON values are packed through
them, several times faster than ``torch.tensor`` on a list (FP16 and BF16 take that)."""


def _from_bytes(tensor: InputTensor, dtype: torch.dtype) -> torch.Tensor:
    spec = tensor.spec
    wire = WIRE_UNSIGNED.get(spec.datatype.name)
    if wire is None:
        if not tensor.data:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(bytearray(tensor.data), dtype=dtype)
    values = np.frombuffer(tensor.data, dtype=wire)
    if values.size and int(values.max()) > spec.datatype.high:
        raise ApiError(
            400,
            f"input '{spec.name}' holds {int(values.max())}, outside the {spec.datatype.name} "
            f"range [0, {spec.datatype.high}] ({spec.datatype.note})",
        )
    return torch.from_numpy(values.astype(np.int64)).to(dtype)


def _from_values(values: list, dtype: torch.dtype) -> torch.Tensor:
    if not values:
        return torch.empty(0, dtype=dtype)
    code = ARRAY_CODES.get(dtype)
    if code is None:
        return torch.tensor(values, dtype=dtype)
    return torch.frombuffer(array.array(code, values), dtype=dtype)


def _all_finite(flat: torch.Tensor) -> bool:
    if flat.dtype is torch.bfloat16:  # numpy has no bfloat16
        return bool(torch.isfinite(flat).all())
    return bool(np.isfinite(flat.numpy()).all())


def to_torch(tensor: InputTensor, device: torch.device) -> torch.Tensor:
    """Build the input tensor on ``device``; 400 for values the dtype cannot hold.

    Floating-point inputs must be finite unless the config sets
    ``allow_non_finite`` (values beyond FP16/BF16/FP32 range count as infinite).
    """
    spec = tensor.spec
    dtype = TORCH_DTYPES[spec.datatype.name]
    if isinstance(tensor.data, bytes):
        flat = _from_bytes(tensor, dtype)
    else:
        try:
            flat = _from_values(tensor.data, dtype)
        except (OverflowError, RuntimeError, TypeError) as exc:
            raise ApiError(
                400, f"input '{spec.name}' has values that {spec.datatype.name} cannot hold: {exc}"
            ) from None
    finite_only = spec.datatype.is_float and not spec.allow_non_finite
    if finite_only and not _all_finite(flat):
        raise ApiError(
            400,
            f"input '{spec.name}' contains NaN or infinite values, "
            "which this model does not allow",
        )
    return flat.reshape(tensor.shape).to(device)


def from_torch(value: torch.Tensor, requested: RequestedOutput) -> OutputTensor:
    """Copy an output to the CPU as its configured datatype, flat or as bytes."""
    name = requested.spec.datatype.name
    cpu = value.detach().to("cpu", TORCH_DTYPES[name]).contiguous()
    shape = tuple(cpu.shape)
    wire = WIRE_UNSIGNED.get(name)
    if wire is not None:
        values = cpu.numpy().astype(wire)
        data = values.tobytes() if requested.binary else values.reshape(-1).tolist()
        return OutputTensor(requested.spec, shape, data)
    if requested.binary:
        raw = cpu.view(torch.int16) if cpu.dtype is torch.bfloat16 else cpu
        return OutputTensor(requested.spec, shape, raw.numpy().tobytes())
    return OutputTensor(requested.spec, shape, cpu.reshape(-1).tolist())
