"""``modelyard card``: a version's model card generated from a real registry — two trained
versions, a gate against the champion, a drift check before the promotion, the alias moves —
in Markdown and HTML."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry

pytestmark = pytest.mark.integration

TRAIN = textwrap.dedent('''
    import numpy as np
    from sklearn.linear_model import LogisticRegression


    def load():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 3))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        return X, y


    def train(X, y, params):
        return LogisticRegression().fit(X, y)
''')

PROJECT = textwrap.dedent('''
    models:
      scorer:
        train: train.py:train
        data: {function: train.py:load}
        description: "Scores <b>applications</b> | for review"
        metrics: [accuracy]
        gate: {min: {accuracy: 0.7}, champion: {metric: accuracy, max_drop: 0.05}}
''')


def _cli(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args])


@pytest.fixture()
def trained(tmp_path: Path) -> Path:
    """A home with scorer:1 (promoted), a drift check on it, then scorer:2 promoted."""
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "modelyard.yaml").write_text(PROJECT)
    home = tmp_path / "home"
    project = str(tmp_path / "modelyard.yaml")
    first = _cli(home, "train", "scorer", "-p", project)
    assert first.exit_code == 0, first.output
    with Registry.open(Settings.from_env(home=home)) as registry:
        monitor = Monitor(registry)
        rng = np.random.default_rng(1)
        monitor.log_predictions([
            {"request_id": f"r{i}", "model": "scorer", "version": 1, "variant": "production",
             "at": datetime.now(UTC), "latency_ms": 1.0, "rows": 1,
             "inputs": {"columns": {f"f{j}": [float(rng.normal(3.0))] for j in range(3)}},
             "outputs": {"predictions": [1]}} for i in range(150)])
        monitor.check_drift("scorer", version=1, actor="reviewer")
    second = _cli(home, "train", "scorer", "-p", project, "--force")
    assert second.exit_code == 0, second.output
    return home


def test_card_of_a_promoted_version_tells_its_story(trained: Path) -> None:
    result = _cli(trained, "card", "scorer:2")
    assert result.exit_code == 0, result.output
    card = result.stdout
    assert card.startswith("# Model card: scorer:2\n")
    # the description is the trainer's text, escaped: no markup reaches a renderer
    assert r"Scores \<b>applications\</b> \| for review" in card
    assert "## Data and lineage" in card and "training run" in card
    assert "The gate passed, against the champion scorer:1." in card
    assert "| min | accuracy" in card and "within min 0.7" in card
    assert "## Fairness" in card and "No fairness rule was declared" in card
    # the drift that reviewers saw when version 2 went live: the check of version 1's traffic
    assert "From the last check before promotion to production" in card
    assert "(version 1," in card and "150 logged rows): drift, 100% of features drifted" in card
    assert "pointed production at this version" in card
    assert ": version.register" in card


def test_card_of_the_replaced_version_and_as_html(trained: Path, tmp_path: Path) -> None:
    old = _cli(trained, "card", "scorer:1")
    assert old.exit_code == 0, old.output
    assert "moved production away from this version" in old.stdout
    assert "The gate passed." in old.stdout  # no champion yet for the first version
    assert "No drift check of scorer ran before its promotion on" in old.stdout

    out = tmp_path / "card.html"
    written = _cli(trained, "card", "scorer@production", "--out", str(out))
    assert written.exit_code == 0, written.output
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<h1>Model card: scorer:2</h1>" in page
    assert "Scores &lt;b&gt;applications&lt;/b&gt; | for review" in page
    assert "<script" not in page and "<table>" in page
    assert not list(tmp_path.glob(".card.html.*"))  # the temporary file is gone


def test_card_errors_are_one_line(trained: Path, tmp_path: Path) -> None:
    missing = _cli(trained, "card", "ghost")
    assert missing.exit_code == 3
    assert [line for line in missing.output.splitlines() if line.strip()] == [
        missing.output.strip()] and "ghost" in missing.output
    nowhere = _cli(trained, "card", "scorer", "--out", str(tmp_path / "no" / "card.md"))
    assert nowhere.exit_code == 2 and "does not exist" in nowhere.output
