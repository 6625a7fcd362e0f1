"""Model server: inference request validation and response encoding (pure Python)."""

from __future__ import annotations

import importlib
import json
import struct

import pytest

codec = importlib.import_module("ptserve.codec")
errors = importlib.import_module("ptserve.errors")
modelconfig = importlib.import_module("ptserve.modelconfig")

CONFIG = modelconfig.parse_config(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1]},
        ],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "count", "datatype": "INT64", "shape": [1]},
        ],
    }
)
INT_CONFIG = modelconfig.parse_config(
    {
        "inputs": [{"name": "ids", "datatype": "UINT8", "shape": [3]}],
        "outputs": [{"name": "out", "datatype": "INT64", "shape": [3]}],
    }
)


def body(inputs: list, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def x(data=None, shape=(2, 4), datatype="FP32", name="x") -> dict:
    values = list(range(8)) if data is None else data
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": values}


def mask(values=(True, False)) -> dict:
    return {"name": "mask", "datatype": "BOOL", "shape": [len(values)], "data": list(values)}


def rejects(config, raw: bytes, *fragments: str, header: str | None = None) -> str:
    with pytest.raises(errors.ApiError) as info:
        codec.parse_infer_request(config, raw, header)
    assert info.value.status == 400
    for fragment in fragments:
        assert fragment in info.value.message
    return info.value.message


def test_valid_request_is_reordered_to_config_order():
    request = codec.parse_infer_request(CONFIG, body([mask(), x()], id="req-1"))
    assert request.id == "req-1"
    assert [t.spec.name for t in request.inputs] == ["x", "mask"]
    assert request.inputs[0].shape == (2, 4)
    assert request.inputs[0].data == list(range(8))
    assert [(o.spec.name, o.binary) for o in request.outputs] == [("y", False), ("count", False)]


def test_nested_data_is_flattened():
    nested = [[0, 1, 2, 3], [4.5, 5, 6, 7]]
    request = codec.parse_infer_request(CONFIG, body([x(nested), mask()]))
    assert request.inputs[0].data == [0, 1, 2, 3, 4.5, 5, 6, 7]


@pytest.mark.parametrize(
    "data, fragment",
    [
        ([[0, 1, 2], [3, 4, 5, 6, 7]], "arrays at depth 1 have 3 and 5 elements"),
        ([[0, 1, 2, 3], 4, 5, 6, 7], "depth 1 mixes arrays and values"),
        ([[[0, 1], [2, 3]], [[4, 5, 6, 7]]], "arrays at depth 1 have 1 and 2 elements"),
        ([[[0, 1], [2, 3]], [[4, 5, 6], [7]]], "arrays at depth 2 have 1 and 3 elements"),
    ],
)
def test_ragged_data_is_refused_naming_the_input(data, fragment):
    rejects(CONFIG, body([x(data), mask()]), "input 'x' 'data' is ragged", fragment)


def test_bytes_has_its_own_message():
    rejects(CONFIG, body([x(datatype="BYTES"), mask()]), "input 'x'", "BYTES (strings) is not")


@pytest.mark.parametrize(
    "datatype, good, bad",
    [
        ("INT16", [-(2**15), 2**15 - 1], 2**15),
        ("UINT16", [0, 2**16 - 1], -1),
        ("UINT32", [0, 2**32 - 1], 2**32),
        ("UINT64", [0, 2**63 - 1], 2**63),
    ],
)
def test_more_integer_types(datatype, good, bad):
    config = modelconfig.parse_config({
        "inputs": [{"name": "v", "datatype": datatype, "shape": [2]}],
        "outputs": [{"name": "w", "datatype": datatype, "shape": [2]}],
    })
    raw = {"name": "v", "datatype": datatype, "shape": [2]}
    assert codec.parse_infer_request(config, body([{**raw, "data": good}])).inputs[0].data == good
    rejects(config, body([{**raw, "data": [0, bad]}]), "element 1", f"outside the {datatype} range")


BATCH_CONFIG = modelconfig.parse_config({
    "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
               {"name": "b", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "c", "datatype": "FP32", "shape": [-1]}],
    "max_batch_size": 4,
})


def test_batch_size_limit_and_shared_first_dimension():
    def ab(n_a: int, n_b: int) -> bytes:
        return body([{"name": "a", "datatype": "FP32", "shape": [n_a, 2], "data": [0] * 2 * n_a},
                     {"name": "b", "datatype": "FP32", "shape": [n_b], "data": [0] * n_b}])

    assert codec.parse_infer_request(BATCH_CONFIG, ab(4, 4)).inputs[1].shape == (4,)
    rejects(BATCH_CONFIG, ab(5, 5), "input 'a' has batch size 5, more than the model's max_batch_size 4")
    rejects(BATCH_CONFIG, ab(2, 3), "input 'b' has batch size 3 but input 'a' has 2")


def test_zero_batch_is_allowed():
    request = codec.parse_infer_request(CONFIG, body([x([], shape=(0, 4)), mask(())]))
    assert request.inputs[0].data == []


def test_id_is_optional():
    assert codec.parse_infer_request(CONFIG, body([x(), mask()])).id is None


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'inputs' list"),
        (b'{"inputs": {}}', "'inputs' list"),
        (b'{"inputs": [42]}', "inputs[0]"),
        (json.dumps({"inputs": [], "id": 7}).encode(), "'id' must be a string"),
    ],
)
def test_malformed_requests(raw, fragment):
    rejects(CONFIG, raw, fragment)


def test_missing_input_is_named():
    rejects(CONFIG, body([x()]), "missing input 'mask'")


def test_unknown_input_is_named():
    rejects(CONFIG, body([x(), mask(), x(name="extra")]), "unknown input 'extra'")


def test_duplicate_input():
    rejects(CONFIG, body([x(), x(), mask()]), "input 'x' is given more than once")


def test_wrong_datatype():
    rejects(CONFIG, body([x(datatype="FP64"), mask()]), "input 'x'", "FP64", "expects FP32")


def test_wrong_rank():
    rejects(CONFIG, body([x(shape=(8,)), mask()]), "input 'x' has shape [8]", "[-1, 4]")


def test_fixed_dimension_mismatch():
    rejects(CONFIG, body([x(shape=(4, 2)), mask()]), "input 'x' has shape [4, 2]")


@pytest.mark.parametrize("shape", [None, "2x4", [2, -4], [2.0, 4], [True, 4]])
def test_bad_shape_values(shape):
    tensor = {"name": "x", "datatype": "FP32", "shape": shape, "data": []}
    rejects(CONFIG, body([tensor, mask()]), "input 'x' needs 'shape'")


def test_data_length_mismatch():
    rejects(CONFIG, body([x(list(range(7))), mask()]), "input 'x' has 7 values", "needs 8")


def test_missing_data():
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4]}
    rejects(CONFIG, body([tensor, mask()]), "input 'x' has no 'data'")


def test_scalar_data_is_rejected():
    rejects(CONFIG, body([x(5, shape=(1, 4)), mask()]), "input 'x' 'data' must be a JSON array")


@pytest.mark.parametrize(
    "bad, fragment",
    [("a", 'is "a" (str)'), (None, "is null"), (True, "(bool)"), ({"v": 1}, "(dict)")],
)
def test_non_numeric_data(bad, fragment):
    data = [0, 1, 2, bad, 4, 5, 6, 7]
    message = rejects(CONFIG, body([x(data), mask()]), "input 'x' element 3", fragment)
    assert "FP32 takes numbers" in message


def test_non_finite_json_values_pass_the_codec():
    # Python's JSON reader accepts NaN/Infinity; the finiteness rule is applied
    # on the tensor (see test_serve_runtime.py), for JSON and binary data alike.
    raw = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 1, 2, 3]},'
    raw += b' {"name": "mask", "datatype": "BOOL", "shape": [0], "data": []}]}'
    request = codec.parse_infer_request(CONFIG, raw)
    assert request.inputs[0].data[0] != request.inputs[0].data[0]


def test_integer_types_reject_floats_and_out_of_range():
    tensor = {"name": "ids", "datatype": "UINT8", "shape": [3], "data": [1, 2.0, 3]}
    rejects(INT_CONFIG, body([tensor]), "element 1 is 2.0 (float)", "UINT8 takes integers")
    tensor["data"] = [1, 256, 3]
    rejects(INT_CONFIG, body([tensor]), "element 1 is 256", "range [0, 255]")
    tensor["data"] = [1, -1, 3]
    rejects(INT_CONFIG, body([tensor]), "element 1 is -1")
    tensor["data"] = [0, 255, 7]
    assert codec.parse_infer_request(INT_CONFIG, body([tensor])).inputs[0].data == [0, 255, 7]


def test_bool_takes_only_booleans():
    rejects(CONFIG, body([x(), mask((True, 1))]), "input 'mask' element 1", "true/false")


def binary_request(
    payload: bytes, size: int | None = None, extra: bytes = b""
) -> tuple[bytes, str]:
    doc = {
        "inputs": [
            {
                "name": "x", "datatype": "FP32", "shape": [1, 4],
                "parameters": {"binary_data_size": len(payload) if size is None else size},
            },
            mask(),
        ],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(doc).encode()
    return header + payload + extra, str(len(header))


def test_binary_input_and_output_flags():
    payload = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    raw, header = binary_request(payload)
    request = codec.parse_infer_request(CONFIG, raw, header)
    assert request.inputs[0].data == payload
    assert all(o.binary for o in request.outputs)


def test_binary_size_must_match_shape():
    raw, header = binary_request(b"\0" * 12)
    rejects(CONFIG, raw, "binary_data_size 12", "need 16 bytes", header=header)


def test_binary_data_must_be_present():
    raw, header = binary_request(b"\0" * 8, size=16)
    rejects(CONFIG, raw, "input 'x' needs 16 bytes", "only 8 remain", header=header)


def test_unclaimed_binary_bytes():
    raw, header = binary_request(b"\0" * 16, extra=b"\0\0")
    rejects(CONFIG, raw, "2 bytes of binary data", header=header)


@pytest.mark.parametrize("header", ["abc", "-1", "100000"])
def test_bad_header_length(header):
    rejects(CONFIG, body([x(), mask()]), "Inference-Header-Content-Length", header=header)


def test_binary_bool_must_be_zero_or_one():
    doc = {"inputs": [x([0] * 4, shape=(1, 4)),
                      {"name": "mask", "datatype": "BOOL", "shape": [2],
                       "parameters": {"binary_data_size": 2}}]}
    header = json.dumps(doc).encode()
    rejects(CONFIG, header + b"\x01\x02", "other than 0 and 1", header=str(len(header)))
    request = codec.parse_infer_request(CONFIG, header + b"\x01\x00", str(len(header)))
    assert request.inputs[1].data == b"\x01\x00"


def test_requested_outputs():
    outputs = [{"name": "count", "parameters": {"binary_data": True}}]
    request = codec.parse_infer_request(CONFIG, body([x(), mask()], outputs=outputs))
    assert [(o.spec.name, o.binary) for o in request.outputs] == [("count", True)]
    rejects(CONFIG, body([x(), mask()], outputs=[{"name": "nope"}]), "unknown output 'nope'")
    rejects(CONFIG, body([x(), mask()], outputs=[{"name": "y"}, {"name": "y"}]),
            "output 'y' is requested more than once")
    classify = [{"name": "y", "parameters": {"classification": 3}}]
    rejects(CONFIG, body([x(), mask()], outputs=classify), "classification")


def test_encode_json_response():
    spec = CONFIG.outputs[0]
    raw, length = codec.encode_infer_response(
        "m", 3, "id-9", [codec.OutputTensor(spec, (1, 2), [1.5, 2.5])]
    )
    assert length is None
    assert json.loads(raw) == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-9",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}],
    }


def test_encode_binary_response():
    y, count = CONFIG.outputs
    data = struct.pack("<2f", 1.0, 2.0)
    raw, length = codec.encode_infer_response(
        "m", 1, None, [codec.OutputTensor(y, (1, 2), data), codec.OutputTensor(count, (1,), [2])]
    )
    header = json.loads(raw[:length])
    assert "id" not in header
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert "data" not in header["outputs"][0]
    assert header["outputs"][1]["data"] == [2]
    assert raw[length:] == data
