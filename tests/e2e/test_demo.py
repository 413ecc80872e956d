"""End to end: ``modelyard demo`` and the commands it suggests, as subprocesses in a temp folder.

The demo runs twice (a rerun must succeed too), then each model predicts its shipped example
input, a drifted fraud batch is generated and fraud retrained, and production is rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "fraud": ("sklearn", [0, 1]),
    "digits": ("torch", [0, 3, 1]),
    "tickets": ("tensorflow", ["billing", "technical", "shipping"]),
}


@dataclass
class Demo:
    folder: Path
    runs: list[subprocess.CompletedProcess[str]]


def _executable() -> str:
    script = Path(sys.executable).parent / "modelyard"
    return str(script) if script.exists() else shutil.which("modelyard") or "modelyard"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env["COLUMNS"] = "200"
    return env


def modelyard(folder: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the installed ``modelyard`` command in ``folder`` (its registry: ./.modelyard)."""
    return subprocess.run([_executable(), *args], cwd=folder, env=_env(), text=True,
                          capture_output=True, timeout=timeout, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("demo")
    shutil.copytree(EXAMPLES, folder / "examples",
                    ignore=shutil.ignore_patterns("data", "__pycache__"))
    runs = [modelyard(folder, "demo"), modelyard(folder, "demo")]
    return Demo(folder, runs)


def test_demo_runs_twice_and_exits_0(demo: Demo) -> None:
    first, second = demo.runs
    ok(first)
    assert "generated the first fraud batch" in first.stdout
    assert "what to try next" in first.stdout
    assert "modelyard predict fraud@production --input examples/fraud/example_input.json" in (
        first.stdout)
    ok(second)
    assert "generated" not in second.stdout  # the batch from the first run is reused
    for name in EXPECTED:  # each model: a new version, or production kept by its gate
        assert f"{name}:2" in second.stdout or "kept production" in second.stdout
    assert (demo.folder / "examples" / "fraud" / "data" / "batch-000.csv").is_file()


def test_three_models_with_production_aliases(demo: Demo) -> None:
    models = json.loads(ok(modelyard(demo.folder, "models", "--json")).stdout)
    assert sorted(m["name"] for m in models) == sorted(EXPECTED)
    for model in models:
        assert "production" in model["aliases"], model
        shown = json.loads(ok(modelyard(demo.folder, "show", model["name"], "--json")).stdout)
        assert shown["flavor"] == EXPECTED[model["name"]][0]
        assert shown["metrics"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_predict_the_shipped_example_inputs(demo: Demo, name: str) -> None:
    source = f"examples/{name}/example_input.json"
    result = ok(modelyard(demo.folder, "predict", f"{name}@production", "--input", source,
                          "--scores"))
    out = json.loads(result.stdout)
    assert out["predictions"] == EXPECTED[name][1]
    assert len(out["scores"]) == len(out["predictions"])


def test_drifted_batch_retrain_and_rollback(demo: Demo) -> None:
    folder = demo.folder
    generated = subprocess.run(
        [sys.executable, "examples/fraud/generate.py", "--drift", "0.8", "--rows", "4000"],
        cwd=folder, text=True, capture_output=True, timeout=300, check=False)
    ok(generated)
    assert "batch-001.csv" in generated.stdout

    before = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    retrain = modelyard(folder, "train", "fraud", "--project", "examples/modelyard.yaml")
    assert retrain.returncode in (0, 12), retrain.stdout + retrain.stderr  # 12: gate said no
    if retrain.returncode == 12:
        assert retrain.stderr.startswith("error: ") and "rejected" in retrain.stderr
    after = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    assert after == (before if retrain.returncode == 12 else before + 1)
    ok(modelyard(folder, "predict", "fraud", "--input", "examples/fraud/example_input.json"))

    versions = json.loads(ok(modelyard(folder, "versions", "fraud", "--json")).stdout)
    assert len(versions) >= 2  # the demo ran twice or the gate let the retrain through
    rolled = ok(modelyard(folder, "rollback", "fraud", "--reason", "e2e"))
    assert "rolled back" in rolled.stdout
    now = json.loads(ok(modelyard(folder, "show", "fraud", "--json")).stdout)["version"]
    assert now != after
    history = json.loads(ok(modelyard(folder, "history", "fraud", "--json")).stdout)
    assert history[0]["action"] == "rollback" and history[0]["reason"] == "e2e"
    ok(modelyard(folder, "predict", "fraud", "--input", "examples/fraud/example_input.json"))
