"""A batch job: score an input with one registered version into an output, resumably.

:class:`BatchJob` says what to score (a plain, picklable record the CLI, the scheduler and a Ray
engine can all build); :func:`score` runs it on an engine from :data:`ENGINES` (``local``: this
process, chunk after chunk; ``ray``: a Ray cluster, :mod:`~modelyard.batch.ray_engine`) and
returns a :class:`BatchSummary`. Every engine runs :func:`run_with`, supplying only its
:data:`Scoring`, so the output, the resume and the run record are the same on all. The
version is loaded exactly as the server loads it (its artifact verified against its digest,
safe loading, the serving section's device), chunks are validated by the server's input path
(:class:`~modelyard.batch.scorer.ChunkScorer`), and each finished chunk is committed with the
manifest that lets a rerun go on after it (:mod:`~modelyard.batch.plan`). The run is recorded in
the registry as a ``batch`` run; sampled rows go to the prediction log as variant ``batch``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from modelyard.batch.columns import check_columns, needed_columns
from modelyard.batch.plan import Manifest, OnError, Start, decide_start
from modelyard.batch.scorer import ChunkScorer, ScoredChunk
from modelyard.batch.sinks import Sink, SinkOwner, open_sink
from modelyard.batch.sources import Source, open_source
from modelyard.cputime import process_cpu_s
from modelyard.errors import ConfigError, ModelyardError, RowRejectedError

if TYPE_CHECKING:
    from modelyard.monitoring.predlog import LogPolicy, PredictionLog
    from modelyard.pipeline.run_registry import RunRegistry
    from modelyard.predictor import Predictor
    from modelyard.registry import Registry
    from modelyard.registry.records import ModelVersion
    from modelyard.spec import ValidationSpec

#: the prediction log's variant for rows a batch job scored
BATCH_VARIANT = "batch"
DEFAULT_CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class BatchJob:
    """What to score with which version, and where the answers go."""

    ref: str
    input: str | tuple[str, ...]
    output: str
    key: tuple[str, ...] = ()
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    on_error: OnError = "skip"
    scores: bool = False
    #: replace whatever the output holds instead of resuming it
    restart: bool = False
    #: the share of scored rows written to the prediction log (0: none)
    log_sample: float = 0.0
    #: the SQLAlchemy URL ``sql:`` inputs and outputs use
    sql_url: str | None = None
    input_format: str | None = None
    #: where the model runs (None: its serving section's device, as the server does)
    device: str | None = None
    engine: str = "local"
    #: why it runs, recorded with the run (``manual``, ``scheduler``, ...)
    trigger: str = "manual"
    #: the Ray cluster a ``ray`` engine joins (None: ``MODELYARD_RAY_ADDRESS``, else a local one)
    ray_address: str | None = None
    #: scoring actors a cluster engine starts (None: as many as the cluster's resources fit)
    actors: int | None = None
    #: custom Ray resources each scoring actor asks for, ``(("scorer", 1.0),)`` (pins actors to
    #: the nodes that offer them)
    actor_resources: tuple[tuple[str, float], ...] = ()
    #: data checks the whole input must pass before anything is scored (``--checks``;
    #: :mod:`~modelyard.batch.checks`)
    checks: ValidationSpec | None = None

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be at least 1, not {self.chunk_rows}")
        if self.on_error not in ("skip", "fail"):
            raise ConfigError(f"--on-error must be skip or fail, not {self.on_error!r}")
        if not 0.0 <= self.log_sample <= 1.0:
            raise ConfigError(f"--log-sample must be between 0 and 1, not {self.log_sample}")
        if len(set(self.key)) != len(self.key):
            raise ConfigError("--key names a column twice")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"--actors must be at least 1, not {self.actors}")


@dataclass(frozen=True)
class ChunkDone:
    """Progress after one committed chunk (what a progress bar shows)."""

    index: int
    rows: int
    errors: int
    #: totals over the whole output so far, resumed chunks included
    total_rows: int
    total_errors: int
    #: the input's row count, when the source knows it cheaply (Parquet metadata)
    expected: int | None = None


@dataclass(frozen=True)
class BatchSummary:
    """How a batch run ended: what it scored, where it wrote, and how long it took."""

    run_id: str | None
    model: str
    version: int
    status: str
    input: str
    input_fingerprint: str
    output: str
    errors_location: str
    #: rows answered and rows refused, over the whole output (resumed chunks included)
    rows: int
    errors: int
    chunks: int
    #: chunks an earlier run had finished, which this one skipped
    resumed_chunks: int
    duration_s: float
    #: rows this run scored (good and bad) per second of its chunk loop (reading, validating,
    #: predicting, writing; not loading the model locally, but starting the actors that load it
    #: on a cluster engine)
    rows_per_s: float = 0.0
    logged: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``batch --json``, the run record's details)."""
        return asdict(self)


Engine = Callable[[BatchJob, "RunRegistry", Callable[[ChunkDone], None] | None], BatchSummary]
#: how a job runs, by ``BatchJob.engine``; a cluster engine registers itself here
ENGINES: dict[str, Engine] = {}
#: engines whose module registers them when first asked for (their libraries are optional
#: extras, never imported with modelyard)
LAZY_ENGINES = {"ray": "modelyard.batch.ray_engine"}


def register_engine(name: str, engine: Engine) -> None:
    """Make ``engine`` available as ``BatchJob(engine=name)`` (``modelyard batch --engine``)."""
    ENGINES[name] = engine


def score(job: BatchJob, registry: RunRegistry | None = None, *,
          on_chunk: Callable[[ChunkDone], None] | None = None) -> BatchSummary:
    """Run ``job`` and return its summary; ``on_chunk`` is called after each committed chunk.

    Uses the registry ``MODELYARD_*`` names unless one is passed in. Raises
    :class:`~modelyard.errors.ConflictError` when the output holds another version's or another
    input's run (``restart=True`` replaces it) and :class:`~modelyard.errors.RowRejectedError`
    for a bad row under ``on_error="fail"``.
    """
    if job.engine not in ENGINES and job.engine in LAZY_ENGINES:
        import importlib

        importlib.import_module(LAZY_ENGINES[job.engine])
    engine = ENGINES.get(job.engine)
    if engine is None:
        raise ConfigError(f"unknown batch engine {job.engine!r}; known: "
                          + ", ".join(sorted({*ENGINES, *LAZY_ENGINES})))
    if registry is not None:
        return engine(job, registry, on_chunk)
    from modelyard.registry import Registry

    with Registry.open() as own:
        return engine(job, own, on_chunk)


# -- the engines' shared run ----------------------------------------------------------------
@dataclass(frozen=True)
class ChunkPlan:
    """What an engine scores: ``source``'s chunks of ``chunk_rows`` rows (``columns`` of them)
    from chunk ``skip`` on, with ``version`` loaded as ``job`` says."""

    job: BatchJob
    registry: RunRegistry
    version: ModelVersion
    source: Source
    columns: tuple[str, ...]
    #: the output's chunk size (a resumed run keeps the one its output was started with)
    chunk_rows: int
    skip: int


#: scored chunks in chunk order: ``(index, rows read, scored)``; the run commits each in turn
ChunkStream = Generator[tuple[int, int, ScoredChunk], None, None]
#: an engine's scoring: starts it (loads the model, or the cluster's actors) and streams the
#: scored chunks back to the run, which validates, commits and records them the same way for
#: every engine
Scoring = Callable[[ChunkPlan], ChunkStream]


def run_with(job: BatchJob, registry: RunRegistry, on_chunk: Callable[[ChunkDone], None] | None,
             scoring: Scoring) -> BatchSummary:
    """Run ``job`` with ``scoring`` doing the scoring: the plan, the resume decision, the sink's
    commits, the errors file and the run record are the same whatever the engine."""
    version = registry.resolve(job.ref)
    source = open_source(job.input, sql_url=job.sql_url, file_format=job.input_format)
    sink = open_sink(job.output, sql_url=job.sql_url,
                     owner=SinkOwner(version, _database_url(registry)))
    signature = version.get_signature()
    check_columns(source.columns(), signature, job.key, f"--input {source.description}")
    fingerprint = source.fingerprint()
    wanted = Manifest(version.model, version.version, fingerprint, job.chunk_rows, job.key)
    start = decide_start(sink.read_manifest(), wanted, restart=job.restart)
    run = _Run(job, registry, version, source, sink, start)
    if start.action == "complete":
        return run.summary("succeeded", start.manifest)
    return run.execute(on_chunk, scoring)


# -- the local engine ---------------------------------------------------------------------------
def run_local(job: BatchJob, registry: RunRegistry,
              on_chunk: Callable[[ChunkDone], None] | None = None) -> BatchSummary:
    """Score ``job`` in this process, one chunk after another."""
    return run_with(job, registry, on_chunk, score_here)


def score_here(plan: ChunkPlan) -> ChunkStream:
    """The local engine's scoring: the model loaded now, in this process, then each chunk read
    and scored in turn."""
    scorer = ChunkScorer(_load(plan.version, plan.registry, plan.job.device), plan.job.key,
                         scores=plan.job.scores)
    return _scored_here(plan, scorer)


def _scored_here(plan: ChunkPlan, scorer: ChunkScorer) -> ChunkStream:
    chunks = plan.source.chunks(plan.columns, plan.chunk_rows, skip=plan.skip)
    with contextlib.closing(chunks):  # a stop mid-way closes the source's cursor now
        for index, columns in enumerate(chunks, start=plan.skip):
            rows = len(columns[plan.columns[0]])
            yield index, rows, scorer.score(columns, rows, index * plan.chunk_rows)


register_engine("local", run_local)


@dataclass
class _Run:
    """One run, on any engine: the loop over scored chunks and its record in the registry."""

    job: BatchJob
    registry: RunRegistry
    version: ModelVersion
    source: Source
    sink: Sink
    start: Start
    started: float = field(default_factory=time.perf_counter)
    #: this process's CPU seconds when the run began (the run is charged what it adds: on the
    #: Ray engine, the workers' CPU is not in it)
    cpu_from: float = field(default_factory=process_cpu_s)
    run_id: str | None = None
    logged: int = 0
    #: seconds spent in the chunk loop (reading, scoring, writing): what the rate divides by
    loop_s: float = 0.0
    #: rows this run read (answered and refused), not counting resumed chunks
    scored: int = 0
    #: where the output stands: the last committed chunk's manifest
    manifest: Manifest = field(init=False)
    #: what the input's data checks found (``--checks``), for the run's details
    checked: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.manifest = self.start.manifest

    def execute(self, on_chunk: Callable[[ChunkDone], None] | None,
                scoring: Scoring) -> BatchSummary:
        """Score and commit every chunk left, recording the run; raises what stopped it."""
        record = self.registry.start_run(self.version.model, kind="batch",
                                         trigger=self.job.trigger, details=self._details(None))
        self.run_id = record.id
        predlog: PredictionLog | None = None
        try:
            if self.job.checks is not None:
                self._check_input(self.job.checks)
            wanted = tuple(needed_columns(self.version.get_signature(), self.job.key))
            stream = scoring(ChunkPlan(self.job, self.registry, self.version, self.source,
                                       wanted, self.manifest.chunk_rows, self.start.skip_chunks))
            predlog, policy = self._prediction_log()
            self.sink.begin(self.start)
            looped = time.perf_counter()
            self._loop(_Step(self, on_chunk, predlog, policy), stream)
            self.loop_s = time.perf_counter() - looped
        except BaseException as exc:  # recorded as failed, then raised as it was
            reason = str(exc) if isinstance(exc, ModelyardError) else \
                f"{type(exc).__name__}: {exc}"
            self._finish("failed", reason)
            raise
        finally:
            if predlog is not None:
                predlog.stop()
                self.logged = predlog.written
        self.manifest = self.manifest.finished()
        self.sink.finish(self.manifest)
        return self._finish("succeeded", None)

    def _check_input(self, spec: ValidationSpec) -> None:
        """Read the whole input once, chunk by chunk, through its data checks; raise
        :class:`~modelyard.errors.DataValidationError` listing every failed one."""
        from modelyard.batch.checks import InputChecks, refuse
        from modelyard.pipeline.checks import utcnow

        available = self.source.columns()
        found = InputChecks(spec, now=utcnow())
        chunks = self.source.chunks(available, self.manifest.chunk_rows)
        with contextlib.closing(chunks):
            for columns in chunks:
                found.add(columns)
        failures = found.failures(available)
        self.checked = {"rows": found.rows, "failed": failures, "not_checked": found.skipped}
        if failures:
            raise refuse(failures, f"--input {self.source.description}")

    def _loop(self, step: _Step, stream: ChunkStream) -> None:
        with contextlib.closing(stream):
            for index, rows, done in stream:
                step(index, done, rows)
                self.scored += rows
                self.registry.beat_run(str(self.run_id))

    def _prediction_log(self) -> tuple[PredictionLog | None, LogPolicy | None]:
        if self.job.log_sample <= 0:
            return None, None
        from modelyard.monitoring.predlog import PredictionLog, open_store
        from modelyard.serving.catalog import log_policy
        from modelyard.version_settings import VersionSettings

        serving = VersionSettings.of(self.version, strict=False).serving
        policy = replace(log_policy(self.version, serving), sample_rate=self.job.log_sample)
        store = open_store(require_local(self.registry, "--log-sample"), "db")
        assert store is not None  # "db" always names a store
        predlog = PredictionLog(store, capacity=1_000_000, batch_size=2_000)
        predlog.start()
        return predlog, policy

    def _details(self, manifest: Manifest | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input": self.source.description, "input_fingerprint":
            self.start.manifest.input_fingerprint, "output": self.sink.description,
            "errors_location": self.sink.errors_location, "chunk_rows":
            self.start.manifest.chunk_rows, "resumed_chunks": self.start.skip_chunks,
            "engine": self.job.engine}
        if self.checked is not None:
            out["checks"] = self.checked
        if manifest is not None:
            out.update(rows=manifest.rows, errors=manifest.errors, chunks=manifest.chunks_done,
                       rows_per_s=self._rate(), logged=self.logged,
                       cpu_s=round(process_cpu_s() - self.cpu_from, 3))
        return out

    def _finish(self, status: str, reason: str | None) -> BatchSummary:
        manifest = self.manifest
        details = self._details(manifest)
        if self.run_id is not None:
            self.registry.finish_run(
                self.run_id, status=status, version=self.version.version, details=details,
                metrics={"rows": manifest.rows, "errors": manifest.errors},
                failure_reason=reason)
        return self.summary(status, manifest)

    def summary(self, status: str, manifest: Manifest) -> BatchSummary:
        """The summary of this run, ``manifest`` being where the output stands."""
        elapsed = time.perf_counter() - self.started
        return BatchSummary(
            self.run_id, self.version.model, self.version.version, status,
            self.source.description, manifest.input_fingerprint, self.sink.description,
            self.sink.errors_location, manifest.rows, manifest.errors, manifest.chunks_done,
            self.start.skip_chunks, round(elapsed, 3), self._rate(), self.logged)

    def _rate(self) -> float:
        return round(self.scored / self.loop_s, 1) if self.loop_s > 0 else 0.0


@dataclass
class _Step:
    """Scores and commits one chunk after another, moving the run's manifest forward."""

    run: _Run
    on_chunk: Callable[[ChunkDone], None] | None
    predlog: PredictionLog | None
    policy: LogPolicy | None
    expected: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.expected = self.run.source.count_rows()

    def __call__(self, index: int, done: ScoredChunk, rows: int) -> None:
        run = self.run
        bad = done.errors.num_rows
        if bad and run.job.on_error == "fail":
            raise _rejected(done)
        manifest = run.manifest.after_chunk(rows - bad, bad)
        run.sink.commit(index, done.answers, done.errors, manifest)
        run.manifest = manifest
        if self.predlog is not None and self.policy is not None:
            # keys name rows across runs (labels fed back by key join them); row numbers
            # only within this run
            prefix = "" if self.run.job.key else f"batch-{str(self.run.run_id)[:8]}-"
            _sample(self.predlog, self.policy, done, self.run.job.log_sample, prefix)
        if self.on_chunk is not None:
            self.on_chunk(ChunkDone(index, rows - bad, bad, manifest.rows, manifest.errors,
                                    self.expected))


def _database_url(registry: RunRegistry) -> str:
    """The registry database's URL (where ``precomputed:registry`` writes); empty through a
    server, which refuses that output (:func:`require_local`)."""
    from modelyard.registry import Registry

    return str(registry.db.url) if isinstance(registry, Registry) else ""


def require_local(registry: RunRegistry, what: str) -> Registry:
    """``registry`` when it is the registry database itself; a :class:`ConfigError` naming
    ``what`` needs it when it is a server's API."""
    from modelyard.registry import Registry

    if not isinstance(registry, Registry):
        raise ConfigError(f"{what} writes to the registry database directly: run it where the "
                          "database is reachable, without MODELYARD_URL or --server")
    return registry


def _load(version: ModelVersion, registry: RunRegistry, device: str | None) -> Predictor:
    """The version loaded as the server loads it: verified digest, safe loading, its serving
    section's device unless ``device`` says otherwise."""
    from modelyard.predictor import open_version
    from modelyard.version_settings import VersionSettings

    serving = VersionSettings.of(version, strict=False).serving
    return open_version(version, registry, device=device or serving.device)


def _rejected(done: ScoredChunk) -> RowRejectedError:
    first = done.errors.slice(0, 1).to_pylist()[0]
    reason = first.pop("error")
    where = ", ".join(f"{k}={v!r}" for k, v in first.items())
    more = done.errors.num_rows - 1
    return RowRejectedError(f"row {where} was refused: {reason}"
                            + (f" (and {more} more in its chunk)" if more else "")
                            + "; fix the input, or give --on-error skip to set bad rows aside")


def _sample(predlog: PredictionLog, policy: LogPolicy, done: ScoredChunk, rate: float,
            prefix: str) -> None:
    """Queue a ``rate`` share of a chunk's answered rows for the prediction log, one entry per
    row, its key (or ``prefix`` and its row number) as its request id."""
    import numpy as np

    from modelyard.predictor import Prediction

    if done.prediction is None or done.ids is None:
        return
    n = len(done.prediction.predictions)
    picked = np.flatnonzero(np.random.default_rng().random(n) < rate)
    batch, prediction = done.batch, done.prediction
    for i in picked.tolist():
        row = batch.iloc[i:i + 1] if hasattr(batch, "iloc") else batch[i:i + 1]
        answer = Prediction(prediction.predictions[i:i + 1],
                            None if prediction.scores is None else prediction.scores[i:i + 1],
                            prediction.classes)
        predlog.record(policy, f"{prefix}{done.ids[i]}", BATCH_VARIANT, 0.0, row, 1, answer)


__all__ = ["BATCH_VARIANT", "DEFAULT_CHUNK_ROWS", "ENGINES", "BatchJob", "BatchSummary",
           "ChunkDone", "ChunkPlan", "ChunkStream", "Engine", "Scoring", "register_engine",
           "require_local", "run_local", "run_with", "score", "score_here"]
