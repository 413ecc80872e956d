"""The Open Inference Protocol v2 (KServe / Triton) over REST: tensors in, tensors out.

Covers JSON tensors, ``BYTES`` tensors (strings), the binary tensor extension (a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw tensor bytes) and the metadata the
``tritonclient`` package reads. Pure codec: bytes and arrays in, bytes and dicts out.

Mapping to a model's signature: a ``tensor`` signature takes one input named like the signature's
input; a ``table`` signature takes one input per feature column (shape ``[n]`` or ``[n, 1]``) or a
single 2-D input ``[n, features]`` of any name. Outputs are ``predictions`` and, for classifiers,
``scores``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelyard.errors import InputError
from modelyard.schema import Signature

#: OIP datatype -> numpy dtype (BYTES tensors are object arrays of ``str``).
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": object,
}
_SIGNATURE_TYPES = {
    "float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32",
    "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL", "string": "BYTES",
}
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and objects are ``BYTES``)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    for name, dt in DATATYPES.items():
        if dt is not object and array.dtype == np.dtype(dt):
            return name
    return "FP64" if array.dtype.kind == "f" else "INT64"


@dataclass
class InferRequest:
    """A decoded infer request: named input arrays and the outputs asked for."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] = field(default_factory=list)
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False
    id: str | None = None


# -- decoding -----------------------------------------------------------------------------------
def decode_infer(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer request body; :class:`InputError` (422) names the bad input."""
    header, binary = (body, b"") if header_length is None else (
        body[:header_length], body[header_length:])
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InputError("Inference-Header-Content-Length is larger than the body",
                         [{"loc": ["header", "Inference-Header-Content-Length"], "msg": "too big"}])
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        from modelyard.serving.protocol_v1 import BadJSONError

        raise BadJSONError(f"the request header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError("an infer request needs a non-empty 'inputs' list",
                         [{"loc": ["inputs"], "msg": "field required"}])
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for i, spec in enumerate(doc["inputs"]):
        array, used = _decode_input(i, spec, binary, offset)
        offset += used
        inputs[str(spec["name"])] = array
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} binary bytes are not claimed by any input",
                         [{"loc": ["inputs"], "msg": "binary_data_size does not add up"}])
    params = doc.get("parameters") or {}
    req = InferRequest(inputs, id=doc.get("id") if isinstance(doc.get("id"), str) else None,
                       binary_default=bool(params.get("binary_data_output", False)))
    for j, out in enumerate(doc.get("outputs") or []):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InputError("each requested output needs a name",
                             [{"loc": ["outputs", j, "name"], "msg": "field required"}])
        req.outputs.append(out["name"])
        if (out.get("parameters") or {}).get("binary_data", req.binary_default):
            req.binary_outputs.add(out["name"])
    return req


def _decode_input(i: int, spec: Any, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    loc: list[Any] = ["inputs", i]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InputError(f"input {i} needs a name", [{"loc": [*loc, "name"], "msg": "required"}])
    dtype_name, shape = spec.get("datatype"), spec.get("shape")
    if dtype_name not in DATATYPES:
        raise InputError(f"input '{spec['name']}': unknown datatype {dtype_name!r}",
                         [{"loc": [*loc, "datatype"], "msg": "one of " + ", ".join(DATATYPES)}])
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError(f"input '{spec['name']}': shape must be a list of sizes",
                         [{"loc": [*loc, "shape"], "msg": "expected a list of integers"}])
    size = (spec.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:
            chunk = binary[offset:offset + int(size)]
            if len(chunk) != int(size):
                raise ValueError(f"needs {size} binary bytes, {len(chunk)} left")
            flat = from_raw(dtype_name, chunk)
        else:
            if "data" not in spec:
                raise ValueError("has neither 'data' nor parameters.binary_data_size")
            flat = _json_elements(spec["data"], dtype_name)
        array = shaped(flat, shape)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"input '{spec['name']}' {exc}",
                         [{"loc": [*loc, "data"], "msg": str(exc)}]) from None
    return array, int(size or 0)


def from_raw(datatype: str, chunk: bytes) -> np.ndarray:
    """A flat array from a tensor's raw little-endian bytes (BYTES: length-prefixed strings)."""
    if datatype == "BYTES":
        return _bytes_elements(chunk)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise ValueError(f"has {len(chunk)} bytes, not a whole number of {datatype} values")
    return np.frombuffer(chunk, dtype=dtype).copy()  # writable: frameworks may write to it


def to_raw(array: np.ndarray) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: length-prefixed strings)."""
    dt = datatype_of(array)
    if dt == "BYTES":
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=np.dtype(DATATYPES[dt]).newbyteorder("<")).tobytes()


def shaped(flat: np.ndarray, shape: list[int]) -> np.ndarray:
    """``flat`` reshaped to ``shape``, or :class:`ValueError` when the element count differs."""
    count = int(np.prod(shape)) if shape else 1
    if flat.size != count:
        raise ValueError(f"has {flat.size} elements, shape {list(shape)} needs {count}")
    return flat.reshape(shape)


def _json_elements(data: Any, dtype_name: str) -> np.ndarray:
    if dtype_name == "BYTES":
        arr = np.asarray(data, dtype=object).reshape(-1)
        out = np.empty(arr.size, dtype=object)
        out[:] = [v if isinstance(v, str) else _not_string(v) for v in arr]
        return out
    return np.asarray(data, dtype=DATATYPES[dtype_name]).reshape(-1)


def _not_string(value: Any) -> str:
    raise ValueError(f"BYTES data must be strings, got {type(value).__name__}")


def _bytes_elements(chunk: bytes) -> np.ndarray:
    """Decode the binary BYTES layout: each element is a 4-byte little-endian length + bytes."""
    values: list[str] = []
    pos = 0
    while pos < len(chunk):
        if pos + 4 > len(chunk):
            raise ValueError("BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", chunk, pos)
        pos += 4
        if pos + n > len(chunk):
            raise ValueError("BYTES data ends inside an element")
        values.append(chunk[pos:pos + n].decode("utf-8"))
        pos += n
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def encode_bytes(values: Any) -> bytes:
    """The binary BYTES layout for a sequence of strings or bytes."""
    parts = []
    for v in np.asarray(values, dtype=object).reshape(-1):
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


# -- mapping to a signature ---------------------------------------------------------------------
def to_payload(signature: Signature, inputs: dict[str, np.ndarray]) -> Any:
    """The payload :meth:`Signature.prepare` takes for these named input tensors."""
    if signature.layout == "tensor":
        name = signature.inputs[0].name
        if name in inputs and len(inputs) == 1:
            return {name: inputs[name]}
        raise InputError(f"the model takes one input named '{name}'",
                         [{"loc": ["inputs", k], "msg": "unknown input"}
                          for k in inputs if k != name]
                         or [{"loc": ["inputs", name], "msg": "field required"}])
    columns = set(signature.names)
    if len(inputs) == 1:
        (name, arr), = inputs.items()
        if name not in columns and arr.ndim == 2:
            return arr  # one [n, features] tensor
    unknown = [k for k in inputs if k not in columns]
    if unknown:
        raise InputError(
            "send one input per feature column or one 2-D input; inputs: "
            + ", ".join(signature.names[:20]),
            [{"loc": ["inputs", k], "msg": "unknown input"} for k in unknown])
    out: dict[str, Any] = {}
    for name, arr in inputs.items():
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise InputError(f"input '{name}' must have shape [n] or [n, 1]",
                             [{"loc": ["inputs", name, "shape"], "msg": "expected [n]"}])
        out[name] = arr
    return out


# -- encoding -----------------------------------------------------------------------------------
def encode_infer(
    model: str, version: int, outputs: dict[str, np.ndarray], binary: set[str],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """``(body, json_header_length)``; the length is ``None`` when no output is binary."""
    described, chunks = [], []
    for name, array in outputs.items():
        dt = datatype_of(array)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": dt}
        if name in binary:
            raw = to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": described}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def model_metadata(
    name: str, versions: list[int], signature: Signature, flavor: str
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs in OIP datatypes (``-1``: any size)."""
    if signature.layout == "tensor":
        spec = signature.inputs[0]
        inputs = [{"name": spec.name, "datatype": _SIGNATURE_TYPES.get(spec.dtype, "FP32"),
                   "shape": [-1, *(-1 if d is None else d for d in spec.shape)]}]
    else:
        inputs = [{"name": f.name, "datatype": _SIGNATURE_TYPES.get(f.dtype, "FP64"),
                   "shape": [-1]} for f in signature.inputs]
    outputs = [{"name": "predictions", "datatype": _prediction_type(signature), "shape": [-1]}]
    if signature.classes:
        outputs.append({"name": "scores", "datatype": output_types(signature)["scores"],
                        "shape": [-1, len(signature.classes)]})
    return {"name": name, "versions": [str(v) for v in versions], "platform": f"modelyard_{flavor}",
            "inputs": inputs, "outputs": outputs}


def output_types(signature: Signature) -> dict[str, str]:
    """The OIP datatype of each output, as :func:`model_metadata` announces it."""
    return {"predictions": _prediction_type(signature), "scores": "FP64"}


def cast_output(array: np.ndarray, datatype: str) -> np.ndarray:
    """``array`` in the announced numeric ``datatype`` (labels and strings are left alone)."""
    target = DATATYPES.get(datatype)
    if target is None or target is object or array.dtype.kind not in "fiub":
        return array
    return array.astype(target, copy=False)


def _prediction_type(signature: Signature) -> str:
    if signature.classes:
        first = signature.classes[0]
        return "BYTES" if isinstance(first, str) else ("BOOL" if isinstance(first, bool)
                                                      else "INT64")
    if signature.outputs:
        return _SIGNATURE_TYPES.get(signature.outputs[0].dtype, "FP64")
    return "FP64"


__all__ = [
    "DATATYPES",
    "EXTENSIONS",
    "InferRequest",
    "cast_output",
    "datatype_of",
    "decode_infer",
    "encode_bytes",
    "encode_infer",
    "from_raw",
    "model_metadata",
    "output_types",
    "shaped",
    "to_payload",
    "to_raw",
]
