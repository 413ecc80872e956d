"""The runs part of :class:`~modelyard.registry.Registry`: training and batch runs, their
owners and heartbeats, cancellation, and the abandoned ones finished as failed when read.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from modelyard.config import Settings
from modelyard.errors import ConflictError, NotFoundError
from modelyard.registry.database import Database
from modelyard.registry.owners import Owner, abandoned, this_host
from modelyard.registry.records import Run
from modelyard.registry.rows import audit, check_name, now, to_run
from modelyard.registry.tables import RunRow


class RunLedger:
    """Runs in the registry database (mixed into :class:`~modelyard.registry.Registry`)."""

    db: Database
    settings: Settings

    def start_run(self, model: str, *, trigger: str = "manual", actor: str | None = None,
                  owner: Owner | None = None, kind: str = "train",
                  details: dict[str, Any] | None = None) -> Run:
        """Record a run (``kind``: ``train`` or ``batch``) as started by ``owner`` (default:
        this process).

        The owner should beat :meth:`beat_run` while it works (the pipeline does); a run whose
        owner is gone is finished as failed, "abandoned", when runs are next read.
        """
        check_name(model)
        actor = actor or self.settings.actor
        owner = owner or Owner.current()
        at = now()
        with self.db.session(write=True) as s:
            row = RunRow(
                id=str(uuid.uuid4()), model_name=model, status="running", trigger=trigger,
                started_at=at, metrics={}, gate={}, logs="", created_by=actor,
                host=owner.host, pid=owner.pid, process_start=owner.start, heartbeat_at=at,
                kind=kind, details=details,
            )
            s.add(row)
            audit(s, actor, "run.start", model, {"run": row.id, "trigger": trigger})
            s.flush()
            return to_run(row)

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        version: int | None = None,
        promoted: bool = False,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        logs: str = "",
        failure_reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Run:
        """Record how a run ended: ``succeeded``, ``failed``, ``rejected`` (by its gate) or
        ``unchanged`` (nothing new to train on); ``details`` replace the run's details."""
        with self.db.session(write=True) as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            row.status, row.version, row.promoted = status, version, promoted
            row.metrics, row.gate, row.logs = metrics or {}, gate or {}, logs[-200_000:]
            row.failure_reason = failure_reason
            if details is not None:
                row.details = details
            row.ended_at = now()
            row.duration_s = (row.ended_at - row.started_at).total_seconds()
            audit(s, row.created_by, f"run.{status}", row.model_name,
                   {"run": run_id, "version": version, "reason": failure_reason})
            return to_run(row)

    def beat_run(self, run_id: str, *, logs: str | None = None) -> bool:
        """Record that ``run_id``'s process is still at work (and, given ``logs``, its log so
        far, which ``runs show`` then shows); False once the run has ended."""
        values: dict[str, Any] = {"heartbeat_at": now()}
        if logs is not None:
            values["logs"] = logs[-200_000:]
        with self.db.session(write=True) as s:
            beat = s.execute(update(RunRow).where(RunRow.id == run_id, RunRow.status == "running")
                             .values(**values))
            return bool(beat.rowcount == 1)  # type: ignore[attr-defined]

    def request_cancel(self, run_id: str, *, actor: str | None = None) -> Run:
        """Ask the process running ``run_id`` to stop it: the run is marked (``details``:
        ``cancel_requested``), and its owner, which looks every second, stops the training and
        finishes the run as failed, "cancelled". :class:`ConflictError` if it is not running."""
        run = self.get_run(run_id)  # a prefix is enough; an abandoned run is settled first
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            row = s.scalars(select(RunRow).where(RunRow.id == run.id).with_for_update()).first()
            if row is None or row.status != "running":
                raise ConflictError(f"run {run.id[:8]} is not running (it is "
                                    f"{row.status if row else 'gone'}): nothing to cancel")
            row.details = {**(row.details or {}),
                           "cancel_requested": {"by": actor, "at": now().isoformat()}}
            audit(s, actor, "run.cancel", row.model_name, {"run": row.id})
            return to_run(row)

    def get_run(self, run_id: str) -> Run:
        """One run by id (a unique prefix of it is enough); see :meth:`list_runs` on abandoned."""
        with self.db.session() as s:
            rows = s.scalars(select(RunRow).where(RunRow.id.startswith(run_id)).limit(2)).all()
            if len(rows) != 1:
                raise NotFoundError(f"no run matches {run_id!r}" if not rows
                                    else f"run id {run_id!r} is ambiguous; give more of it")
            found = [(to_run(rows[0]), _verdict(rows[0]))]
        return self._settle(found)[0]

    def list_runs(self, model: str | None = None, *, limit: int = 50,
                  offset: int = 0) -> list[Run]:
        """Recent runs, newest first, optionally of one model.

        A running run whose process is gone (on this host: its pid has ended; on another: no
        heartbeat for :data:`~modelyard.registry.owners.STALE_AFTER_S`) is finished as failed
        with the reason "abandoned: process PID on HOST is gone" first, so none shows as
        running when nothing runs it.
        """
        with self.db.session() as s:
            query = select(RunRow).order_by(RunRow.started_at.desc()).limit(limit).offset(offset)
            if model is not None:
                query = query.where(RunRow.model_name == model)
            found = [(to_run(r), _verdict(r)) for r in s.scalars(query)]
        return self._settle(found)

    def reap_runs(self, model: str | None = None) -> list[Run]:
        """Finish every abandoned running run (of ``model``) as failed; the runs it finished."""
        with self.db.session() as s:
            query = select(RunRow).where(RunRow.status == "running")
            if model is not None:
                query = query.where(RunRow.model_name == model)
            dead = [to_run(r) for r in s.scalars(query) if _verdict(r) is not None]
        return [run for run in map(self._abandon, dead) if run.status == "failed"]

    def _settle(self, found: list[tuple[Run, str | None]]) -> list[Run]:
        # written after the read transaction ends: SQLite's writer would wait on our own reader
        return [run if reason is None else self._abandon(run) for run, reason in found]

    def _abandon(self, run: Run) -> Run:
        """Finish ``run`` as failed if, under its row lock, it is still running and abandoned."""
        with self.db.session(write=True) as s:
            row = s.scalars(select(RunRow).where(RunRow.id == run.id).with_for_update()).first()
            if row is None:
                return run
            reason = _verdict(row)  # again: it may have finished or beaten since it was read
            if reason is None:
                return to_run(row)
            row.status, row.failure_reason, row.ended_at = "failed", reason, now()
            row.duration_s = (row.ended_at - row.started_at).total_seconds()
            row.logs = f"{row.logs}\nfailed: {reason}".lstrip()[-200_000:]
            audit(s, row.created_by, "run.failed", row.model_name,
                  {"run": row.id, "version": None, "reason": reason})
            return to_run(row)



def _verdict(row: RunRow) -> str | None:
    """Why the run in ``row`` is abandoned, or None (it is not running, or may be alive)."""
    if row.status != "running":
        return None
    return abandoned(host=row.host, pid=row.pid, start=row.process_start,
                     heartbeat_at=row.heartbeat_at, started_at=row.started_at, here=this_host(),
                     now=now())


__all__ = ["RunLedger"]
