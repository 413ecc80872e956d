"""``modelyard federate MODEL``: start a SuperLink, submit modelyard's Flower app there, and
follow the run until its ServerApp has gated and registered every round.

The registry run (kind ``federated``) is recorded here, owned and heartbeaten by this process;
the ServerApp, which Flower runs in its own process, records the rounds into it and finishes
it. If the Flower run ends without finishing it (the ServerApp crashed, the SuperLink died),
it is finished here as failed, with the end of the ServerApp's log.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.errors import FederationError, GateFailed, ModelyardError
from modelyard.federated.deployment import SuperLink
from modelyard.federated.rounds import check_spec

if TYPE_CHECKING:
    from modelyard.config import Settings
    from modelyard.registry import Registry, Run
    from modelyard.spec import Spec

log = logging.getLogger(__name__)

#: seconds between looks at the registry run, and between asking Flower about its run (each
#: ask is a ``flwr`` process: a second of CPU)
_LOOK_S, _ASK_FLOWER_S = 0.5, 15.0
#: how long the registry run may stay open after Flower says its run ended.
_SETTLE_S = 10.0


@dataclass(frozen=True)
class Plan:
    """What to run: the model, where its project file is, and the federation's settings."""

    spec: Spec
    project: Path
    address: str = "127.0.0.1:9092"
    rounds: int | None = None
    min_clients: int | None = None
    round_timeout_s: float | None = None


def federate(plan: Plan, registry: Registry, settings: Settings, *,
             progress: Callable[[str], None] | None = None) -> Run:
    """Run the federation ``plan`` describes; the finished registry run.

    Raises :class:`FederationError` when Flower fails or too few sites take part, and
    :class:`GateFailed` when no round's model passed the gate.
    """
    spec = plan.spec
    check_spec(spec)
    fed = spec.federated
    assert fed is not None
    rounds = plan.rounds or fed.rounds
    min_clients = plan.min_clients or fed.min_clients
    timeout = plan.round_timeout_s or fed.round_timeout_s
    say = progress or (lambda _: None)
    run = registry.start_run(spec.name, trigger="manual", kind="federated",
                             details={"flower": {"address": plan.address, "rounds": rounds,
                                                 "min_clients": min_clients}})
    with tempfile.TemporaryDirectory(prefix="modelyard-federate-") as tmp:
        link: SuperLink | None = None
        try:
            link = SuperLink(plan.address, Path(tmp), env={
                "MODELYARD_HOME": str(settings.home), "MODELYARD_DB": settings.db_url,
                "MODELYARD_ARTIFACTS": settings.artifacts, "MODELYARD_ACTOR": settings.actor})
            link.wait_ready()
            say(f"SuperLink listening on {plan.address}; waiting for {min_clients} site(s)")
            flower_run = link.submit({
                "project": str(plan.project.absolute()), "model": spec.name, "run-id": run.id,
                "actor": settings.actor, "rounds": rounds, "min-clients": min_clients,
                "round-timeout": float(timeout)})
            say(f"Flower run {flower_run} started")
            deadline = time.monotonic() + (2 * rounds + 2) * timeout + 120
            finished = _follow(registry, link, run.id, flower_run, deadline, say)
        except BaseException as exc:
            _abandon(registry, run.id, exc)
            raise
        finally:
            if link is not None:
                link.stop()
    if finished.status == "failed":
        raise FederationError(f"federated run {run.id[:8]} failed: {finished.failure_reason}")
    if finished.status == "rejected":
        reasons = list(finished.gate.get("reasons", []))
        raise GateFailed(f"{spec.name}: no round's model passed the gate: "
                         f"{'; '.join(reasons)}", reasons)
    return finished


def _follow(registry: Registry, link: SuperLink, run_id: str, flower_run: str,
            deadline: float, say: Callable[[str], None]) -> Run:
    """Beat the run until it is finished; finish it as failed if Flower's run ends first."""
    asked = time.monotonic()
    ended_at: float | None = None
    seen = 0
    while True:
        run = registry.get_run(run_id)
        lines = run.logs.splitlines()
        for line in lines[seen:]:
            say(line)
        seen = max(seen, len(lines))
        if run.status != "running":
            return run
        registry.beat_run(run_id)
        now = time.monotonic()
        if not link.alive():
            return _fail(registry, run_id, f"the SuperLink exited: {link.tail(3)}")
        if now > deadline:
            return _fail(registry, run_id, "timed out waiting for the rounds to end")
        if ended_at is None and now - asked >= _ASK_FLOWER_S:
            asked = now
            if link.status(flower_run).startswith("finished"):
                ended_at = now
        if ended_at is not None and now - ended_at > _SETTLE_S:
            return _fail(registry, run_id, "the Flower run ended without finishing the "
                         f"federation: {_tail(link.logs(flower_run))}")
        time.sleep(_LOOK_S)


def _fail(registry: Registry, run_id: str, reason: str) -> Run:
    return registry.finish_run(run_id, status="failed", failure_reason=reason,
                               logs=registry.get_run(run_id).logs + f"\nfailed: {reason}")


def _abandon(registry: Registry, run_id: str, exc: BaseException) -> None:
    """Finish the run as failed when this process stops following it."""
    reason = ("cancelled: interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt)
              else str(exc) if isinstance(exc, ModelyardError)
              else f"{type(exc).__name__}: {exc}")
    try:
        if registry.get_run(run_id).status == "running":
            _fail(registry, run_id, reason)
    except Exception:  # never hide the real error behind a database error
        log.exception("could not record the failure of run %s", run_id)


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no log"


__all__ = ["Plan", "federate"]
