"""Data checks on a batch job's input, read chunk by chunk before anything is scored.

``modelyard batch --checks FILE`` takes the keys of a spec's ``validation:`` section (a file
holding that section, or a whole project file, whose model's section is used). A batch input is
read in chunks, so what is checked is what a pass over the chunks can decide while holding only
running totals: ``min_rows``, ``max_missing``, ``columns`` (dtypes), ``ranges``, ``allowed``,
``unique`` (the keys' 64-bit hashes are kept: 8 bytes a row) and ``freshness``. ``volume``,
``shift``, ``same_schema`` and ``expectations`` compare with accepted training batches or need
the whole batch in memory: they run before training only, and a batch job lists them as not
checked (:attr:`InputChecks.skipped`).

:class:`InputChecks` is pure: chunks in (:meth:`~InputChecks.add`), failures out
(:meth:`~InputChecks.failures`), one sentence each, worded as the training checks are.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataValidationError
from modelyard.pipeline import checks
from modelyard.pipeline.validation import outside_range
from modelyard.spec import ValidationSpec

#: the checks that need accepted batches or the whole batch: training only
TRAINING_ONLY = ("volume", "shift", "same_schema", "expectations")
_EXAMPLES = 5


def load_checks(path: Path, model: str) -> ValidationSpec:
    """The checks in ``path`` (YAML or JSON): its ``validation:`` section, ``model``'s in a
    project file (``models:``), or the whole file; :class:`ConfigError` when it is none."""
    import yaml
    from pydantic import ValidationError

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--checks: no file {str(path)!r}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--checks: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(doc, dict) and isinstance(doc.get("models"), dict):
        doc = (doc["models"].get(model) or {}).get("validation")
        if doc is None:
            raise ConfigError(f"--checks: {path} declares no validation for model {model!r}")
    elif isinstance(doc, dict) and "validation" in doc:
        doc = doc["validation"]
    try:
        return ValidationSpec.model_validate(doc if doc is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "validation"
        raise ConfigError(f"--checks: {path}: {where}: {first['msg']}") from None


class InputChecks:
    """Running totals of a batch input's checks over its chunks (see the module doc)."""

    def __init__(self, spec: ValidationSpec, *, now: datetime) -> None:
        self.spec, self.now = spec, now
        self.rows = 0
        self.missing: dict[str, int] = {}
        self.dtypes: dict[str, str] = {}
        self.outside: dict[str, list[Any]] = {}  # column -> [count, first example]
        self.unexpected: dict[str, list[Any]] = {}  # column -> [count, examples]
        self.seen: dict[tuple[str, ...], np.ndarray] = {}
        self.repeats: dict[tuple[str, ...], list[Any]] = {}  # key -> [count, example]
        self.newest: datetime | None = None

    @property
    def skipped(self) -> list[str]:
        """The configured checks a batch input is not checked by (training-only ones)."""
        return [name for name in TRAINING_ONLY if getattr(self.spec, name)]

    def add(self, columns: Mapping[str, Any]) -> None:
        """Take one chunk: column name -> values, all of the same length."""
        rows = len(next(iter(columns.values()))) if columns else 0
        self.rows += rows
        for name, values in columns.items():
            self.missing[name] = self.missing.get(name, 0) + int(checks.missing_mask(values).sum())
            self._dtype(name, values)
        for name, (low, high) in self.spec.ranges.items():
            if name in columns:
                self._range(name, columns[name], low, high)
        for name, allowed in self.spec.allowed.items():
            if name in columns:
                self._allowed(name, columns[name], allowed)
        for key in self.spec.unique or []:
            if all(name in columns for name in key):
                self._unique(tuple(key), columns)
        rule = self.spec.freshness
        if rule is not None and rule.column in columns:
            newest = checks.newest_timestamp(columns[rule.column])
            if newest is not None and (self.newest is None or newest > self.newest):
                self.newest = newest

    def failures(self, available: list[str]) -> list[str]:
        """Every failed check once all chunks are in; ``available``: the input's columns."""
        spec, out = self.spec, []
        if self.rows < spec.min_rows:
            out.append(f"has {self.rows} rows, needs at least {spec.min_rows} "
                       "(validation.min_rows)")
        for name, count in self.missing.items():
            share = count / self.rows if self.rows else 0.0
            if share > spec.max_missing:
                out.append(f"column {name!r}: {share:.1%} missing, more than the "
                           f"{spec.max_missing:.1%} allowed (validation.max_missing)")
        out += self._dtype_failures(available)
        out += self._value_failures(available)
        out += self._unique_failures(available)
        out += self._freshness_failures(available)
        return out

    # -- per chunk ------------------------------------------------------------------------------
    def _dtype(self, name: str, values: Any) -> None:
        arr = np.asarray(values)
        if arr.dtype.kind == "O":  # nulls make any column objects: the values' own type counts
            present = [v for v in arr.tolist() if v is not None]
            if not present:
                return
            arr = np.asarray(present)
        self.dtypes.setdefault(name, checks.column_dtype(arr))

    def _range(self, name: str, values: Any, low: float | None, high: float | None) -> None:
        try:
            numbers = np.asarray([np.nan if v is None else v for v in np.asarray(values).tolist()],
                                 dtype=float)
        except (TypeError, ValueError):
            self.outside[name] = [None, None]  # not numeric
            return
        present = numbers[~np.isnan(numbers)]
        bad = outside_range(present, low, high)
        seen = self.outside.setdefault(name, [0, None])
        if seen[0] is None or not bad.any():
            return
        seen[0] += int(bad.sum())
        if seen[1] is None:
            seen[1] = float(present[bad][0])

    def _allowed(self, name: str, values: Any, allowed: list[Any]) -> None:
        permitted = set(allowed)
        bad = [v for v in np.asarray(values, dtype=object).tolist()
               if v is not None and v == v and v not in permitted]
        seen = self.unexpected.setdefault(name, [0, []])
        seen[0] += len(bad)
        for value in bad:
            if len(seen[1]) >= _EXAMPLES:
                break
            if value not in seen[1]:
                seen[1].append(value)

    def _unique(self, key: tuple[str, ...], columns: Mapping[str, Any]) -> None:
        hashes = checks.key_hashes(columns, key)
        seen = self.seen.get(key, np.empty(0, dtype=np.uint64))
        _, first = np.unique(hashes, return_index=True)
        again = np.ones(len(hashes), dtype=bool)
        again[first] = False  # repeated within the chunk...
        again |= np.isin(hashes, seen)  # ...or a key an earlier chunk had
        if again.any():
            found = self.repeats.setdefault(key, [0, None])
            found[0] += int(again.sum())
            if found[1] is None:
                i = int(np.flatnonzero(again)[0])
                found[1] = ", ".join(f"{n}={_item(columns[n][i])!r}" for n in key)
        self.seen[key] = np.union1d(seen, hashes)

    # -- at the end -----------------------------------------------------------------------------
    def _dtype_failures(self, available: list[str]) -> list[str]:
        from modelyard.pipeline.validation import dtype_matches

        out = []
        for name, want in (self.spec.columns or {}).items():
            if name not in available:
                out.append(f"column {name!r} is missing (validation.columns expects {want})")
            elif name in self.dtypes and not dtype_matches(self.dtypes[name], want):
                out.append(f"column {name!r} is {self.dtypes[name]}, expected {want}")
        return out

    def _value_failures(self, available: list[str]) -> list[str]:
        out = []
        for name, (low, high) in self.spec.ranges.items():
            count, example = self.outside.get(name, [0, None])
            if name not in available:
                out.append(f"column {name!r} is missing (validation.ranges names it)")
            elif count is None:
                out.append(f"column {name!r} is not numeric, so its range cannot be checked")
            elif count:
                bounds = f"[{'-inf' if low is None else f'{low:g}'}, "
                bounds += f"{'inf' if high is None else f'{high:g}'}]"
                out.append(f"column {name!r}: {count} value(s) outside {bounds} "
                           f"(e.g. {example:g})")
        for name, values in self.spec.allowed.items():
            count, examples = self.unexpected.get(name, [0, []])
            if name not in available:
                out.append(f"column {name!r} is missing (validation.allowed names it)")
            elif count:
                out.append(f"column {name!r}: {count} value(s) not allowed (e.g. "
                           f"{', '.join(map(repr, examples))}); allowed: "
                           f"{', '.join(map(str, values))}")
        return out

    def _unique_failures(self, available: list[str]) -> list[str]:
        out = []
        for key in map(tuple, self.spec.unique or []):
            absent = [name for name in key if name not in available]
            shown = repr(key[0]) if len(key) == 1 else f"({', '.join(key)})"
            if absent:
                out.append(f"unique: key {shown}: column(s) {', '.join(map(repr, absent))} "
                           "missing (validation.unique)")
            elif key in self.repeats:
                count, example = self.repeats[key]
                out.append(f"unique: key {shown}: {count} row(s) repeat a key (e.g. {example}) "
                           "(validation.unique)")
        return out

    def _freshness_failures(self, available: list[str]) -> list[str]:
        rule = self.spec.freshness
        if rule is None:
            return []
        if rule.column not in available:
            return [f"freshness: column {rule.column!r} is missing "
                    "(validation.freshness.column)"]
        if self.newest is None:
            return [f"freshness: column {rule.column!r} holds no timestamps "
                    "(validation.freshness.column)"]
        return checks.stale(rule, self.newest, self.now)


def refuse(failures: list[str], where: str) -> DataValidationError:
    """The error a batch job stops with: the first three failed checks, then the report."""
    shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3
                                       else "")
    plural = "check" if len(failures) == 1 else "checks"
    return DataValidationError(f"{where} failed {len(failures)} {plural}: {shown}; nothing "
                               "was scored", report=failures)


def _item(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["TRAINING_ONLY", "InputChecks", "load_checks", "refuse"]
