"""Data checks on a batch job's input, chunk by chunk: the totals add up across chunks (keys
repeated in another chunk, missing values, the newest timestamp), and ``modelyard batch
--checks`` refuses a bad input with exit 5 before anything is written, the run showing why."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from modelyard.batch.checks import InputChecks, load_checks
from modelyard.cli import main
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.spec import ValidationSpec
from modelyard.testing.models import register_hgb, tabular_data

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
FEATURES = [f"f{i}" for i in range(4)]


def spec(**fields) -> ValidationSpec:
    return ValidationSpec.model_validate({"min_rows": 1, **fields})


def feed(checks: InputChecks, *chunks: dict) -> list[str]:
    for chunk in chunks:
        checks.add({k: np.asarray(v, dtype=object if None in v else None)
                    for k, v in chunk.items()})
    return checks.failures(sorted({k for c in chunks for k in c}))


def test_totals_add_up_across_chunks():
    rules = spec(min_rows=7, max_missing=0.2, unique=[["id"], ["id", "day"]],
                 ranges={"x": (0, 10)}, allowed={"day": ["mon", "tue"]},
                 columns={"x": "float64", "id": "int64"})
    first = {"id": [1, 2, 3], "day": ["mon", "tue", "mon"], "x": [1.0, None, 3.0]}
    second = {"id": [4, 2, 5], "day": ["mon", "tue", "sun"], "x": [None, 12.0, 4.0]}
    assert feed(InputChecks(rules, now=NOW), first, second) == [
        "has 6 rows, needs at least 7 (validation.min_rows)",
        "column 'x': 33.3% missing, more than the 20.0% allowed (validation.max_missing)",
        "column 'x': 1 value(s) outside [0, 10] (e.g. 12)",
        "column 'day': 1 value(s) not allowed (e.g. 'sun'); allowed: mon, tue",
        "unique: key 'id': 1 row(s) repeat a key (e.g. id=2) (validation.unique)",
        "unique: key (id, day): 1 row(s) repeat a key (e.g. id=2, day='tue') "
        "(validation.unique)",
    ]
    clean = {"id": [1, 2, 3, 4, 5, 6, 7], "day": ["mon"] * 7, "x": [1.0] * 7}
    assert feed(InputChecks(rules, now=NOW), clean) == []


def test_freshness_takes_the_newest_of_all_chunks_and_names_missing_columns():
    rules = spec(freshness={"column": "ts", "max_age": "1h"}, unique=["order"],
                 columns={"price": "float64"})
    old = {"ts": [(NOW - timedelta(hours=5)).isoformat()]}
    new = {"ts": [(NOW - timedelta(minutes=5)).isoformat()]}
    checks = InputChecks(rules, now=NOW)
    assert feed(checks, old, new) == [
        "column 'price' is missing (validation.columns expects float64)",
        "unique: key 'order': column(s) 'order' missing (validation.unique)"]
    [stale] = feed(InputChecks(rules.model_copy(update={"unique": None, "columns": None}),
                               now=NOW), old)
    assert stale.startswith("freshness: the newest 'ts' is ") and "5h old" in stale
    assert checks.skipped == []
    assert InputChecks(spec(volume={}, shift={}), now=NOW).skipped == ["volume", "shift"]


def test_load_checks_reads_a_section_a_project_or_refuses(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("validation: {unique: [id], min_rows: 3}\n")
    assert load_checks(tmp_path / "c.yaml", "m").unique == [["id"]]
    (tmp_path / "p.yaml").write_text("models:\n  m:\n    validation: {min_rows: 9}\n")
    assert load_checks(tmp_path / "p.yaml", "m").min_rows == 9
    with pytest.raises(ConfigError, match="declares no validation for model 'other'"):
        load_checks(tmp_path / "p.yaml", "other")
    (tmp_path / "bad.json").write_text('{"freshness": {"column": "ts", "max_age": "soon"}}')
    with pytest.raises(ConfigError, match=r"^--checks: .*bad.json: freshness.max_age: "):
        load_checks(tmp_path / "bad.json", "m")
    with pytest.raises(ConfigError, match="no file"):
        load_checks(tmp_path / "none.yaml", "m")


def test_batch_refuses_a_bad_input_before_scoring(registry: Registry, tmp_path: Path) -> None:
    register_hgb(registry, "tab", max_iter=10, n_features=4)
    home = registry.settings.home
    X, _ = tabular_data(n_rows=40, n_features=4, seed=1)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "id", np.arange(40))
    df["ts"] = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    df.loc[7, "id"] = 3
    df.to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "checks.yaml").write_text(
        "validation:\n  unique: [id]\n  freshness: {column: ts, max_age: 24h}\n"
        "  shift: {max_drift_share: 0.3}\n")
    out = tmp_path / "out"

    def batch(*extra: str):
        return CliRunner().invoke(main, [
            "--home", str(home), "batch", "tab", "-i", str(tmp_path / "in.csv"), "-o",
            str(out), "--key", "id", "--chunk-rows", "15", "--checks",
            str(tmp_path / "checks.yaml"), *extra])

    result = batch()
    assert result.exit_code == 5, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "note: shift check(s) run before training only; not on a batch input"
    assert lines[1].startswith("error: --input ") and "failed 2 checks: unique: key 'id': 1 " \
        "row(s) repeat a key (e.g. id=3)" in lines[1]
    assert "freshness: the newest 'ts' is" in lines[1] and "nothing was scored" in lines[1]
    assert not list(out.glob("part-*.parquet"))  # nothing written
    run = json.loads(CliRunner().invoke(main, ["--home", str(home), "runs", "tab", "--json"])
                     .stdout)[0]
    assert (run["kind"], run["status"]) == ("batch", "failed")
    assert run["details"]["checks"]["not_checked"] == ["shift"]
    assert [f.split(":")[0] for f in run["details"]["checks"]["failed"]] == [
        "unique", "freshness"]

    df.loc[7, "id"] = 7
    df["ts"] = datetime.now(UTC).isoformat()
    df.to_csv(tmp_path / "in.csv", index=False)
    passed = batch("--json")
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["rows"] == 40
    run = json.loads(CliRunner().invoke(main, ["--home", str(home), "runs", "tab", "--json"])
                     .stdout)[0]
    assert run["status"] == "succeeded" and run["details"]["checks"]["failed"] == []
    assert run["details"]["checks"]["rows"] == 40
