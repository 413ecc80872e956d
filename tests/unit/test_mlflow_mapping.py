"""The pure MLflow -> modelyard mapping: versions, aliases and stages, artifacts, signatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.errors import ImportSourceError
from modelyard.pipeline.mlflow_mapping import (
    SourceVersion,
    alias_name,
    check_uri,
    choose_artifact,
    imported,
    map_signature,
    model_name,
    pick_versions,
    plan_aliases,
    source_key,
)


def _v(version: int, stage: str = "None", aliases: tuple[str, ...] = ()) -> SourceVersion:
    return SourceVersion("churn", version, f"run{version}", stage, aliases)


def test_only_the_newest_version_unless_all_are_asked_for_oldest_first() -> None:
    versions = [_v(3), _v(1), _v(10)]
    assert [v.version for v in pick_versions(versions, False)] == [10]
    assert [v.version for v in pick_versions(versions, True)] == [1, 3, 10]
    assert pick_versions([], False) == []


def test_aliases_win_over_stages_and_the_newest_version_in_a_stage_holds_it() -> None:
    versions = [_v(1, "Production"), _v(2, "Production"), _v(3, "Staging"), _v(4, "Archived")]
    assert plan_aliases(versions) == {"production": 2, "staging": 3}
    with_alias = [*versions, _v(5, aliases=("production", "Champion"))]
    assert plan_aliases(with_alias) == {"production": 5, "staging": 3, "champion": 5}


def test_names_are_made_valid_for_modelyard() -> None:
    assert alias_name("Champion") == "champion"
    assert alias_name("blue green!") == "blue-green"
    assert alias_name("2024-best") == "best"
    assert alias_name("42") is None
    assert model_name("Churn Model (v2)") == "Churn-Model-v2"
    with pytest.raises(ImportSourceError):
        model_name("!!!")


def test_imported_versions_are_found_by_model_version_and_run() -> None:
    metas = [(1, {"source": {"kind": "mlflow", "model": "churn", "version": 4, "run_id": "r"}}),
             (2, {"source": {"kind": "file", "path": "/x.joblib"}}), (3, {})]
    assert imported(metas) == {source_key("churn", 4, "r"): 1}


def test_the_artifact_and_whether_it_needs_trust_follow_the_flavor() -> None:
    skops = choose_artifact({"python_function": {}, "sklearn": {
        "pickled_model": "model.skops", "serialization_format": "skops"}})
    assert (skops.flavor, skops.path, skops.safe, skops.by_file) == (
        "sklearn", "model.skops", True, True)
    pickled = choose_artifact({"sklearn": {"pickled_model": "model.pkl",
                                           "serialization_format": "cloudpickle"}})
    assert not pickled.safe and not pickled.by_file
    xgb = choose_artifact({"xgboost": {"data": "model.ubj", "model_format": "ubj"}})
    assert xgb.safe and xgb.by_file
    lgb = choose_artifact({"lightgbm": {"data": "model.lgb"}})
    assert (lgb.fmt, lgb.safe, lgb.by_file) == ("text", True, True)
    lgb_skops = choose_artifact({"lightgbm": {"data": "model.skops",
                                              "serialization_format": "skops"}})
    assert lgb_skops.safe and not lgb_skops.by_file
    pt2 = choose_artifact({"pytorch": {"model_data": "data"}}, ["data/model.pt2"])
    assert (pt2.path, pt2.safe) == ("data/model.pt2", True)
    pth = choose_artifact({"pytorch": {"model_data": "data"}}, ["data/model.pth"])
    assert (pth.path, pth.safe) == ("data/model.pth", False)
    pyfunc = choose_artifact({"python_function": {"python_model": "python_model.pkl"}})
    assert pyfunc.flavor == "python_function" and not pyfunc.safe


def test_a_flavor_modelyard_does_not_take_is_refused_naming_it() -> None:
    with pytest.raises(ImportSourceError, match="prophet"):
        choose_artifact({"prophet": {}, "python_function": {"loader_module": "mlflow.prophet"}})
    with pytest.raises(ImportSourceError, match="save_exported_model"):
        choose_artifact({"keras": {"data": "data", "save_exported_model": True}})


def test_column_and_tensor_signatures_map_to_table_and_tensor() -> None:
    columns = {"inputs": json.dumps([{"type": "double", "name": "a"},
                                     {"type": "long", "name": "n"},
                                     {"type": "string", "name": "city"}])}
    table = map_signature(columns, tensor=False, classes=[0, 1])
    assert table == {"layout": "table", "frame": True, "outputs": [], "classes": [0, 1],
                     "inputs": [{"name": "a", "dtype": "float64", "shape": []},
                                {"name": "n", "dtype": "int64", "shape": []},
                                {"name": "city", "dtype": "string", "shape": []}]}
    spec = {"inputs": json.dumps([{"type": "tensor",
                                   "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}])}
    assert map_signature(spec, tensor=True)["inputs"] == [  # type: ignore[index]
        {"name": "input", "dtype": "float32", "shape": [3]}]
    rows = map_signature(spec, tensor=False)
    assert rows is not None and rows["layout"] == "table" and not rows["frame"]
    assert [f["name"] for f in rows["inputs"]] == ["f0", "f1", "f2"]


def test_a_signature_modelyard_has_no_dtype_for_maps_to_none() -> None:
    assert map_signature(None, tensor=False) is None
    binary = {"inputs": json.dumps([{"type": "binary", "name": "img"}])}
    assert map_signature(binary, tensor=False) is None
    ragged = {"inputs": json.dumps([{"type": "tensor",
                                     "tensor-spec": {"dtype": "float32", "shape": [-1, -1]}}])}
    assert map_signature(ragged, tensor=True) is None


def test_a_local_store_that_does_not_exist_is_refused_before_mlflow_creates_it(
        tmp_path: Path) -> None:
    with pytest.raises(ImportSourceError, match="no MLflow database"):
        check_uri(f"sqlite:///{tmp_path / 'missing.db'}", "--tracking-uri")
    with pytest.raises(ImportSourceError, match="no MLflow store folder"):
        check_uri(str(tmp_path / "mlruns"), "--tracking-uri")
    (tmp_path / "there.db").write_bytes(b"")
    check_uri(f"sqlite:///{tmp_path / 'there.db'}", "--tracking-uri")
    check_uri("http://127.0.0.1:5000", "--tracking-uri")  # reached (or not) by the client
    assert not (tmp_path / "missing.db").exists()
