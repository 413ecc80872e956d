"""One training run: load data -> validate -> train and evaluate (in a child process) -> gate ->
register -> promote, recorded in the registry whether it succeeds, fails or is rejected.

A spec that declares a staged rollout (``rollout.strategy`` other than ``direct``) does not move
``production`` here once a production version exists: the result says ``rollout_due`` and the
caller starts that rollout (``Deployments.start_declared``; ``modelyard train`` and the scheduler
do), so the new version reaches traffic step by step, analysed.

A run whose data, code, params, spec and packages equal the latest version's trains nothing and
registers nothing: it ends ``unchanged``, naming that version (``force=True`` trains anyway).

Where the work runs (load data, validate, split, train, evaluate) is the spec's ``executor``
(:mod:`modelyard.executors`: ``local``, or ``ray`` for a cluster); gate, register and promote
happen here, the same for every executor. While it runs, the run's log is written back into the
run record, and a cancellation asked there (``modelyard runs cancel``) stops it.

The child scores the candidate through a :class:`~modelyard.predictor.Predictor` loaded from the
artifact it just saved (the serving input path, and proof that the artifact loads) and scores the
champion (``name@production``) on the same holdout. The parent only decides: a rejected candidate
is never registered, and production is never touched unless the gate passed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.entrypoints import callable_ref
from modelyard.errors import (
    ConfigError,
    ConflictError,
    DataValidationError,
    ExportError,
    GateFailed,
    ModelyardError,
    NotFoundError,
)
from modelyard.executors import ExecutorOptions, get_executor
from modelyard.metrics import get_metric, greater_is_better
from modelyard.pipeline import child
from modelyard.pipeline.checks import PROFILE_KEY
from modelyard.pipeline.fairness import META_KEY as FAIRNESS
from modelyard.pipeline.fairness import group_columns
from modelyard.pipeline.gate import GateResult, evaluate_gate
from modelyard.pipeline.job import RunHooks, RunJob
from modelyard.pipeline.lineage import code_ref, environment, same_code, spec_hash
from modelyard.pipeline.run_registry import RunRegistry
from modelyard.pipeline.validation import format_report
from modelyard.registry import PRODUCTION, ModelVersion, Run
from modelyard.registry.owners import HEARTBEAT_S, beating
from modelyard.registry.semver import BUMPS, parse_semver
from modelyard.spec import Spec
from modelyard.types import Executor
from modelyard.version_settings import VersionSettings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: how many recent runs are searched for the accepted batches the data checks compare with
ACCEPTED_LOOKBACK = 50


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the run record, the new version (if registered) and the evidence."""

    run: Run
    version: ModelVersion | None
    promoted: bool
    gate: GateResult
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    #: the gate passed and the spec declares a rollout: the caller starts it (not promoted).
    rollout_due: bool = False
    #: the version this run found identical (data, code, params, spec, packages): nothing was
    #: trained or registered, and ``version`` is None
    unchanged: ModelVersion | None = None


@dataclass(frozen=True)
class _Lineage:
    """What a version is made from, compared with the latest version's before training."""

    data_fingerprint: str
    code_ref: dict[str, Any]
    params: dict[str, Any]
    spec_hash: str
    environment: dict[str, Any]

    def matches(self, version: ModelVersion) -> bool:
        """Whether ``version`` was made from the same data, code, params, spec and packages."""
        return version.data_fingerprint == self.data_fingerprint and self.matches_code(version)

    def matches_code(self, version: ModelVersion) -> bool:
        """Whether ``version`` was made from the same code, params, spec and packages."""
        env = version.environment
        return (version.params == self.params
                and version.meta.get("spec_hash") == self.spec_hash
                and same_code(version.code_ref, self.code_ref)
                and (env.get("python"), env.get("packages")) == (
                    self.environment["python"], self.environment["packages"]))


class _RunLog:
    """The run's own log lines (stages, timings, notes), stored ahead of the training output."""

    def __init__(self, progress: Progress | None) -> None:
        self.lines: list[str] = []
        self.progress = progress
        self.started = time.perf_counter()

    def stage(self, name: str) -> None:
        self.note(f"[{time.perf_counter() - self.started:7.2f}s] {name}")
        if self.progress is not None:
            try:
                self.progress(name)
            except Exception:  # a broken progress display must never fail a run
                log.exception("progress callback failed on stage %r", name)

    def note(self, line: str) -> None:
        self.lines.append(line)

    def text(self, work: Path) -> str:
        """The run's lines, then as much of the end of the training output as fits."""
        own = "\n".join(self.lines)
        child_output = child.read_log(work)[-max(0, child.LOG_TAIL - len(own) - 100):]
        return own + (f"\n--- training output ---\n{child_output}" if child_output else "")


def run_pipeline(
    spec: Spec,
    registry: RunRegistry,
    *,
    trigger: str = "manual",
    promote: bool | None = None,
    actor: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
    executor: Executor | None = None,
    cancel: threading.Event | None = None,
    semver: str | None = None,
) -> RunResult:
    """Train ``spec`` on fresh data, gate it against production, register and maybe promote it.

    ``promote`` None follows the spec: ``gate.promote``, and a declared rollout instead of moving
    ``production`` when there is one to compare with (``rollout_due``). True moves ``production``
    now, skipping any rollout; False leaves it alone. When nothing changed since the latest
    version (data, code, params, spec, packages) the run ends ``unchanged`` with
    :attr:`RunResult.unchanged` set and nothing registered, unless ``force``. ``executor`` runs
    the work (default: the one the spec names, :mod:`modelyard.executors`); setting ``cancel``
    stops it as cancelled. ``semver`` labels the new version: ``1.4.0``, or ``major``,
    ``minor`` or ``patch`` to bump from the model's highest label (checked before training).
    Raises :class:`DataValidationError`, :class:`TrainingError`,
    :class:`GateFailed`, :class:`RunCancelled`, ...; each carries ``run_id`` once the run is
    recorded (``modelyard runs show <run_id>`` shows its logs).
    """
    if semver is not None and semver not in BUMPS:
        _label_free(registry, spec.name, str(parse_semver(semver)))
    if spec.graph is not None:  # a composed model: registered, never trained
        return _compose(spec, registry, trigger, promote, actor, force=force, semver=semver)
    for name in spec.metrics:  # a typo fails now, not after an hour of training
        get_metric(name)
    if executor is None:
        settings = getattr(registry, "settings", None)
        executor = get_executor(spec.executor, ExecutorOptions.from_env(
            artifacts=getattr(settings, "artifacts", None)))
    if executor.name == "local":
        # The fork server preloads while the data loads. Started before the run is recorded: a
        # script without a __main__ guard, re-imported in the child, fails here without a stray
        # run.
        child.warm()
    runlog = _RunLog(progress)
    with tempfile.TemporaryDirectory(prefix="modelyard-run-") as tmp:
        run = registry.start_run(spec.name, trigger=trigger, actor=actor)
        try:
            # the heartbeat tells other hosts a live run from a dead one
            with beating(lambda: registry.beat_run(run.id), HEARTBEAT_S,
                         f"heartbeat of run {run.id[:8]}"):
                watch = _Watch(registry, run, runlog, Path(tmp), cancel)
                return _execute(spec, registry, run, runlog, Path(tmp), promote, actor,
                                force=force, executor=executor, watch=watch, semver=semver)
        except BaseException as exc:
            _record_failure(registry, run, runlog, Path(tmp), exc)
            raise


class _Watch:
    """Between the run's steps: writes its log so far into the run record (``runs show`` shows
    a live run's progress) and asks whether to stop: ``cancel`` set here (Ctrl-C of one of
    several runs), or a cancellation asked in the registry (``modelyard runs cancel``)."""

    #: seconds between looks at the registry
    EVERY_S = 1.0

    def __init__(self, registry: RunRegistry, run: Run, runlog: _RunLog, work: Path,
                 cancel: threading.Event | None) -> None:
        self.registry, self.run, self.runlog, self.work = registry, run, runlog, work
        self.cancel = cancel
        self._next = time.monotonic() + self.EVERY_S
        self._written = ""

    def stop(self) -> str | None:
        """Why the run must stop now, or None."""
        if self.cancel is not None and self.cancel.is_set():
            return "cancelled: interrupted"
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.EVERY_S
        try:
            self._write_logs()
            run = self.registry.get_run(self.run.id)
        except Exception:  # a database blip must not end a live run
            log.warning("could not look at run %s", self.run.id, exc_info=True)
            return None
        asked = (run.details or {}).get("cancel_requested")
        if asked:
            return f"cancelled by {asked.get('by') or 'someone'} (modelyard runs cancel)"
        if run.status != "running":
            return f"cancelled: the run was finished elsewhere as {run.status}"
        return None

    def _write_logs(self) -> None:
        text = self.runlog.text(self.work)
        if text != self._written:
            self.registry.beat_run(self.run.id, logs=text)
            self._written = text

    def hooks(self) -> RunHooks:
        """What the executor reports to and asks."""
        return RunHooks(stage=self.runlog.stage, note=self.runlog.note, stop=self.stop)


def _compose(spec: Spec, registry: RunRegistry, trigger: str, promote: bool | None,
             actor: str | None, *, force: bool, semver: str | None) -> RunResult:
    """Register a graph spec's declaration as a version (a recorded run, like training); move
    production to it unless ``promote`` is False (a graph has no gate or rollout of its own)."""
    from modelyard.pipeline.compose import passed, register_graph

    runlog = _RunLog(None)
    run = registry.start_run(spec.name, trigger=trigger, actor=actor)
    try:
        version, same = register_graph(spec, registry, actor=actor, run_id=run.id, force=force,
                                       semver=semver)
        if version is None:
            assert same is not None
            runlog.note(f"unchanged: identical to {same.ref}")
            finished = registry.finish_run(run.id, status="unchanged", version=same.version,
                                           failure_reason=f"identical to {same.ref}",
                                           logs="\n".join(runlog.lines))
            return RunResult(finished, None, False, passed(), {}, None, unchanged=same)
        promoted = promote is not False
        if promoted:
            registry.set_alias(spec.name, PRODUCTION, version.version, actor=actor,
                               reason=f"run {run.id}: graph registered")
            version = registry.get_version(spec.name, version.version)
        runlog.note(f"registered {version.ref} (graph of "
                    f"{', '.join(version.meta.get('members', {}).values())})")
        finished = registry.finish_run(run.id, status="succeeded", version=version.version,
                                       promoted=promoted, logs="\n".join(runlog.lines))
        return RunResult(finished, version, promoted, passed(), {}, None)
    except BaseException as exc:
        with tempfile.TemporaryDirectory(prefix="modelyard-run-") as tmp:
            _record_failure(registry, run, runlog, Path(tmp), exc)
        raise


def _record_failure(registry: RunRegistry, run: Run, runlog: _RunLog, work: Path,
                    exc: BaseException) -> None:
    """Finish the run as failed (a gate rejection is already recorded) and tag ``exc``."""
    with contextlib.suppress(AttributeError):
        exc.run_id = run.id  # type: ignore[attr-defined]
    if isinstance(exc, GateFailed):
        return
    if isinstance(exc, KeyboardInterrupt):
        reason = "cancelled: interrupted (Ctrl-C); the training was stopped"
    elif isinstance(exc, ModelyardError):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    report = getattr(exc, "report", None)
    if report:
        runlog.note(format_report(report))
    runlog.note(f"failed: {reason}")
    details = {"checks": {"failed": list(report)}} if isinstance(exc, DataValidationError) \
        and report else None
    try:
        registry.finish_run(run.id, status="failed", failure_reason=reason,
                            logs=runlog.text(work),
                            details=_details(details, _usage(registry, run, work)))
    except Exception:  # never hide the real error behind a database error
        log.exception("could not record the failure of run %s", run.id)


def _execute(
    spec: Spec, registry: RunRegistry, run: Run, runlog: _RunLog, work: Path,
    promote: bool | None, actor: str | None, *, force: bool, executor: Executor, watch: _Watch,
    semver: str | None = None,
) -> RunResult:
    if spec.data is None:
        raise ConfigError(f"{spec.name} declares no data to train on")
    if spec.train is None:
        raise ConfigError(f"{spec.name} declares no train function")
    lineage = _lineage(spec)
    same = None if force else _same_code_version(registry, spec.name, lineage)
    job = _job(spec, registry, run.id, lineage,
               unchanged_if=same.data_fingerprint if same is not None else None)
    if executor.name != "local":
        runlog.note(f"executor: {executor.name}")
    executed = executor.run(job, work, watch.hooks())
    if executed.outcome is None:
        assert same is not None  # the executor only skips training for an unchanged fingerprint
        return _finish_unchanged(registry, run, runlog, work, same, executed.batch_profile)
    outcome = executed.outcome
    _note_outcome(runlog, outcome)
    lineage = _Lineage(executed.data_fingerprint, lineage.code_ref, lineage.params,
                       lineage.spec_hash, executed.environment)
    champion = outcome.champion or {}
    champion_metrics = champion.get("metrics")

    runlog.stage("gate")
    gate = evaluate_gate(spec.gate, outcome.metrics, champion_metrics, greater_is_better,
                         champion_ref=champion.get("ref"), champion_note=champion.get("note"),
                         fairness=outcome.fairness)
    gate_record = {**gate.to_dict(), "champion": {"ref": champion.get("ref"),
                                                  "metrics": champion_metrics},
                   **({FAIRNESS: outcome.fairness} if outcome.fairness else {})}
    if not gate.passed:
        runlog.note("rejected: " + "; ".join(gate.reasons))
        registry.finish_run(run.id, status="rejected", metrics=outcome.metrics,
                            gate=gate_record, logs=runlog.text(work),
                            details=_details(_accepted_batch(executed.batch_profile),
                                             _usage(registry, run, work)))
        where = (f"production stays at {champion['ref']}" if champion.get("ref")
                 else "nothing promoted")
        raise GateFailed(f"{spec.name}: candidate rejected by its gate: "
                         f"{'; '.join(gate.reasons)}; {where}", gate.reasons)

    runlog.stage("register")
    version = registry.register(
        spec.name, outcome.artifact_dir, flavor=outcome.flavor,
        meta={**outcome.meta, "task": outcome.task,
              # serving (placement, batching, the log), monitoring, rollout and metric names:
              # what the server, the monitor and rollouts read back (VersionSettings.of)
              **VersionSettings.from_spec(spec).to_meta(),
              # what the next run compares with to see that nothing changed
              "spec_hash": lineage.spec_hash,
              # the per-group figures on the holdout; the monitor reads the rules back
              **({FAIRNESS: outcome.fairness} if outcome.fairness else {}),
              # the feature service it was trained on, which the server fetches online
              **({"features": executed.features} if executed.features else {})},
        signature=outcome.signature,
        metrics=outcome.metrics, params=lineage.params,
        data_fingerprint=lineage.data_fingerprint, code_ref=lineage.code_ref,
        environment=lineage.environment, reference_stats=executed.reference_stats,
        run_id=run.id, description=spec.description, actor=actor,
        **_labelled(semver, executed.data_sources),
    )
    if spec.serving.runtime == "onnx" and version.flavor != "onnx":
        runlog.stage("export")
        _export_for_runtime(registry, version, runlog, actor)
    promoted, rollout_due = _goes_live(spec, promote, has_champion=outcome.champion is not None)
    if promoted:
        runlog.stage("promote")
        against = f" vs champion {champion['ref']}" if champion_metrics is not None else ""
        registry.set_alias(spec.name, PRODUCTION, version.version, actor=actor,
                           reason=f"run {run.id}: gate passed ({_show(outcome.metrics)}{against})")
        version = registry.get_version(spec.name, version.version)  # now with its alias
    runlog.note(f"registered {version.ref}" + (" and promoted to production" if promoted else "")
                + (f"; its {spec.rollout.strategy} rollout starts next" if rollout_due else ""))
    finished = registry.finish_run(run.id, status="succeeded", version=version.version,
                                   promoted=promoted, metrics=outcome.metrics, gate=gate_record,
                                   logs=runlog.text(work),
                                   details=_details(_accepted_batch(executed.batch_profile),
                                                    _usage(registry, run, work)))
    return RunResult(finished, version, promoted, gate, outcome.metrics, champion_metrics,
                     rollout_due)


def _label_free(registry: RunRegistry, name: str, label: str) -> None:
    """Refuse, before training, a label another version of ``name`` already has (registering
    checks again, under the model's lock)."""
    try:
        taken = registry.resolve(f"{name}@{label}")
    except NotFoundError:
        return
    raise ConflictError(f"{name}@{label} is already version {taken.version}: a label names one "
                        "version of a model; give another (or --semver patch to bump)")


def _labelled(semver: str | None, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """``register``'s label and lineage arguments, left out where empty (a registry that
    predates them, such as an older server's client, is still called as before)."""
    extra: dict[str, Any] = {}
    if semver is not None:
        extra["semver"] = semver
    if sources:
        extra["data_sources"] = sources
    return extra


def _export_for_runtime(registry: RunRegistry, version: ModelVersion, runlog: _RunLog,
                        actor: str | None) -> None:
    """Export ``version`` to ONNX before it can go live: a spec served with ``runtime: onnx``
    is answered from that export, and a server refuses the version without one. A refused
    export fails the run with the version registered but not promoted."""
    from modelyard.pipeline.export import export_onnx

    try:
        result = export_onnx(registry, version.ref, actor=actor)
    except ModelyardError as exc:
        raise ExportError(
            f"registered {version.ref}, not promoted: serving.runtime onnx needs its ONNX "
            f"export, which failed: {exc}; set serving.runtime: native, or fix it and run "
            f"`modelyard export {version.ref} --format onnx`") from exc
    runlog.note(f"exported {version.ref} -> {result.version.ref} (onnx for serving; parity on "
                f"{result.sample} {result.parity.summary()})")


def _usage(registry: RunRegistry, run: Run, work: Path) -> dict[str, Any] | None:
    """The run's details with the CPU seconds its training child reported (``cpu_s``); None
    (details kept as they are) when it reported nothing: killed, or trained elsewhere."""
    usage = child.read_usage(work)
    if not usage:
        return None
    try:  # what was recorded meanwhile (a cancel request) stays
        details = registry.get_run(run.id).details or {}
    except Exception:  # never lose the run's ending over its CPU figure
        log.warning("could not read run %s back; recording its CPU alone", run.id, exc_info=True)
        details = run.details or {}
    return {**details, **usage}


def _details(*parts: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's details from several parts (None: none of them says anything)."""
    merged = {k: v for part in parts if part for k, v in part.items()}
    return merged or None


def _goes_live(spec: Spec, promote: bool | None, *, has_champion: bool) -> tuple[bool, bool]:
    """``(move production now, start the declared rollout)`` for a candidate that passed."""
    if promote is not None:
        return promote, False
    if not spec.gate.promote:
        return False, False
    if spec.rollout.staged and has_champion:
        return False, True
    return True, False  # direct, or the first version: nothing to compare a rollout with


def _lineage(spec: Spec) -> _Lineage:
    """What this run is made from, but its data (the executor fingerprints that where it runs)."""
    # params as the registry stores them (JSON), so equal params compare equal after a reload
    params = json.loads(json.dumps(dict(spec.params), default=str))
    return _Lineage("", code_ref(spec.root), params, spec_hash(spec), environment())


def _same_code_version(registry: RunRegistry, name: str, lineage: _Lineage) -> ModelVersion | None:
    """The latest version of ``name`` if this run has its code, params, spec and packages (the
    run is then unchanged if its data is too), else None."""
    try:
        latest = registry.get_model(name).latest_version
        version = registry.get_version(name, latest) if latest else None
        if version is not None and version.meta.get("derived_from"):
            # an export (runtime: onnx makes one after each run) is its source's twin
            version = registry.resolve(str(version.meta["derived_from"]))
    except NotFoundError:  # no model yet, or its latest number was never registered
        return None
    return version if version is not None and lineage.matches_code(version) else None


def _finish_unchanged(registry: RunRegistry, run: Run, runlog: _RunLog, work: Path,
                      same: ModelVersion, profile: dict[str, Any] | None) -> RunResult:
    note = (f"unchanged: identical to {same.ref} (data, code, params, spec and packages); "
            "nothing trained or registered (train with --force to register anyway)")
    runlog.note(note)
    finished = registry.finish_run(run.id, status="unchanged", failure_reason=note,
                                   logs=runlog.text(work), details=_accepted_batch(profile))
    gate = GateResult(False, [f"not trained: unchanged since {same.ref}"])
    return RunResult(finished, None, False, gate, {}, None, unchanged=same)


def _job(spec: Spec, registry: RunRegistry, run_id: str, lineage: _Lineage, *,
         unchanged_if: str | None) -> RunJob:
    """The run's work as plain values, for whichever executor runs it."""
    assert spec.data is not None and spec.train is not None
    ref = spec.train if isinstance(spec.train, str) else callable_ref(spec.train)
    train = child.TrainJob(
        name=spec.name, train_ref=ref, root=str(spec.root), work_dir="",
        params=dict(spec.params), flavor=spec.flavor, task=spec.task, metrics=list(spec.metrics),
        trusted_types=list(spec.trusted_types),
        champion=_champion(spec, registry), env=dict(os.environ),
        fairness=[rule.model_dump(mode="json") for rule in spec.gate.fairness],
    )
    return RunJob(run_id=run_id, data=spec.data, validation=spec.validation, train=train,
                  stratify=spec.data.stratify and spec.task != "regression",
                  timeout_s=spec.timeout_s, unchanged_if=unchanged_if,
                  environment=lineage.environment, resources=spec.resources,
                  retries=spec.retries, groups=group_columns(spec.gate.fairness),
                  history=_history(spec, registry, run_id), features=spec.features)


def _accepted_batch(profile: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's details that make its data an accepted batch, which the next runs' checks
    compare with (:mod:`modelyard.pipeline.checks`)."""
    return None if profile is None else {PROFILE_KEY: profile}


def _history(spec: Spec, registry: RunRegistry, run_id: str) -> list[dict[str, Any]]:
    """The profiles of ``spec``'s last accepted batches, newest first: as many as its checks
    compare with (none when no check compares with earlier batches)."""
    rules = spec.validation
    wanted = max(rules.volume.window if rules.volume is not None else 0,
                 1 if rules.shift is not None or rules.same_schema else 0)
    if not wanted:
        return []
    found: list[dict[str, Any]] = []
    for earlier in registry.list_runs(spec.name, limit=ACCEPTED_LOOKBACK):
        profile = (earlier.details or {}).get(PROFILE_KEY)
        if earlier.id != run_id and earlier.kind == "train" and isinstance(profile, dict):
            found.append({**profile, "run": earlier.id})
        if len(found) == wanted:
            break
    return found


def _note_outcome(runlog: _RunLog, outcome: child.TrainOutcome) -> None:
    runlog.note(f"trained a {outcome.flavor} model (task: {outcome.task})")
    runlog.note(f"candidate: {_show(outcome.metrics)}")
    if outcome.champion is not None:
        if outcome.champion["metrics"] is not None:
            runlog.note(f"champion {outcome.champion['ref']}: "
                        f"{_show(outcome.champion['metrics'])}")
        if outcome.champion["note"]:
            runlog.note(outcome.champion["note"])


def _champion(spec: Spec, registry: RunRegistry) -> dict[str, Any] | None:
    """What the child needs to score ``name@production``, or None when there is none."""
    try:
        version = registry.resolve(f"{spec.name}@{PRODUCTION}")
    except NotFoundError:
        return None
    champion: dict[str, Any] = {
        "ref": version.ref, "flavor": version.flavor, "meta": dict(version.meta),
        "signature": dict(version.signature), "task": version.meta.get("task"),
    }
    try:
        champion["path"] = str(registry.artifact_path(version))  # verified against its digest
    except ModelyardError as exc:  # the child reports it as a champion it could not score
        champion["error"] = str(exc)
    return champion


def _show(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no metrics"


__all__ = ["RunResult", "run_pipeline"]
