"""Training-data checks: every failure reported at once, in sentences a person can act on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import DataValidationError
from modelyard.pipeline.data import Dataset
from modelyard.pipeline.validation import check, format_report, validate
from modelyard.spec import ValidationSpec


def table(n: int = 20) -> Dataset:
    df = pd.DataFrame({
        "age": np.linspace(18, 80, n),
        "visits": np.arange(n),
        "country": ["FR", "DE"] * (n // 2),
    })
    return Dataset(df, np.arange(n) % 2, list(df.columns), True)


def rules(**fields) -> ValidationSpec:
    return ValidationSpec.model_validate(fields)


def test_clean_data_passes():
    spec = rules(min_rows=10, columns={"age": "float64", "visits": "float64",
                                       "country": "string"},
                 ranges={"age": (0, 120)}, allowed={"country": ["FR", "DE"]})
    assert validate(table(), spec) == []
    check(table(), spec)


def test_each_rule_reports_its_failure():
    ds = table()
    ds.X.loc[0, "age"] = -4.0
    ds.X.loc[1:4, "visits"] = np.nan
    ds.X.loc[2, "country"] = "XX"
    spec = rules(min_rows=50, max_missing=0.1, columns={"visits": "int64", "missing": "float64"},
                 ranges={"age": (0, 120)}, allowed={"country": ["FR", "DE"]})
    failures = validate(ds, spec)
    assert failures == [
        "has 20 rows, needs at least 50 (validation.min_rows)",
        "column 'visits': 20.0% missing, more than the 10.0% allowed (validation.max_missing)",
        "column 'visits' is float64, expected int64",
        "column 'missing' is missing (validation.columns expects float64)",
        "column 'age': 1 value(s) outside [0, 120] (e.g. -4)",
        "column 'country': 1 value(s) not allowed (e.g. 'XX'); allowed: FR, DE",
    ]


def test_target_missing_values_and_arrays():
    X = np.array([[1.0, np.nan], [2.0, 3.0], [5.0, 1.0]])
    ds = Dataset(X, np.array([1.0, np.nan, 0.0]), ["f0", "f1"], False)
    failures = validate(ds, rules(min_rows=1, ranges={"f0": (None, 4)}))
    assert failures == [
        "column 'f1': 33.3% missing, more than the 0.0% allowed (validation.max_missing)",
        "column 'f0': 1 value(s) outside [-inf, 4] (e.g. 5)",
        "target has 1 missing value(s); drop or label those rows",
    ]


def test_tensors_only_check_rows_and_target():
    ds = Dataset(np.zeros((3, 4, 4)), np.array([0, 1, 0]), ["input"], False)
    assert validate(ds, rules(min_rows=5)) == [
        "has 3 rows, needs at least 5 (validation.min_rows)"
    ]


def test_check_raises_with_a_one_line_message_and_a_report():
    ds = table(4)
    ds.X.loc[0, "age"] = 500.0
    spec = rules(min_rows=10, ranges={"age": (0, 120)}, allowed={"country": ["FR"]},
                 columns={"age": "string"})
    with pytest.raises(DataValidationError) as info:
        check(ds, spec)
    err = info.value
    assert str(err).startswith("training data failed 4 checks: has 4 rows")
    assert str(err).endswith("; and 1 more") and "\n" not in str(err)
    assert len(err.report) == 4
    report = format_report(err.report)
    assert report.splitlines()[0] == "training data failed these checks:"
    assert len(report.splitlines()) == 5
