"""The scheduler precomputes a model's answers after each promotion and on its cron, under a
lease, on SQLite and PostgreSQL registries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.precompute.job import read_manifest, section_of
from modelyard.precompute.stores import open_store
from modelyard.registry import Registry
from modelyard.registry.leases import Leases
from modelyard.registry.rows import now
from modelyard.scheduler import Action, Scheduler
from modelyard.spec import Spec
from modelyard.testing.models import register_hgb, tabular_data

pytestmark = pytest.mark.integration


def population(tmp_path: Path) -> str:
    X, _ = tabular_data(n_rows=40, n_features=4, seed=2)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    df.insert(0, "id", np.arange(40, dtype=np.int64))
    df.to_parquet(tmp_path / "population.parquet")
    return str(tmp_path / "population.parquet")


def precompute_section(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"input": population(tmp_path), "key": "id", "ttl": "1d", **more}


def spec_of(tmp_path: Path, section: dict[str, Any]) -> Spec:
    return Spec.parse({"name": "tab", "train": "train.py:train", "root": tmp_path,
                       "data": {"function": "train.py:load"}, "precompute": section})


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def test_each_promotion_is_precomputed_once(any_registry: Registry, tmp_path: Path) -> None:
    registry = any_registry
    section = precompute_section(tmp_path)
    register_hgb(registry, "tab", max_iter=5, n_features=4, meta={"precompute": section})
    scheduler = Scheduler(registry, {"tab": spec_of(tmp_path, section)}, holder="s1")

    actions = scheduler.tick()
    assert kinds(actions) == ["precompute"], actions
    assert actions[0].message.startswith("precompute:promotion: v1 has no precomputed answers")
    run = registry.list_runs("tab")[0]
    assert (run.kind, run.status, run.version, run.trigger[:21]) == (
        "batch", "succeeded", 1, "precompute:promotion:")
    assert Leases(registry).holder("precompute:tab") is None  # released
    assert scheduler.tick() == []  # v1 has its answers now

    register_hgb(registry, "tab", max_iter=5, n_features=4, seed=1,
                 meta={"precompute": section})
    actions = scheduler.tick()
    assert kinds(actions) == ["precompute"] and actions[0].details["version"] == 2
    store = open_store(registry.db.url)
    try:
        assert set(store.read("tab", 2, ["0", "39"])) == {"0", "39"}
        assert set(store.read("tab", 1, ["0"])) == {"0"}  # v1's stay v1's
    finally:
        store.close()
    assert scheduler.tick() == []


def test_the_cron_refreshes_the_answers(any_registry: Registry, tmp_path: Path) -> None:
    registry = any_registry
    section = precompute_section(tmp_path, schedule="0 2 * * *", on_promotion=False)
    version = register_hgb(registry, "tab", max_iter=5, n_features=4,
                           meta={"precompute": section})
    spec = spec_of(tmp_path, section)

    actions = Scheduler(registry, {"tab": spec}, holder="s1").tick()
    assert kinds(actions) == ["precompute"], actions
    assert actions[0].message.startswith("precompute:schedule: 0 2 * * *")
    first = registry.list_runs("tab")[0]
    assert Scheduler(registry, {"tab": spec}, holder="s1").tick() == []  # not due again today

    tomorrow = now() + timedelta(days=1)
    actions = Scheduler(registry, {"tab": spec}, holder="s1", clock=lambda: tomorrow).tick()
    assert kinds(actions) == ["precompute"]
    second = registry.list_runs("tab")[0]
    assert second.id != first.id and second.details is not None
    assert second.details["resumed_chunks"] == 0  # a refresh, not a resume of the finished run
    manifest = read_manifest(registry, version, section_of(version))
    assert manifest is not None and manifest.complete and manifest.rows == 40


def test_a_held_lease_keeps_a_second_scheduler_out(any_registry: Registry,
                                                    tmp_path: Path) -> None:
    registry = any_registry
    section = precompute_section(tmp_path)
    register_hgb(registry, "tab", max_iter=5, n_features=4, meta={"precompute": section})
    assert Leases(registry).acquire("precompute:tab", "scheduler-a", ttl_s=600)
    actions = Scheduler(registry, {"tab": spec_of(tmp_path, section)}, holder="b").tick()
    assert kinds(actions) == ["skip"] and "scheduler-a holds precompute:tab" in actions[0].message
    assert registry.list_runs("tab") == []
