"""What a queue message says, and what the consumer decides about it: pure, no broker.

A message names the model in its headers or in its body, and carries the input as the HTTP
protocols take it, native (``records``, ``columns``, ``instances``, ``inputs``; ``scores``) or
OIP v2 (``inputs`` as named tensors, ``outputs``, ``id``)::

    headers  model: fraud   [version: 3 | alias: staging]   [protocol: v2]
    body     {"instances": [[0.1, 0.2, ...]], "scores": true}
or
    body     {"model": "fraud", "alias": "staging", "records": [{"amount": 12.5}]}

Header names are matched without regard to case; routing fields in the body are taken out of
it before the rest is decoded as the protocol says. The protocol is ``v2`` when a header or
field says so, or when ``inputs`` is a list of tensors (objects with a ``datatype``); else
native.

The decisions: where an answer goes (:func:`destination`: the message's reply-to, else the
consumer's output queue), whether a failed message is dead-lettered or put back
(:func:`settle_failure`), what a dead letter says (:func:`dead_letter`), and which message ids
were already answered (:class:`DedupeWindow`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelyard.errors import BadJSONError, InputError
from modelyard.serving import protocol_v1
from modelyard.serving import protocol_v2 as v2
from modelyard.serving.http import error_body

#: what names the model and how to read the input, in headers or in the body.
ROUTING_FIELDS = ("model", "version", "alias", "protocol")
_PROTOCOLS = {"v1": "v1", "native": "v1", "v2": "v2", "oip": "v2"}
#: failures worth trying again: the server could not answer now (a full queue, a version being
#: swapped, a device worker restarting, the registry unreachable) or in time.
RETRYABLE = frozenset((503, 504))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a broker delivered it (every broker's adapter makes one).

    ``attempt``: how many times it was delivered, where the broker counts (else 1).
    """

    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """A decoded message: which model answers and the input in its protocol's shape.

    ``payload``: native, the records/columns/instances; v2, a :class:`protocol_v2.InferRequest`.
    """

    model: str
    version: int | None
    alias: str | None
    protocol: str
    payload: Any
    scores: bool


def decode(delivery: Delivery) -> QueueRequest:
    """The request a message carries; :class:`BadJSONError` (400) or :class:`InputError` (422)
    naming the field that is wrong."""
    try:
        doc = orjson.loads(delivery.body)
    except orjson.JSONDecodeError as exc:
        raise BadJSONError(f"the message body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError("the message body must be a JSON object",
                         [{"loc": ["body"], "msg": "expected an object"}])
    routing = _routing(delivery.headers, doc)
    model = routing.get("model")
    if not isinstance(model, str) or not model:
        raise InputError("the message names no model: set the 'model' header or field",
                         [{"loc": ["message", "model"], "msg": "field required"}])
    version, alias = _version(routing.get("version")), routing.get("alias")
    if alias is not None and (not isinstance(alias, str) or not alias):
        raise InputError("'alias' must be an alias name, e.g. production",
                         [{"loc": ["message", "alias"], "msg": "expected a name"}])
    if version is not None and alias is not None:
        raise InputError("give a version or an alias, not both",
                         [{"loc": ["message", "alias"], "msg": "conflicts with version"}])
    protocol = _protocol(routing.get("protocol"), doc)
    if protocol == "v2":
        return QueueRequest(model, version, alias, "v2", v2.decode_infer_doc(doc), False)
    payload, scores = protocol_v1.decode_doc(doc)
    return QueueRequest(model, version, alias, "v1", payload, scores)


def _routing(headers: Mapping[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """The routing fields: each from a header when one is set, else taken out of the body."""
    lowered = {str(k).lower(): v for k, v in headers.items()} if headers else {}
    found: dict[str, Any] = {}
    for name in ROUTING_FIELDS:
        in_body = doc.pop(name, None)
        value = lowered.get(name)
        found[name] = in_body if value is None or value == "" else _text(value)
    return {k: v for k, v in found.items() if v is not None}


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _version(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not (text.isascii() and text.isdigit() and len(text) <= 19) \
            or int(text) < 1:
        raise InputError(f"version {text[:40]!r} is not a version number (1, 2, ...)",
                         [{"loc": ["message", "version"], "msg": "expected a number"}])
    return int(text)


def _protocol(named: Any, doc: dict[str, Any]) -> str:
    if named is not None:
        protocol = _PROTOCOLS.get(str(named).lower())
        if protocol is None:
            raise InputError(f"protocol {str(named)[:40]!r} is not known; use v1 (native) or v2",
                             [{"loc": ["message", "protocol"], "msg": "expected v1 or v2"}])
        return protocol
    inputs = doc.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) \
            and "datatype" in inputs[0]:
        return "v2"
    return "v1"


def destination(delivery: Delivery, output: str | None) -> str:
    """Where the answer to ``delivery`` goes: its reply-to (RPC), else ``output``; a message
    with neither is refused (422) before any model sees it."""
    if delivery.reply_to:
        return delivery.reply_to
    if output:
        return output
    raise InputError("the message has no reply-to and the consumer has no --output queue: "
                     "set reply_to on the message or start the consumer with --output",
                     [{"loc": ["message", "reply_to"], "msg": "field required"}])


class Settle(enum.Enum):
    """What the consumer tells the broker about a message once it is dealt with."""

    #: answered (or dead-lettered, or a duplicate): acknowledge, commit.
    ACK = "ack"
    #: could not be dealt with now: give it back for another delivery.
    REQUEUE = "requeue"


def settle_failure(status: int, attempt: int, max_attempts: int) -> Settle:
    """A failed message goes back to the queue when the failure is the server's for now (503,
    504) and it has attempts left; anything else -- bad JSON, bad input, an unknown model, a
    model that raises -- is dead-lettered (:data:`Settle.ACK` after the dead letter is
    published), so that it never blocks the queue."""
    if status in RETRYABLE and attempt < max_attempts:
        return Settle.REQUEUE
    return Settle.ACK


def error_document(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, {"error", "message"[, "detail"]})`` for a failure, as HTTP answers it."""
    status, body, _ = error_body(exc)
    return status, orjson.loads(body)


def dead_letter(delivery: Delivery, status: int, error: Mapping[str, Any]) -> bytes:
    """The dead letter for a refused message: the error, what the message was, and its body
    (text when it is UTF-8, else its bytes' ``repr``) so that it can be fixed and sent again."""
    try:
        body: str = delivery.body.decode("utf-8")
    except UnicodeDecodeError:
        body = repr(delivery.body[:65536])
    return orjson.dumps({"status": status, **error, "message_id": delivery.message_id,
                         "correlation_id": delivery.correlation_id,
                         "reply_to": delivery.reply_to, "attempt": delivery.attempt,
                         "headers": {str(k): _jsonable(v) for k, v in delivery.headers.items()},
                         "body": body})


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


_IN_FLIGHT = float("inf")


class DedupeWindow:
    """Message ids answered in the last ``window_s`` seconds (and those in flight), so that a
    message delivered again -- a producer's retry, a redelivery after a lost acknowledgement --
    is answered once. ``window_s == 0`` turns it off. Holds at most ``max_ids`` ids; the
    oldest go first."""

    def __init__(self, window_s: float, max_ids: int = 100_000) -> None:
        self.window_s = window_s
        self.max_ids = max_ids
        self._until: OrderedDict[str, float] = OrderedDict()

    def begin(self, key: str, now: float) -> bool:
        """Whether the message ``key`` is new (then it is in flight until :meth:`done` or
        :meth:`forget`); False for one in flight or answered within the window."""
        if self.window_s <= 0:
            return True
        self._expire(now)
        until = self._until.get(key)
        if until is not None and until >= now:
            return False
        self._until[key] = _IN_FLIGHT
        self._until.move_to_end(key)
        while len(self._until) > self.max_ids:
            self._until.popitem(last=False)
        return True

    def done(self, key: str, now: float) -> None:
        """``key`` was answered (or dead-lettered): a repeat within the window is dropped."""
        if self.window_s > 0:
            self._until[key] = now + self.window_s
            self._until.move_to_end(key)

    def forget(self, key: str) -> None:
        """``key`` went back to the queue: its next delivery is answered."""
        self._until.pop(key, None)

    def __len__(self) -> int:
        return len(self._until)

    def _expire(self, now: float) -> None:
        until = self._until
        while until:
            key, deadline = next(iter(until.items()))
            if deadline >= now:
                return
            del until[key]


__all__ = ["RETRYABLE", "ROUTING_FIELDS", "DedupeWindow", "Delivery", "QueueRequest", "Settle",
           "dead_letter", "decode", "destination", "error_document", "settle_failure"]
