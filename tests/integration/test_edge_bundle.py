"""``modelyard export --bundle``: the bundle installs into a bare virtual environment (only
onnxruntime and numpy, from the local package index) and answers as the registered version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from click.testing import CliRunner
from sklearn.ensemble import HistGradientBoostingClassifier

import modelyard
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.deploy.bundle import package_name
from modelyard.errors import ConflictError
from modelyard.registry import Registry

pytestmark = pytest.mark.integration

PROBE = """
import json, sys
import numpy
try:
    import sklearn  # noqa: F401
    sys.exit("scikit-learn is importable: the environment is not bare")
except ImportError:
    pass
try:
    import modelyard  # noqa: F401
    sys.exit("modelyard is importable: the environment is not bare")
except ImportError:
    pass
import {package}
model = {package}.load()
rows = json.load(open(sys.argv[1]))
out = {{"labels": model.predict(rows).tolist()}}
proba = model.predict_proba(rows)
out["proba"] = None if proba is None else proba.tolist()
print(json.dumps(out))
"""


def _run(*args: str | Path, timeout: float = 600) -> str:
    # without PYTHONPATH: this process's may point at modelyard's sources
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with onnxruntime and numpy only (no modelyard, no sklearn)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "onnxruntime", "numpy")
    return python


def _install_and_predict(python: Path, bundle: Path, package: str, rows: list[dict[str, float]],
                         tmp_path: Path) -> dict[str, list[object]]:
    # pip builds it as for any user: setuptools comes into an isolated build environment from
    # the package index (a local one here), and only the package lands in the venv
    _run(python, "-m", "pip", "install", "--quiet", bundle)
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "probe.py").write_text(PROBE.format(package=package))
    return dict(json.loads(_run(python, tmp_path / "probe.py", tmp_path / "rows.json")))


def test_a_bundle_answers_like_the_registered_version_in_a_bare_venv(
        bare_python: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(400, 4)), columns=["amount", "age", "visits", "score"])
    y = (X.amount + X.age * X.visits > 0).astype(int) + (X.score > 1).astype(int)
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as registry:
        registry.register_model("fraud-edge", model, sample=X, labels=y)

    done = CliRunner().invoke(main, ["--home", str(home), "export", "fraud-edge:1",
                                     "--bundle", str(tmp_path / "bundle")])
    assert done.exit_code == 0, done.output
    package = package_name("fraud-edge")
    assert f"bundled fraud-edge:2 into {tmp_path / 'bundle'} (package {package})" in done.output
    signature = json.loads((tmp_path / "bundle" / package / "signature.json").read_text())
    assert signature["derived_from"] == "fraud-edge:1"
    assert signature["parity"]["parity_label_agreement"] == 1.0

    rows = X.tail(80)
    records = rows.to_dict("records")
    answered = _install_and_predict(bare_python, tmp_path / "bundle", package, records, tmp_path)
    assert answered["labels"] == model.predict(rows).tolist()
    np.testing.assert_allclose(np.asarray(answered["proba"]), model.predict_proba(rows),
                               atol=1e-5)
    with Registry.open(Settings.from_env(home=home)) as registry:
        native = modelyard.load("fraud-edge:1", registry=registry).predict(records)
        assert answered["labels"] == native.tolist()

        again = CliRunner().invoke(main, ["--home", str(home), "export", "fraud-edge:2",
                                          "--bundle", str(tmp_path / "bundle")])
        assert again.exit_code == ConflictError.exit_code and "not an empty folder" in again.output


def test_a_regressor_bundle_from_an_onnx_version(bare_python: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    model = xgb.XGBRegressor(n_estimators=20).fit(X, X.a * 3 - X.b)
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as registry:
        registry.register_model("price", model, sample=X)
    assert CliRunner().invoke(main, ["--home", str(home), "export", "price:1"]).exit_code == 0
    done = CliRunner().invoke(main, ["--home", str(home), "export", "price:2", "--bundle",
                                     str(tmp_path / "b"), "--package", "price_edge"])
    assert done.exit_code == 0, done.output
    rows = X.head(30)
    answered = _install_and_predict(bare_python, tmp_path / "b", "price_edge",
                                    rows.to_dict("records"), tmp_path)
    np.testing.assert_allclose(np.asarray(answered["labels"]), model.predict(rows), rtol=1e-5,
                               atol=1e-5)
    assert answered["proba"] is None
