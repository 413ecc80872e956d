"""What the prediction log keeps of a request's inputs, and the drift check's data rebuilt from it.

:func:`summarize` turns the batch a request became (what :meth:`Signature.prepare` returned) into
a compact, JSON-ready record, shaped by the version's reference profile:

- tables: ``{"columns": {name: [values]}}``, floats as floats and missing values as None. A
  field marked ``sensitive`` is left out (``"drop"``) or each value replaced by
  :func:`hash_value` (``"hash"``: equal values still match, for joins); the record lists them
  under ``"dropped"`` and ``"hashed"`` so drift checks skip them.
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
from types import MappingProxyType
from typing import Any

import numpy as np

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
    return _SUMMARIES[_kind(signature, reference)](batch, signature, reference, sensitive,
                                                   hash_key)


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
    stacked = _stack_table(batches, signature, reference) if len(batches) > 1 else None
    if stacked is None:
        for batch in batches:
            yield summarize(batch, signature, reference, sensitive=sensitive, hash_key=hash_key)
        return
    whole = summarize(stacked, signature, reference, sensitive=sensitive, hash_key=hash_key)
    columns = whole.pop("columns")
    start = 0
    for batch in batches:
        end = start + len(batch)
        yield {"columns": {name: values[start:end] for name, values in columns.items()}, **whole}
        start = end


def _stack_table(batches: Sequence[Any], signature: Signature,
                 reference: Mapping[str, Any] | None) -> Any:
    """One table of every batch's rows, or None when they do not stack (then one by one)."""
    if _kind(signature, reference) != "table":
        return None
    if all(isinstance(b, np.ndarray) and b.ndim == 2 for b in batches):
        if len({b.shape[1] for b in batches}) == 1 and len({b.dtype for b in batches}) == 1:
            return np.concatenate(batches)
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
    # The profile decides where there is one: a very wide table is profiled as a tensor.
    if reference is not None and reference.get("kind") in _SUMMARIES:
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
    # a tensor model's one input marked sensitive covers every column it is logged as
    whole = sensitive.get(signature.names[0]) if signature.layout == "tensor" else None
    for name, values in _batch_columns(batch, signature, reference).items():
        action = sensitive.get(name, whole)
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


_SUMMARIES: dict[str, Callable[..., dict[str, Any]]] = {
    "table": _summarize_table,
    "text": _summarize_text,
    "tensor": _summarize_tensor,
}


def _hidden(signature: Signature, sensitive: Mapping[str, str]) -> bool:
    return any(spec.name in sensitive for spec in signature.inputs)


def _batch_columns(batch: Any, signature: Signature,
                   reference: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    if hasattr(batch, "columns") and hasattr(batch, "dtypes"):  # a DataFrame
        return {str(c): batch[c].to_numpy() for c in batch.columns}
    arr = np.asarray(batch)
    if arr.ndim == 1:
        arr = arr[:, None]
    names = _column_names(signature, reference, arr.shape[1] if arr.ndim == 2 else -1)
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise ValueError(f"a batch of shape {arr.shape} does not match the signature's "
                         f"{len(names)} inputs")
    return {name: arr[:, i] for i, name in enumerate(names)}


def _column_names(signature: Signature, reference: Mapping[str, Any] | None,
                  width: int) -> list[str]:
    """The names of a table batch's ``width`` columns: the signature's inputs, or for a tensor
    model's one vector input, the features its training data was profiled as.

    The profile describes any 2-D training array up to ``MAX_TABLE_FEATURES`` wide column by
    column (``f0``, ``f1``, ...), a PyTorch MLP's 256 floats included, while the signature names
    the one tensor input: the log keeps the columns the profile has, so drift checks find them.
    """
    names = signature.names
    features = list((reference or {}).get("features") or ())
    if len(names) == width or signature.layout != "tensor" or len(features) != width:
        return names
    positional = [f"f{i}" for i in range(width)]
    return positional if set(features) == set(positional) else features


def _plain_values(values: np.ndarray) -> list[Any]:
    """A column as plain Python values: floats, ints, bools, strings, None for missing."""
    kind = values.dtype.kind
    if kind in "iub":
        return values.tolist()
    if kind == "f":
        # float32 through its shortest text, so 0.1 is logged as 0.1, not 0.10000000149011612
        as_float = (values if values.dtype == np.float64
                    else values.astype(str).astype(np.float64))
        out = as_float.tolist()
        for i in np.flatnonzero(~np.isfinite(as_float)).tolist():
            out[i] = None
        return out
    return [_plain(v) for v in values.tolist()]


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
    "current_from_log",
    "hash_value",
    "summarize",
    "summarize_many",
]
