"""``modelyard register``'s argument parsing: metrics and sample files (no framework needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.cli.register_cmds import parse_metrics, read_sample
from modelyard.deploy.bundle import package_name
from modelyard.errors import ConfigError, InputError


def test_metrics_are_name_equals_number() -> None:
    assert parse_metrics(("auc=0.91", " f1 =0.5")) == {"auc": 0.91, "f1": 0.5}
    for bad in ("auc", "=1", "auc=high"):
        with pytest.raises(ConfigError, match="write NAME=NUMBER"):
            parse_metrics((bad,))


def test_samples_are_read_from_tables_and_arrays(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "y": [0, 1]})
    frame.to_csv(tmp_path / "s.csv", index=False)
    X, y = read_sample(tmp_path / "s.csv", "y")
    assert list(X.columns) == ["a", "b"] and y.tolist() == [0, 1]
    np.save(tmp_path / "s.npy", np.ones((3, 2), dtype=np.float32))
    X, y = read_sample(tmp_path / "s.npy")
    assert X.shape == (3, 2) and y is None
    with pytest.raises(InputError, match="is not a column"):
        read_sample(tmp_path / "s.csv", "label")
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(InputError, match=r"give a \.csv"):
        read_sample(tmp_path / "s.txt")


def test_an_object_array_file_is_not_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"cannot read --data o\.npy"):
        read_sample(tmp_path / "o.npy")


def test_bundle_package_names_are_python_identifiers() -> None:
    assert package_name("fraud-v2") == "fraud_v2_model"
    assert package_name("3d.scan") == "m_3d_scan_model"
