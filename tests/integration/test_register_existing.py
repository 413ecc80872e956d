"""Bringing existing models in: ``modelyard register`` and ``Registry.register_model`` with real
frameworks; the registered version answers like the original through ``modelyard.load`` and
through the server app (in-process, ``httpx.ASGITransport``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from click.testing import CliRunner
from sklearn.ensemble import RandomForestClassifier

import modelyard
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import UnsafeArtifactError
from modelyard.pipeline.bring import TRUST_ACTION
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _table(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    y = pd.Series((X.a + 0.5 * X.b - X.c > 0).astype(int), name="label")
    return X, y


async def _served(registry: Registry, ref: str, instances: Any) -> list[Any]:
    """The predictions the server app answers for ``instances`` on version ``ref``."""
    name, _, version = ref.partition(":")
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://modelyard") as client:
            r = await client.post(f"/v1/models/{name}/versions/{version}/predict",
                                  json={"instances": instances})
            assert r.status_code == 200, r.text
            return list(r.json()["predictions"])
    finally:
        await app.shutdown()


def _cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


async def test_a_sklearn_pickle_is_refused_untrusted_and_registered_with_trust(
        tmp_path: Path) -> None:
    X, y = _table()
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    joblib.dump(model, tmp_path / "forest.joblib")
    X.assign(label=y).head(100).to_csv(tmp_path / "sample.csv", index=False)
    home = tmp_path / "home"

    refused = _cli(home, "register", "forest", str(tmp_path / "forest.joblib"),
                   "--data", str(tmp_path / "sample.csv"), "--target", "label")
    assert refused.exit_code == UnsafeArtifactError.exit_code, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to load forest.joblib")
    assert "--trust" in lines[0]

    done = _cli(home, "register", "forest", str(tmp_path / "forest.joblib"), "--data",
                str(tmp_path / "sample.csv"), "--target", "label", "--trust",
                "--metrics", "accuracy=0.93", "--description", "from the notebook")
    assert done.exit_code == 0, done.output
    assert "registered forest:1 (sklearn, classification)" in done.output

    with Registry.open(Settings.from_env(home=home)) as registry:
        version = registry.get_version("forest", 1)
        assert version.metrics == {"accuracy": 0.93}
        assert version.meta["source"]["trusted"] is True
        assert version.meta["source"]["format"] == "pickle"
        assert version.reference_stats is not None and version.data_fingerprint
        assert [f["name"] for f in version.signature["inputs"]] == ["a", "b", "c", "d"]
        events = registry.audit_events("forest:1", action=TRUST_ACTION)
        assert len(events) == 1
        assert events[0].details["sha256"] == version.meta["source"]["sha256"]
        assert events[0].details["trusted"] is True

        rows = X.tail(50)
        want = model.predict(rows).tolist()
        loaded = modelyard.load("forest:1", registry=registry)
        assert loaded.predict(rows.to_dict("records")).tolist() == want
        assert await _served(registry, "forest:1", rows.to_dict("records")) == want


async def test_an_xgboost_json_model_from_python(registry: Registry, tmp_path: Path) -> None:
    X, y = _table(seed=1)
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(X, y)
    model.save_model(tmp_path / "booster.json")

    version = registry.register_model("boost", tmp_path / "booster.json", sample=X.head(80))
    assert (version.flavor, version.meta["task"]) == ("xgboost", "classification")
    assert version.meta["source"]["format"] == "xgboost.json"
    assert version.meta["source"]["trusted"] is False
    assert version.meta["serving"] == {} and "monitoring" in version.meta

    rows = X.tail(40)
    want = model.predict(rows).tolist()
    loaded = modelyard.load(version.ref, registry=registry)
    assert loaded.predict(rows.to_dict("records")).tolist() == want
    assert await _served(registry, version.ref, rows.to_dict("records")) == want


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                          torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


async def test_a_torch_export_archive_through_the_cli(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    sample = np.random.default_rng(2).normal(size=(64, 4)).astype(np.float32)
    program = torch.export.export(net, (torch.as_tensor(sample[:8]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "net.pt2")
    np.save(tmp_path / "sample.npy", sample)
    home = tmp_path / "home"

    done = _cli(home, "register", "net", str(tmp_path / "net.pt2"), "--data",
                str(tmp_path / "sample.npy"), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["flavor"] == "torch"

    with torch.no_grad():
        want = net(torch.as_tensor(sample[:16])).numpy()
    with Registry.open(Settings.from_env(home=home)) as registry:
        loaded = modelyard.load("net:1", registry=registry)
        got = np.asarray(loaded.predict(sample[:16].tolist()))
        np.testing.assert_allclose(got, want, atol=1e-5)
        served = np.asarray(await _served(registry, "net:1", sample[:16].tolist()))
        np.testing.assert_allclose(served, want, atol=1e-5)


def test_a_torchscript_file_and_a_lightgbm_text_model(registry: Registry, tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = _Net().eval()
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    sample = np.random.default_rng(3).normal(size=(32, 4)).astype(np.float32)
    version = registry.register_model("scripted", tmp_path / "net.pt", sample=sample)
    assert version.meta["format"] == "torchscript"
    with torch.no_grad():
        want = net(torch.as_tensor(sample)).numpy()
    got = modelyard.load(version.ref, registry=registry).predict(sample.tolist())
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)

    X, y = _table(seed=4)
    booster = lgb.train({"objective": "regression", "verbose": -1},
                        lgb.Dataset(X, y.astype(float)), num_boost_round=10)
    booster.save_model(str(tmp_path / "model.txt"))
    version = registry.register_model("gbm", tmp_path, sample=X.head(50))  # the folder
    assert version.flavor == "lightgbm"
    got = modelyard.load(version.ref, registry=registry).predict(X.tail(20).to_dict("records"))
    np.testing.assert_allclose(np.asarray(got, dtype=float), booster.predict(X.tail(20)),
                               rtol=1e-6)


def test_a_plain_pickle_is_refused_from_python_and_nothing_is_registered(
        registry: Registry, tmp_path: Path) -> None:
    X, y = _table(seed=5)
    joblib.dump(RandomForestClassifier(n_estimators=3).fit(X, y), tmp_path / "m.pkl")
    with pytest.raises(UnsafeArtifactError, match=r"refusing to load m\.pkl"):
        registry.register_model("m", tmp_path / "m.pkl", sample=X)
    assert registry.list_models() == []
