"""The data plane: the one place a decoded prediction request becomes an answer.

Every protocol is a thin codec around it: REST v1 (:mod:`~modelyard.serving.native`), OIP v2
over REST (:mod:`~modelyard.serving.oip`) and over gRPC (:mod:`~modelyard.serving.grpc_server`),
and queue messages (:mod:`~modelyard.serving.queue.codec`). Each prediction goes the same way::

    codec                               data plane
    Call(protocol, model, request id)
    version in the path          ->     version(): the number, or 404 before the body is judged
    decode -> InferenceRequest   ->     infer(): resolve the served alias, the version or the
                                          rollout's variant to a runner; prepare the input
                                          against its signature; queue it for a batch; await
                                          the prediction. Writes what answered into the Call.
    encode the answer, or map the
    error (a ModelyardError with
    its status) to the protocol
    the status it answered       ->     record(): request count and duration by version and
                                          variant; the prediction log (sampled)

While a rollout routes a model (unversioned requests only), :meth:`DataPlane.infer` finds it in
one dict lookup and :func:`~modelyard.rollout.routing.choose_variant` picks the variant. A
candidate's server error is retried on stable, so clients never see it; it still counts as a
candidate error. A shadow copy goes to the candidate without being awaited (dropped, and
counted, when its queue is full or too many are in flight); its latency and its agreement with
the stable answer go into the rollout's window, and its answer into the prediction log as
variant ``shadow``. Applying deployments and analysing them is
:class:`~modelyard.serving.rollouts.Rollouts`' (a loop beside the request path).

The data plane also starts and stops what serving needs (registry, preloading, the prediction
log, the alias watcher and the rollouts loop) and says whether the server is ready.

Cost on the request path: :meth:`DataPlane.infer` returns the coroutine of the path it picks
(no frame of its own), so a request without a rollout runs one coroutine between its codec and
the runner's batch future, as before; a codec allocates a :class:`Call` and an
:class:`InferenceRequest` (the native protocol no longer allocates a payload closure).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelyard.errors import QueueFullError, RunnerClosedError
from modelyard.predictor import Prediction
from modelyard.rollout.routing import choose_variant
from modelyard.serving.calls import Call, parse_version
from modelyard.serving.catalog import Catalog
from modelyard.serving.graphs import current_request, step_label
from modelyard.serving.rollouts import (
    MAX_SHADOW_IN_FLIGHT,
    ActiveRollout,
    Rollouts,
    agrees,
    request_key,
)
from modelyard.serving.runner import Runner
from modelyard.serving.unloader import IdleUnloader, rollout_versions
from modelyard.serving.watcher import Watcher

log = logging.getLogger(__name__)

#: how a codec turns a request's payload into a runner's input when that depends on the
#: version's signature (OIP tensors by name): ``build(runner, request) -> payload``.
Build = Callable[[Runner, "InferenceRequest"], Any]


class InferenceRequest:
    """One prediction request as its codec decoded it; nothing changes it afterwards.

    ``payload``: the decoded input (records, columns, instances, tensors by name): the runner's
    input, unless ``build`` makes that from it, and where a rollout looks for its key field.
    ``outputs``: the outputs asked for by name (OIP; ``build`` checks them). ``request_id``:
    an id the body names (OIP ``id``), which replaces the call's. ``scope``: where a rollout
    finds its routing key header: an ASGI scope, or a function returning one (``{"headers":
    [...]}``), called only when a rollout routes the model.
    """

    __slots__ = ("build", "model", "outputs", "payload", "request_id", "scope", "scores",
                 "version")

    def __init__(self, model: str, version: int | None, payload: Any, scores: bool = False, *,
                 build: Build | None = None, outputs: Sequence[str] = (),
                 request_id: str | None = None, scope: Any = None) -> None:
        self.model = model
        self.version = version
        self.payload = payload
        self.scores = scores
        self.build = build
        self.outputs = outputs
        self.request_id = request_id
        self.scope = scope

    def input_for(self, runner: Runner) -> Any:
        """What ``runner.prepare`` takes for this request."""
        return self.payload if self.build is None else self.build(runner, self)

    def key(self, field: str | None) -> str | None:
        """This request's routing key under a rollout keyed by ``field`` (see
        :func:`~modelyard.serving.rollouts.request_key`)."""
        scope = self.scope() if callable(self.scope) else self.scope
        return request_key(scope, field, self.payload)


class DataPlane:
    """Resolve, route, prepare, batch, predict and record every prediction; readiness.

    Built over a :class:`Catalog` (registry snapshot, runners, metrics); owns the alias
    :class:`Watcher` and the :class:`Rollouts` loop. ``settings`` names the registry to open
    when the catalog has none; ``owns_registry``: close it on :meth:`stop`.
    """

    def __init__(self, catalog: Catalog, *, settings: Any = None,
                 owns_registry: bool = False) -> None:
        self.catalog = catalog
        self.options = catalog.options
        self.metrics = catalog.metrics
        self.watcher = Watcher(catalog)
        self.rollouts = Rollouts(catalog)
        #: unloads versions idle for ``--idle-unload`` (None: off); a routed rollout's stay.
        self.idle = None if self.options.idle_unload_s is None else IdleUnloader(
            catalog.cache, self.options.idle_unload_s,
            keep=lambda: rollout_versions(self.rollouts.active))
        #: the PredictionLog, once started (also the catalog's: loaded runners get a policy).
        self.predlog: Any = None
        #: preloading is done (or was not asked for): ``/readyz`` may say ready.
        self.ready = False
        #: the server is stopping (SIGTERM): not ready, though it still answers for a while.
        self.draining = False
        self._settings = settings
        self._owns_registry = owns_registry
        self._preload: asyncio.Task[None] | None = None
        catalog.dispatch = self.step  # a graph version calls its members through here
        #: released when the data plane stops, after the runners (a codec's own connections)
        self.closers: list[Callable[[], None]] = []

    # -- the request path -----------------------------------------------------------------------
    def version(self, name: str, version: str | None) -> int | None:
        """The version number a request names (None: the served alias), or
        :class:`NotFoundError` for an unknown model, version or alias: asked before the
        request's body is decoded, so a 404 is not hidden behind complaints about the body."""
        number = parse_version(name, version)
        if self.catalog.runner_now(name, number) is None:
            self.catalog.key_for(name, number)
        return number

    def infer(self, call: Call, request: InferenceRequest) -> Awaitable[Prediction]:
        """Answer ``request``: the prediction, with what answered written into ``call``.

        Raises a :class:`ModelyardError` with the status the codec answers: 404 (unknown
        model, version or alias), 422 (input against the signature), 503 (queue full, device
        worker down), 504 (timed out), 500 (the model failed).
        """
        if request.request_id is not None:
            call.request_id = request.request_id
        if request.version is None:
            held = self.rollouts.active.get(request.model)
            if held is not None:
                return self._rolled_out(held, call, request)
        # the coroutine itself is returned: no extra frame on the path without a rollout
        return self._served(call, request)

    async def step(self, name: str, version: int | None, payload: Any, scores: bool,
                   request_id: str | None) -> tuple[Prediction, str, Any]:
        """One member call of a graph, as a request of its own for ``name`` (``version`` None:
        its served alias, under its rollout if one routes it): counted and logged under the
        graph's ``request_id`` with protocol ``graph``. Returns the answer, its step label
        (:func:`~modelyard.serving.graphs.step_label`) and the member's prepared input."""
        call = Call("graph", name, request_id)
        status = 500
        try:
            self.version(name, None if version is None else str(version))  # 404 names it
            result = await self.infer(call, InferenceRequest(name, version, payload, scores))
            status = 200
        except Exception as exc:
            status = _status(exc)
            raise
        finally:
            self.record(call, status)
        runner = call.runner
        assert runner is not None
        return result, step_label(name, runner.version, call.variant), call.batch

    async def _served(self, call: Call, request: InferenceRequest) -> Prediction:
        """Predict with the served alias's version (or the one asked for); retried on a
        runner that closed under the request (its version was just swapped out)."""
        catalog = self.catalog
        for attempt in range(3):
            runner = catalog.runner_now(request.model, request.version)
            if runner is None or runner.closed:
                runner = await catalog.runner(request.model, request.version)
            call.runner = runner
            if getattr(runner, "composed", False):  # a graph: members share the id
                current_request.set(call.request_id)
            batch, n = runner.prepare(request.input_for(runner))
            try:
                result: Prediction = await runner.submit(batch, n, request.scores)
            except RunnerClosedError:
                if attempt == 2:
                    raise
                continue
            call.batch, call.rows, call.result = batch, n, result
            return result
        raise AssertionError("unreachable")

    async def _rolled_out(self, held: ActiveRollout, call: Call,
                          request: InferenceRequest) -> Prediction:
        """Answer a request for a model under rollout: the variant the route picks, the
        candidate's server errors retried on stable, a shadow copy when the route says so."""
        d = held.deployment
        route = choose_variant(d, request.key(d.key), random.random())
        if route.primary == "candidate" and not held.candidate.closed:
            answered = await self._candidate(held, call, request)
            if answered is not None:
                return answered
        runner = held.stable
        if runner.closed:  # unloaded by a promotion the next poll will apply
            return await self._served(call, request)
        call.runner, call.variant = runner, "stable"
        if getattr(runner, "composed", False):
            current_request.set(call.request_id)
        start = time.perf_counter()
        try:
            batch, n = runner.prepare(request.input_for(runner))
            result: Prediction = await runner.submit(batch, n, request.scores)
        except Exception as exc:
            if _status(exc) >= 500:
                held.stats["stable"].observe(time.perf_counter() - start, error=True)
            raise
        held.stats["stable"].observe(time.perf_counter() - start)
        if route.shadow:
            self._shadow(held, batch, n, request, result, call.request_id)
        call.batch, call.rows, call.result = batch, n, result
        return result

    async def _candidate(self, held: ActiveRollout, call: Call,
                         request: InferenceRequest) -> Prediction | None:
        """The candidate's answer, or None after a server error (stable answers instead)."""
        runner = held.candidate
        if getattr(runner, "composed", False):
            current_request.set(call.request_id)
        start = time.perf_counter()
        try:
            batch, n = runner.prepare(request.input_for(runner))
            result: Prediction = await runner.submit(batch, n, request.scores)
        except Exception as exc:
            if _status(exc) < 500:
                raise
            held.stats["candidate"].observe(time.perf_counter() - start, error=True)
            held.retried += 1
            if _power_of_ten(held.retried):  # 1st, 10th, 100th...: not one line per request
                log.warning("%s candidate %s failed %d times, each answered by stable: %s",
                            runner.name, runner.version, held.retried, exc)
            return None
        held.stats["candidate"].observe(time.perf_counter() - start)
        call.runner, call.variant = runner, "candidate"
        call.batch, call.rows, call.result = batch, n, result
        return result

    def _shadow(self, held: ActiveRollout, batch: Any, n: int, request: InferenceRequest,
                primary: Prediction, request_id: str) -> None:
        """Send a copy to the candidate without awaiting it; record latency and agreement, and
        log the shadow answer (variant ``shadow``, the same request id) so that labels fed back
        for the request judge the candidate too."""
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
                batch, n = runner.prepare(request.input_for(runner))
            future = runner.submit(batch, n, request.scores)
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
            answer = f.result()
            stats.compare(agrees(primary, answer))
            policy, predlog = runner.log_policy, self.predlog
            if policy is not None and predlog is not None and policy.sampled():
                logged = getattr(answer, "logged", batch)  # a graph's: see record()
                if logged is not None:
                    predlog.record(policy, request_id, "shadow", latency, logged, n, answer)

        future.add_done_callback(done)

    def _drop(self, held: ActiveRollout) -> None:
        held.dropped += 1
        runner = held.candidate
        self.metrics.shadow_dropped.labels(runner.name, runner.version_str).inc()

    def record(self, call: Call, status: int) -> None:
        """Count a prediction request and its duration under the version and variant that
        answered it (or under its model alone, when none did), and log it when sampled: its
        answer (200) or its failure (5xx)."""
        runner = call.runner
        if runner is None:
            known = call.model if call.model in self.catalog.models else ""
            self.metrics.count_request(known, "", call.protocol, status)
            return
        elapsed = time.perf_counter() - call.start
        self.metrics.count_request(runner.name, runner.version_str, call.protocol, status,
                                   call.variant)
        runner.metrics.observe_duration(elapsed, call.variant)
        policy = runner.log_policy
        if policy is not None and self.predlog is not None and policy.sampled():
            if status == 200 and call.result is not None:
                # a graph's answer says what to log as its input (None: its members log)
                batch = getattr(call.result, "logged", call.batch)
                if batch is not None:
                    self.predlog.record(policy, call.request_id, call.variant, elapsed, batch,
                                        call.rows, call.result)
            elif status >= 500:
                self.predlog.record_error(policy, call.request_id, call.variant, elapsed,
                                          status)

    # -- readiness ------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """Whether preloading is done, the server is not draining and no loaded version's
        device worker is down."""
        return self.ready and not self.draining and not self.catalog.unhealthy()

    def drain(self) -> None:
        """The server is stopping: say not ready from now on, so load balancers stop sending
        here while requests are still answered (the server stops accepting later)."""
        self.draining = True

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, what /readyz says)``: ready once the served aliases are preloaded and
        every device worker answers; not while loading or while a worker restarts (the answer
        names it).

        A model whose alias moved to a version that cannot load still answers with the old one:
        ready, and ``not_served`` names both versions and the reason. A prediction log that is
        dropping (:meth:`PredictionLog.health`) leaves it ready too, since the models still
        answer and taking every replica out of a load balancer because the log's store is down
        would turn a monitoring outage into a serving one; the answer lists it under
        ``degraded`` with the log's counts, and ``modelyard_prediction_log_dropping`` is 1 for
        alerts. A served version unloaded after ``--idle-unload`` answers after a load: ready,
        listed under ``idle``. Once :meth:`drain` is called it says ``draining`` (503).
        ``serves`` names the pools and models this server serves, when not every one.
        """
        if self.draining:
            return False, {"status": "draining", **self._serves()}
        if not self.ready:
            return False, {"status": "loading"}
        down = self.catalog.unhealthy()
        if down:
            return False, {"status": "degraded", "down": [f"{n}:{v}" for n, v in down],
                           **self._log_detail()}
        stale = self.catalog.not_served_detail()
        idle = [f"{n}:{v}" for n, v in self.catalog.idle_unloaded()]
        return True, {"status": "ready", **self._serves(),
                      **({"not_served": stale} if stale else {}),
                      **({"idle": idle} if idle else {}), **self._log_detail()}

    def _serves(self) -> dict[str, Any]:
        selection = self.catalog.selection
        return {} if selection.everything else {"serves": selection.to_dict()}

    def _log_detail(self) -> dict[str, Any]:
        """What readiness says of a prediction log that is dropping (nothing when it is not)."""
        health = self.predlog.health() if self.predlog is not None else None
        if health is None or not health.dropping:
            return {}
        return {"degraded": [health.describe()], "prediction_log": health.to_dict()}

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the version a request would use is loaded and answering (404 for unknown)."""
        key = self.catalog.key_for(name, parse_version(name, version))
        runner = self.catalog.cache.peek(key)
        return runner is not None and bool(runner.healthy)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the registry, start preloading (ready when done) or read it now, open the
        prediction log, start the alias watcher and the rollouts loop."""
        catalog = self.catalog
        if catalog.registry is None:
            from modelyard.registry import Registry

            loop = asyncio.get_running_loop()
            catalog.registry = await loop.run_in_executor(catalog.io_pool, Registry.open,
                                                          self._settings)
        if self.options.preload:
            # the snapshot first (a query), so a request that comes before its model is loaded
            # loads it instead of meeting an empty catalog; a failure here is preloading's to
            # report (it reads again)
            with contextlib.suppress(Exception):
                await catalog.read_registry()
            self._preload = asyncio.get_running_loop().create_task(self._run_preload())
        else:
            await catalog.read_registry()
            alias = self.options.alias
            catalog.routes = {n: a[alias] for n, a in catalog.models.items() if alias in a}
            settle_heap()
            self.ready = True
        self._open_prediction_log()
        self.watcher.start()
        self.rollouts.start()
        if self.idle is not None:
            self.idle.start()

    def _open_prediction_log(self) -> None:
        """Start the prediction log on the store ``MODELYARD_PREDICTION_LOG`` names (or none)."""
        from modelyard.monitoring.predlog import PredictionLog, open_store

        store = open_store(self.catalog.registry, self.options.prediction_log)
        if store is not None:
            self.predlog = PredictionLog(store)
            self.predlog.start()
            self.metrics.watch_prediction_log(self.predlog)
            self.catalog.predlog = self.predlog

    async def _run_preload(self) -> None:
        try:
            await self.catalog.preload()
        except Exception as exc:
            log.error("preloading failed: %s; models load on their first request", exc)
        settle_heap()
        self.ready = True

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until preloading has finished (tests and embedding code)."""
        if self._preload is not None:
            await asyncio.wait_for(asyncio.shield(self._preload), timeout_s)

    async def stop(self) -> None:
        """Stop preloading and the loops, drain every runner, release threads and the
        registry."""
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        await self.rollouts.stop()
        await self.watcher.stop()
        if self.idle is not None:
            await self.idle.stop()
        await self.catalog.close()
        for close in self.closers:
            try:
                close()
            except Exception:  # one codec's connections must not keep the others open
                log.exception("closing %r failed", close)
        if self.predlog is not None:  # after the runners: their last answers are logged too
            await asyncio.get_running_loop().run_in_executor(None, self.predlog.stop)
        if self._owns_registry and self.catalog.registry is not None:
            self.catalog.registry.close()


def settle_heap() -> None:
    """Move what startup loaded (frameworks, models) out of the garbage collector's sight.

    A full collection walks every tracked object, and a server with PyTorch and scikit-learn
    loaded holds millions: each one paused requests for tens of milliseconds, triggered by the
    small objects every request (and the prediction log) allocates. Frozen objects are still
    freed by reference counting; only cycles among them wait for the process to end.
    """
    gc.collect()
    gc.freeze()


def _power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", 500))


__all__ = ["Build", "DataPlane", "InferenceRequest", "settle_heap"]
