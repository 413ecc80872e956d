"""The scheduler on real training runs: triggers, retraining, auto rollout, leases, recovery."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.errors import NotFoundError
from modelyard.monitoring.monitor import DriftCheck, Monitor
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.registry.leases import Leases
from modelyard.registry.owners import Owner, this_host
from modelyard.registry.tables import RunRow
from modelyard.rollout.deployments import Deployments
from modelyard.scheduler import STOPPED, Action, Scheduler
from modelyard.spec import Spec

pytestmark = pytest.mark.integration

TRAIN_PY = textwrap.dedent('''
    import numpy as np


    def load():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 3))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        return X, y


    def train(X, y, params):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression().fit(X, y)
''')

YAML = textwrap.dedent('''
    models:
      clf:
        train: train.py:train
        data: {function: train.py:load}
        metrics: [accuracy]
        gate: {min: {accuracy: 0.7}}
        retrain: {schedule: "0 3 * * *"}
      quiet:
        train: train.py:train
        data: {function: train.py:load}
''')


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN_PY)
    (folder / "modelyard.yaml").write_text(YAML)
    return folder


def make_spec(root: Path, **fields: Any) -> Spec:
    return Spec.parse({"name": "clf", "train": "train.py:train",
                       "data": {"function": "train.py:load"}, "metrics": ["accuracy"],
                       "gate": {"min": {"accuracy": 0.7}}, "root": root, **fields})


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def test_a_due_schedule_retrains_once(any_registry: Registry, root: Path):
    registry = any_registry
    spec = make_spec(root, retrain={"schedule": "0 3 * * *"})
    scheduler = Scheduler(registry, {"clf": spec}, holder="s1")
    actions = scheduler.tick()
    assert kinds(actions) == ["trigger", "retrain"], actions
    assert actions[0].message == "schedule: 0 3 * * *"
    assert actions[1].message.startswith("registered clf:1, promoted to production")

    run = registry.list_runs("clf")[0]
    assert run.status == "succeeded" and run.trigger == "schedule: 0 3 * * *"
    assert run.created_by == "scheduler" and run.version == 1
    assert registry.resolve("clf@production").version == 1
    triggered = [e for e in registry.audit_events("clf") if e.action == "retrain.triggered"]
    assert [(e.actor, e.details) for e in triggered] == [
        ("scheduler", {"reason": "schedule: 0 3 * * *"})]
    events = Monitor(registry).events("clf")
    assert [(e.kind, e.name) for e in events] == [("retrain", "schedule"), ("trigger", "schedule")]
    assert events[0].details["outcome"] == "registered" and events[0].details["version"] == 1
    assert Leases(registry).holder("retrain:clf") is None  # released

    assert scheduler.tick() == []  # it ran after the last due time
    assert len(registry.list_runs("clf")) == 1


def test_a_retrain_on_unchanged_data_says_so_and_registers_nothing(registry: Registry,
                                                                    root: Path):
    spec = make_spec(root, retrain={"new_labels": 5, "auto_rollout": True})
    first = run_pipeline(spec, registry, actor="ci")
    Monitor(registry).feedback("clf", {f"r{i}": 1 for i in range(6)})
    actions = Scheduler(registry, {"clf": spec}, holder="s1").tick()
    assert kinds(actions) == ["trigger", "retrain"], actions
    assert actions[1].message == "unchanged: identical to clf:1; nothing registered"
    assert actions[1].details["outcome"] == "unchanged"
    assert [v.version for v in registry.list_versions("clf")] == [1]
    with pytest.raises(NotFoundError):
        Deployments(registry).get("clf")  # and nothing to roll out
    run = registry.list_runs("clf")[0]
    assert run.id != first.run.id and (run.status, run.version) == ("unchanged", None)
    assert Monitor(registry).events("clf", kind="retrain")[0].details["outcome"] == "unchanged"


def test_auto_rollout_starts_a_canary_and_waits_for_it(registry: Registry, root: Path):
    spec = make_spec(root, retrain={"new_labels": 5, "auto_rollout": True},
                     rollout={"strategy": "canary", "steps": [10, 100], "every_s": 120})
    # v1 in production, trained with other params: the retrain has something new to learn
    run_pipeline(make_spec(root, params={"C": 0.5}), registry, actor="ci")
    monitor = Monitor(registry)
    monitor.feedback("clf", {f"r{i}": 1 for i in range(6)})
    seen: list[Action] = []
    scheduler = Scheduler(registry, {"clf": spec}, holder="s1", on_action=seen.append)

    actions = scheduler.tick()
    assert seen == actions and kinds(actions) == ["trigger", "retrain"], actions
    assert actions[0].message == "labels: 6 new"
    assert registry.resolve("clf@production").version == 1  # the rollout decides, not the run
    deployment = Deployments(registry).get("clf")
    assert deployment.active and deployment.strategy == "canary"
    assert (deployment.stable_version, deployment.candidate_version) == (1, 2)
    assert deployment.steps == (10, 100) and deployment.every_s == 120
    assert deployment.created_by == "scheduler:s1"
    assert deployment.rules["metric"] == "accuracy"
    assert actions[1].details["rollout"] == deployment.id
    assert f"canary rollout {deployment.id} progressing" in actions[1].message
    run = registry.list_runs("clf")[0]
    assert run.trigger == "labels: 6 new" and not run.promoted

    monitor.feedback("clf", {f"s{i}": 0 for i in range(10)})
    again = scheduler.tick()
    assert kinds(again) == ["skip"]
    assert f"while rollout {deployment.id} of v2 is progressing" in again[0].message
    assert sorted(v.version for v in registry.list_versions("clf")) == [1, 2]


def test_a_declared_rollout_starts_the_way_train_starts_it(registry: Registry, root: Path):
    """Without auto_rollout, retraining used to move production at once, whatever rollout
    the spec declared."""
    spec = make_spec(root, retrain={"new_labels": 5},
                     rollout={"strategy": "shadow", "steps": [50], "every_s": 30})
    # the first version, straight to production; other params, so the retrain is no repeat
    run_pipeline(spec.model_copy(update={"params": {"C": 0.5}}), registry, actor="ci")
    assert registry.resolve("clf@production").version == 1
    Monitor(registry).feedback("clf", {f"r{i}": 1 for i in range(6)})
    actions = Scheduler(registry, {"clf": spec}, holder="s1").tick()
    assert kinds(actions) == ["trigger", "retrain"], actions
    assert registry.resolve("clf@production").version == 1
    deployment = Deployments(registry).get("clf")
    assert (deployment.strategy, deployment.steps, deployment.every_s) == ("shadow", (50,), 30)
    assert deployment.candidate_version == 2 and deployment.rules["metric"] == "accuracy"
    assert f"shadow rollout {deployment.id} progressing" in actions[1].message


def test_a_held_lease_blocks_a_second_scheduler(any_registry: Registry, root: Path):
    registry = any_registry
    spec = make_spec(root, retrain={"schedule": "0 3 * * *"})
    assert Leases(registry).acquire("retrain:clf", "scheduler-a", ttl_s=600)
    actions = Scheduler(registry, {"clf": spec}, holder="scheduler-b").tick()
    assert kinds(actions) == ["skip"]
    assert "scheduler-a holds retrain:clf" in actions[0].message
    assert registry.list_runs("clf") == []
    assert Leases(registry).holder("retrain:clf") == "scheduler-a"


def test_runs_left_by_a_dead_scheduler_are_finished_as_failed(any_registry: Registry, root: Path):
    registry = any_registry
    spec = make_spec(root, retrain={"schedule": "0 3 * * *"})
    stale = registry.start_run("clf", trigger="schedule: 0 3 * * *", actor="scheduler")
    leases = Leases(registry)
    assert leases.acquire("retrain:clf", "alive", ttl_s=600)
    scheduler = Scheduler(registry, {"clf": spec}, holder="s2")
    assert scheduler.tick() == []  # a live holder: its run is not stale
    assert registry.get_run(stale.id).status == "running"

    leases.release("retrain:clf", "alive")
    dead = Leases(registry, clock=lambda: datetime.now(UTC) - timedelta(hours=2))
    assert dead.acquire("retrain:clf", "dead", ttl_s=60)  # long expired
    actions = scheduler.tick()
    assert kinds(actions) == ["recover"]
    run = registry.get_run(stale.id)
    assert run.status == "failed" and run.failure_reason == STOPPED
    assert Leases(registry).holder("retrain:clf") is None


def test_alerts_and_a_metric_trigger_from_logged_predictions(registry: Registry, root: Path):
    spec = make_spec(root, retrain={"metric_below": {"accuracy": 0.8}}, monitoring={
        "window_s": 3600, "min_rows": 5,
        "alerts": [{"on": "accuracy", "below": 0.8, "severity": "critical"},
                   {"on": "p99_ms", "above": 100}]})
    run_pipeline(make_spec(root, params={"C": 0.5}), registry, actor="ci")  # other params
    # the scheduler's clock is two hours on, past the cooldown after that run
    later = datetime.now(UTC) + timedelta(hours=2)
    monitor = Monitor(registry)
    monitor.log_predictions([
        {"request_id": f"q{i}", "model": "clf", "version": 1, "variant": "stable",
         "at": later - timedelta(minutes=30), "latency_ms": 400.0, "rows": 1,
         "inputs": {"x0": [0.1]}, "outputs": {"predictions": [0]}} for i in range(8)])
    monitor.feedback("clf", {f"q{i}": 1 for i in range(8)})  # every answer wrong
    scheduler = Scheduler(registry, {"clf": spec}, holder="s1", clock=lambda: later)

    actions = scheduler.tick()
    assert kinds(actions) == ["alert", "alert", "trigger", "retrain"], actions
    assert actions[0].message == "accuracy below 0.8 firing: accuracy 0 below 0.8"
    assert actions[1].message == "p99_ms above 100.0 firing: p99_ms 400 above 100"
    assert actions[2].message == "metric: accuracy 0 < 0.8"
    assert registry.resolve("clf@production").version == 2
    alerts = monitor.events("clf", kind="alert")
    assert {e.severity for e in alerts} == {"critical", "warning"}

    # v2 has no traffic yet: no values, so the alerts keep firing quietly and nothing retrains
    assert scheduler.tick() == []


class DriftingMonitor(Monitor):
    """The real monitor, with drift checks counted and answered with a fixed share."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.checks = 0
        self.share = 0.75

    def check_drift(self, model: str, **kw: Any) -> DriftCheck:
        self.checks += 1
        at = datetime.now(UTC)
        return DriftCheck(self.checks, model, 1, at, None, at, 500, self.share,
                          self.share >= 0.5, {})


def test_drift_is_checked_at_most_once_a_minute(registry: Registry, root: Path,
                                                artifact_dir: Any):
    registry.register("clf", artifact_dir(), flavor="sklearn")
    registry.set_alias("clf", "production", 1)
    spec = make_spec(root, monitoring={"alerts": [{"on": "drift_share", "above": 0.5}]})
    clock = [datetime.now(UTC)]
    monitor = DriftingMonitor(registry)
    scheduler = Scheduler(registry, {"clf": spec}, interval_s=10, clock=lambda: clock[0],
                          monitor=monitor)
    first = scheduler.tick()
    assert [a.message for a in first] == ["drift_share above 0.5 firing: drift_share 0.75 "
                                          "above 0.5"]
    clock[0] += timedelta(seconds=30)
    assert scheduler.tick() == [] and monitor.checks == 1
    clock[0] += timedelta(seconds=31)
    assert scheduler.tick() == [] and monitor.checks == 2
    monitor.share = 0.25
    clock[0] += timedelta(seconds=59)
    assert scheduler.tick() == [] and monitor.checks == 2  # the last share stands meanwhile
    clock[0] += timedelta(seconds=1)
    resolved = scheduler.tick()
    assert [a.message for a in resolved] == ["drift_share 0.25, drift_share above 0.5 resolved"]
    assert resolved[0].details == {"severity": "info", "state": "resolved",
                                   "rule": "drift_share above 0.5"}


def test_run_loops_until_stopped(registry: Registry, root: Path, artifact_dir: Any):
    registry.register("clf", artifact_dir(), flavor="sklearn")
    registry.set_alias("clf", "production", 1)
    spec = make_spec(root, monitoring={"alerts": [{"on": "drift_share", "above": 0.5}]})
    fired = threading.Event()
    scheduler = Scheduler(registry, {"clf": spec}, interval_s=0.05,
                          monitor=DriftingMonitor(registry), on_action=lambda a: fired.set())
    stop = threading.Event()
    loop = threading.Thread(target=scheduler.run, args=(stop,))
    loop.start()
    assert fired.wait(30)
    stop.set()
    loop.join(10)
    assert not loop.is_alive()


def test_the_cli_runs_one_pass(root: Path, tmp_path: Path):
    home = str(tmp_path / "home")
    project = str(root / "modelyard.yaml")
    result = CliRunner().invoke(main, ["--home", home, "scheduler", "--project", project,
                                       "--once"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].endswith("clf trigger: schedule: 0 3 * * *")
    assert "clf retrain: registered clf:1, promoted to production" in lines[1]
    again = CliRunner().invoke(main, ["--home", home, "scheduler", "-p", project, "--once"])
    assert again.exit_code == 0, again.output
    [line] = again.output.splitlines()  # it did nothing, and says why
    assert re.search(r"clf idle: not retraining: schedule '0 3 \* \* \*' not due until "
                     r"\d{4}-\d\d-\d\d 03:00 UTC$", line), line


def test_once_says_for_each_model_why_it_did_not_act(registry: Registry, root: Path):
    specs = {
        "clf": make_spec(root, retrain={"drift_share": 0.3, "new_labels": 50}),
        "watched": make_spec(root, name="watched",
                             monitoring={"alerts": [{"on": "p99_ms", "above": 100}]}),
        "busy": make_spec(root, name="busy", retrain={"schedule": "0 3 * * *"}),
    }
    for name in ("clf", "watched", "busy"):
        run_pipeline(specs[name], registry)
    first = registry.resolve("busy")
    registry.register("busy", registry.artifact_path(first), flavor=first.flavor,
                      meta=dict(first.meta))
    deployment = Deployments(registry).start("busy", 2, "canary")

    def clock() -> datetime:  # a day on: busy's schedule is due again
        return datetime.now(UTC) + timedelta(days=1)

    seen: list[Action] = []
    actions = Scheduler(registry, specs, clock=clock, explain=True, on_action=seen.append).tick()
    assert seen == actions
    said = {a.model: (a.kind, a.message) for a in actions}
    assert said["clf"] == ("idle", "not retraining: drift: no drift value yet (too few logged "
                                   "rows in the window); only 0 new labels of 50")
    assert said["watched"] == ("idle", "not retraining: no retrain policy in the spec")
    assert said["busy"][0] == "skip"
    assert (f"not retraining while rollout {deployment.id} of v2 is progressing"
            in said["busy"][1])
    # without explain (the long-running loop) nothing is said when nothing is done
    quiet = Scheduler(registry, {"watched": specs["watched"]}).tick()
    assert quiet == []


def test_a_run_whose_process_is_gone_is_finished_by_the_scheduler(registry: Registry,
                                                                   root: Path):
    spec = make_spec(root, retrain={"schedule": "0 3 * * *"})
    gone = subprocess.Popen(["true"])
    gone.wait()
    run = registry.start_run("clf", trigger="manual", owner=Owner(this_host(), gone.pid, None))
    # read straight from the table: the registry's own reads would finish it first
    with registry.db.session() as s:
        assert s.get(RunRow, run.id).status == "running"
    actions = Scheduler(registry, {"clf": spec}, explain=True).tick()
    assert kinds(actions) == ["recover", "idle"], actions
    reason = f"abandoned: process {gone.pid} on {this_host()} is gone"
    assert actions[0].message == f"run {run.id[:8]} finished as failed: {reason}"
    assert registry.get_run(run.id).failure_reason == reason


@pytest.mark.parametrize(("args", "says"), [
    (["--model", "nope"], "nope not declared in"),
    (["--model", "quiet"], "nothing to watch: no model named"),
    (["--interval", "soon"], "duration 'soon' is not valid"),
])
def test_the_cli_refuses_what_it_cannot_do(root: Path, tmp_path: Path, args: list[str],
                                           says: str):
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "scheduler",
                                       "-p", str(root / "modelyard.yaml"), "--once", *args])
    assert result.exit_code == 2
    assert says in result.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_cli_loop_cleanly(root: Path, tmp_path: Path, sig: int):
    command = Path(sys.executable).parent / "modelyard"
    proc = subprocess.Popen(
        [str(command), "--home", str(tmp_path / "home"), "scheduler",
         "-p", str(root / "modelyard.yaml"), "--model", "clf", "--interval", "1h"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the pass that trains runs before the loop waits
        assert first.startswith("watching clf every 1h"), first
        deadline = time.monotonic() + 120
        while not any(r.status == "succeeded" for r in _runs(tmp_path / "home")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "clf retrain: registered clf:1" in out and out.endswith("scheduler stopped\n")


def _runs(home: Path) -> list[Any]:
    from modelyard.config import Settings

    with Registry.open(Settings.from_env(home=home)) as registry:
        return registry.list_runs("clf")
