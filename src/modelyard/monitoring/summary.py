"""What the prediction log keeps of a request's inputs, and the drift check's data rebuilt from it.

:func:`summarize` turns the batch a request became (what :meth:`Signature.prepare` returned) into
a compact, JSON-ready record, shaped by the version's reference profile:

- tables: ``{"columns": {name: [values]}}``, floats as floats and missing values as None. A
  field marked ``sensitive`` is left out (``"drop"``) or each value replaced by
  :func:`hash_value` (``"hash"``: equal values still match, for joins); the record lists them
  under ``"dropped"`` and ``"hashed"`` so drift checks skip them.
- vectors: a tensor model's one input of ``k`` numbers per row whose training data was
  profiled as a table of ``k`` columns (any 2-D array up to 256 wide, a PyTorch MLP's input
  included): ``{"vectors": [[values], ...]}``, one list per row in the profile's column order,
  rebuilt into those columns for drift checks. Marked sensitive, the values are left out.
- text: per row its length in characters, token count and hashed bag-of-words embedding
  (:func:`~modelyard.pipeline.profile.embed_text`, 4 significant digits), never the text.
- tensors: per row the projection the profile recorded (when there is one) and the row's mean
  and standard deviation, never the values themselves.

For text and tensors, marking the input sensitive also leaves the embedding out.

:func:`current_from_log` concatenates many such records into what
:func:`modelyard.monitoring.drift.compare` takes as ``current``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from modelyard.pipeline.profile import TEXT_DIMS, embed_text, project
from modelyard.schema import Signature

_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
_ACTIONS = ("drop", "hash")
_EMBEDDING_DIGITS = 4
_STAT_DIGITS = 6


def hash_value(value: Any, key: bytes) -> str:
    """A keyed hash of ``value`` (HMAC-SHA256, first 32 hex digits): joins work, values don't show.

    The value's text is hashed, with whole floats written as integers so that ``42`` and
    ``42.0`` (which JSON does not tell apart) match. Pass a secret ``key``: without one, a short
    value can be found again by hashing every candidate.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        data = value
    else:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        data = str(value).encode("utf-8")
    return hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def summarize(batch: Any, signature: Signature, reference: Mapping[str, Any] | None, *,
              sensitive: Mapping[str, str] = _NO_FIELDS, hash_key: bytes = b"") -> dict[str, Any]:
    """What the prediction log keeps of one request's prepared ``batch``: JSON-ready, compact.

    ``reference`` is the version's profile (None if it has none: tensors then keep only their
    per-row statistics); ``sensitive`` maps input names to ``"drop"`` or ``"hash"``.
    """
    bad = {name: action for name, action in sensitive.items() if action not in _ACTIONS}
    if bad:
        raise ValueError(f"sensitive fields must be 'drop' or 'hash', got {bad}")
    return _KINDS[_kind(signature, reference)](batch, signature, reference, sensitive, hash_key)


def summarize_many(batches: Sequence[Any], signature: Signature,
                   reference: Mapping[str, Any] | None, *,
                   sensitive: Mapping[str, str] = _NO_FIELDS,
                   hash_key: bytes = b"") -> Iterator[dict[str, Any]]:
    """:func:`summarize` of each batch, in order, one at a time; tables are converted in one pass.

    The prediction log writes hundreds of one-row requests at a time: stacking their rows and
    converting each column once costs a few microseconds per request instead of one column
    conversion per request and field. Records come one at a time so that a caller which encodes
    each one keeps no more than one alive.
    """
    kind = _kind(signature, reference)
    stacked = _stack_rows(batches, kind) if len(batches) > 1 else None
    if stacked is None:
        for batch in batches:
            yield summarize(batch, signature, reference, sensitive=sensitive, hash_key=hash_key)
        return
    whole = summarize(stacked, signature, reference, sensitive=sensitive, hash_key=hash_key)
    columns = whole.pop("columns", None)
    vectors = whole.pop("vectors", None)
    start = 0
    for batch in batches:
        end = start + len(batch)
        if columns is not None:
            yield {"columns": {name: values[start:end] for name, values in columns.items()},
                   **whole}
        else:
            yield {**({} if vectors is None else {"vectors": vectors[start:end]}), **whole}
        start = end


@dataclass(frozen=True)
class Stacked:
    """Many requests' inputs as :func:`summarize` would keep them, numbers left as arrays: the
    prediction log's compact form of a table or vector (:mod:`~modelyard.monitoring.chunk`).

    ``groups`` pairs names with their values: one name and a 1-D array or a list of plain
    values (a column), or several names and a 2-D array with one column each; for a vector,
    one group ``(["vectors"], rows)``. :func:`unstack` gives back :func:`summarize`'s records.
    """

    kind: str
    #: the rows of each request, in order.
    lengths: list[int]
    groups: list[tuple[list[str], Any]]
    #: ``hashed`` and ``dropped``, as :func:`summarize` lists them.
    extras: dict[str, list[str]]


def summarize_stacked(batches: Sequence[Any], signature: Signature,
                      reference: Mapping[str, Any] | None, *,
                      sensitive: Mapping[str, str] = _NO_FIELDS,
                      hash_key: bytes = b"") -> Stacked | None:
    """:func:`summarize_many` of table or vector inputs without turning numbers into Python
    objects; None for text and tensors, or batches that do not stack (summarise them one by one).
    """
    kind = _kind(signature, reference)
    stacked = _stack_rows(batches, kind)
    if stacked is None:
        return None
    bad = {name: action for name, action in sensitive.items() if action not in _ACTIONS}
    if bad:
        raise ValueError(f"sensitive fields must be 'drop' or 'hash', got {bad}")
    lengths = [len(b) for b in batches]
    if kind == "vector":
        flat = stacked.reshape(len(stacked), -1)
        width = len((reference or {}).get("features") or ())
        if flat.shape[1] != width:
            raise ValueError(f"rows of {flat.shape[1]} values do not match the {width} columns "
                             "the training data was profiled as")
        if _hidden(signature, sensitive):
            return Stacked(kind, lengths, [], {"dropped": ["vectors"]})
        return Stacked(kind, lengths, [(["vectors"], _numeric_or_plain(flat, _plain_rows))], {})
    names = signature.names
    if (isinstance(stacked, np.ndarray) and stacked.ndim == 2 and stacked.dtype.kind in "biuf"
            and stacked.shape[1] == len(names) and not set(sensitive) & set(names)):
        return Stacked(kind, lengths, [(list(names), stacked)], {})  # one matrix, no copies
    groups: list[tuple[list[str], Any]] = []
    extras: dict[str, list[str]] = {}
    for name, values in _batch_columns(stacked, signature).items():
        action = sensitive.get(name)
        if action == "drop":
            extras.setdefault("dropped", []).append(name)
        elif action == "hash":
            extras.setdefault("hashed", []).append(name)
            groups.append(([name], [None if _missing(v) else hash_value(v, hash_key)
                                    for v in values.tolist()]))
        else:
            groups.append(([name], _numeric_or_plain(values, _plain_values)))
    return Stacked(kind, lengths, groups, {k: extras[k] for k in ("hashed", "dropped")
                                           if k in extras})


def unstack(stacked: Stacked) -> Iterator[dict[str, Any]]:
    """The records :func:`summarize` makes of each request, from :func:`summarize_stacked`'s,
    one at a time (a caller that encodes each keeps no more than one alive)."""
    columns: dict[str, list[Any]] = {}
    for names, values in stacked.groups:
        if isinstance(values, np.ndarray) and values.ndim == 2 and stacked.kind == "table":
            columns.update(zip(names, _plain_floats(values.T) if values.dtype.kind == "f"
                               else values.T.tolist(), strict=True))
        elif isinstance(values, np.ndarray):
            columns[names[0]] = (_plain_rows(values) if values.ndim == 2
                                 else _plain_values(values))
        else:
            columns[names[0]] = values
    start = 0
    for n in stacked.lengths:
        end = start + n
        part = {name: values[start:end] for name, values in columns.items()}
        yield ({**part, **stacked.extras} if stacked.kind == "vector"
               else {"columns": part, **stacked.extras})
        start = end


def _numeric_or_plain(values: np.ndarray, plain: Callable[[np.ndarray], list[Any]]) -> Any:
    """Numbers stay an array (the log packs them as bytes); other values become plain ones."""
    return values if values.dtype.kind in "biuf" else plain(values)


def _stack_rows(batches: Sequence[Any], kind: str) -> Any:
    """One table (or matrix) of every batch's rows, or None when they do not stack (then one
    by one): text and tensors are summarised per row anyway."""
    if kind not in ("table", "vector"):
        return None
    if set(map(type, batches)) == {np.ndarray}:
        if batches[0].ndim != 2 or len(set(map(attrgetter("dtype"), batches))) != 1:
            return None
        try:
            return np.concatenate(batches)  # other widths or dimensions: ValueError
        except ValueError:
            return None
    if all(hasattr(b, "columns") and hasattr(b, "iloc") for b in batches):
        import pandas as pd

        first = list(batches[0].columns)
        if all(list(b.columns) == first for b in batches):
            return pd.concat(list(batches), ignore_index=True)
    return None


def current_from_log(inputs: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> Any:
    """Concatenate logged :func:`summarize` records into the ``current`` data of a drift check.

    A DataFrame for table profiles (without the columns any record hashed or dropped), a dict
    of arrays for text (``length``, ``tokens``, ``embedding``) and tensors (``embedding``,
    ``row_mean``, ``row_std``); records without a part add no rows to it.
    """
    kind = reference.get("kind")
    if kind not in _REBUILDS:
        raise ValueError(f"reference has kind {kind!r}; expected one of {sorted(_REBUILDS)}")
    return _REBUILDS[kind]([s for s in inputs if isinstance(s, Mapping)], reference)


def _kind(signature: Signature, reference: Mapping[str, Any] | None) -> str:
    # The profile decides where there is one: a very wide table is profiled as a tensor, and a
    # tensor model's vector input up to 256 wide as a table (logged as "vector" rows).
    if reference is not None and reference.get("kind") in _SUMMARIES:
        if reference["kind"] == "table" and signature.layout == "tensor":
            return "vector"
        return str(reference["kind"])
    if signature.layout == "table":
        return "table"
    return "text" if signature.inputs[0].dtype == "string" else "tensor"


# -- summaries ----------------------------------------------------------------------------------
def _summarize_table(batch: Any, signature: Signature, reference: Mapping[str, Any] | None,
                     sensitive: Mapping[str, str], hash_key: bytes) -> dict[str, Any]:
    columns: dict[str, list[Any]] = {}
    hashed: list[str] = []
    dropped: list[str] = []
    for name, values in _batch_columns(batch, signature).items():
        action = sensitive.get(name)
        if action == "drop":
            dropped.append(name)
        elif action == "hash":
            hashed.append(name)
            columns[name] = [None if _missing(v) else hash_value(v, hash_key)
                             for v in values.tolist()]
        else:
            columns[name] = _plain_values(values)
    out: dict[str, Any] = {"columns": columns}
    if hashed:
        out["hashed"] = hashed
    if dropped:
        out["dropped"] = dropped
    return out


def _summarize_text(batch: Any, signature: Signature, reference: Mapping[str, Any] | None,
                    sensitive: Mapping[str, str], hash_key: bytes) -> dict[str, Any]:
    texts = [t for t in np.asarray(batch, dtype=object).ravel().tolist() if isinstance(t, str)]
    out: dict[str, Any] = {"length": [len(t) for t in texts],
                           "tokens": [len(t.split()) for t in texts]}
    if _hidden(signature, sensitive):
        out["dropped"] = ["embedding"]
        return out
    spec = (reference or {}).get("embedding") or {}
    vectors = embed_text(texts, int(spec.get("dims", TEXT_DIMS)))
    out["embedding"] = _round_sig(vectors, _EMBEDDING_DIGITS)
    return out


def _summarize_tensor(batch: Any, signature: Signature, reference: Mapping[str, Any] | None,
                      sensitive: Mapping[str, str], hash_key: bytes) -> dict[str, Any]:
    arr = np.asarray(batch)
    flat = arr.reshape(len(arr), -1)
    out: dict[str, Any] = {
        "row_mean": _round_sig(flat.mean(axis=1, dtype=np.float64), _STAT_DIGITS),
        "row_std": _round_sig(flat.std(axis=1, dtype=np.float64), _STAT_DIGITS),
    }
    spec = (reference or {}).get("embedding")
    if spec and _hidden(signature, sensitive):
        out["dropped"] = ["embedding"]
    elif spec:
        out["embedding"] = _round_sig(project(arr, spec), _EMBEDDING_DIGITS)
    return out


def _summarize_vector(batch: Any, signature: Signature, reference: Mapping[str, Any] | None,
                      sensitive: Mapping[str, str], hash_key: bytes) -> dict[str, Any]:
    flat = np.asarray(batch).reshape(len(batch), -1)
    width = len((reference or {}).get("features") or ())
    if flat.shape[1] != width:
        raise ValueError(f"rows of {flat.shape[1]} values do not match the {width} columns the "
                         "training data was profiled as")
    if _hidden(signature, sensitive):
        return {"dropped": ["vectors"]}
    return {"vectors": _plain_rows(flat)}


_SUMMARIES: dict[str, Callable[..., dict[str, Any]]] = {
    "table": _summarize_table,
    "text": _summarize_text,
    "tensor": _summarize_tensor,
}
#: kinds a summary may take; "vector" only where the profile is a table and the signature a tensor.
_KINDS: dict[str, Callable[..., dict[str, Any]]] = {**_SUMMARIES, "vector": _summarize_vector}


def _hidden(signature: Signature, sensitive: Mapping[str, str]) -> bool:
    return any(spec.name in sensitive for spec in signature.inputs)


def _batch_columns(batch: Any, signature: Signature) -> dict[str, np.ndarray]:
    if hasattr(batch, "columns") and hasattr(batch, "dtypes"):  # a DataFrame
        return {str(c): batch[c].to_numpy() for c in batch.columns}
    arr = np.asarray(batch)
    if arr.ndim == 1:
        arr = arr[:, None]
    names = signature.names
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise ValueError(f"a batch of shape {arr.shape} does not match the signature's "
                         f"{len(names)} inputs")
    return {name: arr[:, i] for i, name in enumerate(names)}


def _plain_values(values: np.ndarray) -> list[Any]:
    """A column as plain Python values: floats, ints, bools, strings, None for missing."""
    kind = values.dtype.kind
    if kind in "iub":
        return values.tolist()
    if kind == "f":
        return _plain_floats(values)
    return [_plain(v) for v in values.tolist()]


def _plain_rows(rows: np.ndarray) -> list[Any]:
    """A 2-D array's rows as lists of plain values (as :func:`_plain_values` makes them)."""
    kind = rows.dtype.kind
    if kind in "iub":
        return rows.tolist()
    if kind == "f":
        return _plain_floats(rows)
    return [[_plain(v) for v in row] for row in rows.tolist()]


def _plain_floats(values: np.ndarray) -> Any:
    """Floats as (nested) lists, None where not finite; float32 through its shortest text, so
    0.1 is logged as 0.1, not 0.10000000149011612. One orjson round trip does both, about ten
    times faster than formatting the values as strings."""
    return orjson.loads(orjson.dumps(np.ascontiguousarray(values),
                                     option=orjson.OPT_SERIALIZE_NUMPY))


def _plain(value: Any) -> Any:
    if _missing(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)  # datetimes, decimals and the like: their text is what a log can keep


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(value)
    if isinstance(value, str | bytes | bool | int | np.integer | np.bool_):
        return False
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # containers: not a missing scalar
        return False


def _round_sig(values: Any, digits: int) -> list[Any]:
    """Values rounded to ``digits`` significant digits, as (nested) lists; None where not finite.

    Rounding keeps the JSON short: the digits past it are noise to a drift test.
    """
    arr = np.array(values, dtype=np.float64)
    finite = np.isfinite(arr)
    x = arr[finite & (arr != 0)]
    exponent = digits - 1 - np.floor(np.log10(np.abs(x))).astype(np.int64)
    # Scale by exact powers of ten (never by 0.1, which binary floats cannot hold), and leave
    # the extremes, whose power of ten would overflow, as they are.
    up = (exponent >= 0) & (exponent <= 300)
    down = (exponent < 0) & (exponent >= -300)
    x[up] = np.round(x[up] * 10.0 ** exponent[up]) / 10.0 ** exponent[up]
    x[down] = np.round(x[down] / 10.0 ** -exponent[down]) * 10.0 ** -exponent[down]
    arr[finite & (arr != 0)] = x
    if finite.all():
        return arr.tolist()
    out = arr.astype(object)
    out[~finite] = None
    return out.tolist()


# -- rebuilding current data --------------------------------------------------------------------
def _rebuild_table(summaries: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> Any:
    import pandas as pd

    specs: Mapping[str, Any] = reference.get("features", {})
    summaries = [_as_columns(s, specs) if "vectors" in s else s for s in summaries]
    skipped = {name for s in summaries for key in ("hashed", "dropped") for name in s.get(key, ())}
    logged = {name for s in summaries for name in s.get("columns", {})}
    names = [name for name in specs if name in logged and name not in skipped]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    rows = 0
    for s in summaries:
        logged_columns = s.get("columns", {})
        size = max((len(v) for v in logged_columns.values()), default=0)
        for name in names:
            columns[name].extend(logged_columns.get(name) or [None] * size)
        rows += size
    frame = {name: _rebuilt_column(values, specs[name]) for name, values in columns.items()}
    return pd.DataFrame(frame, index=pd.RangeIndex(rows))


def _as_columns(summary: Mapping[str, Any], features: Mapping[str, Any]) -> dict[str, Any]:
    """A ``vectors`` record as the table record of the profile's columns (``f0``, ``f1``, ...
    by position, as :func:`~modelyard.pipeline.profile.profile` names an array's columns)."""
    names = [f"f{i}" for i in range(len(features))]
    if set(names) != set(features):
        names = list(features)
    rows = summary["vectors"]
    return {"columns": {name: [row[i] for row in rows] for i, name in enumerate(names)}}


def _rebuilt_column(values: list[Any], spec: Mapping[str, Any]) -> Any:
    if spec.get("type") == "numeric":
        try:
            return np.array(values, dtype=np.float64)  # None becomes NaN
        except (TypeError, ValueError):
            import pandas as pd

            return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy()
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _rebuild_text(summaries: Sequence[Mapping[str, Any]],
                  reference: Mapping[str, Any]) -> dict[str, Any]:
    spec = reference.get("embedding") or {}
    return {"length": _joined(summaries, "length"), "tokens": _joined(summaries, "tokens"),
            "embedding": _stacked(summaries, int(spec.get("dims", TEXT_DIMS)))}


def _rebuild_tensor(summaries: Sequence[Mapping[str, Any]],
                    reference: Mapping[str, Any]) -> dict[str, Any]:
    spec = reference.get("embedding") or {}
    return {"embedding": _stacked(summaries, int(spec.get("out_dim", 0))),
            "row_mean": _joined(summaries, "row_mean"), "row_std": _joined(summaries, "row_std")}


_REBUILDS: dict[str, Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], Any]] = {
    "table": _rebuild_table,
    "text": _rebuild_text,
    "tensor": _rebuild_tensor,
}


def _joined(summaries: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    values = [v for s in summaries for v in (s.get(key) or ())]
    return np.array(values, dtype=np.float64)  # None becomes NaN


def _stacked(summaries: Sequence[Mapping[str, Any]], dims: int) -> np.ndarray:
    rows = [row for s in summaries for row in (s.get("embedding") or ())]
    if not rows:
        return np.empty((0, dims))
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        widths = sorted({len(r) for r in rows})
        raise ValueError(f"logged embeddings have different widths {widths}; compare the "
                         "records of one version at a time") from None


__all__ = [
    "Stacked",
    "current_from_log",
    "hash_value",
    "summarize",
    "summarize_many",
    "summarize_stacked",
    "unstack",
]
