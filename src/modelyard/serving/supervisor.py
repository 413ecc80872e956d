"""Worker supervision: a runner whose model lives in a device worker, restarted when it dies.

A :class:`ProcessRunner` is a :class:`~modelyard.serving.runner.Runner` (same validation, queue and
batching) whose batches go to a :class:`~modelyard.serving.worker.Worker` over its pipe, awaited
on the event loop: no executor thread waits on the device.

When the worker exits (a CUDA fault, the OOM killer, ``kill -9``):

1. the batch in flight fails at once with 503 (the worker's reader sees end of file);
2. every queued request fails at once with 503 and ``Retry-After``;
3. requests that arrive while it restarts get the same 503 -- never a hang;
4. it restarts with backoff (:data:`RESTART_DELAYS_S`), each attempt counted in
   ``modelyard_worker_restarts_total{model,version}``; ``/readyz`` and the OIP model-ready route
   answer 503 until it is back;
5. after ``max_restarts`` failed attempts in a row it gives up and ``on_give_up`` runs (the
   catalog evicts the version, so a later request or alias move loads it afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from modelyard.errors import WorkerDiedError, WorkerUnavailableError
from modelyard.predictor import Prediction, Predictor
from modelyard.schema import Signature
from modelyard.serving.batching import Batcher, BatchPolicy, Item, Observe
from modelyard.serving.footprint import rss_bytes
from modelyard.serving.runner import Runner
from modelyard.serving.worker import Worker

log = logging.getLogger(__name__)

#: seconds before restart attempt 1, 2, ...: at once first (most crashes are one-offs), then
#: backing off so a worker that cannot load does not spin; the last delay repeats.
RESTART_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)

#: ``spawn()`` -> a started worker (blocking; raises the load error). Runs on a load thread.
Spawn = Callable[[], Worker]


def restart_delay(attempt: int) -> float:
    """Seconds to wait before restart ``attempt`` (0-based)."""
    return RESTART_DELAYS_S[min(attempt, len(RESTART_DELAYS_S) - 1)]


def metadata_predictor(record: Any, adapter: Any, device: str) -> Predictor:
    """The server-side :class:`Predictor` of a worker-hosted version: signature and names only.

    Its ``model`` is ``None``: the model is loaded in the worker, and the server only needs the
    signature (validation, OIP metadata) and the flavor.
    """
    return Predictor(
        name=record.model, version=int(record.version), flavor=record.flavor, model=None,
        adapter=adapter, signature=Signature.from_dict(record.signature), device=device,
        task=record.meta.get("task"),
        metadata={"metrics": record.metrics, "digest": record.artifact_digest},
    )


class ProcessRunner(Runner):
    """A runner that predicts in a supervised device worker; ``state`` says whether it can."""

    def __init__(
        self,
        predictor: Predictor,
        policy: BatchPolicy,
        worker: Worker,
        *,
        spawn: Spawn,
        pool: Executor | None = None,
        observe: Observe | None = None,
        memory: int = 0,
        max_restarts: int = 5,
        on_give_up: Callable[[ProcessRunner], None] | None = None,
    ) -> None:
        super().__init__(predictor, policy, observe=observe, memory=memory)
        self.batcher = Batcher(self._run, policy, None, observe, run_async=self._run_remote)
        self.worker = worker
        #: ``up``, ``restarting``, ``failed`` (gave up) or ``closed``.
        self.state = "up"
        #: why the worker last went down (for logs and 503 messages).
        self.last_error = ""
        self.max_restarts = max_restarts
        self._spawn = spawn
        self._pool = pool
        self._on_give_up = on_give_up
        self._stop = asyncio.Event()
        self._restarting: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """Whether the worker is up and answering."""
        return self.state == "up"

    @property
    def memory(self) -> int:
        """Bytes this version costs: its worker process's resident memory, read now (all of it
        comes back when the version is unloaded); while the worker is down, what was given."""
        # the base initialiser sets memory before the worker and state exist
        if getattr(self, "state", "") != "up" or self.worker.exited or self.worker.pid is None:
            return self._memory
        return rss_bytes(self.worker.pid) or self._memory

    @memory.setter
    def memory(self, value: int) -> None:
        self._memory = value

    def start(self) -> None:
        """Start batching and reading the worker's answers on the running loop."""
        super().start()
        self.worker.attach(asyncio.get_running_loop(), self._exited)
        self._report_up(True)

    def submit(self, batch: Any, n: int, scores: bool = False) -> Any:
        """Queue a prepared batch, or 503 (:class:`WorkerUnavailableError`) while restarting."""
        if self.state != "up" and not self.batcher.closed:  # closed: the caller reloads instead
            raise self._unavailable()
        return self.batcher.submit(batch, n, scores)

    def warm(self) -> None:
        """Nothing to do: the worker warms the model before it reports ready."""

    async def close(self) -> None:
        """Stop taking requests, answer the queued ones, then stop the worker process."""
        self._stop.set()  # also cuts a restart backoff short
        await self.batcher.close()
        self.flush_charges()
        if self._restarting is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._restarting
        self.state = "closed"
        self._report_up(False)
        await asyncio.to_thread(self.worker.stop)

    # -- batches --------------------------------------------------------------------------------
    async def _run_remote(self, items: Sequence[Item]) -> Sequence[Any]:
        """Predict queued items in the worker and charge what the worker says they took."""
        account, worker = self.account, self.worker
        if account is None:
            return await self._run_remote_items(items)
        cpu_s, gpu_s = worker.cpu_s, worker.gpu_s
        try:
            return await self._run_remote_items(items)
        finally:  # batches of one runner run one at a time: the difference is this batch's
            if worker.cpu_s > cpu_s:
                account(worker.cpu_s - cpu_s, worker.gpu_s - gpu_s)

    async def _run_remote_items(self, items: Sequence[Item]) -> Sequence[Any]:
        """Predict queued items in the worker; a failing batch is retried one request at a time."""
        try:
            return await self._predict(items)
        except WorkerUnavailableError as exc:  # the worker is gone: nothing to retry on
            return [exc] * len(items)
        except Exception as exc:
            if len(items) == 1:
                return [exc]
        results: list[Any] = []
        for item in items:  # so one bad request fails alone, as it does inline
            try:
                results.extend(await self._predict([item]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _predict(self, items: Sequence[Item]) -> list[Prediction]:
        if self.state != "up":
            raise self._unavailable()
        batch, scores = self.batch_of(items)
        result = await self.worker.predict(batch, scores, self.batcher.policy.timeout_s)
        return self.split(items, result)

    # -- supervision ----------------------------------------------------------------------------
    def _exited(self, worker: Worker, reason: str) -> None:
        """The worker died (called on the loop): fail what waits, refuse new work, restart."""
        if worker is not self.worker or self._stop.is_set():
            return
        self.state = "restarting"
        self.last_error = f"the device worker {reason}"
        self._report_up(False)
        self.batcher.fail_queued(WorkerDiedError(
            f"{self.predictor.ref}: {self.last_error}; it is restarting, retry shortly"))
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        loop = asyncio.get_running_loop()
        ref = self.predictor.ref
        for attempt in range(self.max_restarts):
            delay = restart_delay(attempt)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            if self.metrics is not None:
                self.metrics.count_restart()
            try:
                worker = await loop.run_in_executor(self._pool, self._spawn)
            except Exception as exc:
                self.last_error = f"restarting the device worker failed: {exc}"
                log.error("%s: %s (attempt %d of %d)", ref, self.last_error, attempt + 1,
                          self.max_restarts)
                continue
            if self._stop.is_set():  # unloaded while it started: do not leave it running
                await asyncio.to_thread(worker.stop)
                return
            worker.attach(loop, self._exited)
            self.worker = worker
            self.state = "up"
            self._report_up(True)
            log.warning("%s: device worker restarted (pid %s)", ref, worker.pid)
            return
        self.state = "failed"
        log.error("%s: giving up after %d restart attempts; the version is unloaded and loads "
                  "again on its next request (%s)", ref, self.max_restarts, self.last_error)
        if self._on_give_up is not None:
            self._on_give_up(self)

    def _unavailable(self) -> WorkerUnavailableError:
        what = "is restarting" if self.state == "restarting" else "is not running"
        return WorkerUnavailableError(
            f"{self.predictor.ref}: the device worker {what} ({self.last_error or self.state}); "
            "retry shortly", retry_after=1)

    def _report_up(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.worker_up(up)


__all__ = [
    "RESTART_DELAYS_S",
    "ProcessRunner",
    "Spawn",
    "metadata_predictor",
    "restart_delay",
]
