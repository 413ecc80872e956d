"""The scheduler: watch declared models, alert, retrain on a schedule or a trigger, roll out.

Each :meth:`Scheduler.tick`, for every model whose spec has a ``retrain:`` policy or alert rules:

1. gather what monitoring knows over the last ``monitoring.window_s``: the production version's
   metrics from fed-back labels, the share of drifted features (a drift check at most once a
   minute), p99 latency and error rate, and labels received since the last run;
2. announce alert rules that start or stop firing (:class:`~modelyard.monitoring.alerts.Alerter`);
3. decide whether to retrain (:func:`retrain_decision`, pure): the cron ``schedule`` came due,
   ``drift_share`` or ``metric_below`` crossed, or ``new_labels`` arrived; or, for each declared
   trigger, why not (with ``explain``, as ``modelyard scheduler --once`` runs, an ``idle``
   action says so);
4. if so, and no rollout of the model is active and no run is in progress, take the lease
   ``retrain:<model>``, run the pipeline in this process (training itself runs in a child), and
   with ``auto_rollout`` start a rollout of the new version that the servers' analysis then
   promotes or rolls back. Each step is recorded as a monitor event and in the audit trail.

Several schedulers may share a registry: the lease lets one retrain a model at a time. A
scheduler that dies leaves a lease that expires; its runs still marked running are then finished
as failed by whichever scheduler looks next. Every tick also finishes a model's runs whose
process is gone (:meth:`~modelyard.registry.Registry.reap_runs`: "abandoned"), whoever ran them.
A retrain on what the latest version was made from registers nothing: it reports ``unchanged``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError, GateFailed, ModelyardError, NotFoundError
from modelyard.monitoring import cron
from modelyard.monitoring.alerts import RESOLVED, Alerter, webhook_url
from modelyard.monitoring.monitor import Monitor, MonitoringError
from modelyard.registry.leases import Leases
from modelyard.registry.owners import beating
from modelyard.registry.rows import PRODUCTION, now
from modelyard.rollout.deployments import Deployment, Deployments
from modelyard.spec import ALERT_SIGNALS

if TYPE_CHECKING:
    from modelyard.executors import ExecutorOptions
    from modelyard.monitoring.quality import MetricWindow
    from modelyard.registry import Registry, Run
    from modelyard.spec import RetrainSpec, Spec

log = logging.getLogger(__name__)

SCHEDULER = "scheduler"  # the actor of runs and audit events the scheduler starts
IDLE = "idle"  # the kind of action that says why a tick did not retrain a model
STOPPED = "scheduler stopped during the run"
#: values alert rules may watch besides the declared metrics.
SIGNALS = ALERT_SIGNALS
_DRIFT_EVERY_S = 60.0  # a drift check reads the whole window: not on every tick
_LEASE_MARGIN_S = 300.0  # a retraining lease outlives the training timeout by this much
_TRIGGER_LEN = 100  # the runs table's trigger column
_RECOVER_TTL_S = 60.0  # long enough to finish a dead scheduler's runs

Values = dict[str, float | None]


# -- deciding (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What is known of one model at one tick: the input of :func:`retrain_trigger`."""

    now: datetime
    last_run_at: datetime | None = None  # start of the model's newest run, any trigger
    last_schedule_run_at: datetime | None = None  # start of its newest scheduled run
    drift_share: float | None = None  # of the latest drift check
    metrics: Mapping[str, float | None] = field(default_factory=dict)  # production, in window
    labeled: int = 0  # labeled rows behind ``metrics``
    new_labels: int | None = None  # labels received since the newest run started


@dataclass(frozen=True)
class RetrainDecision:
    """What :func:`retrain_decision` concluded: the trigger that holds, or why none does.

    ``waiting`` has one line per declared trigger that does not hold (``drift share 0.1 below
    0.3``); ``modelyard scheduler --once`` prints them.
    """

    trigger: str | None
    waiting: tuple[str, ...] = ()


#: one trigger's verdict: (the trigger string if it holds, else why it does not; None, None when
#: the policy does not declare it)
_Check = tuple[str | None, str | None]


def retrain_decision(policy: RetrainSpec, evidence: Evidence, *, min_labels: int = 100,
                     cooldown_s: float = 0.0) -> RetrainDecision:
    """The first retrain trigger that holds, or the reason each declared one does not.

    Checked in order: ``schedule`` (its last due time is after the newest scheduled run, or, when
    there was none, the newest run), ``drift_share``, ``metric_below`` (only on ``min_labels``
    labeled rows), ``new_labels``. Drift and metric triggers wait ``cooldown_s`` after a run
    started, so evidence gathered before it cannot retrain again and again.
    """
    if not has_policy(policy):
        return RetrainDecision(None, ("no retrain policy in the spec",))
    since_run = (None if evidence.last_run_at is None
                 else (evidence.now - evidence.last_run_at).total_seconds())
    cooling_s = 0.0 if since_run is None else max(0.0, cooldown_s - since_run)
    waiting = []
    for fired, why in (_schedule_check(policy, evidence),
                       _drift_check(policy, evidence, cooling_s),
                       _metric_check(policy, evidence, cooling_s, min_labels),
                       _labels_check(policy, evidence)):
        if fired is not None:
            return RetrainDecision(fired)
        if why is not None:
            waiting.append(why)
    return RetrainDecision(None, tuple(waiting))


def retrain_trigger(policy: RetrainSpec, evidence: Evidence, *, min_labels: int = 100,
                    cooldown_s: float = 0.0) -> str | None:
    """The first retrain trigger that holds, as the run's trigger string; None when none does.

    :func:`retrain_decision`'s ``trigger``.
    """
    return retrain_decision(policy, evidence, min_labels=min_labels,
                            cooldown_s=cooldown_s).trigger


def _schedule_check(policy: RetrainSpec, evidence: Evidence) -> _Check:
    if policy.schedule is None:
        return None, None
    due = cron.last_at_or_before(policy.schedule, evidence.now)
    since = evidence.last_schedule_run_at or evidence.last_run_at
    if since is None or due > since:
        return f"schedule: {policy.schedule}", None
    upcoming = cron.next_after(policy.schedule, evidence.now)
    return None, f"schedule {policy.schedule!r} not due until {upcoming:%Y-%m-%d %H:%M} UTC"


def _drift_check(policy: RetrainSpec, evidence: Evidence, cooling_s: float) -> _Check:
    if policy.drift_share is None:
        return None, None
    if cooling_s > 0:
        return None, f"drift: waiting {cooling_s:.0f}s more after the last run"
    if evidence.drift_share is None:
        return None, "drift: no drift value yet (too few logged rows in the window)"
    if evidence.drift_share >= policy.drift_share:
        return f"drift: share {_num(evidence.drift_share)} >= {_num(policy.drift_share)}", None
    return None, f"drift share {_num(evidence.drift_share)} below {_num(policy.drift_share)}"


def _metric_check(policy: RetrainSpec, evidence: Evidence, cooling_s: float,
                  min_labels: int) -> _Check:
    if not policy.metric_below:
        return None, None
    if cooling_s > 0:
        return None, f"metric: waiting {cooling_s:.0f}s more after the last run"
    if evidence.labeled < min_labels:
        return None, (f"metric: only {evidence.labeled} labeled rows in the window, "
                      f"{min_labels} needed")
    fine = []
    for name, bound in policy.metric_below.items():
        value = evidence.metrics.get(name)
        if value is not None and value < bound:
            return f"metric: {name} {_num(value)} < {_num(bound)}", None
        fine.append(f"no {name} value" if value is None
                    else f"{name} {_num(value)} not below {_num(bound)}")
    return None, "metric: " + ", ".join(fine)


def _labels_check(policy: RetrainSpec, evidence: Evidence) -> _Check:
    if policy.new_labels is None:
        return None, None
    if evidence.new_labels is None:
        return None, "labels: not counted"
    if evidence.new_labels >= policy.new_labels:
        return f"labels: {evidence.new_labels} new", None
    return None, f"only {evidence.new_labels} new labels of {policy.new_labels}"


def has_policy(policy: RetrainSpec) -> bool:
    """Whether a ``retrain:`` section asks for any retraining at all."""
    return (policy.schedule is not None or policy.drift_share is not None
            or bool(policy.metric_below) or policy.new_labels is not None)


def watches(spec: Spec) -> bool:
    """Whether the scheduler has anything to do for ``spec``: a retrain policy, alert rules or
    precomputed answers."""
    return has_policy(spec.retrain) or bool(spec.monitoring.alerts) or \
        spec.precompute is not None


def window_values(windows: Sequence[MetricWindow], version: int | None) -> tuple[Values, int]:
    """The metrics of ``version`` (every version when None) from the best-labeled window."""
    mine = [w for w in windows if version is None or w.version == version]
    if not mine:
        return {}, 0
    best = max(mine, key=lambda w: w.labeled)
    return dict(best.values), best.labeled


# -- the shell ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    """One thing a tick did for a model: an alert, a trigger, a run's result, a skip, an error."""

    model: str
    kind: str  # alert | trigger | retrain | rollout | precompute | skip | recover | error | idle
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.model}: {self.kind}: {self.message}"


class Scheduler:
    """Alert, retrain and roll out the models in ``specs`` (see the module docstring).

    ``holder`` names this scheduler in leases (default ``host:pid:random``); ``clock`` is for
    tests; ``on_action`` is called with each :class:`Action` as it happens (the CLI prints it);
    ``drift_every_s`` spaces drift checks of one model (they read the whole window);
    ``explain`` adds an ``idle`` action for each model a tick did not retrain, saying why.
    Retraining runs go to the executor each spec names (``executor: ray``: the cluster in
    ``executor_options``, default ``MODELYARD_RAY_ADDRESS``).
    """

    def __init__(self, registry: Registry, specs: Mapping[str, Spec], *,
                 interval_s: float = 30.0, holder: str | None = None,
                 clock: Callable[[], datetime] | None = None,
                 monitor: Monitor | None = None,
                 on_action: Callable[[Action], None] | None = None,
                 drift_every_s: float = _DRIFT_EVERY_S, explain: bool = False,
                 executor_options: ExecutorOptions | None = None) -> None:
        if not interval_s > 0:
            raise ConfigError(f"the scheduler's interval must be above 0 seconds, "
                              f"not {interval_s!r}")
        for spec in specs.values():
            for schedule in (spec.retrain.schedule,
                             spec.precompute.schedule if spec.precompute else None):
                if schedule is not None:
                    cron.parse(schedule)  # a bad schedule fails now, not at 3 am
        self.registry = registry
        self.specs = dict(specs)
        self.interval_s = float(interval_s)
        #: a drift check reads the whole window, so it runs at most this often per model
        self.drift_every_s = float(drift_every_s)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock or now
        self.monitor = monitor or Monitor(registry)
        self.leases = Leases(registry, clock=self._clock)
        self.deployments = Deployments(registry, clock=self._clock)
        self.on_action = on_action
        self.explain = explain
        self.executor_options = executor_options
        self._drift: dict[str, tuple[datetime, float | None]] = {}  # model -> (checked, share)
        self._stop = threading.Event()

    # -- loop -----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick every ``interval_s`` until ``stop`` is set (between models, or while waiting)."""
        self._stop = stop
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.tick()
            except Exception:  # a broken registry connection must not end the loop
                log.exception("scheduler tick failed; trying again in %.0fs", self.interval_s)
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def tick(self) -> list[Action]:
        """One pass over every watched model, one after another; what was done for each."""
        actions: list[Action] = []
        for name, spec in self.specs.items():
            if self._stop.is_set():
                break
            if not watches(spec):
                continue
            try:
                actions.extend(self._tick_model(name, spec))
            except ModelyardError as exc:
                actions.append(self._emit(Action(name, "error", str(exc))))
            except Exception as exc:  # one model's bug must not stop the others being watched
                log.exception("scheduler: %s failed", name)
                actions.append(self._emit(Action(name, "error", f"{type(exc).__name__}: {exc}")))
        return actions

    def _tick_model(self, name: str, spec: Spec) -> list[Action]:
        at = self._clock()
        actions = [self._emit(Action(name, "recover", f"run {run.id[:8]} finished as failed: "
                                     f"{run.failure_reason}", {"run": run.id}))
                   for run in self.registry.reap_runs(name)]  # its process is gone
        runs = self._runs(name)
        actions += self._recover(name, runs)
        production = self._production(name)
        evidence, values = self._gather(name, spec, at, runs, production)
        if spec.monitoring.alerts:
            alerter = Alerter(self.monitor, name, webhook=webhook_url(spec.monitoring))
            for change in alerter.apply(spec.monitoring.alerts, values):
                message = (change.message if change.state == RESOLVED
                           else f"{change.rule} firing: {change.message}")
                actions.append(self._emit(Action(
                    name, "alert", message, {"severity": change.severity, "state": change.state,
                                             "rule": change.rule})))
        if spec.precompute is not None:
            actions.extend(self._precompute(name, spec, runs, production, at))
        decision = retrain_decision(spec.retrain, evidence, min_labels=spec.monitoring.min_rows,
                                    cooldown_s=spec.monitoring.window_s)
        if decision.trigger is not None:
            actions.extend(self._retrain(name, spec, decision.trigger[:_TRIGGER_LEN]))
        elif self.explain:
            actions.append(self._emit(Action(name, IDLE, "not retraining: " + "; ".join(
                decision.waiting), {"reasons": list(decision.waiting)})))
        return actions

    # -- gathering ------------------------------------------------------------------------------
    def _gather(self, name: str, spec: Spec, at: datetime, runs: list[Run],
                production: int | None) -> tuple[Evidence, Values]:
        """Read only what the model's triggers and alert rules use."""
        watched = {rule.on for rule in spec.monitoring.alerts}
        policy = spec.retrain
        since = at - timedelta(seconds=spec.monitoring.window_s)
        values: Values = {}
        metrics: Values = {}
        labeled = 0
        if production is not None and (policy.metric_below or watched - set(SIGNALS)):
            windows = self.monitor.metrics(name, since=since, version=production,
                                           by_variant=False)
            metrics, labeled = window_values(windows, production)
            if labeled >= spec.monitoring.min_rows:  # a metric on a handful of labels is noise
                values.update(metrics)
        drift = None
        if production is not None and (policy.drift_share is not None or "drift_share" in watched):
            drift = values["drift_share"] = self._drift_share(name, at, since)
        if production is not None and watched & {"p99_ms", "error_rate"}:
            latency = self.monitor.latency(name, since=since)
            values["p99_ms"], values["error_rate"] = latency.p99_ms, latency.error_rate
        trained = [r for r in runs if r.kind == "train"]  # batch runs are no retraining
        last_run = trained[0].started_at if trained else None
        new_labels = None
        if policy.new_labels is not None:
            new_labels = self.monitor.labels_since(name, last_run)
        evidence = Evidence(
            now=at, last_run_at=last_run,
            last_schedule_run_at=next((r.started_at for r in trained
                                       if r.trigger.startswith("schedule")), None),
            drift_share=drift, metrics=metrics, labeled=labeled, new_labels=new_labels)
        return evidence, values

    def _drift_share(self, name: str, at: datetime, since: datetime) -> float | None:
        checked = self._drift.get(name)
        every = timedelta(seconds=max(self.interval_s, self.drift_every_s))
        if checked is not None and at - checked[0] < every:
            return checked[1]
        share: float | None = None
        try:
            share = self.monitor.check_drift(name, since=since, actor=SCHEDULER).share
        except MonitoringError as exc:  # too few logged rows yet: no drift value, not an error
            log.debug("no drift value for %s: %s", name, exc)
        self._drift[name] = (at, share)
        return share

    # -- retraining -----------------------------------------------------------------------------
    def _retrain(self, name: str, spec: Spec, trigger: str) -> list[Action]:
        active = self._active_rollout(name)
        if active is not None:
            return [self._emit(Action(name, "skip", (
                f"{trigger}; not retraining while rollout {active.id} of "
                f"v{active.candidate_version} is {active.state}"), {"trigger": trigger}))]
        lease = _lease(name)
        ttl = spec.timeout_s + _LEASE_MARGIN_S
        if not self.leases.acquire(lease, self.holder, ttl):
            return [self._emit(Action(name, "skip", (
                f"{trigger}; {self.leases.holder(lease) or 'another scheduler'} holds {lease}"),
                {"trigger": trigger}))]
        try:
            running = [r for r in self._runs(name) if r.status == "running"]
            if running:
                return [self._emit(Action(name, "skip", (
                    f"{trigger}; run {running[0].id[:8]} by {running[0].created_by} is in "
                    f"progress"), {"trigger": trigger}))]
            with self._keep(lease, ttl):
                return self._retrain_held(name, spec, trigger)
        finally:
            self.leases.release(lease, self.holder)

    def _retrain_held(self, name: str, spec: Spec, trigger: str) -> list[Action]:
        from modelyard.executors import get_executor
        from modelyard.pipeline.run import run_pipeline  # pandas and friends: only to train

        kind = trigger.partition(":")[0]
        self.registry.record("retrain.triggered", name, {"reason": trigger}, actor=SCHEDULER)
        self.monitor.add_event(name, "trigger", kind, trigger, details={"reason": trigger})
        actions = [self._emit(Action(name, "trigger", trigger, {"trigger": trigger}))]
        auto = spec.retrain.auto_rollout
        try:  # auto_rollout: a rollout even where the spec declares none (then a canary)
            executor = (None if self.executor_options is None
                        else get_executor(spec.executor, self.executor_options))
            result = run_pipeline(spec, self.registry, trigger=trigger,
                                  promote=False if auto else None, actor=SCHEDULER,
                                  executor=executor)
        except GateFailed as exc:
            message = f"candidate rejected by its gate: {'; '.join(exc.reasons) or exc}"
            return [*actions, self._outcome(name, kind, message, "warning", {
                "trigger": trigger, "outcome": "rejected", "run": getattr(exc, "run_id", None),
                "reasons": list(exc.reasons)})]
        except ModelyardError as exc:
            return [*actions, self._outcome(name, kind, f"retraining failed: {exc}", "warning", {
                "trigger": trigger, "outcome": "failed", "run": getattr(exc, "run_id", None),
                "error": type(exc).__name__})]
        if result.unchanged is not None:  # nothing new to learn from: no version, no rollout
            return [*actions, self._outcome(name, kind, (
                f"unchanged: identical to {result.unchanged.ref}; nothing registered"), "info", {
                "trigger": trigger, "outcome": "unchanged", "run": result.run.id,
                "version": result.unchanged.version})]
        version = result.version
        details: dict[str, Any] = {"trigger": trigger, "outcome": "registered",
                                   "run": result.run.id,
                                   "version": version.version if version else None,
                                   "promoted": result.promoted, "gate": result.gate.to_dict()}
        message = (f"registered {version.ref if version else 'nothing'}"
                   + (", promoted to production" if result.promoted else "")
                   + f" (gate passed: {_metrics(result.metrics)})")
        if (auto or result.rollout_due) and version is not None:
            try:
                deployment = self._roll_out(spec, version.version)
            except ModelyardError as exc:
                details["rollout_error"] = str(exc)
                message += f"; rollout not started: {exc}"
            else:
                details["rollout"] = deployment.id
                message += (f"; {deployment.strategy} rollout {deployment.id} "
                            f"{deployment.state}")
        return [*actions, self._outcome(name, kind, message, "info", details)]

    def _roll_out(self, spec: Spec, version: int) -> Deployment:
        """The rollout the version's registered spec declares (a canary where it declares
        none), started the way ``modelyard train`` starts one."""
        return self.deployments.start_declared(
            spec.name, version,
            # "scheduler:<holder>": a prefixed actor is a process, not a person
            actor=f"{SCHEDULER}:{self.holder}"[:200],
            reason=f"auto_rollout after retraining {spec.name}:{version}")

    def _outcome(self, name: str, kind: str, message: str, severity: str,
                 details: dict[str, Any]) -> Action:
        self.monitor.add_event(name, "retrain", kind, message, severity=severity,
                               details=details)
        return self._emit(Action(name, "retrain", message, details))

    # -- precomputed answers --------------------------------------------------------------------
    def _precompute(self, name: str, spec: Spec, runs: list[Run], production: int | None,
                    at: datetime) -> list[Action]:
        """Precompute the production version's answers when promoted or on the cron, under the
        lease ``precompute:<model>`` (one scheduler at a time)."""
        from modelyard.precompute.job import precompute, read_manifest
        from modelyard.precompute.schedule import last_precompute, precompute_trigger
        from modelyard.version_settings import VersionSettings

        if production is None or spec.precompute is None:
            return []
        version = self.registry.get_version(name, production)
        section = VersionSettings.of(version, strict=False).precompute
        if section is None:
            return []  # registered without a precompute section: the server answers live
        has_answers = read_manifest(self.registry, version, section) is not None
        trigger = precompute_trigger(section, spec.precompute.schedule, production,
                                     has_answers, last_precompute(runs), at)
        if trigger is None:
            return []
        lease, ttl = f"precompute:{name}", spec.timeout_s + _LEASE_MARGIN_S
        if not self.leases.acquire(lease, self.holder, ttl):
            return [self._emit(Action(name, "skip", f"{trigger}; "
                                      f"{self.leases.holder(lease) or 'another scheduler'} "
                                      f"holds {lease}", {"trigger": trigger}))]
        try:
            with self._keep(lease, ttl):
                summary = precompute(self.registry, version.ref, trigger=trigger[:_TRIGGER_LEN])
        except ModelyardError as exc:
            return [self._emit(Action(name, "error", f"{trigger}; precompute of {version.ref} "
                                      f"failed: {exc}", {"trigger": trigger}))]
        finally:
            self.leases.release(lease, self.holder)
        return [self._emit(Action(name, "precompute", (
            f"{trigger}; {summary.rows} answers of {version.ref} in {section.store}"
            + (f", {summary.errors} rows refused" if summary.errors else "")),
            {"trigger": trigger, "run": summary.run_id, "version": production,
             "rows": summary.rows, "errors": summary.errors}))]

    # -- recovery and leases --------------------------------------------------------------------
    def _recover(self, name: str, runs: list[Run]) -> list[Action]:
        """Finish as failed the runs a dead scheduler left running (its lease has expired)."""
        if not any(r.status == "running" and r.created_by == SCHEDULER for r in runs):
            return []
        lease = _lease(name)
        if not self.leases.acquire(lease, self.holder, _RECOVER_TTL_S):
            return []  # a live scheduler is retraining: its run is not stale
        try:
            actions = []
            for run in self._runs(name):
                if run.status == "running" and run.created_by == SCHEDULER:
                    self.registry.finish_run(run.id, status="failed", failure_reason=STOPPED,
                                             logs=f"{run.logs}\nfailed: {STOPPED}".lstrip())
                    actions.append(self._emit(Action(
                        name, "recover", f"run {run.id[:8]} finished as failed: {STOPPED}",
                        {"run": run.id})))
            return actions
        finally:
            self.leases.release(lease, self.holder)

    def _keep(self, lease: str, ttl_s: float) -> contextlib.AbstractContextManager[None]:
        """Renew ``lease`` while a long step runs, so only a dead scheduler's lease runs out."""

        def renew() -> None:
            if not self.leases.renew(lease, self.holder, ttl_s):
                log.warning("scheduler %s lost lease %s", self.holder, lease)

        return beating(renew, max(1.0, ttl_s / 3), f"lease {lease}")

    # -- reads ----------------------------------------------------------------------------------
    def _runs(self, name: str) -> list[Run]:
        return self.registry.list_runs(name, limit=100)

    def _production(self, name: str) -> int | None:
        try:
            return self.registry.get_model(name).aliases.get(PRODUCTION)
        except NotFoundError:
            return None

    def _active_rollout(self, name: str) -> Deployment | None:
        try:
            current = self.deployments.get(name)
        except NotFoundError:
            return None
        return current if current.active else None

    def _emit(self, action: Action) -> Action:
        # "nothing to do" every tick would drown the log; the CLI prints it with --once
        log.log(logging.DEBUG if action.kind == IDLE else logging.INFO, "%s", action)
        if self.on_action is not None:
            try:
                self.on_action(action)
            except Exception:  # a broken display must never stop the scheduler
                log.exception("on_action callback failed")
        return action


def _lease(model: str) -> str:
    return f"retrain:{model}"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in list(metrics.items())[:4]) or "no metrics"


__all__ = ["IDLE", "SCHEDULER", "SIGNALS", "STOPPED", "Action", "Evidence", "RetrainDecision",
           "Scheduler", "has_policy", "retrain_decision", "retrain_trigger", "watches",
           "window_values"]
