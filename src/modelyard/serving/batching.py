"""Dynamic batching: gather queued requests into one model call, then split the answer back.

A :class:`Batcher` owns one asyncio queue. ``submit`` enqueues a request's rows without waiting
and returns a future; one loop task closes a batch when it holds ``max_batch_size`` rows or the
oldest request has waited ``max_delay_s``, runs it in an executor thread (the event loop keeps
accepting requests meanwhile), and resolves every request's future with exactly its own rows.

While a batch runs, new requests queue up and form the next batch, so under load requests are
batched even with ``max_delay_s == 0`` and an idle server adds no delay ("natural batching");
such a batch still lets the event loop turn :data:`GATHER_TURNS` times first, so requests it
is already reading join it.

A batch whose run is expected to take less than ``policy.inline_s`` (from the measured cost of
earlier batches) runs on the event loop itself instead of the executor: handing a sub-millisecond
batch to a thread costs more than the batch (a wake-up through the loop's pipe, a future, and two
hand-overs of the GIL, each of which can wait out the interpreter's switch interval while the
other thread runs Python), and the loop has nothing better to do on a busy core than the work
its requests are waiting for. A batch that costs more goes to the executor, so the loop keeps
answering health checks and other models.

The batcher is generic: ``run(items)`` is a plain function that receives the queued payloads and
returns one result (or exception) per item, so it is tested without any model. A runner whose
model lives in another process passes ``run_async`` instead: a coroutine that sends the batch
away and awaits the answer on the event loop, with no executor thread held meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from modelyard.errors import QueueFullError, RequestTimeoutError, RunnerClosedError

#: turns of the event loop a batch that waits for no delay still gives the requests the loop
#: is already reading: they queue and join it instead of the next batch. W1 (bench/serve.py,
#: 32 connections): 16 -> 32 rows a call, 143 -> 111 us of server CPU a request; an idle server
#: pays three loop turns (microseconds) before a lone request runs.
GATHER_TURNS = 3
#: weight of the newest batch in the moving average of a row's cost.
_SMOOTHING = 0.2


@dataclass(frozen=True)
class BatchPolicy:
    """How one runner batches: rows per batch, wait for more rows, queue bound, request timeout."""

    max_batch_size: int = 32
    max_delay_s: float = 0.0
    max_queue: int = 1024
    timeout_s: float = 60.0
    #: run a batch on the event loop when earlier batches suggest it takes less than this many
    #: seconds (0: always in the executor).
    inline_s: float = 0.0


@dataclass(eq=False, slots=True)
class Item:
    """One queued request: its prepared payload, row count, options, future and arrival."""

    payload: Any
    n: int
    options: Any
    future: asyncio.Future[Any]
    enqueued: float


#: ``run(items) -> results``: one result or exception per item, in order (runs in a thread).
RunBatch = Callable[[Sequence[Item]], Sequence[Any]]
#: ``await run_async(items) -> results``: the same contract, awaited on the event loop.
RunBatchAsync = Callable[[Sequence[Item]], Awaitable[Sequence[Any]]]
#: ``observe(rows, queue_seconds_per_item)``: called once per batch, on the event loop.
Observe = Callable[[int, list[float]], None]


class Batcher:
    """Queue requests for one model and run them in batches on ``executor``."""

    def __init__(
        self,
        run: RunBatch,
        policy: BatchPolicy,
        executor: Executor | None = None,
        observe: Observe | None = None,
        *,
        run_async: RunBatchAsync | None = None,
    ) -> None:
        self._run = run
        self._run_async = run_async
        self.policy = policy
        self._executor = executor
        self._observe = observe
        self._queue: deque[Item] = deque()
        self.queued_rows = 0
        self._busy = False
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: the event loop the batching task runs on (set by :meth:`start`)
        self._event_loop: asyncio.AbstractEventLoop | None = None
        #: every unanswered request in arrival order, which is also deadline order (one
        #: timeout for all): one timer sweeps it (:meth:`_sweep`) instead of a timer a request
        self._pending: deque[Item] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        #: seconds a row has cost lately (moving average over batches; None: nothing ran yet),
        #: which decides whether the next batch runs inline.
        self.row_cost_s: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._wake, self._full, self._idle = asyncio.Event(), asyncio.Event(), asyncio.Event()
            self._idle.set()
            # kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11
            self._event_loop = loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._loop())

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called: new requests are refused."""
        return self._closed

    async def close(self, grace_s: float | None = None) -> None:
        """Refuse new requests, finish the queued ones (drain), then stop the loop."""
        self._closed = True
        if self._task is None:
            return
        assert self._idle is not None and self._wake is not None
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s or self.policy.timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        closed = RunnerClosedError("the model version was unloaded; retry")
        self.fail_queued(closed)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._pending:  # a batch the grace period cut short answers too
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(closed)

    # -- requests -------------------------------------------------------------------------------
    def submit(self, payload: Any, n: int, options: Any = None) -> asyncio.Future[Any]:
        """Enqueue ``n`` rows now (no await) and return the future of their result.

        Raises :class:`QueueFullError` when the queue already holds ``max_queue`` rows and
        :class:`RunnerClosedError` after ``close``. The future fails with
        :class:`RequestTimeoutError` if no result comes within ``policy.timeout_s``.
        """
        if self._closed:
            raise RunnerClosedError("the model version is being swapped out; retry")
        if self._task is None:
            self.start()
        if self.queued_rows and self.queued_rows + n > self.policy.max_queue:
            raise QueueFullError(
                f"the queue holds {self.queued_rows} rows (limit {self.policy.max_queue}); "
                "retry shortly"
            )
        loop = self._event_loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        item = Item(payload, n, options, future, time.perf_counter())
        self._pending.append(item)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick_s(), self._sweep)
        self._queue.append(item)
        self.queued_rows += n
        assert self._wake is not None and self._full is not None and self._idle is not None
        self._idle.clear()
        self._wake.set()
        if self.queued_rows >= self.policy.max_batch_size:
            self._full.set()
        return future

    # -- the loop -------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self._wake is not None and self._full is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._wait_for_rows()
            items = self._take()
            if not items:
                continue
            start = time.perf_counter()
            if self._observe is not None:
                self._observe(sum(i.n for i in items), [start - i.enqueued for i in items])
            self._busy = True
            try:
                if self._run_async is not None:
                    try:
                        results = await self._run_async(items)
                    except Exception as exc:  # a broken contract must not kill the loop
                        results = [exc] * len(items)
                elif self._fits_inline(items):
                    results = self._run_timed(items)
                else:
                    results = await loop.run_in_executor(self._executor, self._run_timed, items)
            finally:
                self._busy = False
            for item, result in zip(items, results, strict=True):
                item.payload = None  # answered: the sweep list must not keep inputs alive
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            pending = self._pending
            while pending and pending[0].future.done():
                pending.popleft()

    async def _wait_for_rows(self) -> None:
        """Wait until the batch is full or the oldest request reached ``max_delay_s``."""
        assert self._full is not None
        delay = self.policy.max_delay_s
        if delay <= 0:
            for _ in range(GATHER_TURNS):
                if self.queued_rows >= self.policy.max_batch_size or self._closed:
                    break
                await asyncio.sleep(0)  # one turn of the loop: parsed requests queue up
            return
        if self.queued_rows >= self.policy.max_batch_size or self._closed:
            return
        remaining = self._queue[0].enqueued + delay - time.perf_counter()
        if remaining <= 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), remaining)

    def _take(self) -> list[Item]:
        """Pop requests up to ``max_batch_size`` rows (a larger request goes alone)."""
        items: list[Item] = []
        rows = 0
        limit = self.policy.max_batch_size
        while self._queue and (not items or rows + self._queue[0].n <= limit):
            item = self._queue.popleft()
            self.queued_rows -= item.n
            if item.future.done():  # timed out while queued
                continue
            items.append(item)
            rows += item.n
        if self._full is not None and self.queued_rows < limit:
            self._full.clear()
        return items

    def _fits_inline(self, items: list[Item]) -> bool:
        cost = self.row_cost_s
        return cost is not None and cost * sum(i.n for i in items) < self.policy.inline_s

    def _run_timed(self, items: list[Item]) -> Sequence[Any]:
        """Run a batch and fold what a row cost into :attr:`row_cost_s` (wall time: a model
        that waits on a device or the GIL counts as slow, so it is not moved onto the loop)."""
        start = time.perf_counter()
        results = self._run_safely(items)
        per_row = (time.perf_counter() - start) / max(1, sum(i.n for i in items))
        last = self.row_cost_s
        self.row_cost_s = per_row if last is None else last + _SMOOTHING * (per_row - last)
        return results

    def _run_safely(self, items: list[Item]) -> Sequence[Any]:
        """Run a batch; if it fails, run each request alone so one bad request fails alone."""
        try:
            return self._run(items)
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        results: list[Any] = []
        for item in items:
            try:
                results.extend(self._run([item]))
            except Exception as exc:
                results.append(exc)
        return results

    def _tick_s(self) -> float:
        """How often the sweep runs: a request fails at most a quarter of its timeout late."""
        return min(1.0, self.policy.timeout_s / 4)

    def _sweep(self) -> None:
        """Fail the requests past their timeout (queued or in a running batch); re-arm."""
        self._sweeper = None
        pending = self._pending
        oldest = time.perf_counter() - self.policy.timeout_s
        while pending and (pending[0].future.done() or pending[0].enqueued <= oldest):
            _expire(pending.popleft().future, self.policy.timeout_s)
        if pending:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick_s(), self._sweep)

    def fail_queued(self, exc: Exception) -> None:
        """Fail every queued request with ``exc`` now (the model cannot answer them)."""
        while self._queue:
            item = self._queue.popleft()
            self.queued_rows -= item.n
            if not item.future.done():
                item.future.set_exception(exc)


def _expire(future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(
            RequestTimeoutError(f"no result within {timeout_s:g} s; the model is overloaded")
        )


def split_rows(counts: Sequence[int]) -> list[slice]:
    """Slices that cut a concatenated batch back into requests of ``counts`` rows each."""
    out, start = [], 0
    for n in counts:
        out.append(slice(start, start + n))
        start += n
    return out


__all__ = ["BatchPolicy", "Batcher", "Item", "RunBatchAsync", "split_rows"]
