"""A chunk of the prediction log: the requests of one version and variant, kept as one record.

The log's writer turns each slice of its queue into chunks (:func:`encode_inputs`,
:func:`encode_outputs`, :meth:`Chunk.of`), and a database keeps one row per chunk: writing a
row per request cost more than everything else the log did (SQLite's per-row insert and a random
``request_id`` index alone take 5-10 µs a request). A chunk holds its requests as columns:

- ``requests``: the request ids, and arrays of when each was answered (µs since the epoch),
  its latency (ms) and its rows;
- ``inputs``: :func:`~modelyard.monitoring.summary.summarize_stacked`'s columns, numbers as
  the arrays they were (a table's stacked matrix, a vector model's rows), or, for what does not
  stack (text, tensors, an odd request), a JSON list of per-request summaries;
- ``outputs``: the stacked predictions and scores, or a JSON list of :func:`outputs_of`;
- ``id_hashes``: CRC-32 of each request id, which :meth:`DatabaseStore.find
  <modelyard.monitoring.logstore.DatabaseStore.find>` scans instead of the ids themselves.

Each of the three parts is :func:`pack` ed: ``MYL1``, a 4-byte little-endian header length, a
JSON header (which names each array's dtype and shape, and holds the non-numeric values) and
the arrays' bytes. Reading a chunk back (:meth:`Chunk.records`) gives the same JSON-ready
records as before: floats as their shortest text (float32 ``0.1`` as ``0.1``), outputs rounded
to 6 decimals, non-finite values as None.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from modelyard.monitoring.summary import Stacked, summarize_stacked, unstack

if TYPE_CHECKING:
    from modelyard.predictor import Prediction
    from modelyard.schema import Signature

MAGIC = b"MYL1"
#: outputs with more values than this (masks, long sequences) are logged as their shape only.
MAX_OUTPUT_VALUES = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC = "biuf"
_PREDICTIONS = attrgetter("predictions")
_SCORES = attrgetter("scores")
_CLASSES = attrgetter("classes")
_DTYPE = attrgetter("dtype")


# -- the container ------------------------------------------------------------------------------
def pack(header: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    """``header`` (JSON-ready) and numeric ``arrays`` as one record (:func:`unpack` reads it)."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    head = orjson.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]},
                       option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([MAGIC, len(head).to_bytes(4, "little"), head,
                     *(a.tobytes() for a in arrays)])


def unpack(data: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The header and arrays of a :func:`pack` ed record (arrays read-only, over ``data``)."""
    if data[:4] != MAGIC:
        raise ValueError("not a prediction log record (bad magic)")
    end = 8 + int.from_bytes(data[4:8], "little")
    header = orjson.loads(data[8:end])
    arrays = []
    for dtype_text, shape in header.pop("arrays"):
        dtype = np.dtype(dtype_text)
        if dtype.kind not in _NUMERIC or any(int(d) < 0 for d in shape):
            raise ValueError(f"a prediction log record holds a {dtype} array of shape {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        if end + count * dtype.itemsize > len(data):
            raise ValueError("a prediction log record is cut short")
        arrays.append(np.frombuffer(data, dtype, count, end).reshape(shape))
        end += count * dtype.itemsize
    return header, arrays


class _Packer:
    """Collects a header's values: numeric arrays go to the arrays, the rest into the JSON."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def put(self, values: Any) -> Any:
        if isinstance(values, np.ndarray) and values.dtype.kind in _NUMERIC:
            self.arrays.append(values)
            return {"a": len(self.arrays) - 1}
        return {"j": values}


def _get(ref: Mapping[str, Any], arrays: list[np.ndarray]) -> Any:
    return arrays[ref["a"]] if "a" in ref else ref["j"]


# -- inputs and outputs -------------------------------------------------------------------------
def json_part(values: list[Any]) -> bytes:
    """Per-request JSON-ready values as one record (what does not stack)."""
    return pack({"kind": "json", "values": values})


def encode_inputs(batches: Sequence[Any], signature: Signature,
                  reference: Mapping[str, Any] | None, *, sensitive: Mapping[str, str],
                  hash_key: bytes) -> bytes | None:
    """The inputs of one version's requests as one record; None where they do not stack (the
    caller summarises them one by one, :func:`json_part`). Raises what summarising raises."""
    stacked = summarize_stacked(batches, signature, reference, sensitive=sensitive,
                                hash_key=hash_key)
    if stacked is None:
        return None
    packer = _Packer()
    groups = [[names, packer.put(values)] for names, values in stacked.groups]
    lengths = packer.put(np.asarray(stacked.lengths, dtype=np.int32))
    return pack({"kind": stacked.kind, "groups": groups, "extras": stacked.extras,
                 "lengths": lengths}, packer.arrays)


def encode_outputs(answers: Sequence[Prediction]) -> bytes:
    """The outputs of one version's answers as one record: stacked where they stack."""
    stacked = _stacked(answers)
    if stacked is None:
        return json_part([outputs_of(a) for a in answers])
    lengths, predictions, scores = stacked
    packer = _Packer()
    header = {"kind": "stacked", "lengths": packer.put(np.asarray(lengths, np.int32)),
              "predictions": packer.put(_storable(predictions))}
    if scores is not None:
        header["scores"] = packer.put(_storable(scores))
        classes = answers[0].classes
        if classes is not None:
            header["classes"] = [_scalar(c) for c in classes]
    return pack(header, packer.arrays)


def _stacked(answers: Sequence[Prediction]
             ) -> tuple[list[int], np.ndarray, np.ndarray | None] | None:
    """Each answer's rows, and its predictions and scores concatenated; None unless every
    answer has the same dtypes, row shapes and classes and none is too big to keep."""
    first = answers[0]
    if getattr(first, "steps", None):  # a graph's answers keep their steps, one by one
        return None
    predictions = list(map(_PREDICTIONS, answers))
    scores = list(map(_SCORES, answers))
    classes = first.classes
    if (not isinstance(first.predictions, np.ndarray) or first.predictions.ndim == 0
            or any(c is not classes and c != classes for c in map(_CLASSES, answers))
            or len(set(map(_DTYPE, predictions))) != 1):
        return None
    try:
        lengths = list(map(len, predictions))  # a 0-d array has no len: TypeError
        stacked = np.concatenate(predictions)  # other row shapes: ValueError
        if first.scores is None:
            if any(s is not None for s in scores):
                return None
            both = None
        else:
            if list(map(len, scores)) != lengths or len(set(map(_DTYPE, scores))) != 1:
                return None
            both = np.concatenate(scores)
    except (TypeError, ValueError, AttributeError):
        return None
    if ((stacked.size > MAX_OUTPUT_VALUES or (both is not None and both.size > MAX_OUTPUT_VALUES))
            and not _small(answers)):
        return None
    return lengths, stacked, both


def _small(answers: Sequence[Prediction]) -> bool:
    """Whether no answer has more values than the log keeps of one."""
    return not any(a.predictions.size > MAX_OUTPUT_VALUES
                   or (a.scores is not None and a.scores.size > MAX_OUTPUT_VALUES)
                   for a in answers)


def decode_part(data: bytes) -> list[dict[str, Any]]:
    """The per-request records of an inputs or outputs record."""
    return list(iter_part(data))


def iter_part(data: bytes) -> Iterator[dict[str, Any]]:
    """:func:`decode_part`, one record at a time."""
    header, arrays = unpack(data)
    kind = header["kind"]
    if kind == "json":
        return iter(header["values"])
    lengths = _get(header["lengths"], arrays).tolist()
    if kind == "stacked":
        return _unstack_outputs(header, arrays, lengths)
    groups = [(names, _get(ref, arrays)) for names, ref in header["groups"]]
    return unstack(Stacked(kind, lengths, groups, header.get("extras", {})))


def _unstack_outputs(header: Mapping[str, Any], arrays: list[np.ndarray],
                     lengths: list[int]) -> Iterator[dict[str, Any]]:
    predictions = _plain_any(_get(header["predictions"], arrays))
    scores = _plain_any(_get(header["scores"], arrays)) if "scores" in header else None
    classes = header.get("classes")
    start = 0
    for n in lengths:
        end = start + n
        one: dict[str, Any] = {"predictions": predictions[start:end]}
        if scores is not None:
            one["scores"] = scores[start:end]
            if classes is not None:
                one["classes"] = classes
        yield one
        start = end


def _storable(values: np.ndarray) -> Any:
    """Numbers as they are; anything else (labels as strings) as plain values for the JSON."""
    return values if values.dtype.kind in _NUMERIC else _plain(values)


def _plain_any(values: Any) -> Any:
    return _plain(values) if isinstance(values, np.ndarray) else values


# -- the chunk ----------------------------------------------------------------------------------
@dataclass
class Chunk:
    """Logged requests of one model, version and variant, as a database row keeps them."""

    model: str
    version: int
    variant: str
    request_ids: list[str]
    #: when each was answered, µs since the epoch (UTC).
    at_us: np.ndarray
    latency_ms: np.ndarray
    rows: np.ndarray
    #: :func:`pack` ed records of the requests' inputs and outputs (one entry per request).
    inputs: bytes
    outputs: bytes

    @classmethod
    def of(cls, model: str, version: int, variant: str, request_ids: list[str],
           at_s: Sequence[float], latency_s: Sequence[float], rows: Sequence[int], inputs: bytes,
           outputs: bytes) -> Chunk:
        """A chunk from the writer's values: times in seconds since the epoch, latency in s."""
        at_us = (np.asarray(at_s, dtype=np.float64) * 1e6).round().astype(np.int64)
        latency = (np.asarray(latency_s, dtype=np.float64) * 1000.0).round(4)
        return cls(model, version, variant, request_ids, at_us, latency,
                   np.asarray(rows, dtype=np.int64), inputs, outputs)

    def __len__(self) -> int:
        return len(self.request_ids)

    def requests(self) -> bytes:
        """The ids, times, latencies and rows as one record (:meth:`from_row` reads it)."""
        return pack({"ids": self.request_ids}, [self.at_us, self.latency_ms, self.rows])

    def id_hashes(self) -> bytes:
        """CRC-32 of each request id (``<u4``): what a lookup by id scans."""
        return id_hashes(self.request_ids).tobytes()

    @classmethod
    def from_row(cls, model: str, version: int, variant: str, requests: bytes,
                 inputs: bytes | None, outputs: bytes) -> Chunk:
        """A chunk as a database row holds it (``inputs`` None when not read)."""
        header, (at_us, latency_ms, rows) = unpack(requests)
        return cls(model, version, variant, list(header["ids"]), at_us, latency_ms, rows,
                   inputs or b"", outputs)

    def records(self, *, with_inputs: bool = True) -> tuple[list[Any], list[Any]]:
        """Each request's inputs (``{}`` without them) and outputs, JSON-ready."""
        inputs = (decode_part(self.inputs) if with_inputs and self.inputs
                  else [{}] * len(self))
        outputs = decode_part(self.outputs)
        if len(inputs) != len(self) or len(outputs) != len(self):
            raise ValueError(f"a prediction log chunk of {len(self)} requests holds "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        return inputs, outputs

    def json_records(self) -> tuple[list[str], list[str]]:
        """Each request's inputs and outputs as JSON text, each encoded as it is decoded (so
        no more than one request's objects live at a time)."""
        inputs = [_json(v) for v in iter_part(self.inputs)]
        outputs = [_json(v) for v in iter_part(self.outputs)]
        if len(inputs) != len(self) or len(outputs) != len(self):
            raise ValueError(f"a prediction log chunk of {len(self)} requests holds "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        return inputs, outputs

    def take(self, keep: np.ndarray) -> Chunk:
        """The chunk of the requests where ``keep`` (booleans) is true; their inputs and
        outputs as JSON lists (retention cuts few chunks, so simple beats compact)."""
        inputs, outputs = self.records()
        index = np.flatnonzero(keep).tolist()
        return Chunk(self.model, self.version, self.variant,
                     [self.request_ids[i] for i in index], self.at_us[keep],
                     self.latency_ms[keep], self.rows[keep],
                     json_part([inputs[i] for i in index]), json_part([outputs[i] for i in index]))

    def times(self) -> list[datetime]:
        """When each was answered, as aware UTC datetimes."""
        return [_EPOCH + timedelta(microseconds=us) for us in self.at_us.tolist()]


def id_hashes(request_ids: Sequence[str]) -> np.ndarray:
    """CRC-32 of each id's UTF-8 (collisions only cost a lookup a chunk it reads in vain)."""
    return np.fromiter(map(zlib.crc32, map(str.encode, request_ids)), np.uint32,
                       len(request_ids)).astype("<u4")


def to_us(at: datetime) -> int:
    """An aware datetime (naive: UTC) as µs since the epoch."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


# -- what the log keeps of an answer ------------------------------------------------------------
def outputs_of(prediction: Prediction) -> dict[str, Any]:
    """What the log keeps of a prediction: its values (and scores), or only its shape if big."""
    values = np.asarray(prediction.predictions)
    if values.size > MAX_OUTPUT_VALUES:
        return {"shape": list(values.shape), "truncated": True}
    out: dict[str, Any] = {"predictions": _plain(values)}
    scores = prediction.scores
    if scores is not None and np.asarray(scores).size <= MAX_OUTPUT_VALUES:
        out["scores"] = _plain(np.asarray(scores))
        if prediction.classes is not None:
            out["classes"] = [_scalar(c) for c in prediction.classes]
    steps = getattr(prediction, "steps", None)
    if steps:  # a graph's answer: the member versions that made it
        out["steps"] = list(steps)
    return out


def outputs_many(answers: Sequence[Prediction]) -> Iterator[dict[str, Any]]:
    """:func:`outputs_of` of each answer, converted together where they stack (one version's
    answers do)."""
    if not answers:
        return iter(())
    return iter(decode_part(encode_outputs(answers)))


def _plain(values: np.ndarray) -> Any:
    if values.dtype.kind == "f":
        values = np.where(np.isfinite(values), values, np.nan).round(6)
        return orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    if values.dtype.kind in "OUS":
        return [_scalar(v) for v in values.tolist()]
    return values.tolist()


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


__all__ = ["MAGIC", "MAX_OUTPUT_VALUES", "Chunk", "decode_part", "encode_inputs",
           "encode_outputs", "id_hashes", "iter_part", "json_part", "outputs_many",
           "outputs_of", "pack", "to_us", "unpack"]
