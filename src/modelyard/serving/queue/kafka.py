"""Kafka (``kafka://host:port[,host:port...]``) through FastStream's confluent KafkaBroker
(librdkafka).

The consumer joins the consumer group ``--group`` on the topic ``--queue`` (reading from the
earliest offset when the group is new) and polls batches of up to ``--prefetch`` records; the
records of a batch are answered concurrently -- batched together by the model's batcher -- and
the offsets are committed only after every answer of the batch is delivered (each publish
waits for the broker's acknowledgement). Kafka has no per-message acknowledgement: when a
record must be given back (503), the whole batch is rewound and read again, and the records
already answered are then dropped as repeats by the dedupe window (by message id). A consumer
that dies leaves its batch uncommitted: the partition's next owner in the group reads it again.

Headers: ``model`` / ``version`` / ``alias`` / ``protocol`` as for every broker, and
``message_id``, ``correlation_id`` and ``reply_to`` (a topic) as FastStream writes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream import AckPolicy
from faststream.confluent import KafkaBroker, Topic
from faststream.confluent.annotations import KafkaMessage

from modelyard.serving.queue.envelope import Delivery, Settle
from modelyard.serving.queue.transport import (
    BrokerTransport,
    Endpoint,
    Handler,
    broker_options,
    header_text,
    raw_body,
)

log = logging.getLogger(__name__)


class KafkaTransport(BrokerTransport):
    """Consume one topic in a consumer group, a batch at a time; publish to topics."""

    def __init__(self, endpoint: Endpoint) -> None:
        servers = endpoint.url.split("://", 1)[1].strip("/")
        super().__init__(endpoint, KafkaBroker(servers, **broker_options()))

    async def start(self, handle: Handler, declare: tuple[str, ...]) -> None:
        """Join the group and start polling (the topic must exist, or the cluster create
        topics on first use)."""
        e = self.endpoint

        async def on_batch(message: KafkaMessage) -> None:
            raw = message.raw_message
            records = raw if isinstance(raw, tuple | list) else (raw,)
            outcomes = await asyncio.gather(*(handle(delivery_of(r)) for r in records))
            if all(o is Settle.ACK for o in outcomes):
                await message.ack()  # commits the batch's offsets
            else:
                await message.nack()  # rewinds to the batch's first record

        # declare=False: FastStream would create the topic through the admin API first, which
        # waits out a timeout where that API is missing (librdkafka's mock cluster); reading a
        # topic still creates it where the cluster allows automatic creation
        self.broker.subscriber(Topic(e.queue, declare=False), group_id=e.group,
                               auto_offset_reset="earliest", batch=True, max_records=e.prefetch,
                               ack_policy=AckPolicy.MANUAL, no_reply=True,
                               on_assign=_assigned, decoder=raw_body)(on_batch)
        await self.broker.start()

    async def publish(self, destination: str, body: bytes, correlation_id: str | None,
                      headers: dict[str, str]) -> None:
        """Produce ``body`` to the topic ``destination``; returns once the broker has it."""
        await self.broker.publish(body, topic=destination, correlation_id=correlation_id,
                                  headers=headers)



def _assigned(consumer: Any, partitions: Any) -> None:
    """Say which partitions this consumer reads now (after each rebalance of the group)."""
    log.info("partitions assigned: %s", ", ".join(f"{p.topic}[{p.partition}]"
                                                  for p in partitions) or "none")


def delivery_of(record: Any) -> Delivery:
    """The codec's view of a Kafka record."""
    headers = header_text(record.headers())
    return Delivery(record.value() or b"", headers, headers.get("message_id") or None,
                    headers.get("correlation_id") or None, headers.get("reply_to") or None)


__all__ = ["KafkaTransport", "delivery_of"]
