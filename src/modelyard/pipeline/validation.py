"""Check training data before anything is trained: rows, missing values, dtypes, ranges, values.

``validate`` is pure and returns one sentence per failed check; ``check`` raises
:class:`DataValidationError` carrying them all, so a person fixes every problem in one pass.
:func:`check_all` adds the batch checks of :mod:`modelyard.pipeline.checks` (freshness,
uniqueness, and volume, shift and schema against the accepted batches) and a Great Expectations
suite, and returns the profile the run stores when they all pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import DataValidationError
from modelyard.pipeline.data import Dataset
from modelyard.schema import dtype_name
from modelyard.spec import ValidationSpec

#: expected dtype name -> the dtype names that satisfy it (an int column is a fine float column).
_COMPATIBLE = {
    "float": {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8"},
    "int": {"int64", "int32", "int16", "int8", "uint8"},
    "string": {"string"},
    "bool": {"bool"},
}


def validate(dataset: Dataset, spec: ValidationSpec) -> list[str]:
    """Every check ``dataset`` fails under ``spec``, one readable sentence each (empty: valid)."""
    failures: list[str] = []
    n = len(dataset)
    if n < spec.min_rows:
        failures.append(f"has {n} rows, needs at least {spec.min_rows} (validation.min_rows)")
    columns = _columns(dataset)
    for name, values in columns.items():
        share = _missing(values).mean() if len(values) else 0.0
        if share > spec.max_missing:
            failures.append(
                f"column {name!r}: {share:.1%} missing, more than the {spec.max_missing:.1%} "
                "allowed (validation.max_missing)"
            )
    failures += _dtype_failures(columns, spec.columns or {})
    failures += _range_failures(columns, spec.ranges)
    failures += _allowed_failures(columns, spec.allowed)
    missing_y = int(_missing(dataset.y).sum())
    if missing_y:
        failures.append(f"target has {missing_y} missing value(s); drop or label those rows")
    return failures


def check(dataset: Dataset, spec: ValidationSpec) -> None:
    """Raise :class:`DataValidationError` listing every failed check (``report``), if any."""
    _raise(validate(dataset, spec))


def check_all(dataset: Dataset, spec: ValidationSpec, *,
              history: Sequence[dict[str, Any]] = (), root: Path = Path("."),
              target: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Every check of ``spec`` on ``dataset``, the batch checks against ``history`` (the last
    accepted batches' profiles, newest first) included; the suite file of
    ``validation.expectations`` is read relative to ``root``. Returns this batch's profile
    (:func:`~modelyard.pipeline.checks.batch_profile`), to store with the run; raises
    :class:`DataValidationError` listing every failed check."""
    from modelyard.pipeline import checks

    columns = {**_columns(dataset), **_others(dataset)}
    failures = validate(dataset, spec)
    failures += checks.batch_failures(columns, spec, now=now or checks.utcnow())
    profile = checks.batch_profile(columns, len(dataset), dataset.X)
    failures += checks.history_checks(profile, dataset.X, spec, history)
    if spec.expectations:
        from modelyard.pipeline.expectations import load_suite, run_suite

        suite = load_suite(root / spec.expectations)
        failures += run_suite(suite, _frame(columns, dataset.y, target or "target"))
    _raise(failures)
    return profile


def _raise(failures: list[str]) -> None:
    if not failures:
        return
    shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3
                                       else "")
    plural = "check" if len(failures) == 1 else "checks"
    raise DataValidationError(
        f"training data failed {len(failures)} {plural}: {shown}", report=failures
    )


def format_report(failures: list[str]) -> str:
    """A multi-line report of failed checks, for logs and the CLI."""
    return "\n".join(["training data failed these checks:", *(f"  - {f}" for f in failures)])


# -- checks -------------------------------------------------------------------------------------
def _columns(dataset: Dataset) -> dict[str, Any]:
    """Named 1-D columns: a DataFrame's columns or a 2-D array's features (tensors: none)."""
    if dataset.frame:
        return {str(c): dataset.X[c] for c in dataset.X.columns}
    X = np.asarray(dataset.X)
    if X.ndim == 2:
        return {name: X[:, i] for i, name in enumerate(dataset.feature_names)}
    if X.ndim == 1:
        return {dataset.feature_names[0]: X}
    return {}


def _others(dataset: Dataset) -> dict[str, Any]:
    """The source's columns that are not features (keys, timestamps), if it was a table."""
    if dataset.others is None:
        return {}
    return {str(c): dataset.others[c] for c in dataset.others.columns}


def _frame(columns: dict[str, Any], y: Any, target: str) -> Any:
    """The whole batch as one DataFrame (features, other columns, the target)."""
    import pandas as pd

    frame = pd.DataFrame({name: np.asarray(values) if not hasattr(values, "to_numpy") else
                          values.to_numpy() for name, values in columns.items()})
    frame[target] = np.asarray(y)
    return frame


def _missing(values: Any) -> np.ndarray:
    if hasattr(values, "isna"):
        return np.asarray(values.isna())
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return np.isnan(arr)
    if arr.dtype.kind == "O":
        import pandas as pd

        return np.asarray(pd.isna(arr))
    return np.zeros(arr.shape, dtype=bool)


def _dtype_failures(columns: dict[str, Any], expected: dict[str, str]) -> list[str]:
    out = []
    for name, want in expected.items():
        if name not in columns:
            out.append(f"column {name!r} is missing (validation.columns expects {want})")
            continue
        got = dtype_name(columns[name].dtype)
        if not dtype_matches(got, want):
            out.append(f"column {name!r} is {got}, expected {want}")
    return out


def dtype_matches(got: str, want: str) -> bool:
    """Whether a column of dtype ``got`` satisfies ``validation.columns``' ``want`` (an int
    column is a fine float column)."""
    family = next((f for f in _COMPATIBLE if want.startswith(f)), None)
    return got in _COMPATIBLE[family] if family else got == want


def _range_failures(
    columns: dict[str, Any], ranges: dict[str, tuple[float | None, float | None]]
) -> list[str]:
    out = []
    for name, (low, high) in ranges.items():
        if name not in columns:
            out.append(f"column {name!r} is missing (validation.ranges names it)")
            continue
        try:
            values = np.asarray(columns[name], dtype=float)
        except (TypeError, ValueError):
            out.append(f"column {name!r} is not numeric, so its range cannot be checked")
            continue
        present = values[~np.isnan(values)]
        bad = outside_range(present, low, high)
        if bad.any():
            bounds = f"[{'-inf' if low is None else _show(low)}, "
            bounds += f"{'inf' if high is None else _show(high)}]"
            out.append(f"column {name!r}: {int(bad.sum())} value(s) outside {bounds} "
                       f"(e.g. {_show(present[bad][0])})")
    return out


def outside_range(present: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """Which of the (non-missing) ``present`` values fall below ``low`` or above ``high``
    (a bound of None: open on that side)."""
    bad = np.zeros(len(present), dtype=bool)
    if low is not None:
        bad |= present < low
    if high is not None:
        bad |= present > high
    return bad


def _allowed_failures(columns: dict[str, Any], allowed: dict[str, list[Any]]) -> list[str]:
    out = []
    for name, values in allowed.items():
        if name not in columns:
            out.append(f"column {name!r} is missing (validation.allowed names it)")
            continue
        col = columns[name]
        col = np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col, dtype=object)
        keep = ~_missing(col)
        permitted = set(values)
        bad = [v for v in col[keep].tolist() if v not in permitted]
        if bad:
            shown = ", ".join(repr(v) for v in list(dict.fromkeys(bad))[:5])
            out.append(f"column {name!r}: {len(bad)} value(s) not allowed (e.g. {shown}); "
                       f"allowed: {', '.join(map(str, values))}")
    return out


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float | np.floating) else repr(value)


__all__ = ["check", "check_all", "dtype_matches", "format_report", "outside_range", "validate"]
