"""The modelyard ASGI application: a route table and a dispatcher around the data plane.

A raw ASGI callable (no framework on the request path): a pure segment router, ``orjson``, and
one await on the model's batch future. Every prediction goes through the one
:class:`~modelyard.serving.dataplane.DataPlane`; the routes come from the codecs' own tables,
each route bound to the callable that answers it (:class:`~modelyard.serving.http.Endpoint`):

==============================  ===============================================================
:mod:`~.native`                 REST v1: predict, the served models
:mod:`~.oip`                    OIP v2 over REST (and what gRPC shares with it)
:mod:`~.ops`                    metrics, health, readiness, the API's documents
:mod:`~.admin`                  ``/api/v1``: models, aliases, rollouts
:mod:`~.registry_api`           ``/api/v1``: a model, a version, history, runs, audit, keys
:mod:`~.training_api`           runs and version uploads: training through the server
:mod:`~.monitor_api`            feedback, quality metrics, drift, events, logged predictions
==============================  ===============================================================

Beside the API, :attr:`~modelyard.serving.options.ServeOptions.mounts` names applications served
under their own prefix (:mod:`~modelyard.serving.mounts`): the web console at ``/ui``
(:mod:`modelyard.console`), loaded by name so that serving never imports it.

The dispatcher admits every request in one place (:meth:`~modelyard.serving.access.Access.admit`:
the action the route declares, against the caller's role and scope),
answers ``OPTIONS`` and logs each 5xx once with its request id. Build an app with
:func:`create_app` and run it under any ASGI server (``modelyard.serving.serve`` runs our own);
in tests, drive it in-process with ``httpx.ASGITransport`` after ``await app.startup()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modelyard.errors import MethodNotAllowedError, NotFoundError
from modelyard.serving import (
    admin,
    monitor_api,
    native,
    oip,
    ops,
    registry_api,
    training_api,
)
from modelyard.serving.access import Access
from modelyard.serving.admin import AdminAPI
from modelyard.serving.calls import log_failure, new_request_id, request_id_of
from modelyard.serving.catalog import Catalog
from modelyard.serving.cors import CrossSite
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.http import (
    BodyDeadlines,
    ClientDisconnectedError,
    Receive,
    RouteTable,
    Scope,
    Send,
    bind_routes,
    compile_routes,
    error_body,
    match,
    respond,
)
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.monitor_api import MonitorAPI, MonitorGauges
from modelyard.serving.mounts import load_mounts, mount_for
from modelyard.serving.native import NativeAPI
from modelyard.serving.oidc import OIDCConfig, TokenVerifier
from modelyard.serving.oip import OIPHandlers
from modelyard.serving.ops import OpsAPI
from modelyard.serving.options import ServeOptions
from modelyard.serving.registry_api import RegistryAPI
from modelyard.serving.retention import RetentionSweeper
from modelyard.serving.rollouts import Rollouts
from modelyard.serving.training_api import TrainingAPI
from modelyard.serving.watcher import Watcher

log = logging.getLogger(__name__)

#: every route the app answers: the codecs' tables, in matching order.
TABLE: RouteTable = [*native.ROUTES, *oip.ROUTES, *ops.ROUTES, *admin.ROUTES,
                     *registry_api.ROUTES, *training_api.ROUTES, *monitor_api.ROUTES]
#: the same routes by endpoint name (the API's shape, for documents and checks).
ROUTES = compile_routes([(method, path, e.name) for method, path, e in TABLE])
#: the endpoints that change something: the dispatcher admits each (cross-site rules, then the
#: credential) before it runs, and puts the authenticated actor in the scope for its audit.
MUTATIONS = frozenset(e.name for _, _, e in TABLE if e.mutation)


class App:
    """The server: ``await app(scope, receive, send)``; lifespan runs ``startup``/``shutdown``."""

    def __init__(self, registry: Any = None, options: ServeOptions | None = None,
                 *, settings: Any = None) -> None:
        self.options = options or ServeOptions()
        catalog = Catalog(registry, self.options, ServerMetrics(self.options.metrics_dir))
        self.plane = DataPlane(catalog, settings=settings, owns_registry=registry is None)
        self.access = Access.from_env(  # reads MODELYARD_TOKEN now
            exposed=self.options.exposed, insecure=self.options.insecure,
            tokens=_token_verifier(self.options.oidc), on_failure=catalog.metrics.auth_failed)
        self.cross_site = CrossSite(self.options.cors_origins)
        self._body_deadlines = BodyDeadlines(self.options.body_timeout_s)
        self.oip = OIPHandlers(self.plane)
        monitor = MonitorAPI(self.plane)
        self.gauges = MonitorGauges(self.plane, monitor)
        self.retention = RetentionSweeper(self.options, monitor)
        self.routes = compile_routes([
            *bind_routes(NativeAPI(self.plane), native.ROUTES),
            *bind_routes(self.oip, oip.ROUTES),
            *bind_routes(OpsAPI(self.plane), ops.routes(
                public_metrics=self.options.public_metrics)),
            *bind_routes(AdminAPI(catalog), admin.ROUTES),
            *bind_routes(RegistryAPI(catalog), registry_api.ROUTES),
            *bind_routes(TrainingAPI(catalog), training_api.ROUTES),
            *bind_routes(monitor, monitor_api.ROUTES),
        ])
        self._grpc: Any = None
        #: what is served beside the API under its own prefix (the web console at /ui)
        self.mounts = load_mounts(self.options.mounts, self)

    # -- what the data plane holds (tests and embedding code reach it here) ---------------------
    @property
    def catalog(self) -> Catalog:
        """The served models and their runners."""
        return self.plane.catalog

    @property
    def metrics(self) -> ServerMetrics:
        """The server's Prometheus metrics."""
        return self.plane.metrics

    @property
    def watcher(self) -> Watcher:
        """The alias watcher (hot swap)."""
        return self.plane.watcher

    @property
    def rollouts(self) -> Rollouts:
        """The rollouts loop and the rollouts it applies."""
        return self.plane.rollouts

    @property
    def predlog(self) -> Any:
        """The prediction log, once started (None when off)."""
        return self.plane.predlog

    # -- lifecycle ------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Start the data plane (registry, preloading: ``/readyz`` turns 200 when done, the
        prediction log, the watcher and rollouts), the monitoring loops and gRPC."""
        await self.plane.start()
        loop = asyncio.get_running_loop()
        await self.access.attach(  # the slow hash of a new key runs off the registry thread
            self.catalog.registry.keys,
            lambda fn, *args: loop.run_in_executor(None, fn, *args))
        self.access.watch()
        if self.plane.predlog is not None:
            self.gauges.start()
        self.retention.start()
        if self.options.grpc_address:
            from modelyard.serving.grpc_server import start_grpc

            self._grpc = await start_grpc(self.plane, self.oip, self.access,
                                          self.options.grpc_address)
        for mounted in self.mounts:
            if mounted.startup is not None:
                await mounted.startup()

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until preloading has finished (tests and embedding code)."""
        await self.plane.wait_ready(timeout_s)

    def is_ready(self) -> bool:
        """Whether preloading is done and no loaded version's device worker is down."""
        return self.plane.is_ready()

    def drain(self) -> None:
        """The server is stopping: ``/readyz`` (and OIP readiness) say not ready from now on,
        while requests are still answered (see :func:`~modelyard.serving.httpserver.run`)."""
        self.plane.drain()

    async def shutdown(self) -> None:
        """Stop gRPC and the loops, drain every runner, release threads and the registry."""
        if self._grpc is not None:
            await self._grpc.stop(5)
        for mounted in self.mounts:
            if mounted.shutdown is not None:
                await mounted.shutdown()
        await self.access.stop()
        await self.gauges.stop()
        await self.retention.stop()
        await self.plane.stop()

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
        # a body that stops arriving is answered 408 and its connection closed; modelyard's
        # server times bodies out itself (no wrapper and no bookkeeping a request)
        if "modelyard.body_timeout" not in (scope.get("extensions") or ()):
            receive = self._body_deadlines.wrap(receive)
        try:
            found = match(self.routes, scope["method"], path)
            if found is None:
                # no API route: a mount's (the console's own pages and rules), looked for only
                # here so that predictions never pay for it
                mounted = mount_for(self.mounts, path)
                if mounted is not None:
                    await mounted.app(scope, receive, send)
                    return
                raise NotFoundError(f"no route {path[:200]}; see /docs for the API")
            endpoint, params = found
            if endpoint.mutation:
                self.cross_site.check_mutation(scope, json_optional=endpoint.untyped,
                                               media=endpoint.media)
            access = self.access
            if endpoint.action != "public" and (
                    access.enforced or (endpoint.credential_needed and access.required)):
                await access.admit(scope, endpoint.action, params.get("name"),
                                   credential_needed=endpoint.credential_needed)
            await endpoint.answer(scope, receive, send, **params)
        except ClientDisconnectedError:
            return
        except MethodNotAllowedError as exc:
            if scope["method"] == "OPTIONS":
                await self._options(scope, send, exc.allow)
            else:
                await self._fail(scope, send, exc)
        except Exception as exc:
            await self._fail(scope, send, exc)

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


def _token_verifier(path: str | None) -> TokenVerifier | None:
    """The OIDC token checker ``--oidc`` names, or None."""
    return TokenVerifier(OIDCConfig.load(path)) if path is not None else None


def create_app(registry: Any = None, options: ServeOptions | None = None,
               *, settings: Any = None) -> App:
    """A ready-to-run ASGI app over ``registry`` (or the one ``settings``/the environment names)."""
    return App(registry, options, settings=settings)


__all__ = ["MUTATIONS", "ROUTES", "TABLE", "App", "create_app"]
