"""A candidate that answers fast and without errors but is wrong more often is rolled back on the
labels clients feed back: prediction log -> feedback -> the declared metric per variant ->
rollout analysis, through a real server process, with no failed client request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.rollout.deployments import Deployments
from modelyard.testing import (
    ServerProcess,
    register_constant,
    register_hgb,
    tabular_data,
)

pytestmark = pytest.mark.integration
N_FEATURES = 6


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "quality", max_iter=30, n_features=N_FEATURES,
                     meta={"metrics": ["accuracy"]})
        # always answers 0: as fast and error-free as stable, right only on the 0 rows
        register_constant(reg, "quality", 0, n_features=N_FEATURES, promote=False,
                          meta={"metrics": ["accuracy"]})
    return home


@pytest.fixture()
def server(home: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(home)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("strategy", ["canary", "shadow"])
def test_a_less_accurate_candidate_is_rolled_back_on_fed_back_labels(
        home: Path, server: ServerProcess, strategy: str) -> None:
    """Canary: the candidate's own answers are labeled. Shadow: clients only ever see stable's
    answers, but the candidate's shadow answers are logged under the same request ids, so the
    same labels judge it."""
    X, y = tabular_data(n_rows=4000, n_features=N_FEATURES, seed=11)
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        deps = Deployments(reg)
        steps = [50, 100] if strategy == "canary" else [100]
        d = deps.start("quality", candidate=2, strategy=strategy, steps=steps, every_s=1.0,
                       rules={"metric": "accuracy", "min_labels": 40, "min_requests": 20,
                              "latency_floor_s": 1.0, "max_metric_regression": 0.05,
                              "require_labels": True}, actor="user:tester")
        failures = 0
        variants: dict[str, int] = {}
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for start in range(0, len(X), 40):
                labels = []
                for i in range(start, start + 40):
                    rid = uuid.uuid4().hex
                    r = client.post("/v1/models/quality/predict",
                                    json={"instances": [X[i].tolist()]},
                                    headers={"X-Request-Id": rid})
                    if r.status_code != 200:
                        failures += 1
                        continue
                    variant = r.headers["x-model-variant"]
                    variants[variant] = variants.get(variant, 0) + 1
                    labels.append({"request_id": rid, "label": int(y[i])})
                fed = client.post("/v1/models/quality/feedback", json={"labels": labels})
                assert fed.status_code == 200, fed.text
                if not deps.get("quality").active:
                    break
        final = deps.get("quality")
        assert failures == 0
        assert final.state == "rolled_back", final
        assert variants.get("stable", 0) > 0
        assert (variants.get("candidate", 0) > 0) == (strategy == "canary")
        rollback = deps.history("quality")[0]
        assert rollback.actor == "analysis"
        assert "accuracy" in rollback.reason
        assert reg.get_model("quality").aliases["production"] == 1
        assert final.id == d.id
