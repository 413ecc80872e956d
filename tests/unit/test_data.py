"""Loading training data from files, SQL and functions, and the deterministic holdout split."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import ConfigError, DataValidationError, StorageError
from modelyard.pipeline.data import Dataset, load_dataset, read_split, split, write_split
from modelyard.spec import DataSpec


def frame(n: int, start: int = 0) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return pd.DataFrame({"a": i * 1.5, "b": i % 7, "label": i % 2})


def test_csv_glob_picks_up_a_new_file_on_rerun(tmp_path: Path):
    (tmp_path / "data").mkdir()
    frame(10).to_csv(tmp_path / "data" / "part-1.csv", index=False)
    spec = DataSpec(path="data/*.csv", target="label")
    first = load_dataset(spec, tmp_path)
    assert len(first) == 10 and first.frame and first.feature_names == ["a", "b"]
    frame(5, start=10).to_csv(tmp_path / "data" / "part-2.csv", index=False)
    second = load_dataset(spec, tmp_path)
    assert len(second) == 15
    assert second.X["a"].tolist()[-1] == 14 * 1.5  # concatenated in sorted file order


def test_parquet_and_features(tmp_path: Path):
    frame(12).to_parquet(tmp_path / "train.parquet")
    ds = load_dataset(DataSpec(path="train.parquet", target="label", features=["b"]), tmp_path)
    assert list(ds.X.columns) == ["b"] and ds.y.tolist()[:3] == [0, 1, 0]


def test_missing_files_name_the_glob_and_folder(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'data/\*\.csv' matches no files in .*"):
        load_dataset(DataSpec(path="data/*.csv", target="label"), tmp_path)


def test_unknown_extension_and_missing_target(tmp_path: Path):
    frame(3).to_csv(tmp_path / "d.txt", index=False)
    with pytest.raises(ConfigError, match=r"set data\.format"):
        load_dataset(DataSpec(path="d.txt", target="label"), tmp_path)
    ds = load_dataset(DataSpec(path="d.txt", target="label", format="csv"), tmp_path)
    assert len(ds) == 3
    with pytest.raises(DataValidationError, match=r"target column 'nope'.*columns: a, b, label"):
        load_dataset(DataSpec(path="d.txt", target="nope", format="csv"), tmp_path)


def test_files_with_different_headers_are_refused(tmp_path: Path):
    frame(3).to_csv(tmp_path / "1.csv", index=False)
    frame(3).drop(columns=["b"]).to_csv(tmp_path / "2.csv", index=False)
    with pytest.raises(DataValidationError, match=r"2.csv has different columns.*missing: \['b'\]"):
        load_dataset(DataSpec(path="*.csv", target="label"), tmp_path)


def test_sql_against_a_sqlite_file(tmp_path: Path):
    db = tmp_path / "data.db"
    with sqlite3.connect(db) as conn:
        frame(20).to_sql("events", conn, index=False)
    spec = DataSpec(sql="SELECT a, b, label FROM events WHERE b < 5", url=f"sqlite:///{db}",
                    target="label")
    ds = load_dataset(spec, tmp_path)
    assert len(ds) == int((np.arange(20) % 7 < 5).sum())
    bad = DataSpec(sql="SELECT * FROM missing_table", url=f"sqlite:///{db}", target="label")
    with pytest.raises(StorageError, match=r"the data query failed: .*no such table"):
        load_dataset(bad, tmp_path)


def test_function_source_frame_and_pair(tmp_path: Path):
    (tmp_path / "src.py").write_text(
        "import numpy as np\n"
        "import pandas as pd\n"
        "def table():\n"
        "    return pd.DataFrame({'x': [1.0, 2.0, 3.0], 'y': [0, 1, 0]})\n"
        "def pair():\n"
        "    return np.arange(8.0).reshape(4, 2), [0, 1, 0, 1]\n"
        "def text():\n"
        "    return ['good', 'bad', 'fine'], ['pos', 'neg', 'pos']\n"
    )
    table = load_dataset(DataSpec(function="src.py:table", target="y"), tmp_path)
    assert table.frame and table.feature_names == ["x"]
    pair = load_dataset(DataSpec(function="src.py:pair"), tmp_path)
    assert not pair.frame and pair.X.shape == (4, 2) and pair.feature_names == ["f0", "f1"]
    text = load_dataset(DataSpec(function="src.py:text"), tmp_path)
    assert text.X.dtype == object and text.X[0] == "good"
    with pytest.raises(ConfigError, match=r"set data\.target"):
        load_dataset(DataSpec(function="src.py:table"), tmp_path)


def test_function_source_callable_and_bad_return(tmp_path: Path):
    ds = load_dataset(DataSpec(function=lambda: ([[1], [2]], [0, 1])), tmp_path)
    assert ds.X.shape == (2, 1)
    with pytest.raises(ConfigError, match="return a DataFrame"):
        load_dataset(DataSpec(function=lambda: 42), tmp_path)
    with pytest.raises(DataValidationError, match="X has 2 rows but y has 3"):
        load_dataset(DataSpec(function=lambda: ([[1], [2]], [0, 1, 1])), tmp_path)


def labelled(n: int, classes: int) -> Dataset:
    X = np.arange(n * 2, dtype=float).reshape(n, 2)
    y = np.arange(n) % classes
    return Dataset(X, y, ["f0", "f1"], False)


def test_split_is_stratified_and_deterministic():
    ds = labelled(100, 4)
    ds.y[:10] = 0  # unbalanced on purpose
    train, hold = split(ds, 0.2, seed=3)
    assert len(train) + len(hold) == 100
    for c in range(4):
        share = (hold.y == c).sum() / (ds.y == c).sum()
        assert share == pytest.approx(0.2, abs=0.05)
    again_train, again_hold = split(ds, 0.2, seed=3)
    assert np.array_equal(hold.X, again_hold.X) and np.array_equal(train.y, again_train.y)
    _, other = split(ds, 0.2, seed=4)
    assert not np.array_equal(hold.X, other.X)
    assert not set(map(tuple, train.X)) & set(map(tuple, hold.X))


def test_split_falls_back_to_random_for_regression_and_rare_classes():
    reg = Dataset(np.arange(50.0)[:, None], np.linspace(0, 1, 50), ["f0"], False)
    train, hold = split(reg, 0.3, seed=0)
    assert (len(train), len(hold)) == (35, 15)
    rare = labelled(20, 2)
    rare.y[0] = 7  # a class with one row cannot be stratified
    train, hold = split(rare, 0.25, seed=0)
    assert len(hold) == 5


def test_split_frames_keeps_columns_and_resets_index():
    ds = Dataset(frame(30).drop(columns=["label"]), (np.arange(30) % 2), ["a", "b"], True)
    _, hold = split(ds, 0.2, seed=1)
    assert list(hold.X.columns) == ["a", "b"] and hold.X.index.tolist() == list(range(len(hold)))
    with pytest.raises(DataValidationError, match="cannot split 1 row"):
        split(labelled(1, 1), 0.2, seed=0)


def test_splits_round_trip_without_pickle(tmp_path: Path):
    df = pd.DataFrame({"a": [1.0, 2.0], "city": ["Paris", "Lyon"]})
    labels = np.array(["yes", "no"], dtype=object)
    write_split(df, labels, tmp_path)
    X, y = read_split(tmp_path)
    assert X["city"].tolist() == ["Paris", "Lyon"] and y.tolist() == ["yes", "no"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.frame.parquet", "y.values.parquet"]

    arrays = tmp_path / "arrays"
    arrays.mkdir()
    write_split(np.ones((3, 2, 2), dtype=np.float32), np.array([0, 1, 2]), arrays)
    X, y = read_split(arrays)
    assert X.shape == (3, 2, 2) and X.dtype == np.float32 and y.tolist() == [0, 1, 2]

    texts = tmp_path / "texts"
    texts.mkdir()
    write_split(np.array(["a b", None], dtype=object), [1, 0], texts)
    X, _ = read_split(texts)
    assert X.dtype == object and X.tolist() == ["a b", None]


def test_unstorable_inputs_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="column names must be strings"):
        write_split(pd.DataFrame({0: [1.0]}), [1], tmp_path)
    with pytest.raises(ConfigError, match="only 1-D text"):
        write_split(np.array([["a"], ["b"]], dtype=object), [1, 0], tmp_path)


def test_a_row_keeps_its_side_as_data_grows_so_the_champion_never_scores_its_training_rows():
    rng = np.random.default_rng(0)
    first = Dataset(rng.normal(size=(2000, 3)), (np.arange(2000) % 5 == 0).astype(int),
                    ["a", "b", "c"], False)
    grown = Dataset(np.vstack([first.X, rng.normal(size=(2000, 3))]),
                    np.concatenate([first.y, (np.arange(2000) % 5 == 0).astype(int)]),
                    ["a", "b", "c"], False)
    train_1, _ = split(first, 0.2, seed=0)
    _, hold_2 = split(grown, 0.2, seed=0)
    seen = set(map(tuple, train_1.X))
    leaked = sum(tuple(row) in seen for row in hold_2.X)
    # a fresh random split would put ~80% of the old rows it holds out into train_1 (~320)
    assert leaked <= 20
