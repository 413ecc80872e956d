"""The operations endpoints: ``/metrics``, ``/healthz``, ``/readyz``, ``/openapi.json``, ``/docs``.

What they say comes from the data plane (readiness) and its metrics; this module only encodes it.
"""

from __future__ import annotations

import os
from dataclasses import replace

import orjson

from modelyard.serving.dataplane import DataPlane
from modelyard.serving.http import JSON, Endpoint, Receive, RouteTable, Scope, Send, respond
from modelyard.serving.metrics import CONTENT_TYPE


class OpsAPI:
    """Health, readiness, metrics and the API's documents for one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def op_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /metrics`` in the Prometheus text format."""
        await respond(send, 200, self.plane.metrics.render(),
                      [(b"content-type", CONTENT_TYPE.encode())])

    async def op_healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /healthz``: the process answers, and names itself (``--workers N``: which)."""
        await respond(send, 200, orjson.dumps({"status": "ok", "pid": os.getpid()}))

    async def op_readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /readyz``: 200 once the served aliases are preloaded and every device worker
        answers; 503 (with ``Retry-After``) while loading or while a worker restarts, the body
        naming it (see :meth:`DataPlane.readiness`)."""
        ready, doc = self.plane.readiness()
        if ready:
            await respond(send, 200, orjson.dumps(doc))
        else:
            await respond(send, 503, orjson.dumps(doc), [*JSON, (b"retry-after", b"1")])

    async def op_openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /openapi.json``."""
        from modelyard.serving.openapi import OPENAPI

        await respond(send, 200, orjson.dumps(OPENAPI))

    async def op_docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /docs``: the API reference page."""
        from modelyard.serving.openapi import docs_html

        await respond(send, 200, docs_html().encode(),
                      [(b"content-type", b"text/html; charset=utf-8")])


def routes(*, public_metrics: bool = False) -> RouteTable:
    """:data:`ROUTES`, with ``/metrics`` open to every caller when ``public_metrics``
    (``serve --public-metrics``: Prometheus scrapes without a key)."""
    if not public_metrics:
        return ROUTES
    return [(m, p, replace(e, action="public") if p == "/metrics" else e) for m, p, e in ROUTES]


ROUTES: RouteTable = [
    ("GET", "/metrics", Endpoint(OpsAPI.op_metrics, action="read")),
    ("GET", "/healthz", Endpoint(OpsAPI.op_healthz, action="public")),
    ("GET", "/readyz", Endpoint(OpsAPI.op_readyz, action="public")),
    ("GET", "/openapi.json", Endpoint(OpsAPI.op_openapi, action="public")),
    ("GET", "/docs", Endpoint(OpsAPI.op_docs, action="public")),
]

__all__ = ["ROUTES", "OpsAPI"]
