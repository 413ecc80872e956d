"""The dynamic batcher, pure asyncio: splitting, batch size, delay, queue bound, timeouts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from modelyard.errors import QueueFullError, RequestTimeoutError, RunnerClosedError
from modelyard.serving.batching import Batcher, BatchPolicy, Item, split_rows

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A fake model: echoes each row doubled and records the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: Any = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate: threading.Event | None = None

    def __call__(self, items: Sequence[Item]) -> list[Any]:
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        rows = [r for item in items for r in item.payload]
        if self.fail_on is not None and self.fail_on in rows:
            raise ValueError(f"bad row {self.fail_on}")
        self.batches.append(len(rows))
        out = [2 * r for r in rows]
        return [out[s] for s in split_rows([i.n for i in items])]


def test_split_rows_cuts_back_exactly() -> None:
    assert split_rows([1, 3, 2]) == [slice(0, 1), slice(1, 4), slice(4, 6)]


async def test_concurrent_requests_share_one_batch_and_get_their_own_rows() -> None:
    run = Recorder()
    batcher = Batcher(run, BatchPolicy(max_batch_size=64, max_delay_s=0.05))
    futures = [batcher.submit([i, i + 100], 2) for i in range(10)]
    results = await asyncio.gather(*futures)
    assert results == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert run.batches == [20]
    await batcher.close()


async def test_a_batch_closes_at_max_batch_size_rows() -> None:
    run = Recorder()
    batcher = Batcher(run, BatchPolicy(max_batch_size=4, max_delay_s=1.0))
    start = time.perf_counter()
    results = await asyncio.gather(*(batcher.submit([i], 1) for i in range(8)))
    assert results == [[2 * i] for i in range(8)]
    assert run.batches == [4, 4]
    assert time.perf_counter() - start < 0.5  # full batches never wait for the delay
    await batcher.close()


async def test_a_larger_request_runs_alone_and_is_not_split() -> None:
    run = Recorder()
    batcher = Batcher(run, BatchPolicy(max_batch_size=4))
    assert await batcher.submit(list(range(10)), 10) == [2 * i for i in range(10)]
    assert run.batches == [10]
    await batcher.close()


async def test_a_lone_request_waits_at_most_max_delay() -> None:
    run = Recorder()
    batcher = Batcher(run, BatchPolicy(max_batch_size=32, max_delay_s=0.05))
    start = time.perf_counter()
    assert await batcher.submit([1], 1) == [2]
    waited = time.perf_counter() - start
    assert 0.04 <= waited < 0.5
    await batcher.close()


async def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher = Batcher(run, BatchPolicy(max_batch_size=32, max_delay_s=0.0))
    first = batcher.submit([0], 1)
    await asyncio.sleep(0.02)  # the first batch is now running (blocked on the gate)
    rest = [batcher.submit([i], 1) for i in range(1, 6)]
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert run.batches == [1, 5]
    await batcher.close()


async def test_requests_arriving_over_a_few_loop_turns_share_one_batch() -> None:
    """Without a delay the batch still waits for what the event loop is already handling:
    requests parsed in the next few turns of the loop join it instead of forming the next."""
    run = Recorder()
    batcher = Batcher(run, BatchPolicy(max_batch_size=32, max_delay_s=0.0))

    async def client(i: int) -> Any:
        for _ in range(i % 3):  # arrive over three turns of the loop
            await asyncio.sleep(0)
        return await batcher.submit([i], 1)

    assert await asyncio.gather(*(client(i) for i in range(6))) == [[2 * i] for i in range(6)]
    assert run.batches == [6]
    await batcher.close()


async def test_a_full_queue_refuses_at_once_with_queue_full() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher = Batcher(run, BatchPolicy(max_batch_size=1, max_queue=2))
    running = batcher.submit([0], 1)
    await asyncio.sleep(0.02)
    queued = [batcher.submit([1], 1), batcher.submit([2], 1)]
    with pytest.raises(QueueFullError) as info:
        batcher.submit([3], 1)
    assert info.value.status_code == 503 and info.value.retry_after >= 1
    run.gate.set()
    assert await asyncio.gather(running, *queued) == [[0], [2], [4]]
    await batcher.close()


async def test_a_failing_request_fails_alone() -> None:
    batcher = Batcher(Recorder(fail_on=13), BatchPolicy(max_batch_size=16, max_delay_s=0.05))
    futures = [batcher.submit([i], 1) for i in (1, 13, 2)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] == [2] and results[2] == [4]
    assert isinstance(results[1], ValueError)
    await batcher.close()


async def test_a_request_never_hangs_past_the_timeout() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher = Batcher(run, BatchPolicy(max_batch_size=1, timeout_s=0.1))
    with pytest.raises(RequestTimeoutError):
        await batcher.submit([1], 1)
    run.gate.set()
    await batcher.close()


async def test_close_drains_queued_requests_then_refuses_new_ones() -> None:
    run = Recorder(delay_s=0.01)
    batcher = Batcher(run, BatchPolicy(max_batch_size=1))
    futures = [batcher.submit([i], 1) for i in range(5)]
    await batcher.close()
    assert [f.result() for f in futures] == [[2 * i] for i in range(5)]
    with pytest.raises(RunnerClosedError):
        batcher.submit([9], 1)


async def test_observe_sees_batch_rows_and_queue_times() -> None:
    seen: list[tuple[int, list[float]]] = []
    batcher = Batcher(Recorder(), BatchPolicy(max_batch_size=8, max_delay_s=0.02),
                      observe=lambda rows, q: seen.append((rows, q)))
    await asyncio.gather(*(batcher.submit([i], 1) for i in range(3)))
    assert seen and seen[0][0] == 3 and len(seen[0][1]) == 3
    assert all(q >= 0 for q in seen[0][1])
    await batcher.close()


async def test_a_request_in_a_running_batch_times_out_and_later_ones_still_answer() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher = Batcher(run, BatchPolicy(max_batch_size=1, timeout_s=0.2))
    stuck = batcher.submit([1], 1)
    with pytest.raises(RequestTimeoutError):
        await stuck
    run.gate.set()
    assert await batcher.submit([2], 1) == [4]
    await batcher.close()


async def test_close_past_its_grace_fails_the_batch_it_cut_short() -> None:
    run = Recorder()
    run.gate = threading.Event()
    batcher = Batcher(run, BatchPolicy(max_batch_size=1, timeout_s=30))
    stuck = batcher.submit([1], 1)
    await asyncio.sleep(0.05)
    await batcher.close(grace_s=0.1)
    with pytest.raises(RunnerClosedError):
        await asyncio.wait_for(stuck, 1)
    run.gate.set()


async def test_a_cheap_model_runs_on_the_event_loop_and_a_slow_one_in_the_pool() -> None:
    threads: list[int] = []

    def run(items: Sequence[Item]) -> list[Any]:
        threads.append(threading.get_ident())
        if items[0].payload == "slow":
            time.sleep(0.01)  # 10 ms a row: past the 1 ms budget
        return [item.payload for item in items]

    batcher = Batcher(run, BatchPolicy(max_batch_size=8, inline_s=0.001))
    loop_thread = threading.get_ident()
    # the first batch's cost is unknown: it runs in the pool and is measured
    assert await batcher.submit("fast", 1) == "fast"
    assert threads[-1] != loop_thread and batcher.row_cost_s is not None
    assert await batcher.submit("fast", 1) == "fast"
    assert threads[-1] == loop_thread  # measured cheap: no hand-over to a thread
    # a batch that turns slow is measured too, and the next goes back to the pool
    assert await batcher.submit("slow", 1) == "slow"
    assert threads[-1] == loop_thread and batcher.row_cost_s > 0.001
    assert await batcher.submit("slow", 1) == "slow"
    assert threads[-1] != loop_thread
    await batcher.close()


async def test_no_budget_keeps_every_batch_in_the_pool() -> None:
    threads: list[int] = []

    def run(items: Sequence[Item]) -> list[Any]:
        threads.append(threading.get_ident())
        return [item.payload for item in items]

    batcher = Batcher(run, BatchPolicy(max_batch_size=8))
    for _ in range(3):
        await batcher.submit(1, 1)
    assert threading.get_ident() not in threads
    await batcher.close()
