"""Live progress: the pipeline's stages for ``train`` and ``demo``, rows for ``batch``.

The pipeline reports each stage as it starts (``load data``, ``validate``, ``train``, ...). A
spinner shows the current one with its elapsed time; a line per finished stage stays behind, so
logs of non-interactive runs (CI) show the same steps with their timings. A batch job reports
each committed chunk; :class:`RowProgress` shows the rows done (of the total, when the input
knows it cheaply), the rows refused and the rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from modelyard.cli.output import fmt_duration, fmt_metrics, one_line
from modelyard.errors import GateFailed, ModelyardError

if TYPE_CHECKING:
    from modelyard.batch import ChunkDone
    from modelyard.pipeline import RunResult
    from modelyard.pipeline.run_registry import RunRegistry
    from modelyard.rollout.deployments import Deployment
    from modelyard.spec import Spec
    from modelyard.types import Executor


class RolloutStarter(Protocol):
    """Starts a spec's declared rollout: the registry's rollouts, or a server's."""

    def start_declared(self, model: str, version: int, *, actor: str | None = ...,
                       reason: str = ...) -> Deployment:
        """Start ``model``'s declared rollout of ``version``."""
        ...


@dataclass
class Outcome:
    """How training one model ended: ``promoted``, ``rollout`` (registered, and the spec's
    rollout started), ``registered``, ``unchanged`` (nothing new to train on: no version
    registered), ``rejected`` or ``failed``."""

    model: str
    status: str
    seconds: float
    result: RunResult | None = None
    error: ModelyardError | None = None
    stages: list[tuple[str, float]] = field(default_factory=list)
    #: the candidate's metrics on the holdout (also for a rejected candidate)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the rollout the spec declares, started for the new version
    deployment: Deployment | None = None

    @property
    def ok(self) -> bool:
        """Whether a version was registered."""
        return self.status in ("promoted", "rollout", "registered")

    @property
    def run_id(self) -> str | None:
        """The run's id, when the run got as far as being recorded."""
        if self.result is not None:
            return self.result.run.id
        return getattr(self.error, "run_id", None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``train --json``."""
        out: dict[str, Any] = {"model": self.model, "status": self.status,
                               "run_id": self.run_id, "seconds": round(self.seconds, 3),
                               "metrics": self.metrics,
                               "stages": [{"stage": name, "seconds": round(took, 3)}
                                          for name, took in self.stages]}
        if self.result is not None and self.result.unchanged is not None:
            out.update(version=None, identical_to=self.result.unchanged.ref, promoted=False)
        elif self.result is not None:
            version = self.result.version
            out.update(version=None if version is None else version.version,
                       flavor=None if version is None else version.flavor,
                       promoted=self.result.promoted, champion_metrics=self.result.champion_metrics,
                       gate=self.result.gate.to_dict())
        if self.deployment is not None:
            out["rollout"] = self.deployment.to_dict()
        if self.error is not None:
            out["error"] = {**self.error.to_dict(), "exit_code": self.error.exit_code}
            if isinstance(self.error, GateFailed):
                out["gate"] = {"passed": False, "reasons": list(self.error.reasons)}
        return out


class _Stages:
    """A run's stages as they start: the current one on a live line, each finished one timed
    and printed (:meth:`_line`), all kept in ``stages``."""

    def __init__(self, progress: Progress, task: Any, model: str) -> None:
        self._progress, self._task, self.model = progress, task, model
        self.stages: list[tuple[str, float]] = []
        self._current: str | None = None
        self._since = time.perf_counter()

    def __call__(self, stage: str) -> None:
        self._finish(failed=False)
        self._current, self._since = stage, time.perf_counter()
        self._progress.update(self._task, description=f"{self.model}: {stage}")

    def _finish(self, *, failed: bool) -> None:
        if self._current is None:
            return
        took = time.perf_counter() - self._since
        self.stages.append((self._current, took))
        self._progress.console.print(self._line(failed, self._current, took))
        self._current = None

    def _line(self, failed: bool, stage: str, took: float) -> str:
        raise NotImplementedError


class StageDisplay(_Stages):
    """The progress callback: a spinner on the running stage, a line per finished stage."""

    def __init__(self, out: Console, model: str) -> None:
        self.out = out
        self._ok = "✓" if (out.encoding or "").lower().startswith("utf") else "+"
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=out, transient=True)
        super().__init__(progress, progress.add_task(f"{model}: starting"), model)

    def __enter__(self) -> StageDisplay:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._finish(failed=exc_type is not None)
        self._progress.stop()

    def _line(self, failed: bool, stage: str, took: float) -> str:
        mark = "[red]x[/red]" if failed else f"[green]{self._ok}[/green]"
        return f"  {mark} {stage:<10} {fmt_duration(took)}"


class ModelLines:
    """One live display for several runs at once: a spinner line per model with its current
    stage, and a line per finished stage (``model: stage  took``) left behind."""

    def __init__(self, out: Console) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=out, transient=True)
        self._lock = threading.Lock()

    def __enter__(self) -> ModelLines:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def line(self, model: str) -> ModelLine:
        """The stage callback of ``model``'s run."""
        with self._lock:
            return ModelLine(self._progress, self._progress.add_task(f"{model}: waiting"),
                             model)


class ModelLine(_Stages):
    """One model's line of a :class:`ModelLines`: a progress callback like
    :class:`StageDisplay`, safe to call from the model's own thread."""

    def __enter__(self) -> ModelLine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._finish(failed=exc_type is not None)
        self._progress.update(self._task, visible=False)

    def _line(self, failed: bool, stage: str, took: float) -> str:
        mark = "[red]x[/red]" if failed else "[green]+[/green]"
        return f"  {mark} {self.model}: {stage:<10} {fmt_duration(took)}"


class _Display(Protocol):
    stages: list[tuple[str, float]]

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None: ...

    def __call__(self, stage: str) -> None: ...


class RowProgress:
    """The progress callback of a batch job: a bar of rows done, with rows refused and rows/s."""

    def __init__(self, out: Console, what: str, total: int | None = None) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                                  TimeElapsedColumn(), console=out, transient=True)
        self._task = self._progress.add_task(what, total=total, note="")
        self._since = time.perf_counter()
        self._rows = 0

    def __enter__(self) -> RowProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, done: ChunkDone) -> None:
        self._rows += done.rows + done.errors
        rate = self._rows / max(time.perf_counter() - self._since, 1e-9)
        note = f"{rate:,.0f} rows/s" + (f", {done.total_errors:,} refused"
                                        if done.total_errors else "")
        self._progress.update(self._task, completed=done.total_rows + done.total_errors,
                              total=done.expected, note=note)


def train_with_progress(
    spec: Spec,
    registry: RunRegistry,
    out: Console,
    *,
    trigger: str = "manual",
    promote: bool | None = None,
    actor: str | None = None,
    force: bool = False,
    executor: Executor | None = None,
    cancel: threading.Event | None = None,
    display: _Display | None = None,
    deployments: RolloutStarter | None = None,
    semver: str | None = None,
) -> Outcome:
    """Run the pipeline for ``spec`` behind a :class:`StageDisplay` (or ``display``, a line of
    a :class:`ModelLines`) on ``executor``; never raises a modelyard error.

    A gate rejection comes back as ``status="rejected"``, any other modelyard error as
    ``"failed"``, both with the error attached. When the spec declares a rollout (and
    ``promote`` is None), it is started for the new version (``status="rollout"``); a rollout
    that cannot start leaves the version registered, with the error attached.
    """
    from modelyard.pipeline import run_pipeline

    started = time.perf_counter()
    if display is None:
        out.print(f"[bold]{spec.name}[/bold]")
        display = StageDisplay(out, spec.name)
    try:
        with display:
            result = run_pipeline(spec, registry, trigger=trigger, promote=promote, actor=actor,
                                  progress=display, force=force, executor=executor,
                                  cancel=cancel, semver=semver)
    except GateFailed as err:
        return Outcome(spec.name, "rejected", time.perf_counter() - started, error=err,
                       stages=display.stages, metrics=_run_metrics(registry, err))
    except ModelyardError as err:
        return Outcome(spec.name, "failed", time.perf_counter() - started, error=err,
                       stages=display.stages)
    status = "promoted" if result.promoted else "registered"
    if result.unchanged is not None:
        status = "unchanged"
    elif result.version is None:  # the pipeline registers every passing candidate; be safe
        status = "rejected"
    outcome = Outcome(spec.name, status, time.perf_counter() - started, result=result,
                      stages=display.stages, metrics=dict(result.metrics))
    if result.rollout_due and result.version is not None:
        _start_rollout(outcome, spec, deployments or _local_deployments(registry), result, actor)
    return outcome


def train_many_with_progress(
    runs: Sequence[tuple[Spec, Executor, bool | None]], registry: RunRegistry, out: Console, *,
    trigger: str = "manual", actor: str | None = None, force: bool = False,
    deployments: RolloutStarter | None = None, semver: str | None = None,
) -> list[Outcome]:
    """Train every ``(spec, executor, promote)`` at once (a thread each, waiting on its
    executor: a cluster runs them in parallel), behind one :class:`ModelLines`; the outcomes in
    the order given. Ctrl-C cancels every run (each is recorded "cancelled"), then re-raises."""
    cancel = threading.Event()
    with ModelLines(out) as lines, ThreadPoolExecutor(max(1, len(runs))) as pool:
        futures = [pool.submit(train_with_progress, spec, registry, out, trigger=trigger,
                               promote=promote, actor=actor, force=force, executor=executor,
                               cancel=cancel, display=lines.line(spec.name),
                               deployments=deployments, semver=semver)
                   for spec, executor, promote in runs]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            cancel.set()
            for f in futures:
                f.exception()  # each run stops within a second and records its cancellation
            raise


def _local_deployments(registry: RunRegistry) -> RolloutStarter:
    from modelyard.registry import Registry
    from modelyard.rollout.deployments import Deployments

    assert isinstance(registry, Registry), "a remote registry brings its own deployments"
    return Deployments(registry)


def _start_rollout(outcome: Outcome, spec: Spec, deployments: RolloutStarter,
                   result: RunResult, actor: str | None) -> None:
    """Start the rollout the spec declares for the version ``result`` registered."""
    version = result.version
    if version is None:
        return
    try:
        outcome.deployment = deployments.start_declared(
            spec.name, version.version, actor=actor,
            reason=f"run {result.run.id[:8]}: gate passed; the spec's "
                   f"{spec.rollout.strategy} rollout")
    except ModelyardError as err:  # the version stays registered; the command fails
        outcome.error = err
        return
    outcome.status = "rollout"


def _run_metrics(registry: RunRegistry, err: ModelyardError) -> dict[str, Any]:
    run_id = getattr(err, "run_id", None)
    if run_id is None:
        return {}
    try:
        return dict(registry.get_run(run_id).metrics)
    except ModelyardError:  # the metrics are a nicety; the rejection is what matters
        return {}


def describe(outcome: Outcome) -> list[str]:
    """Lines (rich markup) that say how a model's training ended."""
    result, lines = outcome.result, []
    if result is not None and result.unchanged is not None:
        lines.append(f"  unchanged: identical to {result.unchanged.ref}; nothing registered "
                     "(--force registers anyway)")
    elif result is not None and result.version is not None:
        version = result.version
        where = ("promoted to production" if result.promoted else
                 "registered, rolling out" if outcome.deployment is not None else
                 "registered (not promoted)")
        label = f" = {version.model}@{version.semver}" if version.semver else ""
        lines.append(f"  [green]{version.ref}[/green]{label} ({version.flavor}) {where} "
                     f"in {fmt_duration(outcome.seconds)}")
        members = version.meta.get("members") if version.flavor == "graph" else None
        if members:  # a composed model: no training, its members' versions instead
            lines.append(f"  members  {', '.join(members.values())}")
        else:
            lines.append(f"  metrics  {fmt_metrics(outcome.metrics)}")
            if result.champion_metrics is not None:
                lines.append(f"  champion {fmt_metrics(result.champion_metrics)}")
            lines.append("  gate     passed")
        if outcome.deployment is not None:
            lines.append(f"  rollout  {_escape(explain_start(outcome.deployment))}")
        elif outcome.error is not None:
            lines.append(f"  [yellow]rollout not started[/yellow]: "
                         f"{_escape(one_line(str(outcome.error)))}")
    elif outcome.error is not None:
        label = "rejected" if outcome.status == "rejected" else "failed"
        lines.append(f"  [yellow]{label}[/yellow]: {_escape(one_line(str(outcome.error)))}")
        if outcome.metrics:
            lines.append(f"  metrics  {fmt_metrics(outcome.metrics)}")
    if outcome.run_id:
        lines.append(f"  run      {outcome.run_id}  (modelyard runs show {outcome.run_id[:8]})")
    return lines


def explain_start(d: Deployment) -> str:
    """One line about a rollout just started, and where to follow it."""
    from modelyard.rollout.report import explain

    return f"{explain(d)} Follow it: modelyard rollout status {d.model}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


__all__ = ["ModelLine", "ModelLines", "Outcome", "RowProgress", "StageDisplay", "describe",
           "train_many_with_progress", "train_with_progress"]
