"""RabbitMQ (``amqp://``) through FastStream's RabbitBroker (aio-pika).

The input, output and dead-letter queues are declared durable, answers are published
persistent with publisher confirms (``publish`` returns once the broker has the message), and
each message is acknowledged by hand after its answer is published. The channel's prefetch
(``--prefetch``) bounds the messages in flight: aio-pika runs each delivery as its own task, so
up to that many wait in the model's batcher together. Consumers of one queue share it; when
one dies, RabbitMQ requeues what it held unacknowledged.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

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


class RabbitTransport(BrokerTransport):
    """Consume one RabbitMQ queue; publish to queues by name (the default exchange)."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint, RabbitBroker(
            endpoint.url, default_channel=Channel(prefetch_count=endpoint.prefetch),
            **broker_options()))

    async def start(self, handle: Handler, declare: tuple[str, ...]) -> None:
        """Connect, declare the queues and start consuming."""
        subscriber = self.broker.subscriber(RabbitQueue(self.endpoint.queue, durable=True),
                                            ack_policy=AckPolicy.MANUAL, no_reply=True,
                                            decoder=raw_body)

        @subscriber
        async def on_message(message: RabbitMessage) -> None:
            await settle(message, await handle(delivery_of(message)))

        await self.broker.connect()
        for name in declare:
            await self.broker.declare_queue(RabbitQueue(name, durable=True))
        await self.broker.start()

    async def publish(self, destination: str, body: bytes, correlation_id: str | None,
                      headers: dict[str, str]) -> None:
        """Publish ``body`` to the queue ``destination``, persistent, confirmed."""
        fields: dict[str, Any] = dict(headers)
        await self.broker.publish(body, queue=destination, correlation_id=correlation_id,
                                  headers=fields, content_type="application/json",
                                  persist=True)



def delivery_of(message: Any) -> Delivery:
    """The codec's view of a RabbitMQ message (its own message id only: FastStream makes one
    up from the correlation id when there is none, which must not dedupe two messages)."""
    raw = message.raw_message
    headers = header_text(raw.headers)
    return Delivery(message.body, headers, raw.message_id or None, raw.correlation_id or None,
                    raw.reply_to or None, _attempt(headers, raw.redelivered))


def _attempt(headers: dict[str, Any], redelivered: bool | None) -> int:
    """Quorum queues count deliveries (``x-delivery-count``); classic queues only say whether
    this is a redelivery."""
    count = headers.get("x-delivery-count")
    if isinstance(count, int):
        return count + 1
    return 2 if redelivered else 1


__all__ = ["RabbitTransport", "delivery_of"]
