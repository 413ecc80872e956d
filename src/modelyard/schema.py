"""Signatures: what a model takes and returns, inferred from training data, and the one input path.

A :class:`Signature` is stored with every version. Its :meth:`Signature.prepare` turns whatever a
caller sends -- records, columns, row lists, nested tensors, strings, or in-process numpy/pandas
objects -- into the exact batch the model was trained on, or raises :class:`InputError` naming
every field that is wrong. The server and ``modelyard.load`` use the same method, so a request
that works in-process works over HTTP.

Two layouts cover every flavor:

- ``table``: named scalar columns (tabular models). ``frame=True`` when the model was trained on a
  pandas DataFrame, so it gets one back (column names and order preserved).
- ``tensor``: one named input of fixed per-row shape (images, vectors, text as ``string`` with
  shape ``()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modelyard.errors import InputError
from modelyard.numeric import to_numeric

Layout = Literal["table", "tensor"]

#: dtype names a signature may use, mapped to the numpy dtype a batch is built with.
_NUMPY_DTYPES: dict[str, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "string": object,
}

_NUMERIC = {name for name in _NUMPY_DTYPES if name not in ("string", "bool")}

#: what every version answers: labels or values, and class scores when it has them.
OUTPUT_NAMES = ("predictions", "scores")


def dtype_name(dtype: Any) -> str:
    """The signature dtype name for a numpy/pandas dtype (``object`` and strings map to string)."""
    dt = np.dtype(dtype) if not hasattr(dtype, "kind") else dtype
    kind = getattr(dt, "kind", "O")
    if kind in ("O", "U", "S", "T"):
        return "string"
    if kind == "b":
        return "bool"
    name = str(np.dtype(dt).name) if kind in "iufc" else "string"
    return name if name in _NUMPY_DTYPES else ("float64" if kind == "f" else "int64")


@dataclass(frozen=True)
class FieldSpec:
    """One named input or output: its dtype name and per-row shape (``()`` for a scalar)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data.get("shape", ())))


@dataclass(frozen=True)
class Signature:
    """What a model version takes and returns; ``prepare`` validates input against it."""

    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...] = ()
    layout: Layout = "table"
    frame: bool = False
    classes: tuple[Any, ...] | None = None
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout == "tensor" and len(self.inputs) != 1:
            raise ValueError("a tensor signature has exactly one input")
        self._index.update({f.name: i for i, f in enumerate(self.inputs)})

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, stored in the registry with the version."""
        out: dict[str, Any] = {
            "layout": self.layout,
            "frame": self.frame,
            "inputs": [f.to_dict() for f in self.inputs],
            "outputs": [f.to_dict() for f in self.outputs],
        }
        if self.classes is not None:
            out["classes"] = [_plain(c) for c in self.classes]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """Rebuild a signature stored by :meth:`to_dict`."""
        classes = data.get("classes")
        return cls(
            inputs=tuple(FieldSpec.from_dict(f) for f in data["inputs"]),
            outputs=tuple(FieldSpec.from_dict(f) for f in data.get("outputs", ())),
            layout=data.get("layout", "table"),
            frame=bool(data.get("frame", False)),
            classes=tuple(classes) if classes is not None else None,
        )

    @property
    def names(self) -> list[str]:
        """Input names in the order the model expects them."""
        return [f.name for f in self.inputs]

    def takes(self, name: str) -> bool:
        """Whether ``name`` is one of the inputs (no list built: a request's path asks it)."""
        return name in self._index

    @property
    def answers(self) -> tuple[FieldSpec, ...]:
        """The outputs a version answers with (``predictions``, and ``scores`` for classifiers),
        as measured on the saved model when it was trained; empty for older versions (the
        server measures them when it loads the version)."""
        return tuple(f for f in self.outputs if f.name in OUTPUT_NAMES)

    # -- inference ------------------------------------------------------------------------------
    @classmethod
    def infer(cls, X: Any, y: Any = None, *, layout: Layout | None = None) -> Signature:
        """Infer a signature from training features ``X`` (and, optionally, outputs ``y``).

        A DataFrame gives a ``table`` signature with ``frame=True``; a 2-D array gives a table
        (``layout="table"``, the default for classic flavors) or a tensor; higher-rank arrays and
        lists of strings give a tensor.
        """
        inputs, inferred_layout, frame = _infer_inputs(X, layout)
        outputs: tuple[FieldSpec, ...] = ()
        classes = None
        if y is not None:
            y_arr = np.asarray(y)
            outputs = (FieldSpec("output", dtype_name(y_arr.dtype), tuple(y_arr.shape[1:])),)
            if y_arr.ndim == 1 and y_arr.dtype.kind in "iubOU" and len(y_arr):
                uniq = np.unique(y_arr)
                if len(uniq) <= 1000:
                    classes = tuple(_plain(c) for c in uniq)
        return cls(inputs, outputs, inferred_layout, frame, classes)

    # -- the input path -------------------------------------------------------------------------
    def prepare(self, payload: Any) -> tuple[Any, int]:
        """Turn ``payload`` into the model's batch; returns ``(batch, number_of_rows)``.

        Accepts, for a table: a list of records (dicts), a dict of columns, a list of row lists,
        a DataFrame or a 2-D array; for a tensor: an array or nested list of rows, or one named
        input ``{name: rows}``; for text: a list of strings.
        """
        if self.layout == "tensor":
            return self._prepare_tensor(payload)
        return self._prepare_table(payload)

    def _prepare_tensor(self, payload: Any) -> tuple[Any, int]:
        spec = self.inputs[0]
        if isinstance(payload, Mapping):
            if spec.name not in payload:
                raise InputError(
                    f"input '{spec.name}' is missing",
                    [{"loc": [spec.name], "msg": "field required"}],
                )
            payload = payload[spec.name]
        if spec.dtype == "string":
            return _prepare_strings(spec, payload)
        if spec.dtype == "bool":
            arr = np.asarray(payload)
            if arr.dtype != np.bool_:
                raise InputError(f"input '{spec.name}' must be true or false values",
                                 [{"loc": [spec.name], "msg": "expected true or false"}])
        else:
            arr = to_numeric(payload, _NUMPY_DTYPES.get(spec.dtype, np.float32),
                             f"input '{spec.name}'", [spec.name])
        row_shape = tuple(spec.shape)
        if arr.ndim == len(row_shape):  # a single row without its batch axis
            arr = arr[np.newaxis, ...]
        _check_shape(spec, arr.shape[1:], row_shape)
        return arr, int(arr.shape[0])

    def _prepare_table(self, payload: Any) -> tuple[Any, int]:
        columns = self._columns_from(payload)
        errors: list[dict[str, Any]] = []
        built: dict[str, np.ndarray] = {}
        n_rows: int | None = None
        for spec in self.inputs:
            if spec.name not in columns:
                errors.append({"loc": [spec.name], "msg": "field required"})
                continue
            col = _coerce_column(spec, columns[spec.name], errors)
            if col is None:
                continue
            if n_rows is None:
                n_rows = len(col)
            elif len(col) != n_rows:
                errors.append(
                    {"loc": [spec.name], "msg": f"has {len(col)} values, other columns {n_rows}"}
                )
            built[spec.name] = col
        unknown = [k for k in columns if k not in self._index]
        errors.extend({"loc": [k], "msg": "unknown field"} for k in unknown)
        if errors:
            raise InputError(_summarise(errors), errors)
        if not n_rows:
            raise InputError("input has no rows", [{"loc": [], "msg": "at least one row needed"}])
        if self.frame:
            import pandas as pd

            return pd.DataFrame(built, columns=self.names, copy=False), n_rows
        return _stack(self, built), n_rows

    def _columns_from(self, payload: Any) -> Mapping[str, Any]:
        if hasattr(payload, "columns") and hasattr(payload, "to_numpy"):  # a DataFrame
            return {str(c): payload[c].to_numpy() for c in payload.columns}
        if isinstance(payload, Mapping):
            if all(not isinstance(v, Sequence | np.ndarray) or isinstance(v, str)
                   for v in payload.values()):
                return {k: [v] for k, v in payload.items()}  # a single record
            return payload
        if isinstance(payload, np.ndarray):
            payload = np.atleast_2d(payload)
            if payload.ndim != 2 or payload.shape[1] != len(self.inputs):
                raise InputError(
                    f"expected rows of {len(self.inputs)} features, got shape {payload.shape}",
                    [{"loc": [], "msg": f"expected shape (n, {len(self.inputs)})"}],
                )
            return {f.name: payload[:, i] for i, f in enumerate(self.inputs)}
        if isinstance(payload, Sequence) and not isinstance(payload, str) and payload:
            if all(isinstance(r, Mapping) for r in payload):
                return _records_to_columns(payload, self.names)
            return self._rows_to_columns(payload)
        raise InputError(
            "input must be records, columns, rows or a DataFrame",
            [{"loc": [], "msg": "expected a list of records or a dict of columns"}],
        )

    def _rows_to_columns(self, rows: Sequence[Any]) -> dict[str, Any]:
        width = len(self.inputs)
        if not any(_is_row(r) for r in rows):
            rows = [rows]  # one flat row of values
        for i, row in enumerate(rows):
            if not _is_row(row) or len(row) != width:
                got = len(row) if _is_row(row) else 1
                raise InputError(
                    f"row {i} has {got} values; the model takes {width} ({', '.join(self.names)})",
                    [{"loc": [i], "msg": f"expected {width} values"}],
                )
        return {name: [row[i] for row in rows] for i, name in enumerate(self.names)}


# -- helpers ------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_row(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def _infer_inputs(X: Any, layout: Layout | None) -> tuple[tuple[FieldSpec, ...], Layout, bool]:
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        specs = tuple(FieldSpec(str(c), dtype_name(t)) for c, t in X.dtypes.items())
        return specs, "table", True
    if isinstance(X, Sequence) and X and all(isinstance(s, str) for s in X[:100]):
        return (FieldSpec("text", "string"),), "tensor", False
    arr = np.asarray(X)
    if arr.ndim == 0:
        raise ValueError("cannot infer a signature from a scalar; pass a batch of rows")
    if arr.ndim == 2 and layout != "tensor":
        name = dtype_name(arr.dtype)
        specs = tuple(FieldSpec(f"f{i}", name) for i in range(arr.shape[1]))
        return specs, "table", False
    return (FieldSpec("input", dtype_name(arr.dtype), tuple(arr.shape[1:])),), "tensor", False


def _prepare_strings(spec: FieldSpec, payload: Any) -> tuple[np.ndarray, int]:
    if isinstance(payload, str):
        payload = [payload]
    if isinstance(payload, bytes | Mapping) or not hasattr(payload, "__len__"):
        raise InputError(
            f"input '{spec.name}' must be a string or a list of strings",
            [{"loc": [spec.name], "msg": "expected a list of strings"}],
        )
    values = list(np.asarray(payload, dtype=object).reshape(-1)) if len(payload) else []
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise InputError(
            f"input '{spec.name}' must be strings; item {bad[0]} is not",
            [{"loc": [spec.name, i], "msg": "expected a string"} for i in bad[:20]],
        )
    if not values:
        raise InputError("input has no rows", [{"loc": [spec.name], "msg": "empty"}])
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr, len(values)


def _check_shape(spec: FieldSpec, got: tuple[int, ...], want: tuple[int | None, ...]) -> None:
    if len(got) != len(want) or any(
        w is not None and g != w for g, w in zip(got, want, strict=True)
    ):
        shown = tuple("?" if w is None else w for w in want)
        raise InputError(
            f"input '{spec.name}' rows must have shape {shown}, got {tuple(got)}",
            [{"loc": [spec.name], "msg": f"expected per-row shape {list(shown)}"}],
        )


def _records_to_columns(records: Sequence[Mapping[str, Any]], names: list[str]) -> dict[str, Any]:
    keys = set().union(*(r.keys() for r in records)) if len(records) > 1 else set(records[0])
    columns: dict[str, Any] = {}
    for key in keys:
        try:
            columns[key] = [r[key] for r in records]
        except KeyError:
            missing = next(i for i, r in enumerate(records) if key not in r)
            raise InputError(
                f"record {missing} has no '{key}'",
                [{"loc": [missing, key], "msg": "field required"}],
            ) from None
    return columns


def _coerce_column(spec: FieldSpec, values: Any, errors: list[dict[str, Any]]) -> Any:
    if spec.dtype == "string":
        return _string_column(spec, values, errors)
    if spec.dtype in _NUMERIC:
        try:
            arr = to_numeric(values, _NUMPY_DTYPES[spec.dtype], f"column '{spec.name}'",
                             [spec.name])
        except InputError as exc:
            errors.extend(exc.errors)
            return None
    else:
        arr = np.asarray(values)
    if arr.ndim != 1:
        errors.append({"loc": [spec.name], "msg": "expected one scalar per row"})
        return None
    if spec.dtype == "bool" and arr.dtype != np.bool_:
        errors.append({"loc": [spec.name], "msg": "expected true or false"})
        return None
    return arr


def _string_column(spec: FieldSpec, values: Any, errors: list[dict[str, Any]]) -> Any:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        errors.append({"loc": [spec.name], "msg": "expected a flat list of strings"})
        return None
    if not isinstance(values, np.ndarray):  # client values (JSON); in-process arrays may hold NaN
        bad = next((i for i, v in enumerate(arr) if not isinstance(v, str)), None)
        if bad is not None:
            errors.append({"loc": [spec.name, bad], "msg": "expected a string"})
            return None
    return arr


def _stack(sig: Signature, built: dict[str, np.ndarray]) -> np.ndarray:
    dtypes = {f.dtype for f in sig.inputs}
    dtype = _NUMPY_DTYPES[dtypes.pop()] if len(dtypes) == 1 else np.float64
    return np.column_stack([built[name].astype(dtype, copy=False) for name in sig.names])


def _summarise(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "input does not match the model's signature: " + "; ".join(parts) + more


__all__ = ["OUTPUT_NAMES", "FieldSpec", "Layout", "Signature", "dtype_name"]
