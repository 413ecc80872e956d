"""OIP v2 over gRPC (the KServe/Triton ``GRPCInferenceService``), on the app's event loop.

Uses the service definition that ships with ``tritonclient[grpc]`` (``pip install
'modelyard[grpc]'``), so ``tritonclient.grpc`` and KServe gRPC clients work unchanged. A codec
around the same :class:`~modelyard.serving.dataplane.DataPlane` as the REST routes: the same
resolution, rollout routing, validation, batcher and record; errors become gRPC
status codes (422 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, ...).

Like REST's ``X-Model-Version`` / ``X-Model-Variant`` headers, an inference answer's initial
metadata names the version and the variant (``production``, or ``stable``/``candidate`` under
a rollout) that answered: ``x-model-version``, ``x-model-variant``. Under a rollout, request
metadata plays the part of request headers for the routing key (``x-request-key``, or the
header an A/B rollout names).

Every method declares the action it needs (:data:`ACTIONS`), as the REST routes do, and is
admitted by the same :class:`~modelyard.serving.access.Access`: with auth enforced, the
metadata ``authorization: Bearer <key>`` must carry a key whose role allows it on the model
(UNAUTHENTICATED without it, PERMISSION_DENIED with a wrong key or without the role).
Repository load and unload are mutations: with ``MODELYARD_TOKEN`` set they need it even when
auth is not enforced, and each is audited under the actor the credential stands for.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import numpy as np

from modelyard.errors import FrameworkMissingError, InputError, ModelyardError
from modelyard.numeric import to_numeric
from modelyard.serving import protocol_v2 as v2
from modelyard.serving.access import ANONYMOUS, Access
from modelyard.serving.calls import Call, log_failure, new_request_id, usable_id
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.oip import OIPHandlers, infer_request, outputs_of
from modelyard.serving.tls import grpc_credentials

log = logging.getLogger(__name__)

#: what each method needs the caller's role to allow (see :mod:`modelyard.registry.policy`);
#: a method not listed needs ``admin`` (deny by default).
ACTIONS = {"ServerLive": "public", "ServerReady": "public", "ServerMetadata": "public",
           "ModelReady": "describe", "ModelMetadata": "describe", "RepositoryIndex": "describe",
           "ModelInfer": "predict", "RepositoryModelLoad": "deploy",
           "RepositoryModelUnload": "deploy"}
#: the methods that change something (a credential even when auth is not enforced).
MUTATIONS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
_actor: contextvars.ContextVar[str] = contextvars.ContextVar("modelyard_grpc_actor")

#: which ``InferTensorContents`` field holds each datatype's values.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _modules() -> tuple[Any, Any, Any]:
    try:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc
    except ImportError as exc:
        raise FrameworkMissingError(
            f"gRPC serving needs grpcio and tritonclient ({exc}): pip install 'modelyard[grpc]'"
        ) from None
    return grpc, service_pb2, service_pb2_grpc


def status_code(grpc: Any, exc: BaseException) -> Any:
    """The gRPC status for an error (client mistakes are never INTERNAL)."""
    http = exc.status_code if isinstance(exc, ModelyardError) else 500
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
            409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
            422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
            504: grpc.StatusCode.DEADLINE_EXCEEDED}.get(http, grpc.StatusCode.INTERNAL)


def decode_inputs(request: Any) -> dict[str, np.ndarray]:
    """Named arrays from a ``ModelInferRequest`` (raw contents or typed contents)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs",
                         [{"loc": ["raw_input_contents"], "msg": "one entry per input"}])
    out: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in out:
            raise InputError(f"input '{tensor.name}' is given twice",
                             [{"loc": ["inputs", i, "name"], "msg": "duplicate input name"}])
        out[tensor.name] = _decode_tensor(i, tensor, raw[i] if raw else None)
    return out


def _decode_tensor(i: int, tensor: Any, raw: bytes | None) -> np.ndarray:
    dt, shape = tensor.datatype, [int(d) for d in tensor.shape]
    try:
        if dt not in _CONTENTS:
            raise ValueError(f"has unknown datatype {dt!r}")
        if any(d < 0 for d in shape):
            raise ValueError(f"shape {shape} has a negative size")
        if raw is not None:
            flat = v2.from_raw(dt, raw)
        elif dt == "BYTES":
            values = [b.decode("utf-8") for b in tensor.contents.bytes_contents]
            flat = np.empty(len(values), dtype=object)
            flat[:] = values
        elif dt == "BOOL":
            flat = np.asarray(tensor.contents.bool_contents, dtype=np.bool_)
        else:  # int_contents carries INT8/INT16 as int32: check their range
            values = list(getattr(tensor.contents, _CONTENTS[dt]))
            flat = to_numeric(values, v2.DATATYPES[dt], f"input '{tensor.name}'",
                              ["inputs", i, "contents"])
        return v2.shaped(flat, shape)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"input '{tensor.name}' {exc}",
                         [{"loc": ["inputs", i], "msg": str(exc)}]) from None


def metadata_scope(metadata: Any) -> dict[str, Any]:
    """An ASGI-like scope whose ``headers`` are a call's text metadata (for the routing key)."""
    return {"headers": [(str(key).encode("latin-1"), value.encode("latin-1", "replace"))
                        for key, value in metadata or () if isinstance(value, str)]}


def answer_metadata(call: Any) -> tuple[tuple[str, str], ...]:
    """The metadata naming the version and variant that answered (REST sends them as headers)."""
    out = (("x-model-version", call.runner.version_str), ("x-model-variant", call.variant))
    steps = getattr(call.result, "steps", None)  # a graph's answer names its members
    return (*out, ("x-model-steps", ",".join(steps))) if steps else out


class Servicer:
    """``GRPCInferenceService`` methods: a codec around the
    :class:`~modelyard.serving.dataplane.DataPlane`, sharing OIP's metadata, readiness and
    repository with the REST routes (``oip``)."""

    def __init__(self, plane: DataPlane, oip: OIPHandlers, access: Access, pb: Any,
                 grpc: Any) -> None:
        self.plane = plane
        self.oip = oip
        self.access = access
        self.pb = pb
        self.grpc = grpc

    async def fail(self, context: Any, exc: BaseException, method: str,
                   request_id: str | None = None) -> None:
        """Abort the call with the error's gRPC status; a server error (HTTP 5xx) is logged
        once, with the request id (the request's ``id``, else a new one, also sent back in the
        ``x-request-id`` trailing metadata)."""
        http = exc.status_code if isinstance(exc, ModelyardError) else 500
        trailing: tuple[tuple[str, str], ...] = ()
        if http >= 500:
            request_id = request_id or new_request_id()
            log_failure(f"gRPC {method}", http, request_id, exc)
            trailing = (("x-request-id", request_id),)
        await context.abort(status_code(self.grpc, exc), str(exc), trailing)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=self.plane.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from modelyard import __version__

        return self.pb.ServerMetadataResponse(name="modelyard", version=__version__,
                                              extensions=v2.EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = self.oip.is_ready(request.name, request.version or None)
        return self.pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        doc = await self.oip.describe(request.name, request.version or None)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]],
            outputs=[tensor(**t) for t in doc["outputs"]])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        plane = self.plane
        name = request.model_name
        # the OIP request id names the answer in feedback, as over HTTP
        call = Call("grpc", name, usable_id(request.id))
        status = 500
        try:
            number = plane.version(name, request.model_version or None)
            inputs = decode_inputs(request)
            wanted = [o.name for o in request.outputs]
            # request metadata plays the headers' part for a rollout's key: copied only then
            result = await plane.infer(call, infer_request(
                name, number, inputs, wanted,
                scope=lambda: metadata_scope(context.invocation_metadata())))
            outputs = outputs_of(call, result, wanted)
            await context.send_initial_metadata(answer_metadata(call))
            status = 200
        except Exception as exc:
            status = exc.status_code if isinstance(exc, ModelyardError) else 500
            await self.fail(context, exc, "ModelInfer", call.request_id)
        finally:
            plane.record(call, status)
        assert call.runner is not None
        out = self.pb.ModelInferResponse(model_name=name, model_version=call.runner.version_str,
                                         id=request.id)
        for key, array in outputs.items():
            out.outputs.add(name=key, datatype=v2.datatype_of(array), shape=list(array.shape))
            out.raw_output_contents.append(v2.to_raw(array))
        return out

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = self.pb.RepositoryIndexResponse.ModelIndex
        rows = self.oip.repository_index(bool(request.ready))
        return self.pb.RepositoryIndexResponse(models=[index(**r) for r in rows])

    async def admit(self, name: str, request: Any, context: Any) -> None:
        """Let the call through or raise 401/403/429 (as over HTTP); the actor is kept for the
        audit of a mutation."""
        access = self.access
        action = ACTIONS.get(name, "admin")
        needed = name in MUTATIONS
        if action == "public" or not (access.enforced or (needed and access.required)):
            return
        model = getattr(request, "model_name", "") or getattr(request, "name", "") or None
        # the peer is "ipv4:10.0.0.5:51234": failures count per address, not per connection
        client = str(context.peer()).rsplit(":", 1)[0]
        _actor.set(await access.admit_metadata(context.invocation_metadata(), client,
                                               action, model, credential_needed=needed))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        version = request.parameters["version"].string_param \
            if "version" in request.parameters else None
        await self.oip.load(request.model_name, version, actor=_actor.get(ANONYMOUS),
                            protocol="grpc")
        return self.pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.oip.unload(request.model_name, actor=_actor.get(ANONYMOUS), protocol="grpc")
        return self.pb.RepositoryModelUnloadResponse()


class _Complete:
    """The servicer plus UNIMPLEMENTED answers for the service's other methods (shared memory,
    statistics, tracing, ...)."""

    def __init__(self, servicer: Servicer, grpc: Any) -> None:
        self._servicer = servicer
        self._grpc = grpc

    def __getattr__(self, name: str) -> Any:
        if hasattr(self._servicer, name):
            return self._guarded(name, getattr(self._servicer, name))

        async def unimplemented(request: Any, context: Any) -> Any:
            await context.abort(self._grpc.StatusCode.UNIMPLEMENTED,
                                f"{name} is not supported by modelyard")

        return unimplemented

    def _guarded(self, name: str, method: Any) -> Any:
        """``method`` with every error turned into its gRPC status (and 5xx logged once)."""
        abort = self._grpc.aio.AbortError

        async def call(request: Any, context: Any) -> Any:
            try:
                await self._servicer.admit(name, request, context)
                return await method(request, context)
            except abort:
                raise  # already answered (and logged) by the method itself
            except Exception as exc:
                await self._servicer.fail(context, exc, name,
                                          usable_id(str(getattr(request, "id", ""))))
                raise  # not reached: abort raises

        return call


async def start_grpc(plane: DataPlane, oip: OIPHandlers, access: Access, address: str) -> Any:
    """Start the gRPC server on ``address`` (``host:port``) on the running loop; returns it."""
    grpc, pb, pb_grpc = _modules()
    limit = plane.options.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    servicer = Servicer(plane, oip, access, pb, grpc)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Complete(servicer, grpc), server)
    files = plane.options.tls
    port = (server.add_insecure_port(address) if files is None
            else server.add_secure_port(address, grpc_credentials(files, grpc)))
    if port == 0:
        raise ModelyardError(f"cannot listen for gRPC on {address}; is the port in use?")
    await server.start()
    log.info("OIP v2 gRPC%s on %s", "" if files is None else " over TLS", address)
    return server


__all__ = ["Servicer", "answer_metadata", "decode_inputs", "metadata_scope", "start_grpc",
           "status_code"]
