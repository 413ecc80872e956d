"""Rollouts in the server: route requests by the model's active deployment, shadow, analyse.

:class:`Rollouts` polls :meth:`Deployments.changed_since` every ``poll_interval_s`` and keeps, per
model, the active deployment with both of its versions loaded and warmed
(:class:`ActiveRollout`). It is applied in one dict assignment, only once both runners answer;
a blue-green candidate is warmed first, then this process asks for ``activate``. When the
deployment ends, the model goes back to its alias route (which a promotion has moved) and a
candidate that did not become production is unloaded.

On the request path (``App.predict``, unversioned requests only) one dict lookup finds the
rollout; :func:`~modelyard.rollout.routing.choose_variant` picks the variant. A candidate's
server error is retried on stable, so clients never see it; it still counts as a candidate
error. A shadow copy goes to the candidate without being awaited (dropped, and counted, when
its queue is full); its latency and its agreement with the stable answer are recorded.

Every ``every_s`` (at least :data:`MIN_ANALYSIS_S`) the window statistics of each variant go
through :func:`~modelyard.rollout.analysis.analyze`; a decision other than hold is written with
the revision it was made on. A :class:`ConflictError` means another process decided first: the
next poll loads what it decided. The window restarts whenever the deployment's revision moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import numpy as np

from modelyard.errors import ConflictError
from modelyard.predictor import Prediction
from modelyard.rollout.analysis import Rules, analyze
from modelyard.rollout.routing import choose_variant
from modelyard.rollout.stats import WindowStats
from modelyard.serving.batching import QueueFullError
from modelyard.serving.catalog import Catalog
from modelyard.serving.runner import Runner

log = logging.getLogger(__name__)

#: the analysis interval's floor in seconds (``every_s`` below it is clamped up).
MIN_ANALYSIS_S = 1.0
#: the header that carries a request's key (sticky A/B groups).
KEY_HEADER = b"x-request-key"
#: shadow copies of one rollout in flight at once; more are dropped.
MAX_SHADOW_IN_FLIGHT = 256
#: a deployment whose versions failed to load is retried after this many seconds.
RETRY_FAILED_S = 10.0

Fallback = Callable[..., Awaitable[Prediction]]


class ActiveRollout:
    """One model's active deployment in this process: its runners and its window statistics."""

    def __init__(self, deployment: Any, stable: Runner, candidate: Runner) -> None:
        self.deployment = deployment
        self.stable = stable
        self.candidate = candidate
        self.rules = Rules.from_dict(deployment.rules)
        self.same_inputs = stable.predictor.signature == candidate.predictor.signature
        self.in_flight = 0
        self.dropped = 0
        self.retried = 0
        self.stats = {"stable": WindowStats(), "candidate": WindowStats()}
        self.next_analysis = time.monotonic() + max(MIN_ANALYSIS_S, deployment.every_s)

    @property
    def ident(self) -> tuple[int, int]:
        """``(id, revision)`` of the deployment applied."""
        return (self.deployment.id, self.deployment.revision)

    def update(self, deployment: Any) -> None:
        """Take a newer revision of the same deployment; its window starts afresh."""
        self.deployment = deployment
        self.rules = Rules.from_dict(deployment.rules)
        self.stats = {"stable": WindowStats(), "candidate": WindowStats()}
        self.next_analysis = time.monotonic() + max(MIN_ANALYSIS_S, deployment.every_s)


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


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", 500))


class Rollouts:
    """Apply the registry's deployments to the served models; ``start``/``stop`` on the loop."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        #: model name -> its active rollout; read once per request.
        self.active: dict[str, ActiveRollout] = {}
        self.deployments: Any = None
        #: who this process is in a deployment's history (it activates blue-green candidates).
        self.actor = f"server:{socket.gethostname()}:{os.getpid()}"
        self._cursor: Any = None
        self._seen: dict[str, tuple[int, int]] = {}
        self._failed: dict[tuple[int, int], float] = {}
        self._applying: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and wait for deployments being applied."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self) -> None:
        interval = self.catalog.options.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
                await self.analyze_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the registry may be briefly unreachable; keep serving
                log.warning("could not read or write rollouts: %s", exc)

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
                    or now < self._failed.get(ident, 0.0)):
                continue
            self._spawn(self.apply(d))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            if held.deployment.revision < d.revision:
                held.update(d)
                log.info("%s rollout %s: %s at step %d (revision %d)", d.model, d.id, d.state,
                         d.step + 1, d.revision)
        else:
            cache = self.catalog.cache
            try:  # both load and warm while the model keeps answering as before
                stable, candidate = await asyncio.gather(
                    cache.get((d.model, d.stable_version)),
                    cache.get((d.model, d.candidate_version)))
            except Exception as exc:
                self._failed[(d.id, d.revision)] = time.monotonic() + RETRY_FAILED_S
                log.error("cannot apply the %s rollout of %s:%s (stable %s) yet: %s", d.strategy,
                          d.model, d.candidate_version, d.stable_version, exc)
                return False
            self.active[d.model] = ActiveRollout(d, stable, candidate)  # the atomic switch
            log.info("%s: %s rollout %s of version %s against %s, %s", d.model, d.strategy,
                     d.id, d.candidate_version, d.stable_version, d.state)
        if d.state == "pending" and d.strategy == "blue-green":
            await self._decide(d, "activate", self.actor, "the candidate is loaded and warmed")
        return True

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
    async def analyze_due(self) -> None:
        """Analyse each progressing rollout whose interval has passed; write what it decides."""
        now = time.monotonic()
        for model, held in list(self.active.items()):
            d = held.deployment
            if now < held.next_analysis or d.state != "progressing":
                continue
            held.next_analysis = now + max(MIN_ANALYSIS_S, d.every_s)
            decision = analyze(held.stats["stable"], held.stats["candidate"], held.rules,
                               d.step, len(d.steps))
            if held.dropped:
                decision.details["shadow_dropped"] = held.dropped
            if decision.action == "hold":
                log.debug("%s rollout %s holds: %s", model, d.id, decision.reason)
                continue
            await self._decide(d, decision, "analysis", decision.reason)

    # -- the request path -----------------------------------------------------------------------
    async def predict(self, held: ActiveRollout, call: Any, to_payload: Callable[[Runner], Any],
                      scores: bool, scope: Any, fields: Any, fallback: Fallback) -> Prediction:
        """Answer one request of a model under rollout (``App.predict`` calls this)."""
        d = held.deployment
        route = choose_variant(d, request_key(scope, d.key, fields), random.random())
        if route.primary == "candidate" and not held.candidate.closed:
            runner = held.candidate
            start = time.perf_counter()
            try:
                batch, n = runner.prepare(to_payload(runner))
                result: Prediction = await runner.submit(batch, n, scores)
            except Exception as exc:
                if _status(exc) < 500:
                    raise
                held.stats["candidate"].observe(time.perf_counter() - start, error=True)
                held.retried += 1
                if _power_of_ten(held.retried):  # 1st, 10th, 100th...: not one line per request
                    log.warning("%s candidate %s failed %d times, each answered by stable: %s",
                                d.model, runner.version, held.retried, exc)
            else:
                held.stats["candidate"].observe(time.perf_counter() - start)
                call.runner, call.variant = runner, "candidate"
                return result
        runner = held.stable
        if runner.closed:  # unloaded by a promotion the next poll will apply
            return await fallback(call, d.model, None, to_payload, scores)
        call.runner, call.variant = runner, "stable"
        start = time.perf_counter()
        try:
            batch, n = runner.prepare(to_payload(runner))
            result = await runner.submit(batch, n, scores)
        except Exception as exc:
            if _status(exc) >= 500:
                held.stats["stable"].observe(time.perf_counter() - start, error=True)
            raise
        held.stats["stable"].observe(time.perf_counter() - start)
        if route.shadow:
            self._shadow(held, batch, n, scores, result, to_payload)
        return result

    def _shadow(self, held: ActiveRollout, batch: Any, n: int, scores: bool,
                primary: Prediction, to_payload: Callable[[Runner], Any]) -> None:
        """Send a copy to the candidate without awaiting it; record latency and agreement."""
        runner = held.candidate
        if runner.closed:
            return
        if held.in_flight >= MAX_SHADOW_IN_FLIGHT:
            self._drop(held)
            return
        stats = held.stats["candidate"]
        start = time.perf_counter()
        try:
            if not held.same_inputs:
                batch, n = runner.prepare(to_payload(runner))
            future = runner.submit(batch, n, scores)
        except QueueFullError:
            self._drop(held)
            return
        except Exception:
            stats.observe(time.perf_counter() - start, error=True)
            return
        held.in_flight += 1

        def done(f: asyncio.Future[Any]) -> None:
            held.in_flight -= 1
            latency = time.perf_counter() - start
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                stats.observe(latency, error=_status(exc) >= 500)
                return
            stats.observe(latency)
            stats.compare(agrees(primary, f.result()))

        future.add_done_callback(done)

    def _drop(self, held: ActiveRollout) -> None:
        held.dropped += 1
        runner = held.candidate
        self.catalog.metrics.shadow_dropped.labels(runner.name, runner.version_str).inc()


__all__ = ["KEY_HEADER", "MIN_ANALYSIS_S", "ActiveRollout", "Rollouts", "agrees", "request_key"]
