"""NATS JetStream (``nats://``) through FastStream's NatsBroker (nats-py).

``--queue`` is a subject; the consumer makes sure a stream captures it, and the output and
dead-letter subjects too (a stream named after the subject, when none does), so that answers
are kept until read: each answer is a JetStream publish that returns once the stream has it.

The consumer is a durable pull consumer named ``--group``: every process of the group pulls
from it, so they share the messages. A pull fetches up to ``--prefetch`` messages (waiting at
most :data:`FETCH_WAIT_S` to fill it), they are answered concurrently -- batched together by
the model's batcher -- and each is acknowledged after its answer is published; one given back
is negatively acknowledged and redelivered. A consumer that dies leaves its messages without
an ack: JetStream redelivers them after ``--redeliver-after`` (the consumer's ack wait).

Headers: ``model`` / ``version`` / ``alias`` / ``protocol`` as for every broker, the message id
in ``Nats-Msg-Id`` (JetStream's own de-duplication id) or ``message_id``, the correlation id in
``correlation_id`` and the RPC reply-to subject in ``reply_to`` (a JetStream message's own
reply subject is its acknowledgement's).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError as StreamNotFound

from modelyard.serving.queue.envelope import Delivery, Settle
from modelyard.serving.queue.transport import (
    BrokerTransport,
    Endpoint,
    Handler,
    broker_options,
    header_text,
    raw_body,
)

#: the longest a pull waits to fill its batch when fewer messages are there (seconds).
FETCH_WAIT_S = 0.05


class NatsTransport(BrokerTransport):
    """Pull from a durable JetStream consumer; publish to subjects kept in streams."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint, NatsBroker(endpoint.url, **broker_options()))
        self._js: Any = None

    async def start(self, handle: Handler, declare: tuple[str, ...]) -> None:
        """Make sure streams keep the subjects, then start pulling."""
        e = self.endpoint
        connection = await self.broker.connect()
        self._js = connection.jetstream()
        streams = {s: await ensure_stream(self._js, s) for s in (e.queue, *declare)}

        async def on_batch(message: NatsMessage) -> None:
            raws = message.raw_message if isinstance(message.raw_message, list) \
                else [message.raw_message]
            await asyncio.gather(*(answer(handle, raw) for raw in raws))

        self.broker.subscriber(
            e.queue, stream=JStream(streams[e.queue], declare=False), durable=e.group,
            pull_sub=PullSub(batch_size=e.prefetch, timeout=FETCH_WAIT_S, batch=True),
            config=ConsumerConfig(ack_wait=e.redeliver_after_s),
            ack_policy=AckPolicy.MANUAL, no_reply=True, decoder=raw_body)(on_batch)
        await self.broker.start()

    async def publish(self, destination: str, body: bytes, correlation_id: str | None,
                      headers: dict[str, str]) -> None:
        """Publish ``body`` to the subject ``destination``; returns once its stream has it."""
        if correlation_id:
            headers = {**headers, "correlation_id": correlation_id}
        await self._js.publish(destination, body, headers=headers)



async def answer(handle: Handler, raw: Any) -> None:
    """Answer one JetStream message and acknowledge it, or give it back."""
    if await handle(delivery_of(raw)) is Settle.ACK:
        await raw.ack()
    else:
        await raw.nak()


def delivery_of(raw: Any) -> Delivery:
    """The codec's view of a JetStream message."""
    headers = header_text(raw.headers)
    message_id = headers.get("Nats-Msg-Id") or headers.get("message_id") or None
    try:
        attempt = int(raw.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message after all
        attempt = 1
    return Delivery(raw.data, headers, message_id, headers.get("correlation_id") or None,
                    headers.get("reply_to") or None, attempt)


async def ensure_stream(js: Any, subject: str) -> str:
    """The name of the stream that captures ``subject``; one named after it is added when
    none does."""
    try:
        name: str = await js.find_stream_name_by_subject(subject)
        return name
    except StreamNotFound:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", subject)[:200]
        await js.add_stream(name=name, subjects=[subject])
        return name


__all__ = ["FETCH_WAIT_S", "NatsTransport", "delivery_of", "ensure_stream"]
