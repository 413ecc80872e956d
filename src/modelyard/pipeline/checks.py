"""Data checks that catch a bad batch: stale, too small or large, shifted, duplicated, reshaped.

Every function here is pure (data in, failures out): one readable sentence per failed check,
naming the spec field that set the bound, so a person can fix the data or the bound.

* :func:`freshness_failures` -- the newest timestamp of a column is at most ``max_age`` old;
* :func:`volume_failures` -- the row count against the median of the last accepted batches;
* :func:`null_shift_failures` -- per-column missing rates against the previous accepted batch;
* :func:`drift_failures` -- the drift tests of :mod:`modelyard.monitoring.drift` against the
  previous accepted batch's reference statistics (:func:`modelyard.pipeline.profile.profile`);
* :func:`unique_failures` -- keys (one column or several) that name more than one row;
* :func:`schema_failures` -- columns added, removed or retyped since the previous batch.

"Accepted batch": the data of a run whose checks passed. :func:`batch_profile` is what such a
run stores (``details["batch_profile"]`` of the run): row count, column dtypes, missing rates
and the drift reference statistics. :func:`history_checks` runs the checks that compare with
those profiles, :func:`batch_failures` the ones that need the batch alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from modelyard.schema import dtype_name
from modelyard.spec import ValidationSpec
from modelyard.spec.training import FreshnessRule, ShiftRule, VolumeRule

#: the ``details`` key of a run that holds the profile of the batch it accepted
PROFILE_KEY = "batch_profile"
#: how many drifted features a failure names before "and N more"
_NAMED = 5


# -- the profile an accepted batch leaves behind ------------------------------------------------
def batch_profile(columns: Mapping[str, Any], rows: int, features: Any) -> dict[str, Any]:
    """What the next runs compare with: rows, dtypes and missing rates of ``columns`` (every
    column of the batch) and the drift reference statistics of ``features``."""
    from modelyard.pipeline.profile import profile

    return {"version": 1, "rows": int(rows), "columns": schema_of(columns),
            "nulls": {name: round(missing_rate(values), 6) for name, values in columns.items()},
            "reference": profile(features)}


def schema_of(columns: Mapping[str, Any]) -> dict[str, str]:
    """Column name -> dtype name (``float64``, ``int64``, ``string``, ``bool``, ``datetime``)."""
    return {name: column_dtype(values) for name, values in columns.items()}


def column_dtype(values: Any) -> str:
    """The dtype name of one column, as schema checks compare them."""
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        dtype = np.asarray(values).dtype
    if getattr(dtype, "kind", "") == "M" or str(dtype).startswith("datetime64"):
        return "datetime"
    return dtype_name(dtype)


def missing_rate(values: Any) -> float:
    """The share of missing values (None, NaN, NaT, pd.NA) in one column; 0 when empty."""
    n = len(values)
    return float(missing_mask(values).sum()) / n if n else 0.0


def missing_mask(values: Any) -> np.ndarray:
    """Which values of one column are missing."""
    if hasattr(values, "isna"):
        return np.asarray(values.isna(), dtype=bool)
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return np.isnan(arr)
    if arr.dtype.kind in "OM":
        import pandas as pd

        return np.asarray(pd.isna(arr), dtype=bool)
    return np.zeros(arr.shape[:1], dtype=bool)


# -- checks of the batch alone ------------------------------------------------------------------
def batch_failures(columns: Mapping[str, Any], spec: ValidationSpec, *,
                   now: datetime) -> list[str]:
    """The failed checks that need only this batch: ``freshness`` and ``unique``."""
    failures: list[str] = []
    if spec.freshness is not None:
        failures += freshness_failures(columns, spec.freshness, now=now)
    for key in spec.unique or []:
        failures += unique_failures(columns, key)
    return failures


def freshness_failures(columns: Mapping[str, Any], rule: FreshnessRule, *,
                       now: datetime) -> list[str]:
    """Fails when ``rule.column``'s newest timestamp is older than ``rule.max_age`` at ``now``."""
    if rule.column not in columns:
        return [f"freshness: column {rule.column!r} is missing (validation.freshness.column)"]
    newest = newest_timestamp(columns[rule.column])
    if newest is None:
        return [f"freshness: column {rule.column!r} holds no timestamps "
                "(validation.freshness.column)"]
    return stale(rule, newest, now)


def stale(rule: FreshnessRule, newest: datetime, now: datetime) -> list[str]:
    """The failure when ``newest`` is more than ``rule.max_age`` before ``now``, if it is."""
    age = (now - newest).total_seconds()
    if age <= rule.max_age:
        return []
    return [f"freshness: the newest {rule.column!r} is {newest.isoformat()}, {_age(age)} old, "
            f"older than the {_age(rule.max_age)} allowed (validation.freshness.max_age)"]


def newest_timestamp(values: Any) -> datetime | None:
    """The latest timestamp of a column (datetimes, ISO strings, or epoch seconds), in UTC;
    None when it holds none. Timestamps without a zone are read as UTC."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if is_numeric_dtype(series.dtype) and not is_bool_dtype(series.dtype):
        stamps = pd.to_datetime(series, unit="s", utc=True, errors="coerce")
    else:
        stamps = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    newest = stamps.max()
    return None if pd.isna(newest) else newest.to_pydatetime()


def unique_failures(columns: Mapping[str, Any], key: Sequence[str]) -> list[str]:
    """Fails when the rows' values of ``key`` (one column, or several together) repeat."""
    absent = [name for name in key if name not in columns]
    shown = _key(key)
    if absent:
        return [f"unique: key {shown}: column(s) {', '.join(map(repr, absent))} missing "
                "(validation.unique)"]
    hashes = key_hashes(columns, key)
    order = np.argsort(hashes, kind="stable")
    repeats = order[1:][hashes[order][1:] == hashes[order][:-1]]
    if not repeats.size:
        return []
    first = int(repeats.min())
    example = ", ".join(f"{name}={_value(columns[name], first)}" for name in key)
    return [f"unique: key {shown}: {repeats.size} row(s) repeat a key (e.g. {example}) "
            "(validation.unique)"]


def key_hashes(columns: Mapping[str, Any], key: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each row's values of ``key``: equal keys, equal hashes."""
    import pandas as pd
    from pandas.util import hash_pandas_object

    frame = pd.DataFrame({name: _plain(columns[name]) for name in key})
    return np.asarray(hash_pandas_object(frame, index=False).to_numpy(), dtype=np.uint64)


# -- checks against accepted batches ------------------------------------------------------------
def history_checks(profile: Mapping[str, Any], features: Any, spec: ValidationSpec,
                   history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The failed checks that compare this batch (``profile`` of it, ``features``) with the
    accepted ones, newest first in ``history``; none when there is no accepted batch yet."""
    if not history:
        return []
    failures: list[str] = []
    previous = history[0]
    if spec.same_schema:
        failures += schema_failures(profile["columns"], previous.get("columns") or {})
    if spec.volume is not None:
        failures += volume_failures(int(profile["rows"]), [int(h["rows"]) for h in history],
                                    spec.volume)
    if spec.shift is not None:
        failures += shift_failures(profile, features, previous, spec.shift)
    return failures


def shift_failures(profile: Mapping[str, Any], features: Any, previous: Mapping[str, Any],
                   rule: ShiftRule) -> list[str]:
    """Null-rate and distribution shift of this batch against ``previous``'s profile."""
    failures: list[str] = []
    if rule.max_null_increase is not None:
        failures += null_shift_failures(profile["nulls"], previous.get("nulls") or {},
                                        rule.max_null_increase)
    if rule.max_drift_share is not None and previous.get("reference"):
        failures += drift_failures(previous["reference"], features, rule.max_drift_share)
    return failures


def volume_failures(rows: int, recent: Sequence[int], rule: VolumeRule) -> list[str]:
    """Fails when ``rows`` is outside ``[min_ratio, max_ratio]`` times the median of the
    ``rule.window`` most recent accepted row counts (``recent``, newest first)."""
    window = list(recent)[: rule.window]
    if not window:
        return []
    median = statistics.median(window)
    if median <= 0:
        return []
    ratio = rows / median
    where = (f"{rows:,} rows is {ratio:.2f}x the median {median:,.0f} of the last "
             f"{len(window)} accepted batch(es)")
    if ratio < rule.min_ratio:
        return [f"volume: {where}, below the {rule.min_ratio:g}x allowed "
                "(validation.volume.min_ratio)"]
    if rule.max_ratio is not None and ratio > rule.max_ratio:
        return [f"volume: {where}, above the {rule.max_ratio:g}x allowed "
                "(validation.volume.max_ratio)"]
    return []


def null_shift_failures(now: Mapping[str, float], before: Mapping[str, float],
                        max_increase: float) -> list[str]:
    """Fails for each column whose missing rate rose by more than ``max_increase``."""
    out = []
    for name, rate in now.items():
        if name not in before:
            continue
        if rate - float(before[name]) > max_increase + 1e-12:
            out.append(f"null shift: column {name!r} is {rate:.1%} missing, up from "
                       f"{float(before[name]):.1%} in the previous accepted batch, more than "
                       f"the {max_increase:.1%} allowed (validation.shift.max_null_increase)")
    return out


def drift_failures(reference: Mapping[str, Any], features: Any, max_share: float) -> list[str]:
    """Fails when more than ``max_share`` of the features drifted from ``reference`` (the
    previous accepted batch's statistics), by modelyard's drift tests."""
    from modelyard.monitoring.drift import compare

    try:
        report = compare(reference, features)
    except ValueError as exc:
        return [f"distribution shift: cannot compare with the previous accepted batch: {exc}"]
    if report.share <= max_share + 1e-12:
        return []
    drifted = [f for f in [*report.features.values(), report.embedding]
               if f is not None and f.drifted]
    tested = sum(1 for f in [*report.features.values(), report.embedding]
                 if f is not None and f.rows > 0)
    named = ", ".join(f"{f.name!r} ({f.test} {f.score:.3g})" for f in drifted[:_NAMED])
    more = f" and {len(drifted) - _NAMED} more" if len(drifted) > _NAMED else ""
    return [f"distribution shift: {len(drifted)} of {tested} feature(s) drifted from the "
            f"previous accepted batch ({report.share:.0%}, more than the {max_share:.0%} "
            f"allowed, validation.shift.max_drift_share): {named}{more}"]


def schema_failures(now: Mapping[str, str], before: Mapping[str, str]) -> list[str]:
    """One failure per column added, removed or retyped since the previous accepted batch."""
    out = [f"schema: column {name!r} ({dtype}) was added since the previous accepted batch "
           "(validation.same_schema)" for name, dtype in now.items() if name not in before]
    out += [f"schema: column {name!r} ({dtype}) was removed since the previous accepted batch "
            "(validation.same_schema)" for name, dtype in before.items() if name not in now]
    out += [f"schema: column {name!r} changed dtype from {before[name]} to {dtype} since the "
            "previous accepted batch (validation.same_schema)"
            for name, dtype in now.items() if name in before and before[name] != dtype]
    return out


def utcnow() -> datetime:
    """Now, in UTC (what freshness is measured against)."""
    return datetime.now(UTC)


# -- helpers ------------------------------------------------------------------------------------
def _plain(values: Any) -> Any:
    return values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)


def _value(values: Any, index: int) -> str:
    value = _plain(values)[index]
    return repr(value.item() if isinstance(value, np.generic) else value)


def _key(key: Sequence[str]) -> str:
    return repr(key[0]) if len(key) == 1 else f"({', '.join(key)})"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


__all__ = ["PROFILE_KEY", "batch_failures", "batch_profile", "column_dtype", "drift_failures",
           "freshness_failures", "history_checks", "key_hashes", "missing_mask", "missing_rate",
           "newest_timestamp", "null_shift_failures", "schema_failures", "schema_of",
           "shift_failures", "stale", "unique_failures", "utcnow", "volume_failures"]
