"""Redis Streams (``redis://``) through FastStream's RedisBroker (redis-py).

The consumer reads the stream ``--queue`` as a member of the consumer group ``--group``
(created at the stream's end when new), up to ``--prefetch`` messages at once and handled
concurrently, and acknowledges each (``XACK``) after its answer is added to the answer's stream
(``XADD``). Messages keep FastStream's stream format (one ``__data__`` field with the body and
headers), so producers publish with FastStream (``RedisBroker.publish(body, stream=...,
headers={"model": ..., "message_id": ...}, correlation_id=...)``) or write that format.

A consumer that dies leaves its messages pending in the group: a second subscriber of the same
consumer claims (``XAUTOCLAIM``) messages pending longer than ``--redeliver-after`` and answers
them, so nothing is lost. (FastStream's subscriber reads either new messages or claimed ones,
not both, before Redis 8.4's ``XREADGROUP ... CLAIM``; hence the two.) A message given back
(503) simply stays pending until it is claimed again.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage

from modelyard.serving.queue.envelope import Delivery
from modelyard.serving.queue.transport import (
    BrokerTransport,
    Endpoint,
    Handler,
    broker_options,
    header_text,
    raw_body,
    settle,
)

#: how often an idle subscriber asks for new (ms): the first message waits at most this long.
_POLL_MS = 100


class RedisTransport(BrokerTransport):
    """Consume one stream in a consumer group; publish to streams by name."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint, RedisBroker(endpoint.url, **broker_options()))

    async def start(self, handle: Handler, declare: tuple[str, ...]) -> None:
        """Join the group (created when new) and start reading and claiming."""
        e = self.endpoint

        async def on_message(message: RedisStreamMessage) -> None:
            await settle(message, await handle(delivery_of(message)))

        fresh = StreamSub(e.queue, group=e.group, consumer=e.name, max_records=e.prefetch,
                          polling_interval=_POLL_MS)
        self.broker.subscriber(stream=fresh, max_workers=e.prefetch,
                               ack_policy=AckPolicy.MANUAL, no_reply=True,
                               decoder=raw_body)(on_message)
        claimed = StreamSub(e.queue, group=e.group, consumer=e.name,
                            min_idle_time=int(e.redeliver_after_s * 1000),
                            polling_interval=int(max(_POLL_MS, e.redeliver_after_s * 100)))
        self.broker.subscriber(stream=claimed, ack_policy=AckPolicy.MANUAL, no_reply=True,
                               decoder=raw_body)(on_message)
        await self.broker.start()

    async def publish(self, destination: str, body: bytes, correlation_id: str | None,
                      headers: dict[str, str]) -> None:
        """Add ``body`` to the stream ``destination``."""
        await self.broker.publish(body, stream=destination, correlation_id=correlation_id,
                                  headers=headers)



def delivery_of(message: Any) -> Delivery:
    """The codec's view of a stream message (ids, reply-to and the rest from its headers)."""
    headers = header_text(message.headers)
    return Delivery(message.body, headers, headers.get("message_id") or None,
                    headers.get("correlation_id") or None, message.reply_to or None)


__all__ = ["RedisTransport", "delivery_of"]
