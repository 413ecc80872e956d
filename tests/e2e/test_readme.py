"""The README's code runs as written: each Python block as a script in an empty folder, and each
YAML block loads through the project loader (a whole ``models:`` file, or a fragment of one model's
spec placed into a model), or, starting ``# serve.yaml``, as a serve config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import modelyard
from modelyard.serving import overrides
from modelyard.spec import Spec, load_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
YAML_BLOCKS = re.findall(r"```ya?ml\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(tmp_path, index):
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=540, check=False)
    assert done.returncode == 0, f"README block {index} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), "every README example prints what it shows"


def test_the_readme_has_yaml_examples():
    assert len(YAML_BLOCKS) >= 2
    assert YAML_BLOCKS.count("") == 0


@pytest.mark.parametrize("index", range(len(YAML_BLOCKS)))
def test_readme_yaml_block_loads(tmp_path, index):
    text = textwrap.dedent(YAML_BLOCKS[index])
    doc = load_yaml(text, where=f"README yaml block {index}")
    assert isinstance(doc, dict) and doc, f"README yaml block {index} is not a mapping"
    if text.startswith("# serve.yaml"):  # a serve config: load it as `modelyard serve` would
        path = tmp_path / "serve.yaml"
        path.write_text(text, encoding="utf-8")
        assert overrides.load(path) == doc["models"]
        return
    if "models" in doc:  # a whole modelyard.yaml: load it as `modelyard train` would
        project = tmp_path / "modelyard.yaml"
        project.write_text(text, encoding="utf-8")
        specs = modelyard.load_project(project)
        assert set(specs) == set(doc["models"])
        return
    # a fragment of one model's spec: every key must be a spec field, and it must validate
    unknown = set(doc) - set(Spec.model_fields)
    assert not unknown, f"README yaml block {index} is neither a project nor spec fields: {unknown}"
    base = {"name": "readme", "train": "train.py:train", "data": {"function": "train.py:load"},
            "metrics": sorted(_metrics_named(doc) - {"drift_share", "p99_ms", "error_rate"})}
    spec = Spec.parse({**base, **doc}, where=f"README yaml block {index}")
    for field, value in doc.items():  # nothing the block says was dropped or misread
        got = getattr(spec, field)
        if hasattr(got, "model_dump"):
            got = got.model_dump(mode="json", exclude_unset=True)
        assert got == value, (field, got, value)


def _metrics_named(fragment: dict) -> set[str]:
    """The metrics a spec fragment refers to, which the model around it must declare."""
    named = {rule["on"] for rule in fragment.get("monitoring", {}).get("alerts", [])}
    named |= set(fragment.get("retrain", {}).get("metric_below", {}))
    gate = fragment.get("gate", {})
    named |= set(gate.get("min", {})) | set(gate.get("max", {}))
    named |= {gate.get("champion", {}).get("metric"), fragment.get("rollout", {}).get("metric")}
    return named - {None}
