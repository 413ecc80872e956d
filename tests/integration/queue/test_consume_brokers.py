"""``modelyard consume`` over Redis Streams, NATS JetStream and Kafka: the same scenarios as the
RabbitMQ tests -- answers with their correlation ids, poison messages in the dead-letter queue
while the good ones behind them are answered, a kill -9 mid-stream that loses no message, and
two consumers of one group that answer each message once.

Each broker has a small client here that publishes requests and reads what comes out, with
the broker's own library (FastStream's wire format where the broker has no headers of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import pytest

pytestmark = pytest.mark.integration


class Client(Protocol):
    url: str
    names: dict[str, str]
    ready: str

    def publish(self, messages: list[dict[str, Any]]) -> None: ...
    def read(self, queue: str) -> list[dict[str, Any]]: ...
    def delete(self) -> None: ...


# -- Redis Streams ------------------------------------------------------------------------------
class RedisClient:
    """Streams of the test's own, written and read in FastStream's stream format."""

    ready = "consuming "

    def __init__(self, url: str, consumers: Any) -> None:
        self.url = url
        self.names = {k: consumers.unique(f"consume-{k}") for k in ("in", "out", "dlq")}

    def publish(self, messages: list[dict[str, Any]]) -> None:
        from faststream.redis import RedisBroker

        async def send() -> None:
            broker = RedisBroker(self.url, logger=None)
            async with broker:
                for m in messages:
                    await broker.publish(body_of(m), stream=self.names["in"],
                                         correlation_id=m["correlation_id"],
                                         headers={**m.get("headers", {}),
                                                  "message_id": m["message_id"]})

        asyncio.run(send())

    def read(self, queue: str) -> list[dict[str, Any]]:
        import redis
        from faststream.redis.parser.binary import BinaryMessageFormatV1

        with redis.Redis.from_url(self.url) as r:
            entries = r.xrange(self.names[queue])
        out = []
        for _, fields in entries:
            body, headers = BinaryMessageFormatV1.parse(fields[b"__data__"])
            out.append({"body": json.loads(body), "headers": headers,
                        "correlation_id": headers.get("correlation_id")})
        return out

    def delete(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as r:
            r.delete(*self.names.values())


def body_of(message: dict[str, Any]) -> bytes:
    body = message["body"]
    return body if isinstance(body, bytes) else json.dumps(body).encode()


# -- NATS JetStream -----------------------------------------------------------------------------
class NatsClient:
    """Subjects of the test's own, each kept in a stream of its own (deleted at the end)."""

    ready = "consuming "

    def __init__(self, url: str, consumers: Any) -> None:
        self.url = url
        self.names = {k: consumers.unique(f"consume-{k}") for k in ("in", "out", "dlq")}
        self._run(self._declare)

    def _run(self, action: Any, *args: Any) -> Any:
        import nats

        async def go() -> Any:
            connection = await nats.connect(self.url)
            try:
                return await action(connection.jetstream(), *args)
            finally:
                await connection.close()

        return asyncio.run(go())

    async def _declare(self, js: Any) -> None:
        for name in self.names.values():
            await js.add_stream(name=name, subjects=[name])

    def publish(self, messages: list[dict[str, Any]]) -> None:
        async def send(js: Any) -> None:
            for m in messages:
                headers = {**m.get("headers", {}), "Nats-Msg-Id": m["message_id"],
                           "correlation_id": m["correlation_id"]}
                await js.publish(self.names["in"], body_of(m), headers=headers)

        self._run(send)

    def read(self, queue: str) -> list[dict[str, Any]]:
        async def everything(js: Any) -> list[dict[str, Any]]:
            name = self.names[queue]
            info = await js.stream_info(name)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                if not info.state.messages:
                    break
                m = await js.get_msg(name, seq)
                headers = dict(m.headers or {})
                out.append({"body": json.loads(m.data), "headers": headers,
                            "correlation_id": headers.get("correlation_id")})
            return out

        result: list[dict[str, Any]] = self._run(everything)
        return result

    def delete(self) -> None:
        async def drop(js: Any) -> None:
            for name in self.names.values():
                await js.delete_stream(name)

        self._run(drop)


# -- Kafka, on librdkafka's mock cluster -----------------------------------------------------------
class KafkaClient:
    """Topics on a mock Kafka cluster that lives as long as this client: librdkafka's own
    (``test.mock.num.brokers``), a real Kafka protocol endpoint on loopback."""

    #: a consumer reads once the group has given it partitions.
    ready = "partitions assigned: consume-in"

    def __init__(self, consumers: Any) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"test.mock.num.brokers": 1, "log_level": 2})
        (found,) = self.producer.list_topics(timeout=10).brokers.values()
        self.bootstrap = f"{found.host}:{found.port}"
        self.url = f"kafka://{self.bootstrap}"
        self.names = {k: consumers.unique(f"consume-{k}") for k in ("in", "out", "dlq")}
        # the mock cluster makes a topic, of 4 partitions, when it is first named
        self.partitions = {n: len(self.producer.list_topics(n, timeout=10).topics[n].partitions)
                           for n in self.names.values()}
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self.readers: dict[str, Any] = {}

    def publish(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            headers = {**m.get("headers", {}), "message_id": m["message_id"],
                       "correlation_id": m["correlation_id"]}
            self.producer.produce(self.names["in"], body_of(m), key=m["message_id"],
                                  headers=list(headers.items()))
        assert self.producer.flush(30) == 0

    def read(self, queue: str) -> list[dict[str, Any]]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        name = self.names[queue]
        if name not in self.readers:
            reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"r-{name}",
                               "enable.auto.commit": False, "log_level": 2})
            reader.assign([TopicPartition(name, p, OFFSET_BEGINNING)
                           for p in range(self.partitions[name])])
            self.readers[name] = reader
        seen = self.seen.setdefault(name, [])
        while (record := self.readers[name].poll(0.2)) is not None:
            if record.error():
                continue
            headers = {k: v.decode() for k, v in record.headers() or []}
            seen.append({"body": json.loads(record.value()), "headers": headers,
                         "correlation_id": headers.get("correlation_id")})
        return list(seen)

    def delete(self) -> None:
        for reader in self.readers.values():
            reader.close()


@pytest.fixture(params=["redis", "nats", "kafka"])
def broker(request: pytest.FixtureRequest, consumers: Any) -> Iterator[Client]:
    if request.param == "kafka":  # no service: the cluster is librdkafka's, in this process
        client: Client = KafkaClient(consumers)
    else:
        url = request.getfixturevalue(f"{request.param}_url")
        client = CLIENTS[request.param](url, consumers)
    try:
        yield client
    finally:
        consumers.close()
        client.delete()


CLIENTS: dict[str, Any] = {"redis": RedisClient, "nats": NatsClient}


# -- the scenarios ------------------------------------------------------------------------------
def start(consumers: Any, broker: Client, *args: str) -> Any:
    q = broker.names
    return consumers.start(broker.url, q["in"], "--output", q["out"], "--dead-letter", q["dlq"],
                           "--group", f"g-{q['in']}", *args, ready=broker.ready)


def good(consumers: Any, i: int, model: str = "probe") -> dict[str, Any]:
    return {"body": {"instances": [consumers.row(i)]}, "headers": {"model": model},
            "message_id": f"m-{i}", "correlation_id": f"c-{i}"}


def wait_for(consumers: Any, broker: Client, queue: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = broker.read(queue)
        return len(found) >= count

    consumers.wait_until(enough, 120, f"{count} messages in {queue}")
    return found


def test_answers_and_dead_letters(consumers: Any, broker: Client) -> None:
    process = start(consumers, broker)
    broker.publish([
        good(consumers, 1),
        {"body": b"{not json", "message_id": "bad-json", "correlation_id": "c-bad-json"},
        {"body": {"instances": [consumers.row(2)]}, "headers": {"model": "nope"},
         "message_id": "unknown", "correlation_id": "c-unknown"},
        {"body": {"instances": [[1.0]]}, "headers": {"model": "probe"}, "message_id": "short",
         "correlation_id": "c-short"},
        good(consumers, 3),
        good(consumers, 3),  # a repeat: answered once
        good(consumers, 4, "slow"),
    ])
    answers = {a["correlation_id"]: a["body"] for a in wait_for(consumers, broker, "out", 3)}
    assert answers["c-1"]["predictions"] == [2.0] and answers["c-4"]["model"] == "slow"
    dead = {d["correlation_id"]: d["body"] for d in wait_for(consumers, broker, "dlq", 3)}
    assert {k: v["error"] for k, v in dead.items()} == {
        "c-bad-json": "BadJSONError", "c-unknown": "NotFoundError", "c-short": "InputError"}
    assert consumers.stop(process) == 0
    assert len(broker.read("out")) == 3  # the repeat was not answered again
    # (JetStream drops a repeated Nats-Msg-Id itself; elsewhere the consumer's window does)
    assert "answered 3, dead_lettered 3, requeued 0" in consumers.log_of(process)


def test_a_consumer_killed_mid_stream_loses_no_message(consumers: Any, broker: Client) -> None:
    first = start(consumers, broker, "--prefetch", "16", "--redeliver-after", "2s")
    n = 200
    broker.publish([good(consumers, i, "slow") for i in range(n)])
    wait_for(consumers, broker, "out", 20)
    os.killpg(first.pid, signal.SIGKILL)  # mid-stream: some taken, not acknowledged
    first.wait()
    start(consumers, broker, "--prefetch", "16", "--redeliver-after", "2s")
    everything = {f"c-{i}" for i in range(n)}
    consumers.wait_until(lambda: {a["correlation_id"] for a in broker.read("out")} >= everything,
                         180, "every message answered")


def test_two_consumers_of_a_group_answer_each_message_once(consumers: Any,
                                                           broker: Client) -> None:
    a = start(consumers, broker, "--prefetch", "4")
    b = start(consumers, broker, "--prefetch", "4")
    # Kafka: the first consumer has given up half its partitions to the second
    consumers.wait_until(lambda: consumers.log_of(a).count(broker.ready) >= 2
                         or broker.ready == "consuming ", 120, "the group's rebalance")
    n = 120
    broker.publish([good(consumers, i, "slow") for i in range(n)])
    wait_for(consumers, broker, "out", n)
    assert consumers.stop(a) == 0 and consumers.stop(b) == 0
    seen = Counter(x["correlation_id"] for x in broker.read("out"))
    assert set(seen) == {f"c-{i}" for i in range(n)} and max(seen.values()) == 1
    done = [_answered(consumers.log_of(p)) for p in (a, b)]
    assert sum(done) == n and min(done) > 0  # both did a share


def _answered(log: str) -> int:
    return int(log.rsplit("stopped: answered ", 1)[1].split(",", 1)[0])
