"""Drift statistics and reports: how far live inputs have moved from a version's training data.

:func:`compare` takes the reference statistics that :func:`modelyard.pipeline.profile.profile`
stored with a version and the current data (a DataFrame, texts, tensor rows, or what
:func:`modelyard.monitoring.summary.current_from_log` rebuilt from the prediction log) and returns
a :class:`DriftReport`: a :class:`FeatureDrift` per feature, one for the embedding of texts and
tensors, the share of drifted features and the verdict. Everything here is pure: data in, data out.

The test of each feature is picked by :func:`choose_test` from its kind and sample sizes, or
forced with ``numeric_test=`` / ``categorical_test=``:

========================  ==============================  ========================================
feature                   test                            drifted when (``DEFAULT_THRESHOLDS``)
========================  ==============================  ========================================
numeric, <= 1,000 rows    Kolmogorov-Smirnov              p < 0.05
numeric, more rows        Wasserstein-1 / reference std   above 0.1
numeric, on request       PSI over reference quantiles    above 0.2
categorical, <= 1,000     chi-squared homogeneity         p < 0.05
categorical, more rows    Jensen-Shannon distance, base 2 above 0.1
embedding (text, tensor)  MMD, RBF kernel, permutations   p < 0.05
========================  ==============================  ========================================

Large samples make every p-value tiny, so past 1,000 rows the verdict moves to distances.

A numeric reference keeps a sample of 1,000 values, and KS and Wasserstein compare the current
values with that sample exactly, without sorting them: see :mod:`modelyard.monitoring.ecdf`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.monitoring.ecdf import Grid, ks_p_value
from modelyard.pipeline.profile import decode_sample, embed_text, project

#: default threshold per test: a significance level for p-value tests, a distance otherwise.
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "ks": 0.05, "wasserstein": 0.1, "psi": 0.2,
    "chi2": 0.05, "jensen_shannon": 0.1, "mmd": 0.05,
}
#: tests whose verdict is ``p_value < threshold``; the others drift when ``score > threshold``.
P_VALUE_TESTS = frozenset({"ks", "chi2", "mmd"})
#: up to this many rows (the smaller side) a feature gets a hypothesis test, past it a distance.
SMALL_SAMPLE = 1000
MMD_ROWS = 500
MMD_PERMUTATIONS = 200

_CHOICES: dict[str, tuple[str, str]] = {  # kind -> (small-sample test, large-sample test)
    "numeric": ("ks", "wasserstein"),
    "categorical": ("chi2", "jensen_shannon"),
    "embedding": ("mmd", "mmd"),
}
_PSI_FLOOR = 1e-4  # an empty bin would make PSI infinite


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one feature: which test ran, its score, and whether it crossed the threshold."""

    name: str
    kind: str
    test: str
    score: float
    threshold: float
    p_value: float | None
    drifted: bool
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"name": self.name, "kind": self.kind, "test": self.test, "score": self.score,
                "threshold": self.threshold, "p_value": self.p_value, "drifted": self.drifted,
                "rows": self.rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureDrift:
        """Rebuild a feature's drift stored by :meth:`to_dict`."""
        p_value = d.get("p_value")
        return cls(str(d["name"]), str(d["kind"]), str(d["test"]), float(d["score"]),
                   float(d["threshold"]), None if p_value is None else float(p_value),
                   bool(d["drifted"]), int(d["rows"]))


@dataclass(frozen=True)
class DriftReport:
    """Drift of every feature (and the embedding) and the dataset verdict: ``share >= drift_share``.

    ``share`` counts the features that could be tested (``rows > 0``) with the embedding as one
    more; a feature whose current values are all missing is listed but not counted.
    """

    rows: int
    features: dict[str, FeatureDrift]
    embedding: FeatureDrift | None
    share: float
    drifted: bool
    drift_share: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (plain floats, ints, strings, booleans and None)."""
        return {"rows": self.rows, "share": self.share, "drifted": self.drifted,
                "drift_share": self.drift_share,
                "features": {name: f.to_dict() for name, f in self.features.items()},
                "embedding": None if self.embedding is None else self.embedding.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftReport:
        """Rebuild a report stored by :meth:`to_dict`."""
        embedding = d.get("embedding")
        return cls(int(d["rows"]),
                   {str(k): FeatureDrift.from_dict(v) for k, v in d["features"].items()},
                   None if embedding is None else FeatureDrift.from_dict(embedding),
                   float(d["share"]), bool(d["drifted"]), float(d["drift_share"]))


# -- the tests, on plain arrays -----------------------------------------------------------------
def choose_test(kind: str, n_ref: int, n_cur: int) -> str:
    """The test :func:`compare` runs for a ``kind`` of feature with these sample sizes.

    A hypothesis test while the smaller sample has at most :data:`SMALL_SAMPLE` rows (its power
    is bounded by that side), a distance past it, where any tiny difference becomes significant.
    """
    if kind not in _CHOICES:
        raise ValueError(f"unknown feature kind {kind!r}; expected one of {sorted(_CHOICES)}")
    small, large = _CHOICES[kind]
    return small if min(n_ref, n_cur) <= SMALL_SAMPLE else large


def ks_test(ref: Any, cur: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (scipy's ``method="asymp"``)."""
    grid = Grid(_finite(ref, "ref"))
    counts = grid.count(_finite(cur, "cur"))
    d = counts.ks()
    return d, ks_p_value(d, grid.size, counts.n)


def wasserstein_distance(ref: Any, cur: Any) -> float:
    """Wasserstein-1 (earth mover's) distance between two samples, in the values' units."""
    return Grid(_finite(ref, "ref")).count(_finite(cur, "cur")).wasserstein()


def psi(ref: Any, cur: Any, *, edges: Any = None) -> float:
    """Population stability index of ``cur`` against ``ref``, binned at ``edges``.

    The default edges are the deciles of ``ref``; bins are ``[edge, next edge)`` and the outer
    two are open-ended. Empty bins count as a share of 1e-4 so the index stays finite.
    """
    ref_arr, cur_arr = _finite(ref, "ref"), _finite(cur, "cur")
    if edges is None:
        edges = np.unique(np.quantile(ref_arr, np.linspace(0.1, 0.9, 9)))
    cuts = np.sort(np.asarray(edges, dtype=float))
    return psi_counts(_bin_counts(cuts, ref_arr), _bin_counts(cuts, cur_arr))


def psi_counts(ref_counts: Any, cur_counts: Any) -> float:
    """Population stability index from counts of the same bins."""
    p, q = _shares(ref_counts, cur_counts)
    p, q = np.maximum(p, _PSI_FLOOR), np.maximum(q, _PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def chi_squared(ref_counts: Any, cur_counts: Any) -> tuple[float, float]:
    """Chi-squared test that two samples of categories (counts per category) share one law.

    Categories absent from both are ignored; one the reference never saw still counts (its
    expected frequency comes from both samples together). Returns ``(statistic, p_value)``.
    """
    from scipy.stats import chi2

    table = np.vstack(_shares(ref_counts, cur_counts, normalise=False))
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return stat, float(chi2.sf(stat, table.shape[1] - 1))


def jensen_shannon(ref_counts: Any, cur_counts: Any) -> float:
    """Jensen-Shannon distance (base 2, between 0 and 1) of two category distributions."""
    p, q = _shares(ref_counts, cur_counts)
    m = (p + q) / 2
    divergence = (_kl_bits(p, m) + _kl_bits(q, m)) / 2
    return float(math.sqrt(min(max(divergence, 0.0), 1.0)))


def mmd(ref: Any, cur: Any, *, permutations: int = MMD_PERMUTATIONS, max_rows: int = MMD_ROWS,
        seed: int = 0) -> tuple[float, float]:
    """Maximum mean discrepancy of two sets of vectors and its permutation-test p-value.

    An RBF kernel whose bandwidth is the median distance between all rows (the median
    heuristic); each side is capped at ``max_rows`` rows drawn with ``seed``, so the cost is
    bounded. Returns ``(MMD², p_value)``, MMD² being the biased (V-statistic) estimate.
    """
    x, y = _rows(ref, "ref"), _rows(cur, "cur")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cur has vectors of {y.shape[1]} values, ref of {x.shape[1]}")
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_rows, rng), _subsample(y, max_rows, rng)
    z = np.vstack([x, y])
    norms = np.einsum("ij,ij->i", z, z)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (z @ z.T), 0.0)
    upper = sq[np.triu_indices(len(z), 1)]
    width = float(np.median(upper)) if upper.size else 0.0
    if width <= 0.0:  # mostly identical rows: fall back to the typical non-zero distance
        positive = upper[upper > 0]
        width = float(positive.mean()) if positive.size else 1.0
    kernel = np.exp(-sq / (2.0 * width))
    weights = np.concatenate([np.full(len(x), 1.0 / len(x)), np.full(len(y), -1.0 / len(y))])
    stat = float(weights @ kernel @ weights)
    shuffled = rng.permuted(np.tile(weights, (permutations, 1)), axis=1).T
    null = np.einsum("ip,ip->p", shuffled, kernel @ shuffled)
    # The tolerance keeps float noise from ranking identical statistics apart.
    extreme = int(np.sum(null >= stat - 1e-12 * max(abs(stat), 1.0)))
    return max(stat, 0.0), (1 + extreme) / (1 + permutations)


# -- comparing with a profile -------------------------------------------------------------------
def compare(reference: Mapping[str, Any], current: Any, *, drift_share: float = 0.5,
            thresholds: Mapping[str, float] | None = None, numeric_test: str = "auto",
            categorical_test: str = "auto", seed: int = 0) -> DriftReport:
    """Compare ``current`` data with a version's ``reference`` profile; returns a drift report.

    ``current`` is, for a table profile, a DataFrame, a dict of columns or a 2-D array (columns
    the reference has but ``current`` lacks are skipped: dropped or hashed fields); for text,
    the texts or the dict of :func:`~modelyard.monitoring.summary.current_from_log`; for tensors,
    the raw rows or ``{"embedding": rows already projected}`` (with ``row_mean``/``row_std``).
    ``thresholds`` overrides :data:`DEFAULT_THRESHOLDS` per test name; ``numeric_test`` and
    ``categorical_test`` force one test (``"auto"``: :func:`choose_test`).
    """
    if not 0.0 <= drift_share <= 1.0:
        raise ValueError(f"drift_share must be between 0 and 1, got {drift_share}")
    unknown = set(thresholds or {}) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown tests in thresholds: {sorted(unknown)}; "
                         f"expected some of {sorted(DEFAULT_THRESHOLDS)}")
    _check_choice("numeric_test", numeric_test, _NUMERIC_TESTS)
    _check_choice("categorical_test", categorical_test, _CATEGORICAL_TESTS)
    kind = reference.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"reference has kind {kind!r}; expected a profile of kind "
                         f"{', '.join(sorted(_KINDS))} (modelyard.pipeline.profile.profile)")
    options = _Options({**DEFAULT_THRESHOLDS, **(thresholds or {})}, numeric_test,
                       categorical_test, seed)
    rows, features, embedding = _KINDS[kind](reference, current, options)
    tested = [f for f in features.values() if f.rows > 0]
    if embedding is not None and embedding.rows > 0:
        tested.append(embedding)
    share = sum(f.drifted for f in tested) / len(tested) if tested else 0.0
    return DriftReport(rows, features, embedding, share, bool(tested) and share >= drift_share,
                       drift_share)


@dataclass(frozen=True)
class _Options:
    thresholds: Mapping[str, float]
    numeric_test: str
    categorical_test: str
    seed: int


def _check_choice(name: str, value: str, tests: Mapping[str, Any]) -> None:
    if value != "auto" and value not in tests:
        raise ValueError(f"{name} must be 'auto' or one of {sorted(tests)}, got {value!r}")


def _compare_table(reference: Mapping[str, Any], current: Any,
                   options: _Options) -> tuple[int, dict[str, FeatureDrift], None]:
    specs: Mapping[str, Any] = reference["features"]
    columns, rows = _columns(current, list(specs))
    if rows == 0:
        raise ValueError("current data has no rows; a drift check needs at least one")
    features = {name: _FEATURES[spec["type"]](name, spec, columns[name], options)
                for name, spec in specs.items() if name in columns}
    if not features:
        shown = ", ".join(list(specs)[:5]) + (", ..." if len(specs) > 5 else "")
        raise ValueError(f"current data has none of the reference's features ({shown}); "
                         "were they all dropped or hashed?")
    return rows, features, None


def _compare_text(reference: Mapping[str, Any], current: Any,
                  options: _Options) -> tuple[int, dict[str, FeatureDrift], FeatureDrift | None]:
    spec = reference.get("embedding")
    if isinstance(current, Mapping):
        length, tokens = current.get("length"), current.get("tokens")
        vectors = current.get("embedding")
    else:
        texts = [t for t in current if isinstance(t, str)]
        length = np.array([len(t) for t in texts], dtype=float)
        tokens = np.array([len(t.split()) for t in texts], dtype=float)
        vectors = embed_text(texts, spec["dims"]) if spec else None
    rows = max(_length(length), _length(vectors))
    if rows == 0:
        raise ValueError("current data has no texts; a drift check needs at least one")
    features = {name: _numeric_drift(name, reference[name], values, options)
                for name, values in (("length", length), ("tokens", tokens))
                if values is not None and name in reference}
    embedding = None if spec is None or vectors is None else _embedding_drift(spec, vectors,
                                                                              options)
    return rows, features, embedding


def _compare_tensor(reference: Mapping[str, Any], current: Any,
                    options: _Options) -> tuple[int, dict[str, FeatureDrift], FeatureDrift | None]:
    spec = reference.get("embedding")
    if isinstance(current, Mapping):
        vectors = current.get("embedding")
        stats = {name: current.get(name) for name in ("row_mean", "row_std")}
    else:
        arr = np.asarray(current)
        if arr.ndim == 0 or not len(arr):
            raise ValueError("current data has no rows; a drift check needs at least one")
        vectors = project(arr, spec) if spec else None
        flat = arr.reshape(len(arr), -1)
        stats = {"row_mean": flat.mean(axis=1, dtype=np.float64),
                 "row_std": flat.std(axis=1, dtype=np.float64)}
    rows = max(_length(vectors), *(_length(v) for v in stats.values()))
    if rows == 0:
        raise ValueError("current data has no rows; a drift check needs at least one")
    features = {name: _numeric_drift(name, reference[name], values, options)
                for name, values in stats.items() if values is not None and name in reference}
    embedding = None if spec is None or vectors is None else _embedding_drift(spec, vectors,
                                                                              options)
    return rows, features, embedding


_KINDS: dict[str, Callable[[Mapping[str, Any], Any, _Options],
                           tuple[int, dict[str, FeatureDrift], FeatureDrift | None]]] = {
    "table": _compare_table,
    "text": _compare_text,
    "tensor": _compare_tensor,
}


def _numeric_drift(name: str, spec: Mapping[str, Any], values: Any,
                   options: _Options) -> FeatureDrift:
    cur = _present(_as_float(values))
    test = options.numeric_test
    if test == "auto":
        test = choose_test("numeric", int(spec.get("count", 0)), cur.size)
    if not cur.size or "sample" not in spec:
        return _untested(name, "numeric", test, options, cur.size)
    score, p_value = _NUMERIC_TESTS[test](_NumericReference(spec), cur)
    return _decide(name, "numeric", test, score, p_value, options, cur.size)


def _categorical_drift(name: str, spec: Mapping[str, Any], values: Any,
                       options: _Options) -> FeatureDrift:
    seen = _category_counts(values)
    rows = sum(seen.values())
    test = options.categorical_test
    if test == "auto":
        test = choose_test("categorical", int(spec.get("count", 0)), rows)
    if not rows or not spec.get("count"):
        return _untested(name, "categorical", test, options, rows)
    ref_counts = [int(c) for c in spec["values"].values()]
    cur_counts = [seen.pop(str(k), 0) for k in spec["values"]]
    unseen = sum(seen.values())
    # Values outside the reference's top list may be its long tail, pooled as "other".
    other = int(spec.get("other", 0))
    if other or unseen:
        ref_counts.append(other)
        cur_counts.append(unseen)
    score, p_value = _CATEGORICAL_TESTS[test](ref_counts, cur_counts)
    return _decide(name, "categorical", test, score, p_value, options, rows)


_FEATURES: dict[str, Callable[[str, Mapping[str, Any], Any, _Options], FeatureDrift]] = {
    "numeric": _numeric_drift,
    "categorical": _categorical_drift,
}


def _embedding_drift(spec: Mapping[str, Any], vectors: Any, options: _Options) -> FeatureDrift:
    ref = decode_sample(spec["sample"])
    cur = np.asarray(vectors, dtype=np.float64)
    if cur.ndim != 2 or (len(cur) and cur.shape[1] != ref.shape[1]):
        raise ValueError(f"current embeddings have shape {cur.shape}; the reference's rows have "
                         f"{ref.shape[1]} values")
    cur = cur[np.isfinite(cur).all(axis=1)]
    if not len(cur):
        return _untested("embedding", "embedding", "mmd", options, 0)
    score, p_value = mmd(ref, cur, seed=options.seed)
    return _decide("embedding", "embedding", "mmd", score, p_value, options, len(cur))


def _decide(name: str, kind: str, test: str, score: float, p_value: float | None,
            options: _Options, rows: int) -> FeatureDrift:
    threshold = float(options.thresholds[test])
    if test in P_VALUE_TESTS:
        drifted = p_value is not None and p_value < threshold
    else:
        drifted = score > threshold
    return FeatureDrift(name, kind, test, float(score), threshold,
                        None if p_value is None else float(p_value), bool(drifted), int(rows))


def _untested(name: str, kind: str, test: str, options: _Options, rows: int) -> FeatureDrift:
    return FeatureDrift(name, kind, test, 0.0, float(options.thresholds[test]), None, False,
                        int(rows))


class _NumericReference:
    """What the numeric tests need of a profiled feature, rebuilt from its stored form."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec
        self.sample = _snap_integers(decode_sample(spec["sample"]), spec["sample"])
        self.grid = Grid(self.sample)

    @property
    def scale(self) -> float:
        std = float(self.spec.get("std") or 0.0)
        if std > 0:
            return std
        # A constant reference has no spread: measure against a millionth of its value, so
        # float noise passes and any real change drifts.
        return 1e-6 * max(abs(float(self.spec.get("mean") or 0.0)), 1.0)

    @property
    def edges(self) -> np.ndarray:
        quantiles = self.spec.get("quantiles")
        if not quantiles:
            return np.unique(np.quantile(self.sample, np.linspace(0.1, 0.9, 9)))
        return np.unique(np.asarray(quantiles[1:-1], dtype=float))


def _ks(ref: _NumericReference, cur: np.ndarray) -> tuple[float, float | None]:
    counts = ref.grid.count(cur)
    d = counts.ks()
    return d, ks_p_value(d, ref.grid.size, counts.n)


def _wasserstein(ref: _NumericReference, cur: np.ndarray) -> tuple[float, float | None]:
    return ref.grid.count(cur).wasserstein() / ref.scale, None


def _psi(ref: _NumericReference, cur: np.ndarray) -> tuple[float, float | None]:
    edges = ref.edges
    return psi_counts(_bin_counts(edges, ref.sample), _bin_counts(edges, cur)), None


_NUMERIC_TESTS: dict[str, Callable[[_NumericReference, np.ndarray], tuple[float, float | None]]] = {
    "ks": _ks,
    "wasserstein": _wasserstein,
    "psi": _psi,
}
_CATEGORICAL_TESTS: dict[str, Callable[[Any, Any], tuple[float, float | None]]] = {
    "chi2": chi_squared,
    "jensen_shannon": lambda ref, cur: (jensen_shannon(ref, cur), None),
}


# -- helpers ------------------------------------------------------------------------------------
def _finite(values: Any, name: str) -> np.ndarray:
    arr = _present(np.asarray(values, dtype=np.float64).ravel())
    if not arr.size:
        raise ValueError(f"{name} has no finite values")
    return arr


def _present(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    # A DataFrame built from one 2-D array has strided columns; the passes below prefer a copy.
    return np.ascontiguousarray(arr) if finite.all() else arr[finite]


def _as_float(values: Any) -> np.ndarray:
    """A column as floats, missing and unparseable values as NaN (the profile's reading)."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind in "iufb":
        return np.asarray(values, dtype=np.float64).ravel()  # no copy for float64 columns
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values,
                                                                               dtype=object))
    if is_numeric_dtype(series.dtype) or is_bool_dtype(series.dtype):  # nullable Int64 etc.
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(series.astype(object), errors="coerce").to_numpy(dtype=np.float64,
                                                                         na_value=np.nan)


def _category_counts(values: Any) -> dict[str, int]:
    """Non-missing values counted by their string form, as the profile counts them."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values,
                                                                               dtype=object))
    # Counting before the conversion to strings costs one str() per distinct value, not per row.
    out: dict[str, int] = {}
    for value, count in series.value_counts(dropna=True).items():
        if count:
            out[str(value)] = out.get(str(value), 0) + int(count)
    return out


def _columns(current: Any, names: list[str]) -> tuple[Mapping[str, Any], int]:
    if hasattr(current, "columns") and hasattr(current, "dtypes"):  # a DataFrame
        return {str(c): current[c] for c in current.columns}, len(current)
    if isinstance(current, Mapping):
        lengths = {len(v) for v in current.values()}
        return current, max(lengths, default=0)
    arr = np.asarray(current)
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise ValueError(f"current data of shape {arr.shape} does not match the reference's "
                         f"{len(names)} features; pass a DataFrame or a dict of columns")
    return {name: arr[:, i] for i, name in enumerate(names)}, len(arr)


def _length(values: Any) -> int:
    return 0 if values is None else len(values)


def _rows(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of rows, got shape {arr.shape}")
    arr = arr[np.isfinite(arr).all(axis=1)]
    if not len(arr):
        raise ValueError(f"{name} has no rows of finite values")
    return arr


def _subsample(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= cap else rows[np.sort(rng.choice(len(rows), cap, replace=False))]


def _bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _shares(ref_counts: Any, cur_counts: Any,
            normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(ref_counts, dtype=np.float64).ravel()
    q = np.asarray(cur_counts, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"ref has {p.size} bins, cur {q.size}; count the same categories")
    if not (np.isfinite(p).all() and np.isfinite(q).all()) or (p < 0).any() or (q < 0).any():
        raise ValueError("counts must be finite and non-negative")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("ref and cur each need at least one counted value")
    return (p / p.sum(), q / q.sum()) if normalise else (p, q)


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    nonzero = p > 0
    return float(np.sum(p[nonzero] * np.log2(p[nonzero] / m[nonzero])))


def _snap_integers(sample: np.ndarray, encoded: Mapping[str, Any]) -> np.ndarray:
    """Undo the 16-bit quantisation for integer features, whose ties the tests must see."""
    lo, hi = float(encoded["lo"]), float(encoded["hi"])
    if not (lo.is_integer() and hi.is_integer()) or hi == lo:
        return sample
    whole = np.round(sample)
    # Quantisation moves a value by at most half a step; anything further was not an integer.
    if np.abs(whole - sample).max() <= (hi - lo) / 65535 * 0.5 * (1 + 1e-6):
        return whole
    return sample


__all__ = [
    "DEFAULT_THRESHOLDS",
    "MMD_PERMUTATIONS",
    "MMD_ROWS",
    "P_VALUE_TESTS",
    "SMALL_SAMPLE",
    "DriftReport",
    "FeatureDrift",
    "chi_squared",
    "choose_test",
    "compare",
    "jensen_shannon",
    "ks_test",
    "mmd",
    "psi",
    "psi_counts",
    "wasserstein_distance",
]
