"""Columns in and out of a batch job: Arrow and SQL values as the server's input, answers as Arrow.

A chunk travels as :data:`Columns`, one numpy array per input column, which is a payload the
server's :class:`~modelyard.serving.inputs.InputPath` takes as it is (the columns form of a
request): float columns without nulls take its fast path, anything else goes through
``Signature.prepare``. A null becomes ``None`` in an object column, which validation refuses
exactly as it refuses a JSON ``null``. Answers come out under the names the protocols use
(``predictions``, ``scores``), with the model's classes in the table's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from modelyard.errors import ConfigError
from modelyard.predictor import Prediction
from modelyard.schema import Signature

#: one numpy array per column, all of the same length.
Columns = dict[str, np.ndarray]

#: the column that numbers input rows when no ``--key`` is given.
ROW_COLUMN = "row"
ERROR_COLUMN = "error"


def needed_columns(signature: Signature, key: Sequence[str]) -> list[str]:
    """The input columns a job reads: the key columns, then the signature's inputs."""
    return [*key, *(n for n in signature.names if n not in key)]


def check_columns(available: Sequence[str], signature: Signature, key: Sequence[str],
                  where: str) -> None:
    """Refuse an input that lacks a signature input or a key column, naming what it has."""
    have = set(available)
    missing_key = [k for k in key if k not in have]
    if missing_key:
        raise ConfigError(f"--key {', '.join(missing_key)} is not a column of {where} (it has: "
                          f"{_show(available)})")
    missing = [n for n in signature.names if n not in have]
    if missing:
        raise ConfigError(f"{where} has no column {', '.join(repr(m) for m in missing)} that "
                          f"the model takes (it has: {_show(available)})")


def from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numpy array of an Arrow column: numbers stay numeric, nulls become ``None`` (refused by
    validation as a JSON null is), lists of equal length become one more axis."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_fixed_size_list(kind) and not column.null_count and \
            not column.flatten().null_count and len(column):
        values = from_arrow(column.flatten())  # a tensor column: one more axis
        if values.dtype.kind in "fiub":
            # a copy: Arrow's memory is read-only, and frameworks (torch) want to own theirs
            return np.array(values.reshape(len(column), kind.list_size, *values.shape[1:]))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
            pa.types.is_fixed_size_list(kind):
        return from_values(column.to_pylist())
    if column.null_count:
        return _objects(column.to_pylist())
    return np.asarray(column.to_numpy(zero_copy_only=False))


def from_values(values: list[Any]) -> np.ndarray:
    """A numpy array of Python values (a SQL column, a list column): numeric when they all are,
    else an object array that validation judges value by value."""
    if any(v is None for v in values):
        return _objects(values)
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged lists
        return _objects(values)
    return arr if arr.dtype.kind in "fiub" else _objects(values)


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def payload(columns: Columns, signature: Signature) -> Columns:
    """The signature's inputs of ``columns``: the columns form the server's input path takes."""
    return {name: columns[name] for name in signature.names}


def take(columns: Columns, rows: np.ndarray | slice) -> Columns:
    """The given rows of every column."""
    return {name: values[rows] for name, values in columns.items()}


def answers(prediction: Prediction, carried: Mapping[str, np.ndarray], *,
            scores: bool) -> dict[str, pa.Array]:
    """The output columns of a chunk: the carried key columns, ``predictions`` and, when asked
    and the model has them, ``scores``."""
    out = {name: _arrow(values) for name, values in carried.items()}
    out["predictions"] = _arrow(np.asarray(prediction.predictions))
    if scores and prediction.scores is not None:
        out["scores"] = _arrow(np.asarray(prediction.scores, dtype=np.float64))
    return out


def answer_metadata(name: str, version: int, prediction: Prediction | None) -> dict[bytes, bytes]:
    """Parquet metadata naming the version and, for a classifier, the class order of scores."""
    meta = {b"modelyard.model": name.encode(), b"modelyard.version": str(version).encode()}
    if prediction is not None and prediction.classes is not None:
        meta[b"modelyard.classes"] = orjson.dumps(list(prediction.classes),
                                                  option=orjson.OPT_SERIALIZE_NUMPY)
    return meta


def _arrow(values: np.ndarray) -> pa.Array:
    """An Arrow array of a numpy one: a row per first-axis entry (fixed-size lists for more
    axes); object values that Arrow cannot type are written as their text."""
    if values.ndim > 1:
        flat = _arrow(np.ascontiguousarray(values).reshape(-1))
        for size in reversed(values.shape[1:]):
            flat = pa.FixedSizeListArray.from_arrays(flat, int(size))
        return flat
    try:
        return pa.array(values, from_pandas=True) if values.dtype.kind != "O" else \
            pa.array(values.tolist())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values.tolist()])


def _show(names: Sequence[str]) -> str:
    shown = ", ".join(names[:20])
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "no columns"


__all__ = ["ERROR_COLUMN", "ROW_COLUMN", "Columns", "answer_metadata", "answers",
           "check_columns", "from_arrow", "from_values", "needed_columns", "payload", "take"]
