"""``modelyard consume amqp://...`` against the RabbitMQ on this machine: answers with their
correlation ids, RPC replies, poison messages in the dead-letter queue, a kill -9 mid-stream
that loses nothing, and two consumers sharing one queue."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

pytestmark = pytest.mark.integration

URL = "amqp://guest:guest@127.0.0.1:5672/"


class Rabbit:
    """Publish to and read from queues of the test's own (deleted at the end)."""

    def __init__(self, consumers: Any) -> None:
        self.names = {k: consumers.unique(f"consume-{k}") for k in ("in", "out", "dlq", "rpc")}
        asyncio.run(self._declare())

    async def _declare(self) -> None:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            for name in self.names.values():
                await channel.declare_queue(name, durable=True)

    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Each ``{"body": bytes|obj, "headers", "message_id", "correlation_id", "reply_to"}``."""
        asyncio.run(self._publish(messages))

    async def _publish(self, messages: list[dict[str, Any]]) -> None:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            for m in messages:
                body = m["body"] if isinstance(m["body"], bytes) else json.dumps(m["body"]).encode()
                await channel.default_exchange.publish(
                    aio_pika.Message(body, headers=m.get("headers", {}),
                                     message_id=m.get("message_id"),
                                     correlation_id=m.get("correlation_id"),
                                     reply_to=m.get("reply_to"),
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=self.names["in"])

    def take(self, queue: str, count: int, timeout_s: float = 120) -> list[dict[str, Any]]:
        """Read ``count`` messages from ``queue`` (fail after ``timeout_s``)."""
        return asyncio.run(self._take(self.names[queue], count, timeout_s))

    async def _take(self, name: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
        connection = await aio_pika.connect(URL)
        got: list[dict[str, Any]] = []
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, durable=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while len(got) < count:
                message = await queue.get(fail=False)
                if message is None:
                    assert loop.time() < deadline, f"{len(got)} of {count} messages in {name}"
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                got.append({"body": json.loads(message.body), "headers": message.headers,
                            "correlation_id": message.correlation_id})
        return got

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue``."""
        return asyncio.run(self._depth(self.names[queue]))

    async def _depth(self, name: str) -> int:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, durable=True)
            return int(queue.declaration_result.message_count or 0)

    def delete(self) -> None:
        """Delete the test's queues."""
        asyncio.run(self._delete())

    async def _delete(self) -> None:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            for name in self.names.values():
                await channel.queue_delete(name)


@pytest.fixture()
def rabbit(rabbit_url: str, consumers: Any) -> Iterator[Rabbit]:
    queues = Rabbit(consumers)
    try:
        yield queues
    finally:
        consumers.close()
        queues.delete()


def start(consumers: Any, rabbit: Rabbit, *args: str) -> Any:
    q = rabbit.names
    return consumers.start(URL, q["in"], "--output", q["out"], "--dead-letter", q["dlq"], *args)


def good(consumers: Any, i: int, model: str = "probe") -> dict[str, Any]:
    return {"body": {"instances": [consumers.row(i)]}, "headers": {"model": model},
            "message_id": f"m-{i}", "correlation_id": f"c-{i}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_answers_rpc_oip_and_dead_letters(consumers: Any, rabbit: Rabbit) -> None:
    port = free_port()
    process = start(consumers, rabbit, "--metrics-port", str(port))
    row = consumers.row
    rabbit.publish([
        good(consumers, 1),
        {"body": b"{not json", "message_id": "bad-json", "correlation_id": "c-bad-json"},
        {"body": {"instances": [row(2)]}, "headers": {"model": "nope"}, "message_id": "unknown",
         "correlation_id": "c-unknown"},
        {"body": {"instances": [[1.0]]}, "headers": {"model": "probe"}, "message_id": "short",
         "correlation_id": "c-short"},
        # the model named in the body, a version; an RPC reply-to
        {"body": {"model": "probe", "version": 1, "instances": [row(3)], "scores": False},
         "message_id": "m-3", "correlation_id": "c-3", "reply_to": rabbit.names["rpc"]},
        # OIP v2 tensors, the alias named in a header
        {"body": {"id": "oip-4", "inputs": [{"name": "input", "shape": [1, 3],
                                             "datatype": "FP64", "data": row(4)}]},
         "headers": {"model": "probe", "alias": "production"}, "message_id": "m-4",
         "correlation_id": "c-4"},
        good(consumers, 5),
        good(consumers, 5),  # the same message id again: answered once
        good(consumers, 6, "slow"),
    ])
    answers = {a["correlation_id"]: a for a in rabbit.take("out", 4)}
    assert set(answers) == {"c-1", "c-4", "c-5", "c-6"}
    assert answers["c-1"]["body"]["predictions"] == [2.0]
    assert answers["c-1"]["headers"]["model-version"] == "1"
    assert answers["c-6"]["body"]["model"] == "slow"
    assert answers["c-4"]["body"]["model_name"] == "probe"
    assert answers["c-4"]["body"]["id"] == "oip-4"
    assert answers["c-4"]["body"]["outputs"][0]["data"] == [8.0]
    (rpc,) = rabbit.take("rpc", 1)
    assert rpc["correlation_id"] == "c-3" and rpc["body"]["predictions"] == [6.0]

    dead = {d["correlation_id"]: d for d in rabbit.take("dlq", 3)}
    assert dead["c-bad-json"]["body"]["error"] == "BadJSONError"
    assert dead["c-bad-json"]["body"]["body"] == "{not json"
    assert dead["c-unknown"]["body"]["error"] == "NotFoundError"
    assert dead["c-unknown"]["body"]["status"] == 404
    assert dead["c-short"]["body"]["error"] == "InputError"
    assert dead["c-short"]["body"]["message_id"] == "short"
    # the same metrics as the server's, under protocol "queue"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as scrape:
        metrics = scrape.read().decode()
    assert 'protocol="queue"' in metrics and 'model="probe"' in metrics
    assert 'status="404"' in metrics and 'status="422"' in metrics
    # nothing else came: the repeat of m-5 was not answered a second time
    assert consumers.stop(process) == 0
    assert rabbit.depth("out") == 0 and rabbit.depth("dlq") == 0 and rabbit.depth("in") == 0
    assert "answered 5, dead_lettered 3, requeued 0, duplicates 1" in consumers.log_of(process)


def test_a_consumer_killed_mid_stream_loses_no_message(consumers: Any, rabbit: Rabbit) -> None:
    first = start(consumers, rabbit, "--prefetch", "16")
    n = 300
    rabbit.publish([good(consumers, i, "slow") for i in range(n)])
    consumers.wait_until(lambda: rabbit.depth("out") >= 30, 120, "the first answers")
    os.killpg(first.pid, signal.SIGKILL)  # mid-stream: some taken, not yet acknowledged
    first.wait()
    start(consumers, rabbit, "--prefetch", "16")
    # at least once: what the killed consumer held unacknowledged is answered again, so read
    # until every id has come (take fails if one never does)
    seen: Counter[str] = Counter()
    while len(seen) < n:
        seen.update(a["correlation_id"] for a in rabbit.take("out", n - len(seen)))
    assert set(seen) == {f"c-{i}" for i in range(n)}  # every message answered, none lost
    assert sum(seen.values()) - n <= 16  # twice at most what its prefetch let it hold


def test_two_consumers_share_one_queue(consumers: Any, rabbit: Rabbit) -> None:
    a = start(consumers, rabbit, "--prefetch", "4")
    b = start(consumers, rabbit, "--prefetch", "4")
    n = 200
    rabbit.publish([good(consumers, i, "slow") for i in range(n)])
    seen = Counter(x["correlation_id"] for x in rabbit.take("out", n))
    assert consumers.stop(a) == 0 and consumers.stop(b) == 0
    assert set(seen) == {f"c-{i}" for i in range(n)} and max(seen.values()) == 1
    assert rabbit.depth("out") == 0  # nobody answered anything twice
    done = [_answered(consumers.log_of(p)) for p in (a, b)]
    assert sum(done) == n and min(done) > 0  # both did a share of the work


def _answered(log: str) -> int:
    tail = log.rsplit("stopped: answered ", 1)[1]
    return int(tail.split(",", 1)[0])
