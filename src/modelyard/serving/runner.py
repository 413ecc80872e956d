"""A runner: one loaded model version with its input path and batcher.

Requests are validated on the event loop (cheap, see :mod:`modelyard.serving.inputs`), queued in
the runner's :class:`~modelyard.serving.batching.Batcher`, predicted in batches on an executor
thread and split back per request. A version with ``isolation: process`` predicts in a device
worker instead (:class:`~modelyard.serving.supervisor.ProcessRunner`); :func:`choose_isolation`
decides which.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, ClassVar

import numpy as np

from modelyard.errors import AdapterError
from modelyard.predictor import Prediction, Predictor
from modelyard.schema import FieldSpec
from modelyard.serving.batching import Batcher, BatchPolicy, Item, Observe, split_rows
from modelyard.spec import ServingSpec
from modelyard.version_settings import VersionSettings

log = logging.getLogger(__name__)

#: a batch expected to take less than this runs on the event loop (see
#: :mod:`modelyard.serving.batching`). W1 (bench/serve.py, a HistGradientBoosting model, 32
#: rows a batch at about 11 us a row) runs inline; W2's MLP batches (about 1.5 ms) run in the
#: pool: a 5 ms budget that moved them onto the loop measured no better (two alternating pairs:
#: 204 and 178 us a request in the pool, 210 and 206 on the loop; p99 at half load no lower).
INLINE_BUDGET_S = 0.001


def serving_spec(meta: Mapping[str, Any], ref: str = "model") -> ServingSpec:
    """The serving section of a version's ``meta`` (:class:`VersionSettings`, not strict: a
    malformed section is logged and its defaults apply)."""
    return VersionSettings.from_meta(meta, ref, strict=False).serving


def batch_policy(spec: ServingSpec, *, accelerated: bool, timeout_s: float = 60.0) -> BatchPolicy:
    """Batching for one version from its spec and flavor.

    ``enabled: None`` (auto) batches every flavor. A model gets no added delay unless the spec
    sets ``max_delay_ms`` or it is a deep-learning model on a GPU (``accelerated``): requests
    that queue while a batch runs still share the next call, which is where a gradient-boosted
    model's 30x cheaper per-row cost is won, and an idle server answers at once. DL models on a
    GPU wait up to ``max_delay_ms`` for a fuller batch. ``enabled: false`` runs each request
    alone (still queued, bounded and timed out).
    """
    cfg = spec.batching
    if cfg.enabled is False:
        return BatchPolicy(1, 0.0, cfg.max_queue, timeout_s, inline_s=INLINE_BUDGET_S)
    explicit_delay = "max_delay_ms" in cfg.model_fields_set
    delay_ms = cfg.max_delay_ms if (accelerated or explicit_delay) else 0.0
    return BatchPolicy(cfg.max_batch_size, delay_ms / 1000.0, cfg.max_queue, timeout_s,
                       inline_s=INLINE_BUDGET_S)


def choose_isolation(spec: ServingSpec, *, accelerated: bool, gpu_count: Callable[[], int]) -> str:
    """``"process"`` (a device worker) or ``"inline"`` (the server process) for one version.

    An explicit ``isolation`` wins. ``auto`` gives a worker to a DL flavor bound for a GPU (an
    explicit ``cuda[:N]``, or ``auto`` with a GPU present), so a CUDA crash or hang costs a
    restart, not the server; everything on CPU stays inline, where a call costs no process hop.
    ``gpu_count`` is only asked when it matters (it should not initialise CUDA in the server).
    """
    if spec.isolation != "auto":
        return spec.isolation
    if not accelerated or spec.device == "cpu":
        return "inline"
    if spec.device.startswith("cuda"):
        return "process"
    return "process" if gpu_count() > 0 else "inline"


def estimate_memory(model: Any, artifact_size: int) -> int:
    """Bytes a loaded model holds: tensor sizes where known, else the artifact's size."""
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            total = sum(int(p.numel() * p.element_size()) for p in params())
            buffers = getattr(model, "buffers", None)
            if callable(buffers):
                total += sum(int(b.numel() * b.element_size()) for b in buffers())
            return max(total, artifact_size)
        except Exception:  # not a torch module after all
            pass
    return artifact_size


class Runner:
    """One loaded version: ``prepare`` input, then ``await predict(...)``; ``close`` drains it."""

    #: a composed model's runner (:class:`~modelyard.serving.graphs.GraphRunner`), whose member
    #: calls the data plane tells the request id.
    composed: ClassVar[bool] = False

    def __init__(
        self,
        predictor: Predictor,
        policy: BatchPolicy,
        *,
        executor: Executor | None = None,
        observe: Observe | None = None,
        memory: int = 0,
    ) -> None:
        from modelyard.serving.inputs import InputPath

        self.predictor = predictor
        self.name = predictor.name
        self.version = predictor.version
        self.version_str = str(predictor.version)
        self.inputs = InputPath(predictor.signature)
        #: what this version answers (name, dtype, per-row shape): recorded at training time,
        #: measured again by :meth:`warm` (older versions have no record).
        self.outputs: tuple[FieldSpec, ...] = predictor.signature.answers
        self.batcher = Batcher(self._run, policy, executor, observe)
        self.memory = memory
        self.metrics: Any = None  # per-version metric children, set by the app
        self.log_policy: Any = None  # how answers are logged (a LogPolicy), set by the catalog
        #: the version's ``precompute`` section (a PrecomputeSpec), set by the catalog
        self.precompute: Any = None
        #: ``account(cpu_s, gpu_s)`` once per batch (None: not charged; set by the catalog)
        self.account: Callable[[float, float], None] | None = None
        #: times a CUDA version's calls (a :class:`~modelyard.cputime.GpuTimer`; set by the
        #: catalog with ``account``)
        self.gpu: Any = None
        #: when this runner was made (Unix time): its memory is charged from then on
        self.loaded_at = time.time()

    @property
    def closed(self) -> bool:
        """Whether this runner stopped taking requests."""
        return self.batcher.closed

    @property
    def healthy(self) -> bool:
        """Whether the model can answer now (an inline model always can while loaded)."""
        return not self.batcher.closed

    def start(self) -> None:
        """Start answering on the running event loop."""
        self.batcher.start()

    def prepare(self, payload: Any) -> tuple[Any, int]:
        """Validate ``payload``; raises :class:`InputError` with field-level detail."""
        return self.inputs.prepare(payload)

    def submit(self, batch: Any, n: int, scores: bool = False) -> Any:
        """Queue a prepared batch now; returns a future of its :class:`Prediction`."""
        return self.batcher.submit(batch, n, scores)

    async def predict(self, batch: Any, n: int, scores: bool = False) -> Prediction:
        """Predict a prepared batch through the batcher."""
        return await self.submit(batch, n, scores)  # type: ignore[no-any-return]

    def warm(self) -> None:
        """Run one synthetic row through the model (blocking; call off the event loop)."""
        batch, _ = self.inputs.prepare(self.inputs.warmup_payload())
        self.outputs = self.predictor.predict_batch(self.inputs.finalize(batch),
                                                    scores=True).fields()

    async def close(self) -> None:
        """Stop taking requests, answer the queued ones, then release the loop task."""
        await self.batcher.close()
        self.flush_charges()

    def flush_charges(self) -> None:
        """Add the batches' charges not yet counted to the metrics (at a scrape, and when the
        version is unloaded)."""
        flush = getattr(self.metrics, "flush", None)
        if self.account is not None and flush is not None:
            flush()

    def _run(self, items: Sequence[Item]) -> list[Prediction]:
        account = self.account
        if account is None:
            batch, scores = self.batch_of(items)
            return self.split(items, self.predictor.predict_batch(batch, scores=scores))
        # the thread's CPU clock around the whole batch (concatenate, predict, split), read
        # twice a batch: a batch runs on one thread, so no other request's work is on it
        start = time.thread_time_ns()
        gpu_s = 0.0
        try:
            batch, scores = self.batch_of(items)
            if self.gpu is None:
                result = self.predictor.predict_batch(batch, scores=scores)
            else:
                result, gpu_s = self.gpu.run(
                    lambda: self.predictor.predict_batch(batch, scores=scores))
            return self.split(items, result)
        finally:  # a failing batch cost its CPU too
            account((time.thread_time_ns() - start) / 1e9, gpu_s)

    def batch_of(self, items: Sequence[Item]) -> tuple[Any, bool]:
        """The model input for queued ``items`` and whether any of them asked for scores."""
        batch = self.inputs.finalize(self.inputs.concat([i.payload for i in items]))
        return batch, any(i.options for i in items)

    def split(self, items: Sequence[Item], result: Prediction) -> list[Prediction]:
        """Cut one batch's :class:`Prediction` back into one per item (checking the row count)."""
        total = sum(i.n for i in items)
        got = len(result.predictions)
        if got != total:
            raise AdapterError(
                f"{self.predictor.ref} returned {got} predictions for {total} rows; "
                "the model must return one prediction per input row"
            )
        if len(items) == 1:
            return [result]
        return [
            Prediction(
                result.predictions[s],
                None if result.scores is None else np.asarray(result.scores)[s],
                result.classes,
            )
            for s in split_rows([i.n for i in items])
        ]


__all__ = ["Runner", "batch_policy", "choose_isolation", "estimate_memory", "serving_spec"]
