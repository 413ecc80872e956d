"""The prediction log: sampled predictions, written in batches off the request path.

On the request path :meth:`PredictionLog.record` (and :meth:`~PredictionLog.record_error` for a
failed request, kept as its status so monitoring knows the error rate) only appends a tuple to a
bounded queue: no serialisation, no I/O, no lock beyond the deque's own. A writer thread wakes
every ``flush_interval_s`` (or once ``batch_size`` entries wait) and turns the entries into
a :class:`LogBatch` a slice at a time: the requests of one version and variant become one
:class:`~modelyard.monitoring.chunk.Chunk`, their inputs stacked and packed as the arrays they
are (:func:`~modelyard.monitoring.summary.summarize_stacked`, sensitive fields dropped or
hashed), their outputs stacked too, so neither a request's numbers nor its JSON ever become
Python objects on the writer (text, tensors and odd requests are summarised one by one, as
JSON). It hands the batch to a :class:`LogStore`, which keeps a row per chunk. When the queue
is full or the store fails, entries are dropped and counted (``dropped``), never retried into
unbounded memory, and no request ever waits for or fails because of the log.

The stores (database table, Parquet files) live in :mod:`modelyard.monitoring.logstore`.

A log that drops what it is given says so: :meth:`PredictionLog.health` tells what it wrote and
dropped over the last minute, and whether it is *dropping* (it dropped entries and wrote no more
than it dropped); the server shows that in ``/readyz`` and exports it as a metric, and the log
writes an error line when it starts dropping and another when it recovers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from modelyard.errors import ConfigError
from modelyard.monitoring.chunk import (
    MAX_OUTPUT_VALUES,
    Chunk,
    encode_inputs,
    encode_outputs,
    json_part,
    outputs_many,
    outputs_of,
)
from modelyard.monitoring.logstore import (
    CHUNK,
    LOG_COLUMNS,
    PAUSE_S,
    DatabaseStore,
    LogBatch,
    LoggedPrediction,
    LogStore,
    ParquetStore,
    open_store,
)
from modelyard.threads import run_in_background

if TYPE_CHECKING:
    from modelyard.predictor import Prediction
    from modelyard.schema import Signature

log = logging.getLogger(__name__)

KEY_ENV = "MODELYARD_LOG_KEY"
#: the hash key when ``MODELYARD_LOG_KEY`` is unset: public, so it hides nothing from a guesser.
BUILTIN_KEY = b"modelyard-default-log-key"
_QUEUE_FULL = "queue full: the writer does not keep up, or its store hangs"
#: how far back :meth:`PredictionLog.health` looks.
HEALTH_WINDOW_S = 60.0
#: the entries a write takes at most, for a store that does not say (``LogStore.batch_size``).
BATCH_SIZE = 500


@dataclass(frozen=True)
class LogPolicy:
    """How one served version is logged: its sample rate, sensitive fields and input summary."""

    model: str
    version: int
    sample_rate: float
    sensitive: Mapping[str, str]
    signature: Signature
    reference: dict[str, Any] | None

    def sampled(self) -> bool:
        """Whether this request is one of the logged ones."""
        rate = self.sample_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)


@dataclass(frozen=True)
class LogHealth:
    """What the prediction log did over about the last minute (:meth:`PredictionLog.health`)."""

    written: int
    dropped: int
    #: the seconds these counts cover (about :data:`HEALTH_WINDOW_S`; less just after start).
    window_s: float
    pending: int
    #: why the last entries were dropped, when some were dropped in the window.
    last_error: str | None = None

    @property
    def dropping(self) -> bool:
        """It dropped entries and wrote no more than it dropped: most of the log is being lost."""
        return self.dropped > 0 and self.dropped >= self.written

    def describe(self) -> str:
        """One line for ``/readyz`` and the server's log."""
        text = (f"prediction log dropping: {self.dropped} dropped, {self.written} written in "
                f"the last {self.window_s:.0f} s")
        return f"{text} ({self.last_error})" if self.last_error else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``/readyz``."""
        return {"dropping": self.dropping, "written": self.written, "dropped": self.dropped,
                "window_s": self.window_s, "pending": self.pending,
                "last_error": self.last_error}


class PredictionLog:
    """Bounded, asynchronous, batched writer of predictions; ``start``/``stop`` its thread."""

    def __init__(self, store: LogStore, *, capacity: int = 10_000, batch_size: int | None = None,
                 flush_interval_s: float = 1.0, hash_key: bytes | None = None) -> None:
        """``batch_size``: the entries a write takes at most, and how many wake the writer
        early; by default the store's own ``batch_size`` (:data:`BATCH_SIZE` for a store
        without one)."""
        if batch_size is None:
            batch_size = getattr(store, "batch_size", BATCH_SIZE)
        if capacity < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ConfigError("prediction log: capacity and batch_size >= 1, interval > 0")
        self.store = store
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.hash_key = hash_key if hash_key is not None else _hash_key()
        #: entries written, and entries dropped (queue full, summary failed or store down).
        self.written = 0
        self.dropped = 0
        #: CPU seconds the writer spent converting and storing (what the log costs the server).
        self.cpu_s = 0.0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        #: why entries were last dropped (the store's error, a failed summary, a full queue).
        self.last_error: str | None = None
        #: called on the writer thread after each wake (about every ``flush_interval_s``): the
        #: server's metrics read the counters there, so every worker process exports them.
        self.watchers: list[Callable[[], None]] = []
        # (monotonic time, written, dropped) about a second apart, back to one HEALTH_WINDOW_S old
        self._history = deque([(time.monotonic(), 0, 0)])
        self._history_lock = threading.Lock()
        self._was_dropping = False

    @property
    def uses_builtin_key(self) -> bool:
        """Whether sensitive fields are hashed with the public built-in key (no
        ``MODELYARD_LOG_KEY``): their hashes can be matched against guessed values."""
        return self.hash_key == BUILTIN_KEY

    # -- the request path -----------------------------------------------------------------------
    def record(self, policy: LogPolicy, request_id: str, variant: str, latency_s: float,
               batch: Any, rows: int, prediction: Prediction) -> None:
        """Queue one answered request (call only for sampled requests; never raises)."""
        self._enqueue((policy, request_id, variant, time.time(), latency_s, batch, rows,
                       prediction))

    def record_error(self, policy: LogPolicy, request_id: str, variant: str, latency_s: float,
                     status: int) -> None:
        """Queue one failed request (a 5xx): counted in the error rate monitoring reports."""
        self._enqueue((policy, request_id, variant, time.time(), latency_s, None, 0, status))

    def _enqueue(self, entry: tuple[Any, ...]) -> None:
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            self.last_error = _QUEUE_FULL
            return
        queue.append(entry)
        if len(queue) >= self.batch_size:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="modelyard-predlog",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the writer thread (blocking)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout_s)
        self._thread = None

    def flush(self) -> None:
        """Write everything queued now, on the calling thread (tests and shutdown)."""
        while self._queue:
            self._write_batch()

    @property
    def pending(self) -> int:
        """Entries queued and not yet written."""
        return len(self._queue)

    def health(self) -> LogHealth:
        """Entries written and dropped over about the last :data:`HEALTH_WINDOW_S` seconds."""
        now = time.monotonic()
        written, dropped = self.written, self.dropped
        with self._history_lock:
            history = self._history
            if now - history[-1][0] >= 1.0:
                history.append((now, written, dropped))
            while len(history) > 1 and history[1][0] <= now - HEALTH_WINDOW_S:
                history.popleft()
            since, written_then, dropped_then = history[0]
        lost = dropped - dropped_then
        return LogHealth(written - written_then, lost, round(now - since, 1), self.pending,
                         self.last_error if lost else None)

    # -- the writer -----------------------------------------------------------------------------
    def _run(self) -> None:
        run_in_background()  # below the event loop: its bursts never hold requests up
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while len(self._queue) >= self.batch_size:
                self._write_batch()
            if self._queue:
                self._write_batch()
            self._tick()
        self.flush()
        self._tick()

    def _tick(self) -> None:
        """Say so once when the log starts or stops dropping; let the watchers read it."""
        health = self.health()
        if health.dropping != self._was_dropping:
            self._was_dropping = health.dropping
            if health.dropping:
                log.error("%s; predictions are not being logged (metrics from labels, drift "
                          "checks and alerts go blind): fix the store or lower the load",
                          health.describe())
            else:
                log.warning("the prediction log writes again: %d written in the last %.0f s",
                            health.written, health.window_s)
        for watcher in list(self.watchers):
            try:
                watcher()
            except Exception as exc:  # a broken watcher never stops the writer
                self._warn("a prediction log watcher failed: %s", exc)

    def _write_batch(self) -> None:
        started = time.thread_time()
        try:
            self._write_entries()
        finally:
            self.cpu_s += time.thread_time() - started

    def _write_entries(self) -> None:
        queue = self._queue
        entries = []
        for _ in range(min(self.batch_size, len(queue))):
            try:
                entries.append(queue.popleft())
            except IndexError:  # pragma: no cover - only one consumer
                break
        batch = LogBatch()
        for start in range(0, len(entries), CHUNK):
            if start:
                time.sleep(PAUSE_S)
            self._add(batch, entries[start:start + CHUNK])
        if not batch:
            return
        try:
            self.store.write(batch)
        except Exception as exc:
            self.dropped += len(batch)
            self.last_error = f"store failed: {type(exc).__name__}: {exc}"
            self._warn("the prediction log store failed; dropped %d entries: %s", len(batch),
                       exc)
            return
        self.written += len(batch)

    def _add(self, batch: LogBatch, entries: list[tuple[Any, ...]]) -> None:
        """Add ``entries`` to ``batch`` as chunks: one per version, variant and outcome (an
        answer or a failure), in the order each first appears."""
        policies, variants, answers = (list(map(itemgetter(i), entries)) for i in (0, 2, 7))
        if (len(set(map(id, policies))) == 1 and len(set(variants)) == 1
                and int not in set(map(type, answers))):  # the usual case: one group
            batch.add(self._chunk(entries, False))
            return
        groups: dict[tuple[int, str, bool], list[tuple[Any, ...]]] = {}
        for entry, policy, variant, answer in zip(entries, policies, variants, answers,
                                                  strict=True):
            groups.setdefault((id(policy), variant, isinstance(answer, int)), []).append(entry)
        for (_, _, failed), members in groups.items():
            batch.add(self._chunk(members, failed))

    def _chunk(self, members: list[tuple[Any, ...]], failed: bool) -> Chunk:
        """The chunk of ``members``, one version's requests with one variant and outcome; those
        whose inputs or outputs could not be converted are left out and counted as dropped."""
        policy, variant = members[0][0], members[0][2]
        if failed:  # a failed request: its status, nothing to summarise
            inputs = json_part([{}] * len(members))
            outputs = json_part([{"error": entry[7]} for entry in members])
        else:
            packed = self._pack(members)
            if packed is None:
                members, inputs, outputs = self._one_by_one(members)
            else:
                inputs, outputs = packed
        if not members:
            return Chunk.of(policy.model, policy.version, variant, [], [], [], [], inputs,
                            outputs)
        _, ids, _, at, latency, _, rows, _ = zip(*members, strict=True)  # one C-level pass
        return Chunk.of(policy.model, policy.version, variant, list(ids), at, latency,
                        [0] * len(members) if failed else rows, inputs, outputs)

    def _pack(self, members: list[tuple[Any, ...]]) -> tuple[bytes, bytes] | None:
        """Inputs and outputs of ``members`` packed together; None where they do not stack or
        one of them spoils it (then :meth:`_one_by_one`)."""
        policy = members[0][0]
        try:
            inputs = encode_inputs(list(map(itemgetter(5), members)), policy.signature,
                                   policy.reference, sensitive=policy.sensitive,
                                   hash_key=self.hash_key)
            if inputs is None:
                return None
            return inputs, encode_outputs(list(map(itemgetter(7), members)))
        except Exception:
            return None

    def _one_by_one(self, members: list[tuple[Any, ...]]
                    ) -> tuple[list[tuple[Any, ...]], bytes, bytes]:
        """Each member summarised and converted alone (text, tensors, an odd request): the
        members kept, their inputs and outputs as JSON lists."""
        from modelyard.monitoring.summary import summarize, summarize_many

        policy = members[0][0]
        profile = (policy.signature, policy.reference)
        options = {"sensitive": policy.sensitive, "hash_key": self.hash_key}
        summaries = self._convert(lambda batches: summarize_many(batches, *profile, **options),
                                  lambda batch: summarize(batch, *profile, **options),
                                  [e[5] for e in members], "summarised")
        answers = self._convert(outputs_many, outputs_of, [e[7] for e in members],
                                "converted")
        kept: list[tuple[Any, ...]] = []
        inputs: list[Any] = []
        outputs: list[Any] = []
        for entry, summary, answer in zip(members, summaries, answers, strict=True):
            if summary is None or answer is None:
                self.dropped += 1
            else:
                kept.append(entry)
                inputs.append(summary)
                outputs.append(answer)
        return kept, json_part(inputs), json_part(outputs)

    def _convert(self, many: Callable[[list[Any]], Iterable[Any]], one: Callable[[Any], Any],
                 items: list[Any], what: str) -> list[Any | None]:
        """``many(items)``, checked to be JSON; where an odd item spoils that, ``one`` of each
        (None where it fails)."""
        with contextlib.suppress(Exception):
            values = list(many(items))
            orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
            return values
        out: list[Any | None] = []
        for item in items:
            try:
                value = one(item)
                orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
                out.append(value)
            except Exception as exc:  # one odd request never stops the log
                out.append(None)
                self.last_error = f"could not be {what}: {exc}"
                self._warn("a prediction could not be %s for the log: %s", what, exc)
        return out

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning > 30.0:  # a down store is one line per 30 s, not per batch
            self._last_warning = now
            log.warning(message, *args)


def _hash_key() -> bytes:
    key = os.environ.get(KEY_ENV)
    if key:
        return key.encode()
    # without a configured key, hashes are still stable across processes (joins work), but a
    # low-entropy value could be guessed by hashing candidates: set MODELYARD_LOG_KEY in production
    return BUILTIN_KEY



__all__ = ["BATCH_SIZE", "BUILTIN_KEY", "HEALTH_WINDOW_S", "LOG_COLUMNS", "MAX_OUTPUT_VALUES",
           "DatabaseStore", "LogBatch", "LogHealth", "LogPolicy", "LogStore", "LoggedPrediction",
           "ParquetStore", "PredictionLog", "open_store", "outputs_many", "outputs_of"]
