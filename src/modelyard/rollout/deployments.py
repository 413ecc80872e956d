"""Deployments: each model's current rollout, persisted with its full history.

``Deployments(registry)`` is what a server, the CLI and the admin API call::

    deps = Deployments(registry)
    d = deps.start("iris", candidate=4, strategy="canary", steps=[5, 25, 50, 100],
                   every_s=300, rules={"metric": "f1"}, actor="user:ana")
    deps.start_declared("iris", 4, every_s=30)   # the version's declared rollout, overridden
    deps.get("iris")                  # the current Deployment (a frozen record)
    deps.transition("iris", decision, expected_revision=d.revision)   # analysis applies this
    deps.activate / advance / promote / pause / resume / rollback / abort("iris", actor=...)
    deps.history("iris")              # DeploymentEvents, newest first
    deps.list_active()                # every pending, progressing or paused deployment
    deps.changed_since(cursor)        # what servers poll every second
    deps.publish_window(d.id, d.revision, "server:a", stats)   # each server, every poll
    deps.windows(d.id, d.revision, fresh_s=5)                  # what the analysing one merges

Every change is one transaction that locks the model's row, checks the deployment's
``revision``, bumps it, writes a ``deployment_events`` row and an audit event (``deployment.*``,
target the model name), and, on promotion, moves the ``production`` alias to the candidate (an
alias event too); a rollback or abort restores ``production`` to the stable version if someone
moved it during the rollout. A transition given a stale ``expected_revision`` raises
:class:`ConflictError`: of several processes applying one analysis decision, exactly one wins
and the others reload (:meth:`get`) and decide again next interval.

Each server process publishes its analysis window of the revision it applies
(:meth:`publish_window`, one row per process in ``deployment_windows``); the process that
analyses merges every fresh row (:meth:`windows`), so a decision rests on all the traffic. A
transition deletes the deployment's rows (they describe the revision it replaced), and a process
still holding an older revision is refused, so the table holds at most one row per process and
active deployment.

Which state a decision leads to is :func:`modelyard.rollout.machine.next_state` (pure); routing a
request is :func:`modelyard.rollout.routing.choose_variant` on the record returned here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry.client import Registry
from modelyard.registry.records import Record
from modelyard.registry.rows import PRODUCTION, audit, model_row, move_alias, now, version_row
from modelyard.registry.tables import (
    AliasRow,
    DeploymentEventRow,
    DeploymentRow,
    DeploymentWindowRow,
    ModelRow,
)
from modelyard.rollout.analysis import Rules
from modelyard.rollout.decision import Decision
from modelyard.rollout.machine import ACTIVE_STATES, next_state, plan_steps
from modelyard.rollout.plan import plan_rollout
from modelyard.rollout.report import FRESH_S, report
from modelyard.rollout.routing import candidate_share

ANALYSIS = "analysis"  # the actor of decisions analysis makes
#: changed_since looks this far behind its cursor: a transaction that committed late, or a
#: writer whose clock lags, is still seen. Servers skip records whose revision they have.
OVERLAP_S = 5.0


@dataclass(frozen=True)
class Deployment(Record):
    """One rollout: stable vs candidate, strategy, steps, rules, state and revision."""

    id: int
    model: str
    stable_version: int | None
    candidate_version: int
    strategy: str
    steps: tuple[int, ...]
    step: int
    every_s: float
    rules: dict[str, Any]
    key: str | None
    state: str
    revision: int
    step_started_at: datetime | None
    created_at: datetime
    created_by: str
    updated_at: datetime

    @property
    def active(self) -> bool:
        """Whether the rollout is still running (pending, progressing or paused)."""
        return self.state in ACTIVE_STATES

    @property
    def candidate_percent(self) -> float:
        """Percent of requests the rollout plans for the candidate (for shadow: copied to it);
        what servers really route is :meth:`Deployments.describe`'s ``candidate_percent``."""
        return candidate_share(self) * 100.0

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["steps"] = list(self.steps)
        return data

    def version_of(self, variant: str) -> int | None:
        """The version number a route's ``"stable"`` or ``"candidate"`` names."""
        return self.candidate_version if variant == "candidate" else self.stable_version


@dataclass(frozen=True)
class DeploymentEvent(Record):
    """One transition: from which state to which, at which step, by whom, why."""

    id: int
    deployment_id: int
    model: str
    action: str
    from_state: str | None
    to_state: str
    step: int
    revision: int
    actor: str
    reason: str
    details: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class DeploymentWindow(Record):
    """One server process's published window of a deployment revision, and when it wrote it.

    ``stats`` is ``{"stable": WindowStats.to_dict(), "candidate": ...}`` (see
    :mod:`modelyard.rollout.stats`).
    """

    process: str
    stats: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True)
class Changes:
    """What :meth:`Deployments.changed_since` found, and the cursor to pass next time."""

    deployments: list[Deployment]
    cursor: datetime


class Deployments:
    """Start, read and move rollouts in ``registry``'s database (see the module docstring)."""

    def __init__(self, registry: Registry, *, clock: Callable[[], datetime] = now) -> None:
        self.registry = registry
        self._clock = clock  # tests pass a fake clock to step through dwell times

    def start(self, model: str, candidate: int, strategy: str = "canary", *,
              steps: Sequence[int] | None = None, every_s: float = 60.0,
              rules: Rules | dict[str, Any] | None = None, key: str | None = None,
              actor: str | None = None, reason: str = "") -> Deployment:
        """Start rolling ``candidate`` out against the current ``production`` version.

        :class:`NotFoundError` for an unknown model or version; :class:`ConflictError` while
        another rollout of the model is active, when the candidate already is production, or
        (for any strategy but direct) when there is no production version to compare with. A
        direct rollout of a model without one promotes at once.
        """
        planned = plan_steps(strategy, steps)
        if not every_s > 0:
            raise ConfigError(f"every_s (the dwell time of each step) must be above 0, "
                              f"not {every_s!r}")
        rules_dict = (rules if isinstance(rules, Rules) else Rules.from_dict(rules)).to_dict()
        actor = self._person(actor)
        with self.registry.db.session(write=True) as s:
            owner = model_row(s, model, lock=True)
            version_row(s, owner, candidate)
            current = _current_row(s, owner.id)
            if current is not None and current.state in ACTIVE_STATES:
                raise ConflictError(
                    f"{model} already has a {current.state} {current.strategy} rollout of "
                    f"version {current.candidate_version}; promote, roll back or abort it first")
            stable = _production(s, owner.id)
            if stable == candidate:
                raise ConflictError(f"{model}:{candidate} already is production")
            if stable is None and strategy != "direct":
                raise ConflictError(f"{model} has no production version to roll out against; "
                                    f"use strategy direct or promote a version first")
            at = self._clock()
            row = DeploymentRow(
                model_id=owner.id, stable_version=stable, candidate_version=candidate,
                strategy=strategy, steps=list(planned), step=0, every_s=float(every_s),
                rules=rules_dict, key=key, revision=1, created_at=at, created_by=actor,
                updated_at=at, state="pending" if strategy == "blue-green" else "progressing",
                step_started_at=None if strategy == "blue-green" else at,
            )
            s.add(row)
            s.flush()
            _record(s, row, owner, "start", None, actor, reason, {"stable": stable})
            if stable is None:
                first = Decision.manual("promote", "first version: nothing to compare with")
                return self._apply(s, owner, row, first, actor, first.reason)
            return _deployment(row, owner.name)

    def start_declared(self, model: str, candidate: int, *, strategy: str | None = None,
                       steps: Sequence[int] | None = None, every_s: float | None = None,
                       rules: dict[str, Any] | None = None, key: str | None = None,
                       default_strategy: str = "canary", actor: str | None = None,
                       reason: str = "") -> Deployment:
        """Start the rollout ``candidate``'s registered spec declares, with any of its settings
        overridden by the arguments given (see :func:`~modelyard.rollout.plan.plan_rollout`).

        ``modelyard train``, the scheduler, ``modelyard deploy`` and the admin API start
        rollouts through this one call.
        """
        version = self.registry.get_version(model, candidate)  # NotFoundError names it
        production = self.registry.get_model(model).aliases.get(PRODUCTION)
        plan = plan_rollout(version.meta, strategy=strategy, steps=steps, every_s=every_s,
                            rules=rules, key=key, has_production=production is not None,
                            default_strategy=default_strategy)
        return self.start(model, candidate, **plan.start_kwargs(), actor=actor, reason=reason)

    def get(self, model: str) -> Deployment:
        """The model's current (newest) deployment; :class:`NotFoundError` if it never had one."""
        with self.registry.db.session() as s:
            owner = model_row(s, model)
            row = _current_row(s, owner.id)
            if row is None:
                raise NotFoundError(f"{model} has no rollout yet; start one with "
                                    f"Deployments.start({model!r}, VERSION)")
            return _deployment(row, owner.name)

    def describe(self, d: Deployment, *, fresh_s: float = FRESH_S) -> dict[str, Any]:
        """``d`` as status shows it (JSON-ready): the record, what it does and how it ends in
        words (``explain``), and the traffic the servers report for its current revision
        (``traffic``, see :func:`~modelyard.rollout.report.traffic`). ``candidate_percent`` is
        the share the candidate really gets: 0 while no server routes the rollout."""
        windows = self.windows(d.id, d.revision, fresh_s=fresh_s) if d.active else []
        found = report(d, windows)
        return {**d.to_dict(), "active": d.active,
                "candidate_percent": found["traffic"]["candidate_percent"], **found}

    def history(self, model: str, *, limit: int = 200) -> list[DeploymentEvent]:
        """Every transition of every rollout of ``model``, newest first."""
        with self.registry.db.session() as s:
            owner = model_row(s, model)
            rows = s.scalars(
                select(DeploymentEventRow)
                .join(DeploymentRow, DeploymentEventRow.deployment_id == DeploymentRow.id)
                .where(DeploymentRow.model_id == owner.id)
                .order_by(DeploymentEventRow.id.desc()).limit(limit)
            )
            return [_event(r, owner.name) for r in rows]

    def list_active(self) -> list[Deployment]:
        """Every pending, progressing or paused deployment, by model name."""
        with self.registry.db.session() as s:
            query = (select(DeploymentRow, ModelRow.name)
                     .join(ModelRow, DeploymentRow.model_id == ModelRow.id)
                     .where(DeploymentRow.state.in_(ACTIVE_STATES)).order_by(ModelRow.name))
            return [_deployment(row, name) for row, name in s.execute(query)]

    def changed_since(self, cursor: datetime | None = None) -> Changes:
        """Current deployments changed since ``cursor`` (None: all), and the cursor for next time.

        One indexed query, cheap enough to poll every second. It looks :data:`OVERLAP_S` behind
        the cursor, so that a transaction committing late is still seen; a change is therefore
        reported by a few polls: apply a record only when its ``(id, revision)`` differs from
        the one you hold. Clocks of writers and pollers must agree within ``OVERLAP_S`` (NTP).
        """
        polled_at = self._clock()  # before the query: a change committed during it is kept
        with self.registry.db.session() as s:
            query = select(DeploymentRow, ModelRow.name).join(
                ModelRow, DeploymentRow.model_id == ModelRow.id)
            if cursor is not None:
                query = query.where(
                    DeploymentRow.updated_at >= cursor - timedelta(seconds=OVERLAP_S))
            newest = select(func.max(DeploymentRow.id)).group_by(DeploymentRow.model_id)
            rows = s.execute(query.where(DeploymentRow.id.in_(newest)).order_by(ModelRow.name))
            return Changes([_deployment(row, name) for row, name in rows], polled_at)

    def publish_window(self, deployment_id: int, revision: int, process: str,
                       stats: dict[str, Any]) -> bool:
        """Store ``process``'s window of revision ``revision``, replacing the one it wrote before.

        One short transaction: the deployment's row is read under a share lock, so a
        transition (which deletes the windows) and a publication never interleave. False, with
        nothing stored, when the deployment has moved past ``revision`` or ended: the caller
        holds a stale record and should reload it before analysing.
        """
        at = self._clock()
        with self.registry.db.session(write=True) as s:
            current = s.execute(
                select(DeploymentRow.revision, DeploymentRow.state)
                .where(DeploymentRow.id == deployment_id).with_for_update(read=True)
            ).first()
            if current is None or current.revision != revision or \
                    current.state not in ACTIVE_STATES:
                return False
            s.execute(_upsert_window(s, {
                "deployment_id": deployment_id, "revision": revision, "process": process,
                "stats": stats, "updated_at": at}))
            return True

    def windows(self, deployment_id: int, revision: int, *,
                fresh_s: float) -> list[DeploymentWindow]:
        """The windows of revision ``revision`` published within the last ``fresh_s`` seconds,
        by process name (a process that stopped publishing drops out)."""
        since = self._clock() - timedelta(seconds=fresh_s)
        with self.registry.db.session() as s:
            rows = s.scalars(
                select(DeploymentWindowRow)
                .where(DeploymentWindowRow.deployment_id == deployment_id,
                       DeploymentWindowRow.revision == revision,
                       DeploymentWindowRow.updated_at >= since)
                .order_by(DeploymentWindowRow.process))
            return [DeploymentWindow(r.process, dict(r.stats), r.updated_at) for r in rows]

    def transition(self, model: str, decision: Decision | str, *,
                   expected_revision: int | None, actor: str | None = None,
                   reason: str = "") -> Deployment:
        """Apply ``decision`` to the model's current deployment, if it is still at that revision.

        ``expected_revision`` is the revision the decision was made on (None: whatever is
        current, for a person's command). A stale one raises :class:`ConflictError`. A hold, or
        an automatic step that must wait for its dwell time, changes nothing and returns the
        deployment as it is. ``actor`` defaults to ``"analysis"`` for automatic decisions.
        """
        if isinstance(decision, str):
            decision = Decision.manual(decision, reason)
        actor = ANALYSIS if decision.automatic and actor is None else self._person(actor)
        with self.registry.db.session(write=True) as s:
            owner = model_row(s, model, lock=True)
            row = _current_row(s, owner.id)
            if row is None:
                raise NotFoundError(f"{model} has no rollout to {decision.action}")
            if expected_revision is not None and row.revision != expected_revision:
                raise ConflictError(
                    f"the rollout of {model} changed (revision {row.revision}, the decision was "
                    f"made on {expected_revision}); reload it and decide again")
            return self._apply(s, owner, row, decision, actor, reason or decision.reason)

    def activate(self, model: str, **kw: Any) -> Deployment:
        """Switch a pending (blue-green) rollout to its candidate, once it is loaded and healthy."""
        return self._manual(model, "activate", **kw)

    def advance(self, model: str, **kw: Any) -> Deployment:
        """Move to the next step now (promotes at the last one), without waiting for analysis."""
        return self._manual(model, "advance", **kw)

    def promote(self, model: str, **kw: Any) -> Deployment:
        """End the rollout with the candidate as production (the alias moves in the same step)."""
        return self._manual(model, "promote", **kw)

    def pause(self, model: str, **kw: Any) -> Deployment:
        """Freeze the traffic split; analysis can still roll back, but not advance."""
        return self._manual(model, "pause", **kw)

    def resume(self, model: str, **kw: Any) -> Deployment:
        """Continue a paused rollout; the current step's dwell time starts again."""
        return self._manual(model, "resume", **kw)

    def rollback(self, model: str, **kw: Any) -> Deployment:
        """End the rollout because the candidate is bad: all traffic back to stable."""
        return self._manual(model, "rollback", **kw)

    def abort(self, model: str, **kw: Any) -> Deployment:
        """Cancel the rollout without judging the candidate: all traffic back to stable."""
        return self._manual(model, "abort", **kw)

    def _manual(self, model: str, action: str, *, actor: str | None = None, reason: str = "",
                expected_revision: int | None = None) -> Deployment:
        return self.transition(model, Decision.manual(action, reason),
                               expected_revision=expected_revision, actor=actor, reason=reason)

    def _apply(self, s: Session, owner: ModelRow, row: DeploymentRow, decision: Decision,
               actor: str, reason: str) -> Deployment:
        at = self._clock()
        outcome = next_state(_deployment(row, owner.name), decision, at)
        if not outcome.changed:
            return _deployment(row, owner.name)
        before, revision = row.state, row.revision
        changed = s.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == row.id, DeploymentRow.revision == revision)
            .values(state=outcome.state, step=outcome.step, revision=revision + 1,
                    step_started_at=outcome.step_started_at, updated_at=at)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            # the model-row lock serialises writers; this guards a writer that skipped it
            raise ConflictError(f"the rollout of {owner.name} changed meanwhile; reload it")
        # the published windows describe the revision just replaced; publishers of it are
        # refused from now on (publish_window checks the revision under a share lock)
        s.execute(delete(DeploymentWindowRow).where(DeploymentWindowRow.deployment_id == row.id))
        details = {**decision.details, "note": outcome.note} if outcome.note else decision.details
        _record(s, row, owner, decision.action, before, actor, reason, details)
        _move_production(s, owner, row, actor, reason)
        return _deployment(row, owner.name)

    def _person(self, actor: str | None) -> str:
        name = actor or self.registry.settings.actor
        # "analysis", "api" and prefixed names ("server:...", "api:ci-bot") are not people
        return name if ":" in name or name in (ANALYSIS, "api") else f"user:{name}"


def _upsert_window(s: Session, values: dict[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT (deployment_id, revision, process) DO UPDATE`` in the dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = s.get_bind().dialect.name
    inserts: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    if dialect not in inserts:
        raise ConfigError(f"rollout windows need SQLite or PostgreSQL, not {dialect}")
    stmt = inserts[dialect](DeploymentWindowRow).values(values)
    return stmt.on_conflict_do_update(
        index_elements=["deployment_id", "revision", "process"],
        set_={"stats": stmt.excluded.stats, "updated_at": stmt.excluded.updated_at})


def _current_row(s: Session, model_id: int) -> DeploymentRow | None:
    return s.scalars(select(DeploymentRow).where(DeploymentRow.model_id == model_id)
                     .order_by(DeploymentRow.id.desc()).limit(1)).first()


def _production(s: Session, model_id: int) -> int | None:
    return s.scalar(select(AliasRow.version).where(AliasRow.model_id == model_id,
                                                   AliasRow.alias == PRODUCTION))


def _move_production(s: Session, owner: ModelRow, row: DeploymentRow, actor: str,
                     reason: str) -> None:
    current = _production(s, owner.id)
    why = reason or f"rollout {row.id} {row.state.replace('_', ' ')}"
    if row.state == "promoted" and current != row.candidate_version:
        move_alias(s, owner, PRODUCTION, row.candidate_version, actor, why, "set")
    elif (row.state in ("rolled_back", "aborted") and row.stable_version is not None
          and current != row.stable_version):
        move_alias(s, owner, PRODUCTION, row.stable_version, actor, why, "rollback")


def _record(s: Session, row: DeploymentRow, owner: ModelRow, action: str, before: str | None,
            actor: str, reason: str, details: dict[str, Any]) -> None:
    s.add(DeploymentEventRow(
        deployment_id=row.id, action=action, from_state=before, to_state=row.state,
        step=row.step, revision=row.revision, actor=actor, reason=reason, details=details,
        at=row.updated_at,
    ))
    audit(s, actor, f"deployment.{action}", owner.name, {
        "deployment": row.id, "from": before, "to": row.state, "step": row.step,
        "revision": row.revision, "candidate": row.candidate_version,
        "stable": row.stable_version, "reason": reason,
    })


def _deployment(row: DeploymentRow, model: str) -> Deployment:
    return Deployment(
        id=row.id, model=model, stable_version=row.stable_version,
        candidate_version=row.candidate_version, strategy=row.strategy, steps=tuple(row.steps),
        step=row.step, every_s=row.every_s, rules=dict(row.rules), key=row.key, state=row.state,
        revision=row.revision, step_started_at=row.step_started_at, created_at=row.created_at,
        created_by=row.created_by, updated_at=row.updated_at,
    )


def _event(row: DeploymentEventRow, model: str) -> DeploymentEvent:
    return DeploymentEvent(row.id, row.deployment_id, model, row.action, row.from_state,
                           row.to_state, row.step, row.revision, row.actor, row.reason,
                           row.details, row.at)


__all__ = ["ANALYSIS", "OVERLAP_S", "Changes", "Deployment", "DeploymentEvent",
           "DeploymentWindow", "Deployments"]
