"""The ``ray`` batch engine: the chunks are read and scored on a Ray cluster, over Ray Data.

``modelyard batch ... --engine ray`` (``BatchJob(engine="ray")``) runs the same job as the local
engine, with the scoring moved onto the cluster and everything that makes the output what it is
left on the driver:

- **Plan, on the driver.** :func:`~modelyard.batch.job.run_with` resolves the version, checks the
  input's columns, fingerprints it and reads the output's manifest to decide where to start,
  exactly as for the local engine.
- **Reading, on the cluster.** One Ray Data task re-opens the input from its spec (files or any
  fsspec URL, or ``sql:`` with its database URL: the cluster must reach them, as a training
  task's data) and streams its chunks, from the first one not yet done, as one row each. It
  checks the input's fingerprint first, so the cluster scores the input the driver planned. A
  single reader keeps the chunks the same rows as on every other run (chunk N means rows
  ``N*chunk_rows`` on), which resume depends on; the scoring is what spreads.
- **Scoring, on the cluster.** ``map_batches`` with a pool of actors, one chunk a call: it
  starts with one and grows to ``--actors`` (by default as many as the cluster's resources fit)
  while chunks wait and the cluster has room, so a count the cluster cannot hold never stalls
  the run; a run whose first actor cannot start in 5 minutes fails. Each actor loads the
  version once, the way the server and the local engine do (artifact verified against its
  digest, safe loading), and scores with the same :class:`~modelyard.batch.scorer.ChunkScorer`.
  An actor asks for one CPU, or one GPU where the version's device asks for CUDA (``cuda[:N]``,
  or ``auto`` for a deep-learning flavor on a cluster that has GPUs), and the custom resources
  the job names (``--actor-resource gpu_node=1`` pins it to the nodes that offer them).
- **Committing, on the driver.** The answers and bad rows come back as Arrow tables, in chunk
  order (Ray Data's ordered execution, and a reorder buffer here besides), and the run commits
  each chunk to the sink with its manifest, writes the errors file, applies ``--on-error`` and
  records the run, all in :class:`~modelyard.batch.job._Run`, the code the local engine runs.
  So the outputs are the same files, a run stopped anywhere resumes after its last committed
  chunk on either engine, and the registry holds the same ``batch`` run (``engine: ray``).

A lost actor (its node died) is not restarted: the run fails with
:class:`~modelyard.errors.UnavailableError` (exit 15) and Ray's reason, recorded as failed, and
its output resumes from the last committed chunk on the next run. (Restarting the actor would
re-score the chunks in flight, which is harmless, but would wait for ever when the node that
offered its resources is gone.) An error an actor or the reader raises (a model that fails to
load or predict, an input the cluster reads differently) travels back as data and is raised as
itself. ``--log-sample`` is refused: the sampled rows' model input stays on the actors. Nothing
here imports Ray until a job asks for this engine.
"""

from __future__ import annotations

import heapq
import io
import os
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from modelyard.batch.job import (
    BatchJob,
    BatchSummary,
    ChunkDone,
    ChunkPlan,
    ChunkStream,
    register_engine,
    require_local,
    run_with,
)
from modelyard.batch.scorer import ScoredChunk
from modelyard.errors import ConfigError, ModelyardError, UnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable

    from modelyard.config import Settings
    from modelyard.pipeline.run_registry import RunRegistry
    from modelyard.registry.records import ModelVersion

#: the variable that names the cluster when ``--ray-address`` does not
ADDRESS_ENV = "MODELYARD_RAY_ADDRESS"
INSTALL_HINT = "pip install 'modelyard[ray]'"
#: the reader's CPU share: none reserved (it reads and pickles; the actors score), so actors
#: that take every CPU never starve it, and unlike the actors', so Ray Data never fuses the two
#: stages (a fused stage would read and score every chunk in one actor)
READER_CPUS = 0.0
#: how long a run waits for its first actor (a node with the resources it asks for) before
#: failing, instead of waiting for ever
ACTOR_START_TIMEOUT_S = 300


@dataclass(frozen=True)
class ActorShape:
    """What one scoring actor asks the cluster for, and the device it loads the model onto."""

    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"


def actor_shape(device: str, *, accelerated: bool, cluster_gpus: float,
                resources: Mapping[str, float] | None = None) -> ActorShape:
    """The actor for a version served on ``device``: one GPU (the actor sees it as ``cuda``)
    where ``device`` is ``cuda[:N]``, or ``auto`` for an ``accelerated`` (deep-learning) flavor
    on a cluster with GPUs; one CPU otherwise."""
    custom = dict(resources or {})
    if device.startswith("cuda") or (device == "auto" and accelerated and cluster_gpus > 0):
        return ActorShape(1.0, 1.0, custom, "cuda")
    return ActorShape(1.0, 0.0, custom, "cpu" if device == "auto" else device)


def default_actors(shape: ActorShape, cluster: Mapping[str, float]) -> int:
    """As many actors as ``cluster``'s total resources fit (at least one)."""
    wants = {"CPU": shape.num_cpus, "GPU": shape.num_gpus, **shape.resources}
    fits = [cluster.get(name, 0.0) // amount for name, amount in wants.items() if amount > 0]
    return max(1, int(min(fits, default=1)))


def parse_resources(specs: tuple[str, ...] | list[str]) -> tuple[tuple[str, float], ...]:
    """``("node_b=1", "ssd")`` -> ``(("node_b", 1.0), ("ssd", 1.0))`` (``--actor-resource``)."""
    out = []
    for spec in specs:
        name, _, amount = spec.partition("=")
        try:
            value = float(amount) if amount else 1.0
        except ValueError:
            value = -1.0
        if not name.strip() or value <= 0:
            raise ConfigError(f"--actor-resource {spec!r}: give NAME or NAME=AMOUNT (> 0)")
        out.append((name.strip(), value))
    return tuple(out)


def require_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`ConfigError` saying what to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray: {INSTALL_HINT}") from None
    return ray


# -- the engine ---------------------------------------------------------------------------------
def run_ray(job: BatchJob, registry: RunRegistry,
            on_chunk: Callable[[ChunkDone], None] | None = None) -> BatchSummary:
    """Score ``job`` on a Ray cluster (see the module's description)."""
    require_local(registry, "--engine ray (the cluster reads the artifact store itself)")
    require_ray()
    if job.log_sample > 0:
        raise ConfigError("--log-sample is not available with --engine ray; score with the "
                          "local engine to sample rows into the prediction log")
    return run_with(job, registry, on_chunk, score_on_ray)


def score_on_ray(plan: ChunkPlan) -> ChunkStream:
    """The ray engine's scoring: join the cluster, start the reader and the actor pool, and
    stream the scored chunks back in chunk order."""
    ray = require_ray()
    _connect(ray, plan.job.ray_address)
    from modelyard.adapters import get_adapter
    from modelyard.version_settings import VersionSettings

    device = plan.job.device or VersionSettings.of(plan.version, strict=False).serving.device
    shape = actor_shape(device, accelerated=get_adapter(plan.version.flavor).accelerated,
                        cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)),
                        resources=dict(plan.job.actor_resources))
    actors = plan.job.actors or default_actors(shape, ray.cluster_resources())
    dataset = _dataset(plan, shape, actors)
    return _in_order(_results(dataset), plan.skip)


def _connect(ray: Any, address: str | None) -> None:
    """Join the cluster ``address`` names (or ``MODELYARD_RAY_ADDRESS``; neither: a local one),
    unless this process already has."""
    if ray.is_initialized():
        return
    address = address or os.environ.get(ADDRESS_ENV) or None
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address or 'a local one'}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from None


@dataclass(frozen=True)
class ReadSpec:
    """What the reader opens on the cluster: the job's input, from chunk ``skip`` on."""

    input: str | tuple[str, ...]
    sql_url: str | None
    input_format: str | None
    fingerprint: str
    columns: tuple[str, ...]
    chunk_rows: int
    skip: int


@dataclass(frozen=True)
class ScorerSpec:
    """What each actor loads: the version, from the registry's artifact store."""

    settings: Settings
    version: ModelVersion
    device: str
    key: tuple[str, ...]
    scores: bool


def _dataset(plan: ChunkPlan, shape: ActorShape, actors: int) -> Any:
    import ray.data

    job = plan.job
    read = ReadSpec(job.input, job.sql_url, job.input_format, plan.source.fingerprint(),
                    plan.columns, plan.chunk_rows, plan.skip)
    settings = require_local(plan.registry, "--engine ray").settings
    scorer = ScorerSpec(settings, plan.version, shape.device, job.key, job.scores)
    dataset: Any = ray.data.from_items([{"reader": 0}])
    context = dataset.context  # this dataset's own copy: the process's defaults stay as they are
    context.execution_options.preserve_order = True  # chunks come back in input order
    # a block per chunk: each one travels to an actor alone, whatever its size
    context.target_max_block_size = 1
    context.enable_progress_bars = False  # the CLI shows its own, per committed chunk
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    dataset = dataset.map_batches(read_chunks, batch_size=None, batch_format="pyarrow",
                                  fn_kwargs={"spec": read}, num_cpus=READER_CPUS)
    # no restarts: a lost actor fails the run, which resumes from its last committed chunk
    # (Ray 2.60 deprecates passing these as remote args, with no named replacement yet)
    remote: dict[str, Any] = {"num_cpus": shape.num_cpus, "max_restarts": 0,
                              "max_task_retries": 0}
    if shape.num_gpus:
        remote["num_gpus"] = shape.num_gpus
    if shape.resources:
        remote["resources"] = shape.resources
    return dataset.map_batches(ChunkActor, fn_constructor_kwargs={"spec": scorer},
                               batch_size=1, batch_format="pyarrow",
                               compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                               **remote)


def read_chunks(table: pa.Table, spec: ReadSpec) -> Iterator[pa.Table]:
    """The reader (a Ray Data task): the input's chunks from ``spec.skip`` on, one row each
    (``index``, ``rows``, ``first_row``, ``chunk``: its columns, pickled). A modelyard error
    (an input it cannot read, or not the one planned) travels on as a last row whose ``chunk``
    is the error, so the driver raises it as itself."""
    try:
        yield from _read(spec)
    except ModelyardError as exc:
        yield _chunk_row(-1, 0, 0, exc)


def _read(spec: ReadSpec) -> Iterator[pa.Table]:
    from modelyard.batch.sources import open_source
    from modelyard.errors import ConflictError

    source = open_source(spec.input, sql_url=spec.sql_url, file_format=spec.input_format)
    if source.fingerprint() != spec.fingerprint:
        raise ConflictError(f"the input {source.description} seen from the Ray cluster is not "
                            "the one the driver planned (its fingerprint differs); the cluster "
                            "must read the same files or database")
    chunks = source.chunks(spec.columns, spec.chunk_rows, skip=spec.skip)
    try:
        for index, columns in enumerate(chunks, start=spec.skip):
            rows = len(columns[spec.columns[0]])
            yield _chunk_row(index, rows, index * spec.chunk_rows, columns)
    finally:
        chunks.close()


def _chunk_row(index: int, rows: int, first_row: int, chunk: Any) -> pa.Table:
    payload = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
    return pa.table({"index": pa.array([index], pa.int64()), "rows": pa.array([rows], pa.int64()),
                     "first_row": pa.array([first_row], pa.int64()),
                     "chunk": pa.array([payload], pa.large_binary())})


class ChunkActor:
    """A scoring actor: the version loaded once, then one chunk scored per call. A modelyard
    error (a model that fails to load or to predict) is answered as the row's ``failure``, so
    the driver raises it as itself rather than as Ray's wrapper."""

    def __init__(self, spec: ScorerSpec) -> None:
        from modelyard.batch.job import _load
        from modelyard.batch.scorer import ChunkScorer
        from modelyard.encryption import artifact_store
        from modelyard.registry import Registry
        from modelyard.registry.database import Database

        self.failure: ModelyardError | None = None
        try:
            # the artifact store and the cache only: the actor never touches the database
            registry = Registry(Database(spec.settings.db_url), artifact_store(spec.settings),
                                spec.settings)
            self.scorer = ChunkScorer(_load(spec.version, registry, spec.device), spec.key,
                                      scores=spec.scores)
        except ModelyardError as exc:
            self.failure = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[Any]] = {"index": [], "rows": [], "answers": [], "errors": [],
                                     "failure": []}
        for row in batch.to_pylist():
            chunk = pickle.loads(row["chunk"])  # our own reader's chunk
            answers = errors = failure = None
            try:
                stop = chunk if isinstance(chunk, ModelyardError) else self.failure
                if stop is not None:
                    raise stop
                done = self.scorer.score(chunk, int(row["rows"]), int(row["first_row"]))
                answers, errors = _ipc(done.answers), _ipc(done.errors)
            except ModelyardError as exc:
                failure = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            for name, value in (("index", row["index"]), ("rows", row["rows"]),
                                ("answers", answers), ("errors", errors), ("failure", failure)):
                out[name].append(value)
        return pa.table({"index": pa.array(out["index"], pa.int64()),
                         "rows": pa.array(out["rows"], pa.int64()),
                         **{name: pa.array(out[name], pa.large_binary())
                            for name in ("answers", "errors", "failure")}})


def _results(dataset: Any) -> Iterator[tuple[int, int, ScoredChunk]]:
    """The scored chunks as they come back; a failure on the cluster is the modelyard error an
    actor or the reader raised, or :class:`UnavailableError` for a lost actor or node."""
    from ray.exceptions import RayError

    try:
        for row in dataset.iter_rows():
            if row["failure"] is not None:
                raise pickle.loads(row["failure"])  # our own actor's error
            yield (int(row["index"]), int(row["rows"]),
                   ScoredChunk(_table(row["answers"]), _table(row["errors"])))
    except RayError as exc:
        raise cluster_failure(exc) from None


def cluster_failure(exc: BaseException) -> ModelyardError:
    """What a run that failed on the cluster raises: the modelyard error at the root of ``exc``
    (a model that failed to load or predict, an input the cluster reads differently), else
    :class:`UnavailableError` naming Ray's reason (an actor or its node was lost)."""
    seen: BaseException | None = exc
    for _ in range(10):  # Ray wraps a task's error, and Ray Data wraps Ray's
        if seen is None:
            break
        if isinstance(seen, ModelyardError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return UnavailableError(f"the Ray cluster stopped scoring ({type(exc).__name__}: {first}); "
                            "every chunk committed before is kept, and a rerun goes on from "
                            "there")


def _in_order(results: Iterator[tuple[int, int, ScoredChunk]], skip: int) -> ChunkStream:
    """``results`` in chunk order from ``skip`` (held back until the chunks before arrive)."""
    waiting: list[tuple[int, int, ScoredChunk]] = []
    following = skip
    try:
        for item in results:
            heapq.heappush(waiting, item)
            while waiting and waiting[0][0] == following:
                yield heapq.heappop(waiting)
                following += 1
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops the dataset's execution, and with it the actors
    if waiting:
        raise UnavailableError(f"the Ray cluster returned chunk {waiting[0][0]} but never chunk "
                               f"{following}; a rerun goes on from the last committed chunk")


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


register_engine("ray", run_ray)

__all__ = ["ADDRESS_ENV", "INSTALL_HINT", "ActorShape", "ChunkActor", "ReadSpec", "ScorerSpec",
           "actor_shape", "cluster_failure", "default_actors", "parse_resources", "read_chunks",
           "require_ray", "run_ray", "score_on_ray"]
