"""``modelyard demo --heal``: the fraud model's world drifts and modelyard heals it by itself.

What happens, with no human step:

1. a server process starts on the demo's registry (the same one the pipeline wrote);
2. the world drifts: a new, drifted batch of transactions lands in ``fraud/data`` and live
   traffic comes from the same drifted world; each answer's true label is fed back later;
3. the scheduler (in this process) checks drift on the prediction log, finds the inputs have
   moved, retrains on every batch, gates the new version against the champion and starts a
   canary;
4. the server's analysis compares candidate and stable on errors, latency and the fed-back F1
   and promotes the candidate step by step (or rolls it back);
5. the audit trail is printed: every step with who did it and why.

The demo tunes the fraud spec's clocks for a few minutes' show (drift checked every few seconds,
canary steps of a few seconds); everything else — the gate, the analysis, the traffic path — is
what runs in production.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.cli.output import fmt_time, print_table
from modelyard.errors import NotFoundError

if TYPE_CHECKING:
    from rich.console import Console

    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.spec import Spec

MODEL = "fraud"
DRIFT = 0.8  # how far the world moves (generate.py's knob, 0..1)
LABEL_EVERY = 25  # feed labels back in batches of this many answers
#: audit actions the demo counts instead of listing (one per label batch, one per drift check).
ROUTINE = ("labels.store", "drift.check")


@dataclass
class Traffic:
    """Live requests from the drifted world, with their labels fed back a moment later."""

    url: str
    frame: Any  # the drifted transactions, with is_fraud
    sent: int = 0
    failed: int = 0
    variants: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Send one transaction per request until stopped, cycling through the frame."""
        import httpx

        labels = self.frame.pop("is_fraud").tolist()
        rows = self.frame.to_dict(orient="records")
        pending: list[dict[str, Any]] = []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                row, label = rows[i % len(rows)], labels[i % len(rows)]
                i += 1
                rid = uuid.uuid4().hex
                try:
                    r = client.post(f"/v1/models/{MODEL}/predict", json={"records": [row]},
                                    headers={"X-Request-Id": rid})
                except httpx.HTTPError as exc:
                    self._fail(str(exc))
                    continue
                self.sent += 1
                if r.status_code != 200:
                    self._fail(f"{r.status_code}: {r.text[:200]}")
                    continue
                variant = r.headers.get("x-model-variant", "?")
                self.variants[variant] = self.variants.get(variant, 0) + 1
                pending.append({"request_id": rid, "label": int(label)})
                if len(pending) >= LABEL_EVERY:
                    client.post(f"/v1/models/{MODEL}/feedback", json={"labels": pending})
                    pending = []
                time.sleep(0.01)

    def _fail(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(message)


def heal(examples: Path, spec: Spec, registry: Registry, settings: Settings, out: Console,
         *, timeout_s: float = 600.0) -> bool:
    """Run the drift -> retrain -> canary -> promote loop on the fraud example; True if healed."""
    from modelyard.entrypoints import import_file
    from modelyard.rollout.deployments import Deployments
    from modelyard.scheduler import Scheduler
    from modelyard.serving.process import ServerProcess

    generator = import_file(examples / "fraud" / "generate.py")
    before = registry.resolve(f"{MODEL}@production")
    started = time.monotonic()
    out.print(f"\n[bold]heal[/bold]: {MODEL} v{before.version} serves; now its world drifts "
              f"(drift {DRIFT})")
    data = examples / "fraud" / "data"
    batch = generator.next_batch_number(data)
    path = generator.write_batch(data, batch=batch, rows=5000, drift=DRIFT)
    out.print(f"  a new batch landed: {path.name} (the next training run will see it)",
              markup=False)

    # one BLAS thread: the server shares the machine with the training runs the demo starts
    env = {"MODELYARD_HOME": str(settings.home), "MODELYARD_DB": settings.db_url,
           "MODELYARD_ARTIFACTS": settings.artifacts, "OMP_NUM_THREADS": "1"}
    server = ServerProcess(settings.home, env=env)
    out.print(f"  a server answers on {server.url}; live traffic starts, labels are fed back")
    traffic = Traffic(server.url, generator.generate(4000, drift=DRIFT, seed=4242 + batch))
    sender = threading.Thread(target=traffic.run, name="demo-traffic", daemon=True)
    sender.start()
    deployments = Deployments(registry)
    scheduler = Scheduler(registry, {MODEL: tuned(spec)}, interval_s=3.0, drift_every_s=5.0,
                          on_action=lambda a: out.print(f"  [cyan]scheduler[/cyan] {a.kind}: "
                                                         f"{a.message}", highlight=False))
    try:
        final = _watch(scheduler, deployments, registry, traffic, out, before.version,
                       started + timeout_s)
    finally:
        traffic.stop.set()
        sender.join(30)
        server.stop()
    _report(registry, traffic, out, started)
    healed = final is not None and final.state == "promoted" and traffic.failed == 0
    after = registry.resolve(f"{MODEL}@production")
    if healed:
        out.print(f"\n[green]healed[/green]: {MODEL} v{after.version} now serves (was "
                  f"v{before.version}), with {traffic.failed} failed requests of {traffic.sent}")
    else:
        state = final.state if final is not None else "no rollout"
        out.print(f"\n[red]not healed[/red]: {state}; {traffic.failed} failed requests "
                  f"{traffic.errors}")
    return healed


def tuned(spec: Spec) -> Spec:
    """The fraud spec with a demo's clocks: quick drift checks and canary steps of seconds."""
    # drift is the trigger to show: no nightly schedule, no label-count or metric trigger
    # (with labels flowing in, F1 could fall below its bound a tick before the drift check)
    retrain = spec.retrain.model_copy(update={"auto_rollout": True, "schedule": None,
                                              "new_labels": None, "metric_below": {},
                                              "drift_share": spec.retrain.drift_share or 0.3})
    rollout = spec.rollout.model_copy(update={"strategy": "canary", "steps": [25, 50, 100],
                                              "every_s": 6.0, "min_requests": 40,
                                              "min_labels": 40})
    # a short window: a drift check reads the last 20 s of traffic
    monitoring = spec.monitoring.model_copy(update={"window_s": 20.0, "min_rows": 150})
    return spec.model_copy(update={"retrain": retrain, "rollout": rollout,
                                   "monitoring": monitoring})


def _watch(scheduler: Any, deployments: Any, registry: Registry, traffic: Traffic, out: Console,
           old_version: int, deadline: float) -> Any:
    """Tick the scheduler and follow the rollout it starts until it ends (or the deadline)."""
    seen: tuple[int, int] | None = None
    rollout: Any = None
    next_tick = 0.0
    while time.monotonic() < deadline:
        if rollout is None and time.monotonic() >= next_tick:
            scheduler.tick()
            next_tick = time.monotonic() + scheduler.interval_s
        try:
            current = deployments.get(MODEL)
        except NotFoundError:  # no rollout of the model has ever started
            current = None
        if current is not None and current.candidate_version > old_version:
            rollout = current
            if (current.id, current.revision) != seen:
                seen = (current.id, current.revision)
                event = deployments.history(MODEL)[0]
                out.print(f"  [magenta]rollout[/magenta] {current.strategy} of v"
                          f"{current.candidate_version}: {current.state}, step "
                          f"{current.step + 1}/{len(current.steps)} "
                          f"({current.candidate_percent:g}% of traffic) — {event.actor}: "
                          f"{event.reason}", highlight=False)
            if not current.active:
                return current
        time.sleep(0.5)
    out.print("  [red]the demo ran out of time[/red]")
    return rollout


def _report(registry: Registry, traffic: Traffic, out: Console, started: float) -> None:
    shares = ", ".join(f"{k} {v}" for k, v in sorted(traffic.variants.items()))
    out.print(f"\n  traffic: {traffic.sent} requests ({shares}), {traffic.failed} failed, "
              f"in {time.monotonic() - started:.0f} s")
    since = time.time() - (time.monotonic() - started) - 1
    events = [e for e in reversed(registry.audit_events(MODEL, limit=2000))
              if e.at.timestamp() >= since]
    # every label batch and drift check is audited too; the story is in the other steps
    routine = [e for e in events if e.action in ROUTINE]
    steps = [e for e in events if e.action not in ROUTINE][-40:]
    print_table(["at", "actor", "action", "details"],
                [[fmt_time(e.at), e.actor, e.action, _brief(e.details)] for e in steps],
                title=f"audit trail of {MODEL} during the demo")
    if routine:
        counts = ", ".join(f"{sum(e.action == a for e in routine)} {a}" for a in ROUTINE)
        out.print(f"  also audited: {counts} (modelyard audit {MODEL} shows them)")


def _brief(details: dict[str, Any]) -> str:
    keep = ("reason", "version", "from_state", "to_state", "state", "message", "run_id")
    parts = [f"{k}={details[k]}" for k in keep if details.get(k) not in (None, "")]
    return "; ".join(parts)[:160]


__all__ = ["Traffic", "heal", "tuned"]
