"""The Ray executor: a run's whole work in a Ray task on a cluster node, results back here.

What runs where:

- **client** (``modelyard train``, the scheduler): records the run, checks nothing changed in
  code, params or spec, stages the champion's artifact, submits the task, appends the streamed
  output to the run's log, and then gates and registers exactly as for a local run;
- **worker** (a Ray task with the spec's ``resources``): checks its Python and framework versions
  against the client's (:class:`EnvironmentMismatchError` before any data is read), then runs
  :func:`modelyard.pipeline.job.execute` -- reads the data (files, fsspec URLs, SQL), validates,
  splits, trains and evaluates in a child process -- and writes the artifact to the shared
  artifact store's staging area (``<artifacts>/staging``, content-addressed and verified on read).

The task is a streaming generator: it yields its stages, notes and output as they happen, then
the result, so nothing but Ray connects the two. Ctrl-C or a cancellation asked in the registry
cancels it (``ray.cancel(force=True)``: the worker and the training child die). A worker or node
lost mid-run is retried ``retries`` times (a new task, from the start), then fails the run with
the reason; the client registers only a whole, verified artifact, so a lost node never leaves a
half version. Ray is imported on the first run, never by ``import modelyard``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import modelyard.errors as errors
from modelyard.errors import (
    ConfigError,
    FrameworkMissingError,
    ModelyardError,
    RunCancelled,
    TrainingError,
)
from modelyard.pipeline.child import TrainOutcome
from modelyard.pipeline.job import Executed, RunHooks, RunJob, check_environment, execute
from modelyard.store import open_store, pack_dir, unpack

#: how often the client wakes to relay output and ask whether to stop
POLL_S = 0.25
#: Ray's errors that mean the worker (or its node) was lost, not that the work failed
_LOST = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
         "ObjectReconstructionFailedError", "LocalRayletDiedError")
_remote: Any = None


def import_ray() -> Any:
    """The ``ray`` module, or :class:`FrameworkMissingError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FrameworkMissingError(
            "the ray executor needs Ray, which is not installed: pip install 'modelyard[ray]'"
        ) from None
    return ray


@dataclass(frozen=True)
class _Lost:
    """The task's worker or node was lost mid-run (the run may be tried again): why."""

    reason: str


class RayExecutor:
    """Runs each training run as a Ray task on the cluster at ``address``.

    ``artifacts`` is the artifact store's location (a folder or fsspec URL) that every node can
    reach; the task stages its artifact under ``<artifacts>/staging``.
    """

    name: ClassVar[str] = "ray"

    def __init__(self, *, address: str | None = None, artifacts: str | None = None) -> None:
        import_ray()  # a missing Ray fails where the executor is chosen, before any run starts
        self.address = address
        self.artifacts = artifacts

    def run(self, job: RunJob, work: Path, hooks: RunHooks) -> Executed:
        """Execute ``job`` in a Ray task; retried ``job.retries`` times if its node is lost."""
        ray = self.connect()
        _check_feasible(ray, job)
        staging_at = self._staging_at()
        staging = open_store(staging_at)
        job = _with_staged_champion(job, staging, work)
        tries = job.retries + 1
        lost = _Lost("never tried")
        for attempt in range(1, tries + 1):
            done = _attempt(ray, job, work, hooks, (staging_at, staging))
            if isinstance(done, Executed):
                return done
            lost = done
            if attempt < tries:
                hooks.note(f"attempt {attempt} of {tries} lost its worker ({lost.reason}); "
                           "trying again")
                hooks.stage(f"retry {attempt}")
        raise TrainingError(
            f"the Ray worker running this run was lost: {lost.reason}"
            + (f" (tried {tries} times; retries: {job.retries})" if tries > 1 else
               "; set retries in the spec to try again on another node")
            + "; nothing was registered")

    def connect(self) -> Any:
        """Connect this process to the cluster once (``ray.init``); the ``ray`` module."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        where = self.address or "RAY_ADDRESS"
        hint = ("start one ('ray start --head') or give its address with --ray-address / "
                "MODELYARD_RAY_ADDRESS")
        refused = _unreachable(self.address)
        if refused:  # Ray itself would retry for minutes, then exit the process
            raise ConfigError(f"cannot reach the Ray cluster at {where}: {refused}; {hint}")
        try:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False,
                     include_dashboard=False if self.address is None else None)
        except (ConnectionError, RuntimeError, ValueError, SystemExit) as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at {where}: {exc}; {hint}"
                              ) from None
        return ray

    def _staging_at(self) -> str:
        if not self.artifacts:
            raise ConfigError("the ray executor needs an artifact store its workers can reach: "
                              "set MODELYARD_ARTIFACTS to a shared folder or an s3:// URL")
        return f"{str(self.artifacts).rstrip('/')}/staging"


def _unreachable(address: str | None) -> str | None:
    """Why nothing answers at a ``HOST:PORT`` address (within 3 s), or None (it answers, or the
    address is not of that form: ``auto``, ``ray://...``, None)."""
    if not address or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=3.0).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _check_feasible(ray: Any, job: RunJob) -> None:
    """:class:`ConfigError` at once when no node has what the run asks, instead of a task that
    waits for ever."""
    wanted = {"CPU": job.resources.cpus, "GPU": job.resources.gpus, **job.resources.custom}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in nodes):
        return
    asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items() if v)
    raise ConfigError(f"no node of the Ray cluster has {asked} (the run's resources); add such "
                      "a node or lower the spec's resources")


def _with_staged_champion(job: RunJob, staging: Any, work: Path) -> RunJob:
    """``job`` with the champion's artifact copied to the staging store, so the worker can score
    it: its ``path`` here means nothing there."""
    champion = job.train.champion
    if not champion or "path" not in champion:
        return job
    digest, _ = staging.put_file(pack_dir(Path(champion["path"]), work / "champion.tar"))
    (work / "champion.tar").unlink()
    staged = {k: v for k, v in champion.items() if k != "path"} | {"staged": digest}
    return dataclasses.replace(job, train=dataclasses.replace(job.train, champion=staged))


def _attempt(ray: Any, job: RunJob, work: Path, hooks: RunHooks,
             staging: tuple[str, Any]) -> Executed | _Lost:
    """One task: relay what it yields until its result; cancel it on a reason to stop."""
    global _remote
    if _remote is None:
        _remote = ray.remote(work_on_node)
    options = {**job.resources.to_ray(), "max_retries": 0, "retry_exceptions": False,
               "num_returns": "streaming"}
    stream = _remote.options(**options).remote(job, staging[0])
    result: dict[str, Any] | None = None
    with open(work / "train.log", "ab") as log:
        try:
            while result is None:
                if (reason := hooks.stop()) is not None:
                    _cancel(ray, stream)
                    raise RunCancelled(f"{reason}; its Ray task was cancelled")
                step = _relay(ray, stream, log, hooks)
                if isinstance(step, _Lost):
                    return step
                result = step
        except KeyboardInterrupt:
            _cancel(ray, stream)
            raise
    return _collect(result, work, staging[1])


def _relay(ray: Any, stream: Any, log: Any, hooks: RunHooks) -> dict[str, Any] | _Lost | None:
    """Pass on what the task yielded within :data:`POLL_S`; its result once it sends it."""
    ready, _ = ray.wait([stream], timeout=POLL_S)
    if not ready:
        return None
    try:
        ref = next(stream)
        kind, value = ray.get(ref)
    except StopIteration:
        return _Lost("the task ended without a result")
    except ray.exceptions.TaskCancelledError:
        raise RunCancelled("cancelled: its Ray task was cancelled") from None
    except ray.exceptions.RayError as exc:
        if type(exc).__name__ in _LOST or isinstance(exc, ray.exceptions.RaySystemError):
            return _Lost(_first_line(exc))
        raise TrainingError(f"the Ray task failed: {_first_line(exc)}") from None
    if kind == "stage":
        hooks.stage(value)
    elif kind == "note":
        hooks.note(value)
    elif kind == "log":
        log.write(value)
        log.flush()
    elif kind == "done":
        return dict(value)
    return None


def _cancel(ray: Any, stream: Any) -> None:
    with contextlib.suppress(Exception):
        ray.cancel(stream, force=True)


def _collect(result: dict[str, Any], work: Path, staging: Any) -> Executed:
    """The task's result here: its error raised again, or its artifact fetched and verified."""
    if "error" in result:
        raise _rebuild(result["error"])
    outcome = result["outcome"]
    if outcome is not None:
        archive = work / "artifact.tar"
        staging.get_file(outcome["digest"], archive)  # verified against its digest
        with contextlib.suppress(Exception):
            staging.delete(outcome["digest"])
        unpack(archive, work / "artifact")
        archive.unlink()
        outcome = TrainOutcome(work / "artifact", outcome["flavor"], outcome["meta"],
                               outcome["signature"], outcome["task"], outcome["metrics"],
                               outcome["champion"], outcome.get("fairness") or [])
    return Executed(outcome, result["data_fingerprint"], result["reference_stats"],
                    result["environment"], result.get("batch_profile"),
                    result.get("features"), result.get("data_sources") or [])


def _rebuild(error: dict[str, Any]) -> ModelyardError:
    """The worker's error as the modelyard error it was (a plain one becomes TrainingError)."""
    cls = getattr(errors, error["type"], None)
    if isinstance(cls, type) and issubclass(cls, ModelyardError):
        exc = cls(error["message"])
        if error.get("report"):
            exc.report = error["report"]  # type: ignore[attr-defined]
        return exc
    return TrainingError(f"the run failed on its Ray worker with {error['type']}: "
                         f"{error['message']}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- worker side --------------------------------------------------------------------------------
def work_on_node(job: RunJob, staging_at: str) -> Iterator[tuple[str, Any]]:
    """The Ray task: run ``job`` here, yielding ``(kind, value)``: ``stage``, ``note`` and
    ``log`` (bytes of the training output) as they happen, then ``done`` with the result."""
    root = Path(tempfile.mkdtemp(prefix="modelyard-ray-"))
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    box: dict[str, Any] = {}
    worker = threading.Thread(target=_work, args=(job, staging_at, root, events, box),
                              name="modelyard-run", daemon=True)
    worker.start()
    offset = 0
    try:
        while True:
            worker.join(POLL_S)
            while not events.empty():
                yield events.get()
            chunk, offset = _read_from(root / "run" / "train.log", offset)
            if chunk:
                yield ("log", chunk)
            if not worker.is_alive():
                break
        yield ("done", box)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _work(job: RunJob, staging_at: str, root: Path, events: queue.SimpleQueue[Any],
          box: dict[str, Any]) -> None:
    """The run on this worker; leaves ``box["result"]`` fields or ``box["error"]``."""
    where = f"Ray worker {socket.gethostname()} (pid {os.getpid()})"
    hooks = RunHooks(stage=lambda s: events.put(("stage", s)),
                     note=lambda line: events.put(("note", line)))
    try:
        check_environment(job.environment, where)
        events.put(("note", f"running on {where}"))
        staging = open_store(staging_at)
        job = _fetch_champion(job, staging, root)
        # the worker's own environment variables (PATH, credentials), not the client's
        job = dataclasses.replace(job, train=dataclasses.replace(job.train, env=dict(os.environ)))
        executed = execute(job, root / "run", hooks)
        outcome = None
        if executed.outcome is not None:
            o = executed.outcome
            digest, _ = staging.put_file(pack_dir(o.artifact_dir, root / "artifact.tar"))
            outcome = {"digest": digest, "flavor": o.flavor, "meta": o.meta,
                       "signature": o.signature, "task": o.task, "metrics": o.metrics,
                       "champion": o.champion, "fairness": o.fairness}
        box.update(outcome=outcome, data_fingerprint=executed.data_fingerprint,
                   reference_stats=executed.reference_stats, environment=executed.environment,
                   batch_profile=executed.batch_profile, features=executed.features,
                   data_sources=executed.data_sources)
    except BaseException as exc:
        box["error"] = {"type": type(exc).__name__, "message": str(exc),
                        "report": list(getattr(exc, "report", None) or [])}


def _fetch_champion(job: RunJob, staging: Any, root: Path) -> RunJob:
    champion = job.train.champion
    if not champion or "staged" not in champion:
        return job
    archive = staging.get_file(champion["staged"], root / "champion.tar")
    folder = unpack(archive, root / "champion")
    placed = {k: v for k, v in champion.items() if k != "staged"} | {"path": str(folder)}
    return dataclasses.replace(job, train=dataclasses.replace(job.train, champion=placed))


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """The bytes of ``path`` past ``offset`` (at most 1 MB), and the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read(1 << 20)
    except OSError:
        return b"", offset
    return chunk, offset + len(chunk)


__all__ = ["POLL_S", "RayExecutor", "import_ray", "work_on_node"]
