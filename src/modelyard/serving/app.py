"""The modelyard ASGI application: native REST, OIP v2 REST, health, metrics and docs.

A raw ASGI callable (no framework on the request path): a pure segment router, ``orjson``, and
one await on the model's batch future. Build one with :func:`create_app` and run it under any ASGI
server (``modelyard.serving.serve`` runs uvicorn); in tests, drive it in-process with
``httpx.ASGITransport`` after ``await app.startup()``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelyard.errors import NotFoundError
from modelyard.predictor import Prediction
from modelyard.serving import protocol_v1
from modelyard.serving.access import ACTOR_KEY, Access
from modelyard.serving.admin import ADMIN_ROUTES, AdminAPI
from modelyard.serving.batching import RunnerClosedError
from modelyard.serving.calls import (
    MAX_VERSION,
    Call,
    log_failure,
    new_request_id,
    parse_version,
    request_id_of,
)
from modelyard.serving.catalog import Catalog
from modelyard.serving.cors import CrossSite
from modelyard.serving.http import (
    JSON,
    BodyDeadlines,
    ClientDisconnectedError,
    MethodNotAllowedError,
    Receive,
    Scope,
    Send,
    compile_routes,
    error_body,
    header,
    match,
    read_body,
    respond,
)
from modelyard.serving.metrics import CONTENT_TYPE, ServerMetrics
from modelyard.serving.monitor_api import MONITOR_ROUTES, MonitorAPI, MonitorGauges
from modelyard.serving.oip import OIPHandlers
from modelyard.serving.options import ServeOptions
from modelyard.serving.retention import RetentionSweeper
from modelyard.serving.rollouts import Rollouts
from modelyard.serving.runner import Runner
from modelyard.serving.unloader import IdleUnloader, rollout_versions
from modelyard.serving.watcher import Watcher

log = logging.getLogger(__name__)

ROUTES = compile_routes([
    ("POST", "/v1/models/{name}/predict", "v1_predict"),
    ("POST", "/v1/models/{name}/versions/{version}/predict", "v1_predict"),
    ("GET", "/v1/models", "v1_models"),
    ("GET", "/v2", "v2_server"),
    ("GET", "/v2/health/live", "v2_live"),
    ("GET", "/v2/health/ready", "v2_ready"),
    ("GET", "/v2/models/{name}", "v2_model"),
    ("GET", "/v2/models/{name}/versions/{version}", "v2_model"),
    ("GET", "/v2/models/{name}/ready", "v2_model_ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready", "v2_model_ready"),
    ("POST", "/v2/models/{name}/infer", "v2_infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "v2_infer"),
    ("POST", "/v2/repository/index", "v2_index"),
    ("POST", "/v2/repository/models/{name}/load", "v2_load"),
    ("POST", "/v2/repository/models/{name}/unload", "v2_unload"),
    ("GET", "/metrics", "op_metrics"),
    ("GET", "/healthz", "op_healthz"),
    ("GET", "/readyz", "op_readyz"),
    ("GET", "/openapi.json", "op_openapi"),
    ("GET", "/docs", "op_docs"),
    *ADMIN_ROUTES,
    *MONITOR_ROUTES,
])

Handler = Callable[..., Awaitable[None]]

#: the handlers that change something: the dispatcher admits each (cross-site rules, then the
#: credential) before it runs, and puts the authenticated actor in the scope for its audit.
MUTATIONS = frozenset(
    {h for m, _, h in (*ADMIN_ROUTES, *MONITOR_ROUTES) if m == "POST"} | {"v2_load", "v2_unload"})
#: mutations whose clients send no Content-Type (tritonclient's repository load/unload).
_UNTYPED = frozenset({"v2_load", "v2_unload"})

class App:
    """The server: ``await app(scope, receive, send)``; lifespan runs ``startup``/``shutdown``."""

    def __init__(self, registry: Any = None, options: ServeOptions | None = None,
                 *, settings: Any = None) -> None:
        self.options = options or ServeOptions()
        self._settings = settings
        self._owns_registry = registry is None
        self.metrics = ServerMetrics(self.options.metrics_dir)
        self.catalog = Catalog(registry, self.options, self.metrics)
        self.watcher = Watcher(self.catalog)
        self.rollouts = Rollouts(self.catalog)
        self.idle = None if self.options.idle_unload_s is None else IdleUnloader(
            self.catalog.cache, self.options.idle_unload_s,
            keep=lambda: rollout_versions(self.rollouts.active))
        self.ready = False
        self._body_deadlines = BodyDeadlines(self.options.body_timeout_s)
        self.predlog: Any = None  # the PredictionLog, once started
        self._preload: asyncio.Task[None] | None = None
        self._grpc: Any = None
        oip = OIPHandlers(self)
        self.access = Access.from_env()  # reads MODELYARD_TOKEN now
        self.cross_site = CrossSite(self.options.cors_origins)
        self.admin = AdminAPI(self)
        monitor = MonitorAPI(self)
        self.gauges = MonitorGauges(self, monitor)
        self.retention = RetentionSweeper(self, monitor)
        self._handlers: dict[str, Handler] = {}
        for routes in ROUTES.values():
            for route in routes:
                prefix = route.handler.partition("_")[0]
                owner = {"v2": oip, "admin": self.admin, "monitor": monitor}.get(prefix, self)
                self._handlers[route.handler] = getattr(owner, route.handler)

    # -- lifecycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the registry, start preloading (``/readyz`` turns 200 when done) and the watcher."""
        if self.catalog.registry is None:
            from modelyard.registry import Registry

            loop = asyncio.get_running_loop()
            self.catalog.registry = await loop.run_in_executor(
                self.catalog.io_pool, Registry.open, self._settings)
        if self.options.preload:
            self._preload = asyncio.get_running_loop().create_task(self._run_preload())
        else:
            await self.catalog.read_registry()
            alias = self.options.alias
            self.catalog.routes = {
                n: a[alias] for n, a in self.catalog.models.items() if alias in a}
            settle_heap()
            self.ready = True
        self._open_prediction_log()
        self.retention.start()
        self.watcher.start()
        self.rollouts.start()
        if self.idle is not None:
            self.idle.start()
        if self.options.grpc_address:
            from modelyard.serving.grpc_server import start_grpc

            self._grpc = await start_grpc(self, self.options.grpc_address)

    def _open_prediction_log(self) -> None:
        """Start the prediction log on the store ``MODELYARD_PREDICTION_LOG`` names (or none)."""
        from modelyard.monitoring.predlog import PredictionLog, open_store

        store = open_store(self.catalog.registry, self.options.prediction_log)
        if store is not None:
            self.predlog = PredictionLog(store)
            self.predlog.start()
            self.metrics.watch_prediction_log(self.predlog)
            self.catalog.predlog = self.predlog
            self.gauges.start()

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

    async def shutdown(self) -> None:
        """Stop the watcher, drain every runner, release threads and the registry."""
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        if self._grpc is not None:
            await self._grpc.stop(5)
        await self.gauges.stop()
        await self.retention.stop()
        await self.rollouts.stop()
        await self.watcher.stop()
        if self.idle is not None:
            await self.idle.stop()
        await self.catalog.close()
        if self.predlog is not None:  # after the runners: their last answers are logged too
            await asyncio.get_running_loop().run_in_executor(None, self.predlog.stop)
        if self._owns_registry and self.catalog.registry is not None:
            self.catalog.registry.close()

    # -- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if self.cross_site.enabled:
            send = self.cross_site.wrap(scope, send)
        # a body that stops arriving is answered 408 and its connection closed
        receive = self._body_deadlines.wrap(receive)
        try:
            found = match(ROUTES, scope["method"], path)
            if found is None:
                raise NotFoundError(f"no route {path[:200]}; see /docs for the API")
            handler, params = found
            if handler in MUTATIONS:
                self.admit(scope, handler)
            await self._handlers[handler](scope, receive, send, **params)
        except ClientDisconnectedError:
            return
        except MethodNotAllowedError as exc:
            if scope["method"] == "OPTIONS":
                await self._options(scope, send, exc.allow)
            else:
                await self._fail(scope, send, exc)
        except Exception as exc:
            await self._fail(scope, send, exc)

    def admit(self, scope: Scope, handler: str) -> None:
        """Let a mutation through, or raise: a foreign ``Origin`` or a body not declared JSON
        (:mod:`~modelyard.serving.cors`), then a missing or wrong credential
        (:mod:`~modelyard.serving.access`). The actor goes into the scope for the audit."""
        self.cross_site.check_mutation(scope, json_optional=handler in _UNTYPED)
        scope[ACTOR_KEY] = self.access.authenticate(header(scope, b"authorization"))

    async def _options(self, scope: Scope, send: Send, methods: list[str]) -> None:
        """``OPTIONS``: 204 with ``Allow``; a CORS preflight from a listed origin is granted."""
        allow = {*methods, "OPTIONS", *(["HEAD"] if "GET" in methods else [])}
        headers = [(b"allow", ", ".join(sorted(allow)).encode()),
                   *self.cross_site.preflight_headers(scope, methods)]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _fail(self, scope: Scope, send: Send, exc: Exception) -> None:
        """Answer an error; a 5xx is logged once with the request id it names."""
        path = scope["path"]
        status, body, headers = error_body(exc, oip=path.startswith("/v2"))
        if status >= 500:
            request_id = request_id_of(scope) or new_request_id()
            log_failure(f"{scope['method']} {path[:200]}", status, request_id, exc)
            headers.append((b"x-request-id", request_id.encode()))
        await respond(send, status, body, headers)

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, call: Call, name: str, version: int | None,
                to_payload: Callable[[Runner], Any], scores: bool,
                scope: Scope | None = None, fields: Any = None) -> Awaitable[Prediction]:
        """Resolve the runner, validate, queue and await; retried if the version was swapped.

        While a rollout routes ``name`` (unversioned requests only), it picks the variant; its
        request key comes from ``scope``'s headers or the input ``fields`` (see
        :func:`~modelyard.serving.rollouts.request_key`).
        """
        if version is None:
            rollout = self.rollouts.active.get(name)
            if rollout is not None:
                return self.rollouts.predict(
                    rollout, call, to_payload, scores, scope, fields, self.predict_alias)
        # the coroutine itself is returned: no extra frame on the path without a rollout
        return self.predict_alias(call, name, version, to_payload, scores)

    async def predict_alias(self, call: Call, name: str, version: int | None,
                            to_payload: Callable[[Runner], Any], scores: bool) -> Prediction:
        """Predict with the served alias's version (or ``version``), without rollout routing."""
        catalog = self.catalog
        for attempt in range(3):
            runner = catalog.runner_now(name, version)
            if runner is None or runner.closed:
                runner = await catalog.runner(name, version)
            call.runner = runner
            batch, n = runner.prepare(to_payload(runner))
            try:
                return call.answered(batch, n, await runner.submit(batch, n, scores))
            except RunnerClosedError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def record(self, call: Call, name: str, protocol: str, status: int, start: float) -> None:
        """Count a prediction request and its duration under the version that answered it."""
        runner = call.runner
        if runner is not None:
            elapsed = time.perf_counter() - start
            self.metrics.count_request(runner.name, runner.version_str, protocol, status,
                                       call.variant)
            runner.metrics.observe_duration(elapsed, call.variant)
            policy = runner.log_policy
            if policy is not None and self.predlog is not None and policy.sampled():
                if status == 200 and call.result is not None:
                    self.predlog.record(policy, call.request_id, call.variant, elapsed,
                                        call.batch, call.rows, call.result)
                elif status >= 500:
                    self.predlog.record_error(policy, call.request_id, call.variant, elapsed,
                                              status)
        else:
            known = name if name in self.catalog.models else ""
            self.metrics.count_request(known, "", protocol, status)

    async def v1_predict(self, scope: Scope, receive: Receive, send: Send,
                         name: str, version: str | None = None) -> None:
        """``POST /v1/models/{name}[/versions/{v}]/predict``."""
        start = time.perf_counter()
        call = Call(request_id_of(scope))
        status = 500
        try:
            body = await read_body(scope, receive, self.options.max_body_bytes)
            number = parse_version(name, version)
            if self.catalog.runner_now(name, number) is None:
                self.catalog.key_for(name, number)  # 404 before judging the body
            qs = scope.get("query_string", b"")
            payload, scores = protocol_v1.decode(body, b"scores=true" in qs or b"scores=1" in qs)
            result = await self.predict(call, name, number, lambda _r: payload, scores,
                                        scope, payload)
            runner = call.runner
            assert runner is not None
            out = protocol_v1.encode(name, runner.version, result, scores, call.request_id)
            status = 200
            await respond(send, 200, out, [(b"content-type", b"application/json"),
                                           *call.headers()])
        except ClientDisconnectedError:
            status = 499
        except Exception as exc:
            status, err, headers = error_body(exc)
            headers.append((b"x-request-id", call.request_id.encode()))
            if status >= 500:
                log_failure(f"POST {scope['path'][:200]}", status, call.request_id, exc)
            await respond(send, status, err, headers)
        finally:
            self.record(call, name, "v1", status, start)

    async def v1_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models``: served models, their aliases and loaded versions; ``not_served``
        says when the alias points at a version this server could not load, and why."""
        loaded: dict[str, list[int]] = {}
        for (name, version), _ in self.catalog.cache.loaded():
            loaded.setdefault(name, []).append(version)
        models = [{"name": n, "aliases": a, "served_version": self.catalog.routes.get(n),
                   "loaded_versions": sorted(loaded.get(n, [])),
                   "memory_bytes": self.catalog.memory_of(n),
                   "not_served": self.catalog.not_served.get(n)}
                  for n, a in sorted(self.catalog.models.items())]
        await respond(send, 200, orjson.dumps({"models": models}))

    # -- operations -----------------------------------------------------------------------------
    async def op_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /metrics`` in the Prometheus text format."""
        await respond(send, 200, self.metrics.render(),
                      [(b"content-type", CONTENT_TYPE.encode())])

    async def op_healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /healthz``: the process answers."""
        await respond(send, 200, b'{"status":"ok"}')

    async def op_readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /readyz``: 200 once the served aliases are preloaded and every device worker
        answers; 503 while loading or while a worker restarts (the body names it).

        A model whose alias moved to a version that cannot load still answers with the old one:
        200, and ``not_served`` names both versions and the reason. A prediction log that is
        dropping (:meth:`PredictionLog.health`) leaves it 200 too, since the models still answer
        and taking every replica out of a load balancer because the log's store is down would
        turn a monitoring outage into a serving one; the body lists it under ``degraded`` with
        the log's counts, and ``modelyard_prediction_log_dropping`` is 1 for alerts. A served
        version unloaded after ``--idle-unload`` answers after a load: 200, listed under ``idle``.
        """
        down = self.catalog.unhealthy()
        if self.ready and not down:
            stale = self.catalog.not_served_detail()
            idle = [f"{n}:{v}" for n, v in self.catalog.idle_unloaded()]
            ready = {"status": "ready", **({"not_served": stale} if stale else {}),
                     **({"idle": idle} if idle else {}), **self._log_detail()}
            await respond(send, 200, orjson.dumps(ready))
        elif not self.ready:
            await respond(send, 503, b'{"status":"loading"}', [*JSON, (b"retry-after", b"1")])
        else:
            body = orjson.dumps({"status": "degraded", "down": [f"{n}:{v}" for n, v in down],
                                 **self._log_detail()})
            await respond(send, 503, body, [*JSON, (b"retry-after", b"1")])

    def _log_detail(self) -> dict[str, Any]:
        """What ``/readyz`` says of a prediction log that is dropping (nothing when it is not)."""
        health = self.predlog.health() if self.predlog is not None else None
        if health is None or not health.dropping:
            return {}
        return {"degraded": [health.describe()], "prediction_log": health.to_dict()}

    def is_ready(self) -> bool:
        """Whether preloading is done and no loaded version's device worker is down."""
        return self.ready and not self.catalog.unhealthy()

    async def op_openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /openapi.json``."""
        from modelyard.serving.openapi import OPENAPI

        await respond(send, 200, orjson.dumps(OPENAPI))

    async def op_docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /docs``: the API reference page."""
        from modelyard.serving.openapi import docs_html

        await respond(send, 200, docs_html().encode(),
                      [(b"content-type", b"text/html; charset=utf-8")])


def settle_heap() -> None:
    """Move what startup loaded (frameworks, models) out of the garbage collector's sight.

    A full collection walks every tracked object, and a server with PyTorch and scikit-learn
    loaded holds millions: each one paused requests for tens of milliseconds, triggered by the
    small objects every request (and the prediction log) allocates. Frozen objects are still
    freed by reference counting; only cycles among them wait for the process to end.
    """
    gc.collect()
    gc.freeze()


def create_app(registry: Any = None, options: ServeOptions | None = None,
               *, settings: Any = None) -> App:
    """A ready-to-run ASGI app over ``registry`` (or the one ``settings``/the environment names)."""
    return App(registry, options, settings=settings)


__all__ = ["MAX_VERSION", "MUTATIONS", "ROUTES", "App", "Call", "create_app", "parse_version",
           "request_id_of"]
