"""Rollouts in the server: apply the registry's deployments to the served models, and analyse.

:class:`Rollouts` polls :meth:`Deployments.changed_since` every ``poll_interval_s`` and keeps, per
model, the active deployment with both of its versions loaded and warmed
(:class:`ActiveRollout`). It is applied in one dict assignment, only once both runners answer;
a blue-green candidate is warmed first, then this process asks for ``activate``. A candidate
that cannot be loaded or warmed ends the rollout as rolled back, with the error as the reason,
at once (the first poll after it was written); so does one that stops serving (evicted, or its
device worker could not be restarted) and cannot be loaded again. When the deployment ends, the
model goes back to its alias route (which a promotion has moved) and a candidate that did not
become production is unloaded.

The request path (:class:`~modelyard.serving.dataplane.DataPlane`, unversioned requests only)
finds a model's :class:`ActiveRollout` in :attr:`Rollouts.active` with one dict lookup, routes by
it and counts into its window; :func:`request_key` and :func:`agrees` are the pure pieces it
uses.

Several processes (``--workers``, several hosts) share one registry, and analysis is decided
once, on all their traffic: the windows, their freshness, the leader among the processes, the
merge and the first analysis's wait are pure (:mod:`modelyard.rollout.windows`); this loop does
their I/O. Every poll it publishes this process's window of each rollout it applies
(:meth:`Deployments.publish_window`); when a window's analysis is due it reads the fresh windows
of its revision and, if this process leads, adds the declared metric over fed-back labels when
the rules name one, judges and writes a decision other than hold with the revision it was made
on. A :class:`ConflictError` means another process decided first (a leader that just changed):
the next poll loads what it decided.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import numpy as np

from modelyard.errors import ConflictError
from modelyard.predictor import Prediction
from modelyard.rollout.decision import Decision
from modelyard.rollout.stats import WindowStats
from modelyard.rollout.windows import (
    VARIANTS,
    ProcessWindow,
    fresh_seconds,
    gather_windows,
    judge,
    leader,
    merge_windows,
    settle_seconds,
    shadow_dropped,
)
from modelyard.serving.catalog import Catalog
from modelyard.serving.poller import Poller
from modelyard.serving.runner import Runner

log = logging.getLogger(__name__)

#: the header that carries a request's key (sticky A/B groups).
KEY_HEADER = b"x-request-key"
#: shadow copies of one rollout in flight at once; more are dropped.
MAX_SHADOW_IN_FLIGHT = 256
#: a deployment whose versions failed to load is retried after this many seconds.
RETRY_FAILED_S = 10.0

class ActiveRollout(ProcessWindow):
    """One model's active deployment in this process: its runners, and its window (see
    :class:`~modelyard.rollout.windows.ProcessWindow`) that the request path counts into."""

    def __init__(self, deployment: Any, stable: Runner, candidate: Runner, *,
                 settle_s: float = 0.0) -> None:
        self.stable = stable
        self.candidate = candidate
        # a version that fetches its features takes entity keys, not its signature's fields
        self.same_inputs = (stable.predictor.signature == candidate.predictor.signature
                            and getattr(stable, "entity_keys", None)
                            == getattr(candidate, "entity_keys", None))
        self.in_flight = 0
        self.retried = 0
        super().__init__(deployment, settle_s=settle_s)

    @property
    def candidate_serving(self) -> bool:
        """Whether the candidate's runner takes requests (it may have been unloaded)."""
        return not self.candidate.closed


def request_key(scope: Any, field: str | None, fields: Any) -> str | None:
    """A request's routing key: the ``X-Request-Key`` header, else the header or input field
    the deployment's ``key`` names (the first record's value), else None."""
    wanted = field.lower().encode() if field else None
    if scope is not None:
        named = None
        for name, value in scope.get("headers", ()):
            if name == KEY_HEADER:
                return str(value.decode("latin-1"))
            if name == wanted:
                named = str(value.decode("latin-1"))
        if named is not None:
            return named
    if field is None or fields is None:
        return None
    if isinstance(fields, list) and fields and isinstance(fields[0], dict):
        fields = fields[0]
    if isinstance(fields, dict) and field in fields:
        value = fields[field]
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0] if value.size else None
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = value[0] if value else None
        return None if value is None else str(value)
    return None


def agrees(primary: Prediction, shadow: Prediction) -> bool:
    """Whether a shadow answer agrees with the primary one: equal labels, or close numbers."""
    a = np.asarray(primary.predictions)
    b = np.asarray(shadow.predictions)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        try:
            return bool(np.allclose(a, b, rtol=1e-3, atol=1e-6))
        except TypeError:
            return False
    return bool(np.array_equal(a, b))


class Rollouts(Poller):
    """Apply the registry's deployments to the served models; ``start``/``stop`` on the loop."""

    doing = "read or write rollouts"

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog
        #: model name -> its active rollout; read once per request.
        self.active: dict[str, ActiveRollout] = {}
        self.deployments: Any = None
        #: who this process is in a deployment's history (it activates blue-green candidates).
        self.actor = f"server:{socket.gethostname()}:{os.getpid()}"
        poll_s = catalog.options.poll_interval_s
        #: published windows older than this are left out of analysis (see fresh_seconds).
        self.fresh_s = fresh_seconds(poll_s)
        self._settle_s = settle_seconds(poll_s)
        self._cursor: Any = None
        self._seen: dict[str, tuple[int, int]] = {}
        self._labels_failed: set[int] = set()  # deployments whose label metric failed (warned)
        self._failed: dict[tuple[int, int], float] = {}
        self._applying: set[str] = set()
        self._reloading: set[tuple[str, str]] = set()

    # -- the loop -------------------------------------------------------------------------------
    def interval(self) -> float:
        return float(self.catalog.options.poll_interval_s)

    async def tick(self) -> None:
        await self.poll()
        self.check_runners()
        await self.publish()
        await self.analyze_due()

    async def _io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.catalog.io_pool, partial(fn, *args, **kw))

    # -- applying deployments -------------------------------------------------------------------
    async def poll(self) -> None:
        """Read changed deployments once and start applying each one not applied yet."""
        if self.deployments is None:
            from modelyard.rollout.deployments import Deployments

            self.deployments = Deployments(self.catalog.registry)
        changes = await self._io(self.deployments.changed_since, self._cursor)
        self._cursor = changes.cursor
        now = time.monotonic()
        for d in changes.deployments:
            ident = (d.id, d.revision)
            if (self._seen.get(d.model) == ident or d.model in self._applying
                    or now < self._failed.get(ident, 0.0)
                    or not await self._served_here(d.model)):
                continue
            held = self.active.get(d.model)
            if held is not None and held.deployment.id == d.id and d.active and \
                    d.state != "pending":
                # a new revision of what is loaded: nothing to load, so apply it now and this
                # poll publishes the new revision's window
                self._update(held, d)
                self._seen[d.model] = ident
                continue
            self.spawn(self.apply(d))

    async def _served_here(self, model: str) -> bool:
        """Whether this server serves ``model`` (``--pool``, ``--models``): another pool's
        rollout is that pool's to apply, and loading its versions here would be refused."""
        catalog = self.catalog
        if catalog.selection.everything:
            return True
        if not catalog.has_read or (model not in catalog.models
                                    and model not in catalog.elsewhere):
            await catalog.read_registry()  # registered since the last read
        return model in catalog.models

    async def apply(self, d: Any) -> None:
        """Route ``d.model`` by deployment ``d``, or back by its alias once ``d`` has ended."""
        self._applying.add(d.model)
        try:
            if d.active and d.stable_version is not None:
                if not await self._route(d):
                    return
            else:
                await self._end(d)
            self._seen[d.model] = (d.id, d.revision)
        finally:
            self._applying.discard(d.model)

    async def _route(self, d: Any) -> bool:
        """Apply an active deployment; False when its versions could not be loaded (yet)."""
        held = self.active.get(d.model)
        if held is not None and held.deployment.id == d.id:
            self._update(held, d)
        else:
            cache = self.catalog.cache
            # both load and warm while the model keeps answering as before
            loaded = await asyncio.gather(cache.get((d.model, d.stable_version)),
                                          cache.get((d.model, d.candidate_version)),
                                          return_exceptions=True)
            for result in loaded:
                if isinstance(result, BaseException) and not isinstance(result, Exception):
                    raise result  # cancelled: the server is stopping
            stable, candidate = loaded
            if isinstance(candidate, Exception) or isinstance(stable, Exception):
                self._failed[(d.id, d.revision)] = time.monotonic() + RETRY_FAILED_S
                if isinstance(candidate, Exception):
                    await self._candidate_failed(d, "cannot be loaded", candidate)
                else:  # production itself does not load here: retried, status says so
                    log.error("cannot apply the %s rollout of %s:%s (stable %s) yet: %s",
                              d.strategy, d.model, d.candidate_version, d.stable_version, stable)
                return False
            # the atomic switch
            self.active[d.model] = ActiveRollout(d, cast(Runner, stable), cast(Runner, candidate),
                                                 settle_s=self._settle_s)
            log.info("%s: %s rollout %s of version %s against %s, %s", d.model, d.strategy,
                     d.id, d.candidate_version, d.stable_version, d.state)
        if d.state == "pending" and d.strategy == "blue-green":
            await self._decide(d, "activate", self.actor, "the candidate is loaded and warmed")
        return True

    async def _candidate_failed(self, d: Any, what: str, exc: BaseException) -> None:
        """End ``d`` as rolled back: its candidate cannot serve here (the error is the reason)."""
        reason = (f"candidate {d.model}:{d.candidate_version} {what} on {self.actor}: "
                  f"{str(exc) or type(exc).__name__}")
        log.error("%s rollout %s: %s; rolling back", d.model, d.id, reason)
        decision = Decision("rollback", (reason,), details={"process": self.actor,
                                                            "error": type(exc).__name__})
        await self._decide(d, decision, self.actor, reason)

    def check_runners(self) -> None:
        """Load again a rollout's version whose runner was unloaded (evicted under the memory
        budget, or its device worker could not be restarted); without it no request would reach
        the candidate and analysis would wait for requests forever."""
        for model, held in list(self.active.items()):
            for variant in VARIANTS:
                if not getattr(held, variant).closed or (model, variant) in self._reloading:
                    continue
                if variant == "stable" and \
                        self.catalog.routes.get(model) != held.deployment.stable_version:
                    continue  # the alias moved on (a promotion this process applies next)
                self._reloading.add((model, variant))
                self.spawn(self._reload(held, variant))

    async def _reload(self, held: ActiveRollout, variant: str) -> None:
        d = held.deployment
        try:
            runner = await self.catalog.cache.get((d.model, d.version_of(variant)))
        except Exception as exc:
            if variant == "candidate":
                await self._candidate_failed(d, "stopped serving and cannot be loaded again",
                                             exc)
            else:  # requests fall back to the alias route meanwhile
                log.error("%s: stable version %s of rollout %s cannot be loaded again: %s",
                          d.model, d.stable_version, d.id, exc)
            return
        finally:
            self._reloading.discard((d.model, variant))
        if self.active.get(d.model) is held:
            setattr(held, variant, runner)

    @staticmethod
    def _update(held: ActiveRollout, d: Any) -> None:
        if held.deployment.revision < d.revision:
            held.update(d)
            log.info("%s rollout %s: %s at step %d (revision %d)", d.model, d.id, d.state,
                     d.step + 1, d.revision)

    async def _end(self, d: Any) -> None:
        held = self.active.pop(d.model, None)
        if held is None:
            return
        log.info("%s: rollout %s %s; serving the %s alias", d.model, d.id, d.state,
                 self.catalog.options.alias)
        catalog, candidate, stable = self.catalog, d.candidate_version, d.stable_version
        if d.state == "promoted":
            # the promotion moved the alias in the same transaction: hand over now rather than
            # flip back to stable until the alias watcher's next poll
            catalog.routes[d.model] = candidate
            if stable is not None and stable != candidate:
                catalog.cache.evict((d.model, stable))  # drains its queue first
            return
        alias = catalog.models.get(d.model, {}).get(catalog.options.alias)
        if candidate not in (alias, catalog.routes.get(d.model)):
            catalog.cache.evict((d.model, candidate))

    async def _decide(self, d: Any, decision: Any, actor: str, reason: str) -> None:
        try:
            new = await self._io(self.deployments.transition, d.model, decision,
                                 expected_revision=d.revision, actor=actor, reason=reason)
        except ConflictError as exc:  # another process decided first: reload at the next poll
            log.info("%s rollout %s: %s", d.model, d.id, exc)
            self._seen.pop(d.model, None)
            return
        if new.revision != d.revision:
            log.info("%s rollout %s: %s by %s (%s)", d.model, d.id, new.state, actor, reason)
            await self._apply_now(new)

    async def _apply_now(self, d: Any) -> None:
        """Apply what this process just decided without waiting for the next poll."""
        if d.active:
            await self._route(d)
        else:
            await self._end(d)

    # -- analysis -------------------------------------------------------------------------------
    async def publish(self) -> None:
        """Publish this process's window of every rollout it applies, for the analysing one."""
        for held in list(self.active.values()):
            d = held.deployment
            stats = held.snapshot()  # here, on the loop: the request path writes these counts
            current = await self._io(self.deployments.publish_window, d.id, d.revision,
                                     self.actor, stats)
            if not current and held.deployment is d:
                held.outdated = True  # decided elsewhere: the next poll applies it

    async def analyze_due(self) -> None:
        """Analyse each progressing rollout whose interval has passed, if this process leads
        its revision; write what it decides."""
        now = time.monotonic()
        for model, held in list(self.active.items()):
            if not held.due(now):
                continue
            d = held.deployment
            published = await self._io(self.deployments.windows, d.id, d.revision,
                                       fresh_s=self.fresh_s)
            windows = gather_windows(self.actor, held.stats, published)
            if leader(windows) != self.actor:
                log.debug("%s rollout %s: %s analyses revision %d", model, d.id,
                          leader(windows), d.revision)
                continue
            merged = merge_windows(windows)
            if held.rules.metric is not None:
                await self._add_labels(d, held.rules.metric, merged)
            if held.deployment is not d:  # a new revision arrived meanwhile: its window restarted
                continue
            decision = judge(d, held.rules, windows, merged,
                             dropped=shadow_dropped(self.actor, held.dropped, published))
            held.analysis = f"{decision.action}: {decision.reason}"
            if decision.action == "hold":
                log.debug("%s rollout %s holds: %s", model, d.id, decision.reason)
                continue
            await self._decide(d, decision, "analysis", decision.reason)

    async def _add_labels(self, d: Any, metric: str, merged: dict[str, WindowStats]) -> None:
        """Put the declared metric over the labels fed back since the step started into the
        merged windows; without it (monitoring missing or failing) analysis goes on unlabeled."""
        versions = {v: d.version_of(v) for v in VARIANTS if d.version_of(v) is not None}
        try:
            from modelyard.monitoring.monitor import rollout_metric

            found = await self._io(rollout_metric, self.catalog.registry, d.model, metric,
                                   versions, d.step_started_at or d.created_at)
        except Exception as exc:  # an optional input to analysis: never stop the loop for it
            if d.id not in self._labels_failed:  # once per deployment, not every interval
                self._labels_failed.add(d.id)
                log.warning("%s rollout %s: no %s from fed-back labels (%s); analysing "
                            "without them", d.model, d.id, metric, exc)
            return
        self._labels_failed.discard(d.id)
        for variant, (labeled, value, se, *p) in found.items():
            if variant in merged:
                window = merged[variant]
                window.labeled, window.metric_value, window.metric_se = labeled, value, se
                window.metric_p = p[0] if p else None


__all__ = ["KEY_HEADER", "MAX_SHADOW_IN_FLIGHT", "RETRY_FAILED_S", "ActiveRollout", "Rollouts",
           "agrees", "request_key"]
