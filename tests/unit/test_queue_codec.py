"""The queue codec over a real data plane, with a recording publisher in place of a broker:
answers published before the acknowledgement, dead letters with the error, a publish that fails
gives the message back, and the metrics count the protocol ``queue``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.errors import QueueFullError
from modelyard.registry import Registry
from modelyard.serving.catalog import Catalog
from modelyard.serving.dataplane import DataPlane
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.options import ServeOptions
from modelyard.serving.queue.codec import QueueCodec
from modelyard.serving.queue.envelope import Delivery, Settle
from modelyard.testing import register_probe

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("queue") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_probe(reg, "probe", n_features=2)
        yield reg


@pytest.fixture()
async def plane(registry: Registry) -> AsyncIterator[DataPlane]:
    options = ServeOptions(poll_interval_s=3600, prediction_log="off", preload=False)
    plane = DataPlane(Catalog(registry, options, ServerMetrics()))
    await plane.start()
    yield plane
    await plane.stop()


class Published:
    """A publisher that records what it sends, or fails when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, str | None, dict[str, str]]] = []
        self.fail = False

    async def __call__(self, where: str, body: bytes, correlation_id: str | None,
                       headers: dict[str, str]) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((where, json.loads(body), correlation_id, headers))


def message(body: object, message_id: str = "m1", **more: Any) -> Delivery:
    return Delivery(json.dumps(body).encode(), {"model": "probe"}, message_id, "c1", **more)


async def test_an_answer_is_published_then_acknowledged(plane: DataPlane) -> None:
    sent = Published()
    codec = QueueCodec(plane, sent, output="out", dead_letter="dlq")
    assert await codec.handle(message({"instances": [[2, 0]]})) is Settle.ACK
    ((where, body, correlation_id, headers),) = sent.sent
    assert (where, correlation_id) == ("out", "c1")
    assert body["predictions"] == [4.0] and body["request_id"] == "m1"
    assert headers["model-version"] == "1" and headers["message-id"] == "m1"
    text = plane.metrics.render().decode()
    assert 'protocol="queue"' in text and 'status="200"' in text


async def test_a_refused_message_is_dead_lettered_and_its_rpc_caller_told(
        plane: DataPlane) -> None:
    sent = Published()
    codec = QueueCodec(plane, sent, output=None, dead_letter="dlq")
    bad = message({"instances": [[1]]}, reply_to="rpc")
    assert await codec.handle(bad) is Settle.ACK
    (dead, told) = sent.sent
    assert dead[0] == "dlq" and dead[1]["error"] == "InputError" and dead[1]["status"] == 422
    assert told[0] == "rpc" and told[1]["status"] == 422
    # no reply-to and no output: refused before any model runs
    assert await codec.handle(message({"instances": [[1, 0]]}, "m2")) is Settle.ACK
    assert sent.sent[-1][1]["detail"][0]["loc"] == ["message", "reply_to"]
    assert codec.counts["dead_lettered"] == 2


async def test_a_failed_publish_or_a_busy_server_gives_the_message_back(
        plane: DataPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = Published()
    codec = QueueCodec(plane, sent, output="out", dead_letter="dlq")
    sent.fail = True
    assert await codec.handle(message({"instances": [[1, 0]]})) is Settle.REQUEUE
    sent.fail = False  # the redelivery is answered: the id was not remembered
    assert await codec.handle(message({"instances": [[1, 0]]})) is Settle.ACK
    assert await codec.handle(message({"instances": [[1, 0]]})) is Settle.ACK  # a repeat
    assert len(sent.sent) == 1 and codec.counts["duplicates"] == 1

    def full(*args: Any) -> Any:
        raise QueueFullError("the model's queue is full")

    monkeypatch.setattr(plane, "infer", full)
    assert await codec.handle(message({"instances": [[1, 0]]}, "m9")) is Settle.REQUEUE
    last = message({"instances": [[1, 0]]}, "m10", attempt=5)  # attempts spent
    assert await codec.handle(last) is Settle.ACK
    assert sent.sent[-1][0] == "dlq" and sent.sent[-1][1]["error"] == "QueueFullError"
