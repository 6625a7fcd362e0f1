"""Conversion between decoded request tensors and torch tensors."""

from __future__ import annotations

import torch

from ptserve.codec import InputTensor, OutputTensor, RequestedOutput
from ptserve.errors import ApiError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}


def to_torch(tensor: InputTensor, device: torch.device) -> torch.Tensor:
    """Build the input tensor on ``device``; 400 for values the dtype cannot hold.

    Floating-point inputs must be finite unless the config sets
    ``allow_non_finite`` (values beyond FP16/BF16 range count as infinite).
    """
    spec = tensor.spec
    dtype = TORCH_DTYPES[spec.datatype.name]
    if isinstance(tensor.data, bytes):
        flat = (
            torch.frombuffer(bytearray(tensor.data), dtype=dtype)
            if tensor.data
            else torch.empty(0, dtype=dtype)
        )
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
    dtype = TORCH_DTYPES[requested.spec.datatype.name]
    cpu = value.detach().to("cpu", dtype).contiguous()
    shape = tuple(cpu.shape)
    if requested.binary:
        raw = cpu.view(torch.int16) if dtype is torch.bfloat16 else cpu
        return OutputTensor(requested.spec, shape, raw.numpy().tobytes())
    return OutputTensor(requested.spec, shape, cpu.reshape(-1).tolist())
