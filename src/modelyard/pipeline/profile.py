"""Reference statistics of the training data, stored with each version for later drift checks.

``profile(X)`` describes what a model was trained on, compactly enough to live in the registry
row (about 3 KB per numeric feature): per numeric feature its moments, quantiles, a 20-bin
histogram and a uniform sample of up to 1,000 values; per categorical feature its value counts;
for images and other tensors per-channel moments and a sample of rows reduced to 64 dimensions
by a seeded random projection (:func:`project` applies the same one to live data) and the
distributions of per-row mean and standard deviation; for text the length and token-count
distributions, the frequent tokens and a sample of rows embedded by :func:`embed_text` (a
hashed bag of words that live data can be embedded with too, without the training vocabulary).

Samples are stored as 16-bit codes between their min and max, base64-encoded (relative error
below 1e-5 of the range); :func:`decode_sample` turns them back into floats.
"""

from __future__ import annotations

import base64
import zlib
from collections import Counter
from typing import Any

import numpy as np

QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100)
SAMPLE_SIZE = 1000
TENSOR_ROWS = 500
EMBED_DIMS = 64
TEXT_DIMS = 64
TOP_VALUES = 100
#: 2-D arrays wider than this are profiled as tensors (pixels, embeddings), not per feature.
MAX_TABLE_FEATURES = 256


def profile(X: Any, *, seed: int = 0) -> dict[str, Any]:
    """JSON-ready reference statistics of training features ``X`` (DataFrame, array or texts)."""
    rng = np.random.default_rng(seed)
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        features = {str(c): _column(X[c], rng) for c in X.columns}
        return _table(len(X), features)
    if _is_text(X):
        return _text(list(X), rng)
    arr = np.asarray(X)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim == 2 and arr.shape[1] <= MAX_TABLE_FEATURES:
        features = {f"f{i}": _column(arr[:, i], rng) for i in range(arr.shape[1])}
        return _table(len(arr), features)
    return _tensor(arr, rng, seed)


def decode_sample(encoded: dict[str, Any]) -> np.ndarray:
    """The float values of a sample stored by :func:`profile` (``shape`` restored if any)."""
    codes = np.frombuffer(base64.b64decode(encoded["codes"]), dtype="<u2").astype(float)
    lo, hi = float(encoded["lo"]), float(encoded["hi"])
    values = lo + codes / 65535.0 * (hi - lo)
    return values.reshape(encoded["shape"]) if "shape" in encoded else values


def project(X: Any, embedding: dict[str, Any]) -> np.ndarray:
    """Reduce tensor rows with the projection recorded in a profile's ``embedding``."""
    rows = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    if rows.shape[1] != embedding["in_dim"]:
        raise ValueError(f"rows have {rows.shape[1]} values, the profile {embedding['in_dim']}")
    return rows @ _projection(embedding["in_dim"], embedding["out_dim"], embedding["seed"])


def embed_text(texts: Any, dims: int = TEXT_DIMS) -> np.ndarray:
    """Hashed bag-of-words vectors of ``texts``, one L2-normalised row of ``dims`` floats each.

    Tokens are the lowercase whitespace-split words, as in the profile's token counts. Each goes
    to a column and a sign chosen by its CRC-32 (stable across processes and machines, unlike
    ``hash()``); the sign keeps colliding tokens from piling up in one direction. Missing or
    empty texts give a zero row.
    """
    texts = list(texts)
    slots: dict[str, tuple[int, float]] = {}  # a token is hashed once per call, not per use
    rows: list[int] = []
    cols: list[int] = []
    signs: list[float] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        for token in text.lower().split():
            slot = slots.get(token)
            if slot is None:
                code = zlib.crc32(token.encode("utf-8"))
                slot = slots[token] = (code % dims, 1.0 if code & 0x80000000 else -1.0)
            rows.append(i)
            cols.append(slot[0])
            signs.append(slot[1])
    flat = np.asarray(rows, dtype=np.int64) * dims + np.asarray(cols, dtype=np.int64)
    out = np.bincount(flat, weights=np.asarray(signs, dtype=np.float64),
                      minlength=len(texts) * dims).astype(np.float64, copy=False)
    out = out.reshape(len(texts), dims)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


# -- tables -------------------------------------------------------------------------------------
def _table(rows: int, features: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "kind": "table", "rows": rows, "quantile_levels": list(QUANTILES),
            "features": features}


def _column(values: Any, rng: np.random.Generator) -> dict[str, Any]:
    if hasattr(values, "to_numpy"):  # a pandas column; nullable ints hold pd.NA, not NaN
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        if is_numeric_dtype(values.dtype) and not is_bool_dtype(values.dtype):
            return _numeric(values.to_numpy(dtype=float, na_value=np.nan), rng)
        return _categorical(values.to_numpy())
    arr = np.asarray(values)
    if arr.dtype.kind in "iuf":
        return _numeric(arr.astype(float), rng)
    return _categorical(arr)


def _numeric(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    present = values[np.isfinite(values)]
    out: dict[str, Any] = {"type": "numeric", "count": int(present.size),
                           "missing": int(values.size - present.size)}
    if not present.size:
        return out
    counts, edges = np.histogram(present, bins=20)
    sample = present if present.size <= SAMPLE_SIZE else rng.choice(present, SAMPLE_SIZE,
                                                                      replace=False)
    return {
        **out,
        "mean": _r(present.mean()),
        "std": _r(present.std()),
        "min": _r(present.min()),
        "max": _r(present.max()),
        "quantiles": [_r(q) for q in np.percentile(present, QUANTILES)],
        "histogram": {"edges": [_r(e) for e in edges], "counts": counts.tolist()},
        "sample": _encode(sample),
    }


def _categorical(values: np.ndarray) -> dict[str, Any]:
    import pandas as pd

    series = pd.Series(values, dtype=object)
    missing = int(series.isna().sum())
    counts = series.dropna().map(str).value_counts()
    top = counts.iloc[:TOP_VALUES]
    return {"type": "categorical", "count": int(counts.sum()), "missing": missing,
            "unique": len(counts), "values": {str(k): int(v) for k, v in top.items()},
            "other": int(counts.iloc[TOP_VALUES:].sum())}


# -- text ---------------------------------------------------------------------------------------
def _is_text(X: Any) -> bool:
    if isinstance(X, np.ndarray):
        if X.ndim != 1 or X.dtype.kind not in "OUT":
            return False
        head = X[:100].tolist()
    elif isinstance(X, list | tuple):
        head = list(X[:100])
    else:
        return False
    return bool(head) and all(isinstance(s, str) for s in head if s is not None)


def _text(texts: list[Any], rng: np.random.Generator) -> dict[str, Any]:
    present = [t for t in texts if isinstance(t, str)]
    tokens = Counter(tok for t in present for tok in t.lower().split())
    return {
        "version": 1, "kind": "text", "rows": len(texts), "missing": len(texts) - len(present),
        "quantile_levels": list(QUANTILES),
        "length": _numeric(np.array([len(t) for t in present], dtype=float), rng),
        "tokens": _numeric(np.array([len(t.split()) for t in present], dtype=float), rng),
        "vocabulary": len(tokens),
        "top_tokens": dict(tokens.most_common(TOP_VALUES)),
        **({"embedding": _text_embedding(present, rng)} if present else {}),
    }


def _text_embedding(texts: list[str], rng: np.random.Generator) -> dict[str, Any]:
    # Drawn after the length and token samples, so those stay what older versions stored.
    pick = np.sort(rng.choice(len(texts), min(len(texts), TENSOR_ROWS), replace=False))
    vectors = embed_text([texts[i] for i in pick], TEXT_DIMS)
    return {"method": "hashed-words", "dims": TEXT_DIMS, "rows": len(pick),
            "mean": [_r(v) for v in vectors.mean(axis=0)],
            "std": [_r(v) for v in vectors.std(axis=0)], "sample": _encode(vectors)}


# -- tensors ------------------------------------------------------------------------------------
def _tensor(arr: np.ndarray, rng: np.random.Generator, seed: int) -> dict[str, Any]:
    data = arr.astype(np.float32, copy=False)
    axis = _channel_axis(data.shape)
    if axis is None:
        mean, std = [_r(data.mean())], [_r(data.std())]
    else:
        moved = np.moveaxis(data, axis, -1).reshape(-1, data.shape[axis])
        mean, std = [_r(v) for v in moved.mean(axis=0)], [_r(v) for v in moved.std(axis=0)]
    pick = np.sort(rng.choice(len(data), min(len(data), TENSOR_ROWS), replace=False))
    in_dim = int(np.prod(data.shape[1:]))
    out_dim = min(EMBED_DIMS, in_dim)
    embedding: dict[str, Any] = {"seed": seed, "in_dim": in_dim, "out_dim": out_dim}
    reduced = project(data[pick], embedding)
    embedding.update(rows=len(pick), mean=[_r(v) for v in reduced.mean(axis=0)],
                     std=[_r(v) for v in reduced.std(axis=0)], sample=_encode(reduced))
    # Per-row brightness and contrast, drawn after the embedding's rows so that stays as it was.
    means, stds = _row_moments(data.reshape(len(data), -1))
    row_mean, row_std = _numeric(means, rng), _numeric(stds, rng)
    return {"version": 1, "kind": "tensor", "rows": len(arr), "shape": list(arr.shape[1:]),
            "dtype": str(arr.dtype), "channel_axis": axis,
            "channels": {"mean": mean, "std": std}, "embedding": embedding,
            "row_mean": row_mean, "row_std": row_std}


def _row_moments(flat: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    # In chunks: std in float64 over a whole image set would copy it all at twice the size.
    means, stds = np.empty(len(flat)), np.empty(len(flat))
    for start in range(0, len(flat), chunk):
        part = flat[start:start + chunk]
        means[start:start + chunk] = part.mean(axis=1, dtype=np.float64)
        stds[start:start + chunk] = part.std(axis=1, dtype=np.float64)
    return means, stds


def _channel_axis(shape: tuple[int, ...]) -> int | None:
    """Channels last (NHWC, Keras) or first (NCHW, PyTorch) for image batches; None otherwise."""
    if len(shape) != 4:
        return None
    if shape[-1] <= 4:
        return 3
    return 1 if shape[1] <= 4 else None


def _projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    if in_dim == out_dim:  # small rows are kept as they are
        return np.eye(in_dim, dtype=np.float32)
    gen = np.random.default_rng(seed)
    return gen.standard_normal((in_dim, out_dim), dtype=np.float32) / np.float32(np.sqrt(out_dim))


# -- encoding -----------------------------------------------------------------------------------
def _encode(values: np.ndarray) -> dict[str, Any]:
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values, dtype=float)
    codes = np.round(np.asarray(scaled, dtype=float) * 65535).astype("<u2")
    out: dict[str, Any] = {"n": int(values.shape[0]), "lo": lo, "hi": hi,
                           "codes": base64.b64encode(codes.tobytes()).decode("ascii")}
    if values.ndim > 1:
        out["shape"] = list(values.shape)
    return out


def _r(value: Any) -> float:
    """A float rounded to 7 significant digits: exact enough for drift, short in JSON."""
    return float(f"{float(value):.7g}")


__all__ = ["QUANTILES", "TEXT_DIMS", "decode_sample", "embed_text", "profile", "project"]
