"""REST v1, the native protocol: ``POST /v1/models/{name}[/versions/{v}]/predict`` and
``GET /v1/models``.

A codec around the :class:`~modelyard.serving.dataplane.DataPlane`: it reads the body, decodes
it with :mod:`~modelyard.serving.protocol_v1` (records, columns, instances or inputs, plus
``scores``), lets the data plane answer, and encodes the answer with the headers that name the
version, variant and request id (``X-Model-Version``, ``X-Model-Variant``, ``X-Request-Id``).
Errors answer ``{"error", "message"[, "detail"]}`` with their status.
"""

from __future__ import annotations

import orjson

from modelyard.serving import protocol_v1
from modelyard.serving.access import in_scope
from modelyard.serving.calls import Call, fail_http, request_id_of
from modelyard.serving.dataplane import DataPlane, InferenceRequest
from modelyard.serving.http import Endpoint, Receive, RouteTable, Scope, Send, read_body, respond
from modelyard.serving.precomputed import HEADER, Precomputed

_JSON = (b"content-type", b"application/json")


class NativeAPI:
    """The native REST endpoints over one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.max_body = plane.options.max_body_bytes
        self.precomputed = Precomputed(plane)

    async def v1_predict(self, scope: Scope, receive: Receive, send: Send,
                         name: str, version: str | None = None) -> None:
        """``POST /v1/models/{name}[/versions/{v}]/predict``."""
        plane = self.plane
        call = Call("v1", name, request_id_of(scope))
        status = 500
        try:
            body = await read_body(scope, receive, self.max_body)
            number = plane.version(name, version)  # 404 before judging the body
            query = scope.get("query_string", b"")
            payload, scores = protocol_v1.decode(
                body, b"scores=true" in query or b"scores=1" in query)
            request = InferenceRequest(name, number, payload, scores, scope=scope)
            keyed = self.precomputed.runner_for(request)
            extra: list[tuple[bytes, bytes]] = []
            if keyed is None:
                result = await plane.infer(call, request)
            else:
                result, source = await self.precomputed.infer(call, request, keyed)
                extra.append((HEADER, source.encode()))
            runner = call.runner
            assert runner is not None
            out = protocol_v1.encode(name, runner.version, result, scores, call.request_id)
            status = 200
            await respond(send, 200, out, [_JSON, *call.headers(), *extra])
        except Exception as exc:
            status = await fail_http(send, f"POST {scope['path'][:200]}", call, exc)
        finally:
            plane.record(call, status)

    async def v1_precomputed(self, scope: Scope, receive: Receive, send: Send,
                             name: str, key: str) -> None:
        """``GET /v1/models/{name}/precomputed/{key}``: the served version's precomputed answer
        for ``key`` (live from its input row when it is missing or stale and the input is SQL;
        else 404). ``?scores=true`` adds class scores."""
        plane = self.plane
        call = Call("v1", name, request_id_of(scope))
        status = 500
        try:
            query = scope.get("query_string", b"")
            scores = b"scores=true" in query or b"scores=1" in query
            result, source = await self.precomputed.by_key(call, name, key, scores)
            runner = call.runner
            assert runner is not None
            body = orjson.loads(protocol_v1.encode(name, runner.version, result, scores,
                                                   call.request_id))
            body["key"] = key
            status = 200
            await respond(send, 200, orjson.dumps(body),
                          [_JSON, *call.headers(), (HEADER, source.encode())])
        except Exception as exc:
            status = await fail_http(send, f"GET {scope['path'][:200]}", call, exc)
        finally:
            plane.record(call, status)

    async def v1_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1/models``: served models, their pool, device, aliases and loaded versions;
        ``not_served`` says when the alias points at a version this server could not load, and
        why. ``serves`` names the pools and models this server serves, ``elsewhere`` the pool
        of each model another server serves."""
        catalog = self.plane.catalog
        shown = in_scope(scope, "describe", catalog.models)  # a scoped key sees its models
        loaded: dict[str, list[int]] = {}
        for (name, version), _ in catalog.cache.loaded():
            loaded.setdefault(name, []).append(version)
        models = [{"name": n, **catalog.placement_of(n), "aliases": a,
                   "served_version": catalog.routes.get(n),
                   "loaded_versions": sorted(loaded.get(n, [])),
                   "memory_bytes": catalog.memory_of(n),
                   "not_served": catalog.not_served.get(n)}
                  for n, a in sorted(catalog.models.items()) if n in shown]
        await respond(send, 200, orjson.dumps({
            "models": models, "serves": catalog.selection.to_dict(),
            "elsewhere": dict(sorted(catalog.elsewhere.items()))}))


ROUTES: RouteTable = [
    ("POST", "/v1/models/{name}/predict", Endpoint(NativeAPI.v1_predict, action="predict")),
    ("POST", "/v1/models/{name}/versions/{version}/predict",
     Endpoint(NativeAPI.v1_predict, action="predict")),
    ("GET", "/v1/models/{name}/precomputed/{key}",
     Endpoint(NativeAPI.v1_precomputed, action="predict")),
    ("GET", "/v1/models", Endpoint(NativeAPI.v1_models, action="describe")),
]

__all__ = ["ROUTES", "NativeAPI"]
