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

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadJSONError, InputError
from modelyard.numeric import to_numeric
from modelyard.schema import FieldSpec, Signature

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


#: numpy dtype -> OIP datatype, for answers (one lookup per output of every request).
_BY_DTYPE = {np.dtype(dt): name for name, dt in DATATYPES.items() if dt is not object}
#: answers orjson writes from the array itself, exactly as from its Python values (not FP32 or
#: FP16: orjson writes their shortest float32 form, ``tolist()`` the float64 one).
_AS_ARRAY = frozenset(np.dtype(dt) for dt in (np.bool_, np.uint8, np.uint16, np.uint32,
                                                np.uint64, np.int8, np.int16, np.int32,
                                                np.int64, np.float64))


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and objects are ``BYTES``)."""
    dtype = array.dtype
    if dtype.kind in "OUS":
        return "BYTES"
    found = _BY_DTYPE.get(dtype)
    if found is not None:
        return found
    return "FP64" if dtype.kind == "f" else "INT64"


@dataclass(slots=True)
class InferRequest:
    """A decoded infer request: named input arrays and the outputs asked for."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] = field(default_factory=list)
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False
    id: str | None = None


# -- decoding -----------------------------------------------------------------------------------
def decode_infer(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer request body; :class:`InputError` (422) names the bad field.

    Every client-given field is checked here, once: ``parameters`` (top level, per input, per
    output) must be objects, names unique, shapes sizes, data numbers of the declared datatype
    (:func:`~modelyard.numeric.to_numeric`).
    """
    header, binary = (body, b"") if header_length is None else (
        body[:header_length], body[header_length:])
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InputError("Inference-Header-Content-Length is larger than the body",
                         [{"loc": ["header", "Inference-Header-Content-Length"], "msg": "too big"}])
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadJSONError(f"the request header is not valid JSON: {exc}") from None
    return decode_infer_doc(doc, binary)


def decode_infer_doc(doc: Any, binary: bytes = b"") -> InferRequest:
    """:func:`decode_infer` for a JSON header already parsed (a queue message's body)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InputError("an infer request needs a non-empty 'inputs' list",
                         [{"loc": ["inputs"], "msg": "field required"}])
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _field_error(["id"], "'id' must be a string")
    params = parameters(doc, [])
    req = InferRequest({}, [], set(), _flag(params, "binary_data_output", ["parameters"]),
                       request_id)
    offset = 0
    for i, spec in enumerate(doc["inputs"]):
        name, array, used = _decode_input(i, spec, binary, offset)
        if name in req.inputs:
            raise _field_error(["inputs", i, "name"], f"input '{name}' is given twice")
        offset += used
        req.inputs[name] = array
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} binary bytes are not claimed by any input",
                         [{"loc": ["inputs"], "msg": "binary_data_size does not add up"}])
    _decode_outputs(doc.get("outputs"), req)
    return req


def _decode_outputs(outputs: Any, req: InferRequest) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise _field_error(["outputs"], "'outputs' must be a list of {\"name\": ...} objects")
    for j, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InputError("each requested output needs a name",
                             [{"loc": ["outputs", j, "name"], "msg": "field required"}])
        name = out["name"]
        if name in req.outputs:
            raise _field_error(["outputs", j, "name"], f"output '{name}' is requested twice")
        req.outputs.append(name)
        if _flag(parameters(out, ["outputs", j]), "binary_data", ["outputs", j, "parameters"],
                 req.binary_default):
            req.binary_outputs.add(name)


def parameters(container: dict[str, Any], loc: list[Any]) -> dict[str, Any]:
    """A request's, input's or output's ``parameters``: an object (absent or null: empty)."""
    value = container.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _field_error([*loc, "parameters"], "'parameters' must be an object")
    return value


def _flag(params: dict[str, Any], key: str, loc: list[Any], default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _field_error([*loc, key], f"'{key}' must be true or false")
    return value


def _field_error(loc: list[Any], message: str) -> InputError:
    return InputError(message, [{"loc": loc, "msg": message}])


def _decode_input(i: int, spec: Any, binary: bytes,
                  offset: int) -> tuple[str, np.ndarray, int]:
    loc: list[Any] = ["inputs", i]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InputError(f"input {i} needs a name", [{"loc": [*loc, "name"], "msg": "required"}])
    name = spec["name"]
    dtype_name, shape = spec.get("datatype"), spec.get("shape")
    if not isinstance(dtype_name, str) or dtype_name not in DATATYPES:
        raise InputError(f"input '{name}': unknown datatype {dtype_name!r}",
                         [{"loc": [*loc, "datatype"], "msg": "one of " + ", ".join(DATATYPES)}])
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape):  # bool is an int to isinstance
        raise InputError(f"input '{name}': shape must be a list of sizes",
                         [{"loc": [*loc, "shape"], "msg": "expected a list of integers"}])
    size = parameters(spec, loc).get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise _field_error([*loc, "parameters", "binary_data_size"],
                           f"input '{name}': binary_data_size must be a number of bytes")
    try:
        if size is not None:
            chunk = binary[offset:offset + size]
            if len(chunk) != size:
                raise ValueError(f"needs {size} binary bytes, {len(chunk)} left")
            flat = from_raw(dtype_name, chunk)
        else:
            if "data" not in spec:
                raise ValueError("has neither 'data' nor parameters.binary_data_size")
            flat = json_elements(spec["data"], dtype_name, f"input '{name}'", [*loc, "data"])
        array = shaped(flat, shape)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"input '{name}' {exc}",
                         [{"loc": [*loc, "data"], "msg": str(exc)}]) from None
    return name, array, size or 0


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
    count = math.prod(shape)  # Python ints: no overflow for absurd shapes
    if flat.size != count:
        raise ValueError(f"has {flat.size} elements, shape {list(shape)} needs {count}")
    return flat.reshape(shape)


def json_elements(data: Any, dtype_name: str, field: str, loc: list[Any]) -> np.ndarray:
    """A flat array from a JSON tensor's ``data`` (nested lists allowed), strictly typed."""
    if dtype_name == "BYTES":
        arr = np.asarray(data, dtype=object).reshape(-1)
        out = np.empty(arr.size, dtype=object)
        out[:] = [v if isinstance(v, str) else _not_string(v) for v in arr]
        return out
    if dtype_name == "BOOL":
        arr = np.asarray(data)
        if arr.dtype != np.bool_ and arr.size:
            raise _field_error(loc, f"{field}: BOOL data must be true or false")
        return arr.astype(np.bool_).reshape(-1)
    return to_numeric(data, DATATYPES[dtype_name], field, loc).reshape(-1)


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
    if len(inputs) == 1:
        (name, arr), = inputs.items()
        if arr.ndim == 2 and not signature.takes(name):
            return arr  # one [n, features] tensor
    unknown = [k for k in inputs if not signature.takes(k)]
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
        elif array.dtype in _AS_ARRAY:
            entry["data"] = array.ravel()  # C-contiguous (orjson writes only those)
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": described}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def model_metadata(
    name: str, versions: list[int], signature: Signature, flavor: str,
    outputs: Sequence[FieldSpec] = (),
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs and outputs in OIP datatypes (``-1``: any size).

    ``outputs`` are what the version answers (recorded at training time, or measured when the
    server loaded it); without them (an old version not loaded yet) the outputs are inferred
    from the signature.
    """
    if signature.layout == "tensor":
        spec = signature.inputs[0]
        inputs = [{"name": spec.name, "datatype": _SIGNATURE_TYPES.get(spec.dtype, "FP32"),
                   "shape": [-1, *(-1 if d is None else d for d in spec.shape)]}]
    else:
        inputs = [{"name": f.name, "datatype": _SIGNATURE_TYPES.get(f.dtype, "FP64"),
                   "shape": [-1]} for f in signature.inputs]
    if outputs:
        described = [{"name": f.name, "datatype": _SIGNATURE_TYPES.get(f.dtype, "BYTES"),
                      "shape": [-1, *(-1 if d is None else d for d in f.shape)]}
                     for f in outputs]
    else:
        described = [{"name": "predictions", "datatype": _prediction_type(signature),
                      "shape": [-1]}]
        if signature.classes:
            described.append({"name": "scores", "datatype": "FP64",
                              "shape": [-1, len(signature.classes)]})
    return {"name": name, "versions": [str(v) for v in versions], "platform": f"modelyard_{flavor}",
            "inputs": inputs, "outputs": described}


def output_types(signature: Signature, outputs: Sequence[FieldSpec] = ()) -> dict[str, str]:
    """The OIP datatype of each output, as :func:`model_metadata` announces it."""
    if outputs:
        return {f.name: _SIGNATURE_TYPES.get(f.dtype, "BYTES") for f in outputs}
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
    "decode_infer_doc",
    "encode_bytes",
    "encode_infer",
    "from_raw",
    "json_elements",
    "model_metadata",
    "output_types",
    "parameters",
    "shaped",
    "to_payload",
    "to_raw",
]
