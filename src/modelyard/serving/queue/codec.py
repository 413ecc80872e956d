"""The queue codec: a message in, an answer (or a dead letter) out, around the one data plane.

Like the HTTP codecs it decodes a protocol into an
:class:`~modelyard.serving.dataplane.InferenceRequest`, lets
:meth:`DataPlane.infer <modelyard.serving.dataplane.DataPlane.infer>` answer (resolve, route,
prepare, batch, predict: the same batcher as HTTP, so concurrent messages share model calls)
and encodes the answer; :meth:`DataPlane.record` counts it under protocol ``queue`` and logs it
in the prediction log. What it adds is delivery:

- the answer is published to the message's reply-to (RPC), else to ``--output``, with the
  message's correlation id; :meth:`QueueCodec.handle` returns only after that publish, and the
  broker adapter acknowledges (commits) only then: at least once;
- a message refused for what it is (bad JSON, bad input, an unknown model, a model that
  raises) is published to the dead-letter queue with the error (and the error goes to its
  reply-to too, so an RPC caller is not left waiting), then acknowledged: it never blocks the
  queue; one the server cannot answer now (503, 504) is given back to the broker
  (:func:`~.envelope.settle_failure`);
- a message id answered within ``--dedupe-window`` is acknowledged without a second answer.

Nothing here knows a broker: it is handed a :data:`Publish` function and returns a
:class:`~.envelope.Settle`; a worker never dies of a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelyard.errors import NotFoundError, PublishError
from modelyard.predictor import Prediction
from modelyard.serving import protocol_v1
from modelyard.serving import protocol_v2 as v2
from modelyard.serving.calls import Call, log_failure, usable_id
from modelyard.serving.dataplane import DataPlane, InferenceRequest
from modelyard.serving.oip import infer_request, outputs_of
from modelyard.serving.queue.envelope import (
    DedupeWindow,
    Delivery,
    QueueRequest,
    Settle,
    dead_letter,
    decode,
    destination,
    error_document,
    settle_failure,
)

log = logging.getLogger(__name__)

#: ``publish(destination, body, correlation_id, headers)``: the broker adapter's send, which
#: returns once the broker has the message (a publisher confirm where the broker has them).
Publish = Callable[[str, bytes, "str | None", dict[str, str]], Awaitable[None]]


class QueueCodec:
    """Answer queue messages through ``plane``; ``publish`` sends answers and dead letters.

    ``output``: where answers go for messages without a reply-to (None: such a message is
    refused); ``dead_letter``: where refused messages go; ``max_attempts``: deliveries of a
    message the server could not answer before it is dead-lettered (where the broker counts).
    """

    def __init__(self, plane: DataPlane, publish: Publish, *, output: str | None,
                 dead_letter: str, dedupe_window_s: float = 300.0, max_attempts: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plane = plane
        self.publish = publish
        self.output = output
        self.dead_letter = dead_letter
        self.max_attempts = max_attempts
        self.dedupe = DedupeWindow(dedupe_window_s)
        self.clock = clock
        #: messages answered, dead-lettered, given back and dropped as repeats (since start).
        self.counts = {"answered": 0, "dead_lettered": 0, "requeued": 0, "duplicates": 0}

    async def handle(self, delivery: Delivery) -> Settle:
        """Deal with one message; the broker adapter acknowledges it on :data:`Settle.ACK`
        (answered, dead-lettered or a repeat) and gives it back on :data:`Settle.REQUEUE`.
        Never raises for what a message holds."""
        key = delivery.message_id
        if key and not self.dedupe.begin(key, self.clock()):
            self.counts["duplicates"] += 1
            return Settle.ACK
        settle = Settle.REQUEUE
        try:
            settle = await self._answer(delivery)
        except PublishError as exc:
            log.warning("message %s given back: the broker did not take its answer: %s",
                        key, exc.__cause__ or exc)
        finally:
            if key and settle is Settle.ACK:
                self.dedupe.done(key, self.clock())
            elif key:
                self.dedupe.forget(key)
        if settle is Settle.REQUEUE:
            self.counts["requeued"] += 1
        return settle

    async def _answer(self, delivery: Delivery) -> Settle:
        call = Call("queue", "", usable_id(delivery.message_id) if delivery.message_id else None)
        status = 500
        try:
            request = decode(delivery)
            call.model = request.model
            where = destination(delivery, self.output)
            result = await self.plane.infer(call, self._request(request))
            body = self._encode(call, request, result)
            await self._publish(where, body, delivery, self._headers(call, 200))
            status = 200
            self.counts["answered"] += 1
            return Settle.ACK
        except PublishError:
            status = 503
            raise
        except Exception as exc:
            status, error = error_document(exc)
            return await self._refuse(delivery, call, exc, status, error)
        finally:
            self.plane.record(call, status)

    def _request(self, request: QueueRequest) -> InferenceRequest:
        """The data plane's request: the version named, the alias's version, or (neither) the
        served alias's, through a rollout when one routes the model."""
        number = self._version(request)
        if request.protocol == "v2":
            req = request.payload
            request_id = req.id if req.id and usable_id(req.id) else None
            return infer_request(request.model, number, req.inputs, req.outputs, request_id)
        return InferenceRequest(request.model, number, request.payload, request.scores)

    def _version(self, request: QueueRequest) -> int | None:
        name, catalog = request.model, self.plane.catalog
        if request.alias is None:
            return self.plane.version(name, None if request.version is None
                                      else str(request.version))
        aliases = catalog.models.get(name)
        if aliases is None:
            catalog.key_for(name)  # raises NotFoundError naming what exists
        number = (aliases or {}).get(request.alias)
        if number is None:
            known = ", ".join(sorted(aliases or {})) or "none"
            raise NotFoundError(f"model '{name}' has no alias '{request.alias}'; its aliases: "
                                f"{known}")
        return self.plane.version(name, str(number))

    @staticmethod
    def _encode(call: Call, request: QueueRequest, result: Prediction) -> bytes:
        runner = call.runner
        assert runner is not None
        if request.protocol == "v2":
            req = request.payload
            outputs = outputs_of(call, result, req.outputs)
            body, _ = v2.encode_infer(request.model, runner.version, outputs, set(), req.id)
            return body
        return protocol_v1.encode(request.model, runner.version, result, request.scores,
                                  call.request_id)

    @staticmethod
    def _headers(call: Call, status: int) -> dict[str, str]:
        headers = {"status": str(status), "request-id": call.request_id}
        if call.runner is not None:
            headers["model-version"] = call.runner.version_str
            headers["model-variant"] = call.variant
        return headers

    async def _refuse(self, delivery: Delivery, call: Call, exc: BaseException, status: int,
                      error: dict[str, Any]) -> Settle:
        """A failed message: given back (503/504 with attempts left), else dead-lettered with
        the error, and the error sent to its reply-to."""
        if status >= 500:
            log_failure(f"queue message {delivery.message_id}", status, call.request_id, exc)
        if settle_failure(status, delivery.attempt, self.max_attempts) is Settle.REQUEUE:
            return Settle.REQUEUE
        headers = {**self._headers(call, status), "error": str(error.get("error", ""))}
        await self._publish(self.dead_letter, dead_letter(delivery, status, error), delivery,
                            headers)
        if delivery.reply_to:
            await self._publish(delivery.reply_to, orjson.dumps({"status": status, **error}),
                                delivery, headers)
        log.warning("message %s dead-lettered to %s (%d): %s", delivery.message_id,
                    self.dead_letter, status, error.get("message", ""))
        self.counts["dead_lettered"] += 1
        return Settle.ACK

    async def _publish(self, where: str, body: bytes, delivery: Delivery,
                       headers: dict[str, str]) -> None:
        if delivery.message_id:
            headers = {**headers, "message-id": delivery.message_id}
        try:
            await self.publish(where, body, delivery.correlation_id, headers)
        except Exception as exc:
            raise PublishError(str(exc)) from exc


__all__ = ["Publish", "QueueCodec"]
