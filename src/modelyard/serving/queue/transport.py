"""Brokers by URL scheme: what a consumer reads, where it publishes, and how it acknowledges.

Each broker is a small :class:`Transport` over FastStream's broker for it (one maintained
library for all four, rather than four hand-written clients), registered by URL scheme in
:data:`TRANSPORTS`:

- ``amqp[s]://`` RabbitMQ (:mod:`.rabbit`): consumers of one queue share it; a dead
  consumer's unacknowledged messages go back to the queue at once;
- ``redis[s]://`` Redis Streams (:mod:`.redis_streams`): a consumer group (``--group``); a dead
  consumer's pending messages are claimed by another after ``--redeliver-after``;
- ``nats://`` NATS JetStream (:mod:`.nats_jetstream`): a durable consumer named by ``--group``,
  shared by its queue group; a message without an ack is redelivered after
  ``--redeliver-after``;
- ``kafka://`` Kafka (:mod:`.kafka`): a consumer group; offsets are committed after each batch
  is answered, so a dead consumer's uncommitted messages go to the partition's next owner.

A transport hands each message to the handler as a :class:`~.envelope.Delivery` and, once
the handler says, acknowledges it or gives it back (:func:`settle`); its :meth:`publish`
returns once the broker has the message.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from modelyard.errors import ConfigError, FrameworkMissingError
from modelyard.serving.queue.envelope import Delivery, Settle

#: what FastStream logs: its line per message at DEBUG (off unless asked), its errors as they are.
BROKER_LOG = logging.getLogger("modelyard.serving.queue.broker")
#: FastStream's level for its line per message.
MESSAGE_LOG_LEVEL = logging.DEBUG
#: seconds a stopping consumer waits for the messages in flight to be answered.
GRACE_S = 30.0

#: the consumer's side: a message in, what to tell the broker out.
Handler = Callable[[Delivery], Awaitable[Settle]]


def broker_options() -> dict[str, Any]:
    """What every FastStream broker here is made with: modelyard's logger, its line per
    message at DEBUG, and :data:`GRACE_S` for the messages in flight when it stops."""
    return {"logger": BROKER_LOG, "log_level": MESSAGE_LOG_LEVEL, "graceful_timeout": GRACE_S}


class BrokerTransport:
    """What every FastStream transport shares: its endpoint, its broker, and stopping (stop
    consuming, wait for the messages in flight, disconnect)."""

    def __init__(self, endpoint: Endpoint, broker: Any) -> None:
        self.endpoint = endpoint
        self.broker = broker

    async def stop(self) -> None:
        """Stop consuming, wait for the messages in flight, disconnect."""
        await self.broker.stop()


@dataclass(frozen=True)
class Endpoint:
    """Where a consumer reads: the broker's URL, the queue (stream, subject, topic), the
    consumer group and this consumer's name in it, how many messages it holds unacknowledged
    (``prefetch``: back-pressure) and how long a message a dead consumer held waits before
    another takes it (``redeliver_after_s``, where the broker does not notice at once)."""

    url: str
    queue: str
    group: str = "modelyard"
    consumer: str = ""
    prefetch: int = 64
    redeliver_after_s: float = 30.0

    @property
    def scheme(self) -> str:
        """The URL's scheme, lower case."""
        return urlsplit(self.url).scheme.lower()

    @property
    def address(self) -> str:
        """``scheme://host:port`` without credentials (for messages and logs)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    @property
    def name(self) -> str:
        """This consumer's name in its group: ``consumer``, else ``host-pid``."""
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}"


class Transport(Protocol):
    """One broker connection: consume ``endpoint.queue`` into a handler, publish answers."""

    async def start(self, handle: Handler, declare: tuple[str, ...]) -> None:
        """Connect, declare ``declare`` (the output and dead-letter queues, where the broker
        has such a thing) and start handing messages to ``handle``."""

    async def publish(self, destination: str, body: bytes, correlation_id: str | None,
                      headers: dict[str, str]) -> None:
        """Send ``body`` to ``destination``; returns once the broker has it."""

    async def stop(self) -> None:
        """Stop taking messages, let those in flight finish and settle, disconnect."""


#: URL scheme -> ``module:class`` of its transport (imported when used: each needs its own
#: client library from ``modelyard[queue]``).
TRANSPORTS: dict[str, str] = {
    "amqp": "rabbit:RabbitTransport",
    "amqps": "rabbit:RabbitTransport",
    "redis": "redis_streams:RedisTransport",
    "rediss": "redis_streams:RedisTransport",
    "nats": "nats_jetstream:NatsTransport",
    "kafka": "kafka:KafkaTransport",
}


def check_url(url: str) -> str:
    """``url``'s scheme when a transport is registered for it, else :class:`ConfigError`
    naming the field and the schemes there are."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in TRANSPORTS:
        known = ", ".join(f"{s}://" for s in TRANSPORTS)
        raise ConfigError(f"URL {url[:80]!r}: the broker scheme {scheme + '://'!r} is not "
                          f"known; use one of {known}")
    return scheme


def transport_for(endpoint: Endpoint) -> Transport:
    """The transport for ``endpoint``'s URL scheme (:class:`FrameworkMissingError` when its
    client library is not installed)."""
    module, _, name = TRANSPORTS[check_url(endpoint.url)].partition(":")
    try:
        found = importlib.import_module(f"modelyard.serving.queue.{module}")
        cls: Any = getattr(found, name)
    except ImportError as exc:
        raise FrameworkMissingError(
            f"the {endpoint.scheme}:// broker needs FastStream and its client ({exc.name}): "
            "pip install 'modelyard[queue]'") from None
    transport: Transport = cls(endpoint)
    return transport


async def settle(message: Any, outcome: Settle) -> None:
    """Acknowledge a FastStream message, or give it back to the broker."""
    if outcome is Settle.ACK:
        await message.ack()
    else:
        await message.nack()


def header_text(headers: Any) -> dict[str, Any]:
    """A message's headers as a plain dict (bytes values as text)."""
    if not headers:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    return {str(k): v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for k, v in items}


async def raw_body(message: Any, original: Any = None) -> Any:
    """A FastStream decoder that keeps the body as bytes: the codec parses it once."""
    return message.body


__all__ = ["BROKER_LOG", "GRACE_S", "MESSAGE_LOG_LEVEL", "TRANSPORTS", "BrokerTransport",
           "Endpoint", "Handler", "Transport", "broker_options", "check_url", "header_text",
           "raw_body", "settle", "transport_for"]
