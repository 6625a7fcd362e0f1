"""KServe v2 inference request decoding/validation and response encoding.

Pure Python: tensors come out as flat lists of JSON values or raw
little-endian bytes (the ``binary_tensor_data`` extension); turning them into
torch tensors is :mod:`ptserve.tensors`' job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ptserve.errors import ApiError
from ptserve.modelconfig import BYTES_REFUSED, ModelConfig, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"

TensorData = list | bytes


@dataclass(frozen=True)
class InputTensor:
    """A validated input: flat JSON values or raw bytes, ``shape`` as sent."""

    spec: TensorSpec
    shape: tuple[int, ...]
    data: TensorData


@dataclass(frozen=True)
class RequestedOutput:
    """An output to return, as JSON ``data`` or as binary data."""

    spec: TensorSpec
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request; ``inputs`` follow the config's order."""

    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...]


@dataclass(frozen=True)
class OutputTensor:
    """A computed output: flat values for JSON, or bytes for binary data."""

    spec: TensorSpec
    shape: tuple[int, ...]
    data: TensorData


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise _bad(f"{HEADER_LENGTH} header {header_length!r} is not an integer") from None
    if not 0 <= length <= len(body):
        raise _bad(
            f"{HEADER_LENGTH} header {length} does not fit the {len(body)}-byte request body"
        )
    return body[:length], memoryview(body)[length:]


def _decode_json(text: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("request body must be a JSON object with an 'inputs' list")
    return doc


def _parameters(raw: dict[str, Any], where: str) -> dict[str, Any]:
    params = raw.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad(f"{where} 'parameters' must be a JSON object")
    return params


def _shape(raw: dict[str, Any], spec: TensorSpec) -> tuple[int, ...]:
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"input '{spec.name}' needs 'shape', a list of non-negative integers")
    if not spec.matches(tuple(shape)):
        raise _bad(
            f"input '{spec.name}' has shape {shape} but the model expects {list(spec.shape)}"
        )
    return tuple(shape)


def _flatten(data: Any, name: str) -> tuple[list, set[type]]:
    """Row-major values of flat or regularly nested ``data``, and their Python types.

    400 if ``data`` is not an array or is ragged.
    """
    if not isinstance(data, list):
        raise _bad(f"input '{name}' 'data' must be a JSON array")
    level, depth = data, 0
    types = set(map(type, level))
    while list in types:
        depth += 1
        if len(types) > 1:
            raise _bad(f"input '{name}' 'data' is ragged: depth {depth} mixes arrays and values")
        lengths = sorted(set(map(len, level)))
        if len(lengths) > 1:
            raise _bad(
                f"input '{name}' 'data' is ragged: arrays at depth {depth} have "
                f"{lengths[0]} and {lengths[-1]} elements"
            )
        level = [value for row in level for value in row]
        types = set(map(type, level))
    return level, types


_ALLOWED_TYPES = {"float": {int, float}, "int": {int}, "bool": {bool}}
_WANTED = {"float": "numbers", "int": "integers", "bool": "true/false"}


def _check_values(values: list, types: set[type], spec: TensorSpec) -> None:
    """400 unless every value (of the given ``types``) fits the input's datatype."""
    dt = spec.datatype
    allowed = _ALLOWED_TYPES[dt.kind]
    if not types <= allowed:
        index, value = next((i, v) for i, v in enumerate(values) if type(v) not in allowed)
        raise _bad(
            f"input '{spec.name}' element {index} is {_show(value)} "
            f"({type(value).__name__}), but {dt.name} takes {_WANTED[dt.kind]}"
        )
    if dt.kind == "int" and values and (min(values) < dt.low or max(values) > dt.high):
        index, value = next(
            (i, v) for i, v in enumerate(values) if not dt.low <= v <= dt.high
        )
        note = f" ({dt.note})" if dt.note else ""
        raise _bad(
            f"input '{spec.name}' element {index} is {value}, "
            f"outside the {dt.name} range [{dt.low}, {dt.high}]{note}"
        )


def _binary_data(
    raw: dict[str, Any], spec: TensorSpec, count: int, size: Any, rest: memoryview
) -> bytes:
    if "data" in raw:
        raise _bad(f"input '{spec.name}' has both 'data' and a binary_data_size")
    if type(size) is not int or size < 0:
        raise _bad(f"input '{spec.name}' binary_data_size must be a non-negative integer")
    needed = count * spec.datatype.itemsize
    if size != needed:
        raise _bad(
            f"input '{spec.name}' has binary_data_size {size} but {count} "
            f"{spec.datatype.name} values need {needed} bytes"
        )
    if size > len(rest):
        raise _bad(
            f"input '{spec.name}' needs {size} bytes of binary data "
            f"but only {len(rest)} remain in the request body"
        )
    data = bytes(rest[:size])
    if spec.datatype.kind == "bool" and data.translate(None, b"\x00\x01"):
        raise _bad(f"input '{spec.name}' binary BOOL data holds bytes other than 0 and 1")
    return data


def _input(
    raw: Any, index: int, config: ModelConfig, rest: memoryview
) -> tuple[InputTensor, int]:
    """Decode one input; also returns how many binary bytes it consumed."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise _bad(f"inputs[{index}] must be a JSON object with a string 'name'")
    name = raw["name"]
    spec = config.input(name)
    if spec is None:
        known = ", ".join(s.name for s in config.inputs)
        raise _bad(f"unknown input '{name}'; the model's inputs are: {known}")
    if raw.get("datatype") == "BYTES":
        raise _bad(f"input '{name}': {BYTES_REFUSED}")
    if raw.get("datatype") != spec.datatype.name:
        raise _bad(
            f"input '{name}' has datatype {_show(raw.get('datatype'))} "
            f"but the model expects {spec.datatype.name}"
        )
    shape = _shape(raw, spec)
    count = math.prod(shape)
    size = _parameters(raw, f"input '{name}'").get("binary_data_size")
    if size is not None:
        data = _binary_data(raw, spec, count, size, rest)
        return InputTensor(spec, shape, data), len(data)
    if "data" not in raw:
        raise _bad(f"input '{name}' has no 'data'")
    values, types = _flatten(raw["data"], name)
    if len(values) != count:
        raise _bad(
            f"input '{name}' has {len(values)} values but shape {list(shape)} needs {count}"
        )
    _check_values(values, types, spec)
    return InputTensor(spec, shape, values), 0


def _inputs(doc: dict[str, Any], config: ModelConfig, binary: memoryview) -> list[InputTensor]:
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise _bad("request body must have an 'inputs' list")
    found: dict[str, InputTensor] = {}
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, index, config, binary[offset:])
        if tensor.spec.name in found:
            raise _bad(f"input '{tensor.spec.name}' is given more than once")
        found[tensor.spec.name] = tensor
        offset += used
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed")
    missing = [spec.name for spec in config.inputs if spec.name not in found]
    if missing:
        raise _bad(f"missing input '{missing[0]}'; the model needs: "
                   + ", ".join(s.name for s in config.inputs))
    ordered = [found[spec.name] for spec in config.inputs]
    if config.max_batch_size:
        _check_batch(ordered, config.max_batch_size)
    return ordered


def _check_batch(inputs: list[InputTensor], max_batch_size: int) -> None:
    """Inputs of a batching model share their first dimension, at most max_batch_size."""
    first = inputs[0]
    for tensor in inputs[1:]:
        if tensor.shape[0] != first.shape[0]:
            raise _bad(
                f"input '{tensor.spec.name}' has batch size {tensor.shape[0]} but input "
                f"'{first.spec.name}' has {first.shape[0]}; they must match"
            )
    if first.shape[0] > max_batch_size:
        raise _bad(
            f"input '{first.spec.name}' has batch size {first.shape[0]}, "
            f"more than the model's max_batch_size {max_batch_size}"
        )


def _outputs(doc: dict[str, Any], config: ModelConfig, binary: bool) -> list[RequestedOutput]:
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        return [RequestedOutput(spec, binary) for spec in config.outputs]
    if not isinstance(raw_outputs, list):
        raise _bad("'outputs' must be a list of objects with a 'name'")
    requested: dict[str, RequestedOutput] = {}
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _bad(f"outputs[{index}] must be a JSON object with a string 'name'")
        name = raw["name"]
        spec = config.output(name)
        if spec is None:
            known = ", ".join(s.name for s in config.outputs)
            raise _bad(f"unknown output '{name}'; the model's outputs are: {known}")
        if name in requested:
            raise _bad(f"output '{name}' is requested more than once")
        params = _parameters(raw, f"output '{name}'")
        if params.get("classification"):
            raise _bad(f"output '{name}' asks for classification, which is not supported")
        wants_binary = params.get("binary_data", binary)
        if not isinstance(wants_binary, bool):
            raise _bad(f"output '{name}' binary_data must be true or false")
        requested[name] = RequestedOutput(spec, wants_binary)
    return list(requested.values())


def parse_infer_request(
    config: ModelConfig, body: bytes, header_length: str | None = None
) -> InferRequest:
    """Validate an inference request body against the model's config.

    ``header_length`` is the ``Inference-Header-Content-Length`` header, set
    when binary tensor data follows the JSON. Raises ApiError(400) naming the
    offending input or field.
    """
    text, binary = _split_body(body, header_length)
    doc = _decode_json(text)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    binary_output = _parameters(doc, "request").get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise _bad("request parameter binary_data_output must be true or false")
    return InferRequest(
        id=request_id,
        inputs=tuple(_inputs(doc, config, binary)),
        outputs=tuple(_outputs(doc, config, binary_output)),
    )


def encode_infer_response(
    model_name: str, version: int, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    entries = []
    chunks = []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.spec.name,
            "datatype": out.spec.datatype.name,
            "shape": list(out.shape),
        }
        if isinstance(out.data, bytes):
            entry["parameters"] = {"binary_data_size": len(out.data)}
            chunks.append(out.data)
        else:
            entry["data"] = out.data
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
