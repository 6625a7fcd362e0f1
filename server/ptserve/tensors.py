"""Conversion between decoded request tensors and torch tensors."""

from __future__ import annotations

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


def to_torch(tensor: InputTensor, device: torch.device) -> torch.Tensor:
    """Build the input tensor on ``device``; 400 for values the dtype cannot hold.

    Floating-point inputs must be finite unless the config sets
    ``allow_non_finite`` (values beyond FP16/BF16 range count as infinite).
    """
    spec = tensor.spec
    dtype = TORCH_DTYPES[spec.datatype.name]
    if isinstance(tensor.data, bytes):
        flat = _from_bytes(tensor, dtype)
    else:
        try:
            flat = torch.tensor(tensor.data, dtype=dtype)
        except (OverflowError, RuntimeError, TypeError) as exc:
            raise ApiError(
                400, f"input '{spec.name}' has values that {spec.datatype.name} cannot hold: {exc}"
            ) from None
    value = flat.reshape(tensor.shape)
    finite_only = spec.datatype.is_float and not spec.allow_non_finite
    if finite_only and not bool(torch.isfinite(value).all()):
        raise ApiError(
            400,
            f"input '{spec.name}' contains NaN or infinite values, "
            "which this model does not allow",
        )
    return value.to(device)


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
