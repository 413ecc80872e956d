"""OIP v2 over REST: health, server and model metadata, readiness, infer, repository.

A codec around the :class:`~modelyard.serving.dataplane.DataPlane`; the wire format lives in
:mod:`modelyard.serving.protocol_v2`. The parts both OIP transports share -- the infer request
(:func:`infer_request`), the outputs of an answer (:func:`outputs_of`), model metadata,
readiness and the repository (:class:`OIPHandlers`' ``describe``, ``repository_index``,
``load``, ``unload``) -- are here, and :mod:`~modelyard.serving.grpc_server` uses them too.
Errors answer ``{"error": message}`` as the protocol says. Repository load and unload are
mutations: the app's dispatcher admits them (token, cross-site rules) and each is audited under
the actor the credential stands for; the index is a read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadJSONError, InputError, NotFoundError
from modelyard.schema import OUTPUT_NAMES, FieldSpec, Signature
from modelyard.serving import protocol_v2 as v2
from modelyard.serving.access import actor_of, in_scope
from modelyard.serving.calls import Call, fail_http, parse_version, request_id_of, usable_id
from modelyard.serving.dataplane import DataPlane, InferenceRequest
from modelyard.serving.http import (
    Endpoint,
    Receive,
    RouteTable,
    Scope,
    Send,
    header,
    read_body,
    respond,
)
from modelyard.serving.runner import Runner


class OIPHandlers:
    """The ``/v2`` routes over one data plane, and what OIP over gRPC shares with them."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.catalog = plane.catalog
        self.max_body = plane.options.max_body_bytes

    # -- server ---------------------------------------------------------------------------------
    async def v2_server(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v2``: server name, version and extensions; ``parameters`` names the pools
        and models it serves (null: every one)."""
        from modelyard import __version__

        await respond(send, 200, orjson.dumps(
            {"name": "modelyard", "version": __version__, "extensions": v2.EXTENSIONS,
             "parameters": self.catalog.selection.to_dict()}))

    async def v2_live(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v2/health/live``."""
        await respond(send, 200, b'{"live":true}')

    async def v2_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v2/health/ready``: 200 once preloading is done and every device worker is up."""
        ready = self.plane.is_ready()
        await respond(send, 200 if ready else 503, orjson.dumps({"ready": ready}))

    # -- models ---------------------------------------------------------------------------------
    async def v2_model(self, scope: Scope, receive: Receive, send: Send,
                       name: str, version: str | None = None) -> None:
        """``GET /v2/models/{name}[/versions/{v}]``: inputs and outputs (without loading it)."""
        await respond(send, 200, orjson.dumps(await self.describe(name, version)))

    async def _describe(self, name: str,
                        version: str | None) -> tuple[Signature, str, tuple[FieldSpec, ...]]:
        key = self.catalog.key_for(name, parse_version(name, version))
        runner = self.catalog.cache.peek(key)
        if runner is not None:
            return runner.predictor.signature, runner.predictor.flavor, runner.outputs
        record = await self.catalog.get_version_record(*key)
        signature = Signature.from_dict(record.signature)
        return signature, self.catalog.served_flavor(record), signature.answers

    async def v2_model_ready(self, scope: Scope, receive: Receive, send: Send,
                             name: str, version: str | None = None) -> None:
        """``GET /v2/models/{name}[/versions/{v}]/ready``: 200 when loaded and answering, else
        400 (the protocol's "4xx: false"; a version that is not loaded is no server error)."""
        ready = self.plane.model_ready(name, version)
        await respond(send, 200 if ready else 400, orjson.dumps({"name": name, "ready": ready}))

    async def v2_infer(self, scope: Scope, receive: Receive, send: Send,
                       name: str, version: str | None = None) -> None:
        """``POST /v2/models/{name}[/versions/{v}]/infer``, JSON or binary tensors."""
        plane = self.plane
        call = Call("v2", name, request_id_of(scope))
        status = 500
        try:
            body = await read_body(scope, receive, self.max_body)
            number = plane.version(name, version)  # 404 before judging the body
            req = v2.decode_infer(body, _header_length(scope))
            # the OIP request id is what feedback names
            request_id = req.id if req.id and usable_id(req.id) else None
            result = await plane.infer(call, infer_request(name, number, req.inputs, req.outputs,
                                                           request_id, scope))
            outputs = outputs_of(call, result, req.outputs)
            runner = call.runner
            assert runner is not None
            everything = req.binary_default and not req.outputs
            binary = set(outputs) if everything else req.binary_outputs
            out, length = v2.encode_infer(name, runner.version, outputs, binary, req.id)
            headers = [(b"content-type", b"application/json" if length is None
                        else b"application/octet-stream"), *call.headers()]
            if length is not None:
                headers.append((b"inference-header-content-length", str(length).encode()))
            status = 200
            await respond(send, 200, out, headers)
        except Exception as exc:
            status = await fail_http(send, f"POST {scope['path'][:200]}", call, exc, oip=True)
        finally:
            plane.record(call, status)

    def repository_index(self, only_ready: bool = False) -> list[dict[str, str]]:
        """Every model version and its state: READY, LOADING or UNAVAILABLE."""
        loaded = dict(self.catalog.cache.loaded())
        rows = []
        for name in sorted(self.catalog.models):
            for version in self.catalog.versions(name):
                key = (name, version)
                runner = loaded.get(key)
                reason = "" if runner is None or runner.healthy else \
                    f"device worker down: {getattr(runner, 'last_error', '')}"
                state = ("READY" if runner is not None and not reason else
                         "LOADING" if self.catalog.cache.is_loading(key) else "UNAVAILABLE")
                if not only_ready or state == "READY":
                    rows.append({"name": name, "version": str(version), "state": state,
                                 "reason": reason})
        return rows

    async def load(self, name: str, version: Any = None, *, actor: str,
                   protocol: str = "rest") -> None:
        """Load ``name`` (a given version, else the served one, else the newest); audited as
        ``model.load`` under ``actor``."""
        if name not in self.catalog.models:
            await self.catalog.read_registry()  # registered since the last poll?
        if version is not None and str(version) != "":
            key = self.catalog.key_for(name, parse_version(name, str(version)))
        elif name in self.catalog.routes:
            key = self.catalog.key_for(name)
        else:
            key = self.catalog.key_for(name, self.catalog.latest.get(name))
        await self.catalog.cache.get(key)
        await self._audit("model.load", f"{name}:{key[1]}", {"protocol": protocol}, actor)

    async def unload(self, name: str, *, actor: str, protocol: str = "rest") -> None:
        """Drain and drop every loaded version of ``name``; audited as ``model.unload``."""
        if name not in self.catalog.models:
            raise NotFoundError(f"model '{name}' is not in the registry")
        keys = [k for k, _ in self.catalog.cache.loaded() if k[0] == name]
        tasks = [self.catalog.cache.evict(k) for k in keys]
        for task in tasks:
            if task is not None:
                await task
        await self._audit("model.unload", name,
                          {"protocol": protocol, "versions": sorted(v for _, v in keys)}, actor)

    async def _audit(self, action: str, target: str, details: dict[str, Any],
                     actor: str) -> None:
        await self.catalog.io(self.catalog.registry.record, action, target, details,
                              actor=actor)

    async def describe(self, name: str, version: str | None) -> dict[str, Any]:
        """OIP model metadata for ``name`` (and version); ``parameters`` says its pool and
        device (see :meth:`Catalog.placement_of`)."""
        signature, flavor, outputs = await self._describe(name, version)
        doc = v2.model_metadata(name, self.catalog.versions(name), signature, flavor, outputs)
        doc["parameters"] = self.catalog.placement_of(name)
        return doc

    def is_ready(self, name: str, version: str | None) -> bool:
        """Whether the version a request would use is loaded and answering (404 for unknown)."""
        return self.plane.model_ready(name, version)

    # -- repository extension -------------------------------------------------------------------
    async def v2_index(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v2/repository/index``: every model version and its state."""
        body = await read_body(scope, receive, self.max_body)
        ready = _json_object(body).get("ready", False)
        if not isinstance(ready, bool):
            raise InputError("'ready' must be true or false",
                             [{"loc": ["ready"], "msg": "expected a boolean"}])
        rows = self.repository_index(ready)
        shown = in_scope(scope, "describe", {r["name"] for r in rows})
        await respond(send, 200, orjson.dumps([r for r in rows if r["name"] in shown]))

    async def v2_load(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /v2/repository/models/{name}/load``: load the served (or newest) version."""
        body = await read_body(scope, receive, self.max_body)
        version = v2.parameters(_json_object(body), []).get("version")
        if version is not None and (isinstance(version, bool)
                                    or not isinstance(version, int | str)):
            raise InputError("parameters.version must be a version number",
                             [{"loc": ["parameters", "version"], "msg": "expected a number"}])
        await self.load(name, version, actor=actor_of(scope))
        await respond(send, 200, b"{}")

    async def v2_unload(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /v2/repository/models/{name}/unload``: drain and drop every loaded version."""
        await read_body(scope, receive, self.max_body)
        await self.unload(name, actor=actor_of(scope))
        await respond(send, 200, b"{}")


def infer_request(name: str, version: int | None, inputs: dict[str, np.ndarray],
                  wanted: Sequence[str], request_id: str | None = None,
                  scope: Any = None) -> InferenceRequest:
    """The data plane's request for named input tensors and the outputs ``wanted`` (all when
    none): scores are predicted only when asked for (or when everything is)."""
    return InferenceRequest(name, version, inputs, "scores" in wanted or not wanted,
                            build=model_input, outputs=wanted, request_id=request_id,
                            scope=scope)


def model_input(runner: Runner, request: InferenceRequest) -> Any:
    """A runner's input from an OIP request's tensors, after checking the outputs it asks for
    against what the version answers (422 naming them before anything is predicted)."""
    if request.outputs:
        _check_wanted(list(request.outputs), _output_names(runner))
    return v2.to_payload(runner.predictor.signature, request.payload)


def outputs_of(call: Call, result: Any, wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """The output tensors of an answered request: exactly those ``wanted`` (all when none),
    typed as the version answers them."""
    runner = call.runner
    assert runner is not None
    return _outputs(result, list(wanted),
                    v2.output_types(runner.predictor.signature, runner.outputs))


def _header_length(scope: Scope) -> int | None:
    raw = header(scope, b"inference-header-content-length")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InputError("Inference-Header-Content-Length must be a number of bytes",
                         [{"loc": ["header", "Inference-Header-Content-Length"],
                           "msg": "not a number"}])
    return int(raw)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJSONError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError("the body must be a JSON object",
                         [{"loc": ["body"], "msg": "expected an object"}])
    return doc


def _output_names(runner: Any) -> tuple[str, ...]:
    if runner.outputs:
        return tuple(f.name for f in runner.outputs)
    return ("predictions", "scores") if runner.predictor.signature.classes else ("predictions",)


def _check_wanted(wanted: list[str], known: tuple[str, ...]) -> None:
    twice = sorted({o for o in wanted if wanted.count(o) > 1})
    if twice:  # REST refuses these while decoding; gRPC requests arrive here as they are
        raise InputError(f"outputs {', '.join(twice)} are requested twice",
                         [{"loc": ["outputs", o], "msg": "requested twice"} for o in twice])
    unknown = [o for o in wanted if o not in known]
    if unknown:
        raise InputError(f"unknown outputs {', '.join(unknown)}; this model's outputs: "
                         f"{', '.join(known)}",
                         [{"loc": ["outputs", o], "msg": "unknown output"} for o in unknown])


def _outputs(result: Any, wanted: list[str], types: dict[str, str]) -> dict[str, np.ndarray]:
    names = wanted or [o for o in OUTPUT_NAMES if o == "predictions" or result.scores is not None]
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "predictions":
            out[name] = v2.cast_output(np.asarray(result.predictions), types[name])
        elif result.scores is None:
            raise InputError("this model gives no class scores; ask for 'predictions'",
                             [{"loc": ["outputs", "scores"], "msg": "not available"}])
        else:
            out[name] = v2.cast_output(np.asarray(result.scores), types.get(name, "FP64"))
    return out


ROUTES: RouteTable = [
    ("GET", "/v2", Endpoint(OIPHandlers.v2_server, action="public")),
    ("GET", "/v2/health/live", Endpoint(OIPHandlers.v2_live, action="public")),
    ("GET", "/v2/health/ready", Endpoint(OIPHandlers.v2_ready, action="public")),
    ("GET", "/v2/models/{name}", Endpoint(OIPHandlers.v2_model, action="describe")),
    ("GET", "/v2/models/{name}/versions/{version}",
     Endpoint(OIPHandlers.v2_model, action="describe")),
    ("GET", "/v2/models/{name}/ready", Endpoint(OIPHandlers.v2_model_ready, action="describe")),
    ("GET", "/v2/models/{name}/versions/{version}/ready",
     Endpoint(OIPHandlers.v2_model_ready, action="describe")),
    ("POST", "/v2/models/{name}/infer", Endpoint(OIPHandlers.v2_infer, action="predict")),
    ("POST", "/v2/models/{name}/versions/{version}/infer",
     Endpoint(OIPHandlers.v2_infer, action="predict")),
    ("POST", "/v2/repository/index", Endpoint(OIPHandlers.v2_index, action="describe")),
    # tritonclient sends these without a Content-Type
    ("POST", "/v2/repository/models/{name}/load",
     Endpoint(OIPHandlers.v2_load, mutation=True, untyped=True, action="deploy")),
    ("POST", "/v2/repository/models/{name}/unload",
     Endpoint(OIPHandlers.v2_unload, mutation=True, untyped=True, action="deploy")),
]

__all__ = ["ROUTES", "OIPHandlers", "infer_request", "model_input", "outputs_of"]
