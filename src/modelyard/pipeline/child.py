"""Train and evaluate in a process of its own: the user's code and its framework never run in
the parent.

Why a process: a train function that crashes, leaks memory, hangs or calls ``sys.exit`` must not
take the scheduler or the server with it, a timeout must be able to stop it, and a long-running
scheduler should not keep every framework (and a GPU context) loaded after each run.

How: the parent writes the train and holdout splits into a work folder (Parquet for tables and
text, ``.npy`` for arrays; nothing is pickled) and starts the child from a multiprocessing
*forkserver* that has preloaded numpy, pandas, scikit-learn and skops
(:mod:`modelyard.pipeline.preload`). The fork server is a fresh single-threaded interpreter, so
forking it is safe even when the parent has threads or has imported torch or TensorFlow; each
child is a copy of it that starts in milliseconds instead of seconds of imports.

The child imports the train function, calls ``train(X, y, params)``, saves the model with its
adapter into ``work/artifact``, loads it back the way a server would and scores it and the
champion on the holdout (:mod:`modelyard.pipeline.evaluate`), then writes ``result.json`` (or
``error.json``). Its stdout and stderr go to ``work/train.log``; it reports its stages to the
parent over a pipe. Scripts that start runs need the ``if __name__ == "__main__":`` guard of any
multiprocessing program.
"""

from __future__ import annotations

import contextlib
import faulthandler
import inspect
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import modelyard.errors as errors
from modelyard.cputime import process_cpu_s
from modelyard.errors import ModelyardError, RunCancelled, TrainingError

LOG_TAIL = 200_000
#: what the child writes as it ends, succeeded or failed: ``{"cpu_s": ...}``, the CPU seconds
#: it and the workers it waited for used (training, saving, evaluating)
USAGE_FILE = "usage.json"
_context: Any = None


@dataclass
class TrainJob:
    """What the child needs: all plain values, so it crosses the process boundary as data."""

    name: str
    train_ref: str
    root: str
    work_dir: str
    params: dict[str, Any] = field(default_factory=dict)
    flavor: str | None = None
    task: str | None = None
    metrics: list[str] = field(default_factory=list)
    #: your own code the artifact may hold (the spec's ``trusted_types``).
    trusted_types: list[str] = field(default_factory=list)
    #: the production version to score on the same holdout: ref, flavor, path, meta, signature.
    champion: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: the gate's fairness rules (``FairnessRule`` dumps), measured on the holdout's groups
    fairness: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainOutcome:
    """What the child produced: the artifact, its metadata and signature, and the scores."""

    artifact_dir: Path
    flavor: str
    meta: dict[str, Any]
    signature: dict[str, Any]
    task: str
    metrics: dict[str, float]
    champion: dict[str, Any] | None  # {"ref", "metrics", "note"}
    #: one record per fairness rule (:func:`modelyard.pipeline.fairness.measure`)
    fairness: list[dict[str, Any]] = field(default_factory=list)


# -- parent side --------------------------------------------------------------------------------
def warm() -> None:
    """Start the fork server now (it preloads in the background) so the first run starts fast."""
    ctx = _get_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def train_in_child(
    job: TrainJob, *, timeout_s: float, run_id: str, on_stage: Callable[[str], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> TrainOutcome:
    """Train and evaluate in a child process; :class:`TrainingError` if it fails, dies or hangs.

    ``on_stage`` is called with each stage the child starts (``"evaluate"``). ``should_stop`` is
    asked about twice a second: a reason it returns kills the child and raises
    :class:`RunCancelled` with that reason.
    """
    work = Path(job.work_dir)
    ctx = _get_context()
    receiver, sender = ctx.Pipe(duplex=False)
    # the other way round: we hold the only writer, so the child reads EOF when we die
    lifeline, keep_alive = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=main, args=(asdict(job), sender, lifeline), name="modelyard-train")
    proc.start()
    sender.close()  # the child holds the only writer: EOF tells us it is gone
    lifeline.close()
    try:
        timed_out, stopped = _wait(proc, receiver, time.monotonic() + timeout_s, on_stage,
                                   should_stop)
    finally:
        receiver.close()
        if proc.is_alive():  # timed out, or the parent was interrupted while waiting
            _kill(proc)
        keep_alive.close()
    code = proc.exitcode
    proc.close()
    hint = f"see logs: modelyard runs show {run_id}"
    if stopped is not None:
        raise RunCancelled(f"{stopped}; the training process was stopped")
    if timed_out:
        raise TrainingError(f"training ran longer than timeout_s={timeout_s:g}s and was stopped; "
                            f"raise timeout_s in the spec or train on less data ({hint})")
    if (work / "error.json").is_file():
        raise _failure(json.loads((work / "error.json").read_text()), hint)
    if code != 0 and not (work / "train.log").exists():
        # multiprocessing re-imports the parent's __main__ script in the child; without the
        # guard, that script starts another run there and the child dies before training
        raise TrainingError(
            f"the training process exited with code {code} before training started; if a script "
            "starts this run, put that code under `if __name__ == \"__main__\":` (the child's "
            "error is printed on stderr)"
        )
    if code != 0:
        raise TrainingError(f"the training process {_death(code)}; {hint}")
    r = json.loads((work / "result.json").read_text())
    return TrainOutcome(work / "artifact", r["flavor"], r["meta"], r["signature"], r["task"],
                        r["metrics"], r["champion"], r.get("fairness") or [])


def read_usage(work_dir: Path) -> dict[str, float]:
    """What the child in ``work_dir`` reported it used (``{"cpu_s": ...}``); empty if it wrote
    nothing (killed, or trained on another machine)."""
    try:
        data = json.loads((Path(work_dir) / USAGE_FILE).read_text())
        return {"cpu_s": float(data["cpu_s"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def read_log(work_dir: Path) -> str:
    """The last 200 KB of the child's output in ``work_dir`` (empty if it wrote none)."""
    path = Path(work_dir) / "train.log"
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - LOG_TAIL))
        return fh.read().decode("utf-8", errors="replace")


def _wait(proc: Any, receiver: Any, deadline: float, on_stage: Callable[[str], None] | None,
          should_stop: Callable[[], str | None] | None) -> tuple[bool, str | None]:
    """Relay the child's stages until it exits: ``(deadline passed first, why it was stopped)``."""
    watch = [proc.sentinel, receiver]
    while (remaining := deadline - time.monotonic()) > 0:
        if should_stop is not None and (reason := should_stop()) is not None:
            return False, reason
        ready = multiprocessing.connection.wait(
            watch, timeout=remaining if should_stop is None else min(remaining, 0.5))
        if receiver in ready:
            try:
                stage = receiver.recv_bytes().decode()
            except EOFError:
                watch.remove(receiver)
            else:
                if on_stage is not None:
                    on_stage(stage)
        if proc.sentinel in ready:
            return False, None
    return True, None


def _kill(proc: Any) -> None:
    """Kill the child and everything it started (data loader or joblib workers, say)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own process group
    except (AttributeError, OSError):
        proc.kill()
    proc.join(10)


def _get_context() -> Any:
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["modelyard.pipeline.preload"])
        else:  # Windows: no fork at all, so a fresh interpreter per run
            _context = multiprocessing.get_context("spawn")
    return _context


def _failure(error: dict[str, Any], hint: str) -> ModelyardError:
    kind, message = error["type"], error["message"]
    if error["stage"] == "train":
        return TrainingError(f"train function raised {kind}: {message}; {hint}")
    # modelyard errors from loading, saving or scoring (an unsafe type, a bad entrypoint, a
    # metric without scores) keep their kind and message
    cls = getattr(errors, kind, None) if error.get("modelyard") else None
    if isinstance(cls, type) and issubclass(cls, ModelyardError) and cls not in (
        errors.InputError, errors.DataValidationError, errors.GateFailed
    ):
        return cls(message)
    return TrainingError(f"{error['stage']} failed with {kind}: {message}; {hint}")


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        oom = " (the kernel does this when memory runs out)" if -code == signal.SIGKILL else ""
        return f"was killed by signal {name}{oom}"
    return f"exited with code {code} without a result"


# -- child side ---------------------------------------------------------------------------------
def main(job: dict[str, Any], stages: Any, lifeline: Any = None) -> None:
    """The child's entry point: train, save, evaluate; write ``result.json`` or ``error.json``.

    ``lifeline`` is the read end of a pipe only the parent writes to: when it reads EOF, the
    parent is gone, and the child ends itself with its workers.
    """
    if hasattr(os, "setpgrp"):  # a group of its own, so a timeout kills its workers too
        os.setpgrp()
    if lifeline is not None:
        _follow_parent(lifeline)
    work = Path(job["work_dir"])
    log = open(work / "train.log", "ab", buffering=0)  # noqa: SIM115 - lives as long as we do
    _redirect_output(log)
    os.environ.clear()
    os.environ.update(job["env"])  # the fork server's environment may be older than the run's
    stage = "load"
    try:
        from modelyard.adapters import adapter_for, get_adapter
        from modelyard.entrypoints import resolve_callable
        from modelyard.pipeline import evaluate
        from modelyard.pipeline.data import read_groups, read_split

        if job["root"] not in sys.path:
            sys.path.insert(0, job["root"])
        train = resolve_callable(job["train_ref"], Path(job["root"]))
        X, y = read_split(work / "train")
        stage = "train"
        model = train(X, y, dict(job["params"]))
        stage = "save"
        adapter = get_adapter(job["flavor"]) if job["flavor"] else adapter_for(model)
        (work / "artifact").mkdir()
        options = {"trusted_types": job["trusted_types"]} if job["trusted_types"] else {}
        if options and "trusted_types" not in inspect.signature(adapter.save).parameters:
            raise errors.ConfigError(
                f"trusted_types applies to sklearn, torch and tensorflow models, not "
                f"{adapter.flavor}")
        meta = adapter.save(model, work / "artifact", sample=X[:8], **options)
        signature = adapter.infer_signature(model, X, y).to_dict()
        task = job["task"] or infer_task(model, y)
        del model, X, y  # evaluate what was saved, not the object in memory
        stage = "evaluate"
        stages.send_bytes(b"evaluate")
        X_hold, y_hold = read_split(work / "holdout")
        candidate = evaluate.load_predictor(job["name"], 0, adapter.flavor, work / "artifact",
                                            meta, signature, task)
        metrics, fairness = evaluate.score_candidate(
            candidate, X_hold, y_hold, job["metrics"], job.get("fairness") or [],
            read_groups(work / "holdout"))
        with contextlib.suppress(ModelyardError):  # unrecorded: the server measures on load
            signature = {**signature, "outputs": evaluate.describe_outputs(candidate, X_hold)}
        champion = (evaluate.score_champion(job["champion"], X_hold, y_hold, job["metrics"])
                    if job["champion"] else None)
        _write_json(work / "result.json", {
            "flavor": adapter.flavor, "meta": meta, "signature": signature, "task": task,
            "metrics": metrics, "champion": champion, "fairness": fairness,
        })
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from user code included
        traceback.print_exc()
        _write_json(work / "error.json", {
            "stage": stage, "type": type(exc).__name__, "message": str(exc),
            "modelyard": isinstance(exc, ModelyardError),
        })
        sys.exit(1)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
            stages.close()
        with contextlib.suppress(Exception):  # what the run cost: recorded on the run
            _write_json(work / USAGE_FILE, {"cpu_s": round(process_cpu_s(), 3)})


def _follow_parent(lifeline: Any) -> None:
    """End this process (and its group) when the parent dies: its run is already abandoned, and
    a training nobody waits for would hold the CPU, memory or GPU for nothing."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        if hasattr(os, "killpg"):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def infer_task(model: Any, y: Any) -> str:
    """``classification`` or ``regression`` from the estimator's kind or the labels' dtype."""
    if "sklearn" in sys.modules:  # never import it just to ask
        from sklearn.base import BaseEstimator, is_classifier, is_regressor

        if isinstance(model, BaseEstimator):
            with contextlib.suppress(Exception):
                if is_classifier(model):
                    return "classification"
                if is_regressor(model):
                    return "regression"
    arr = np.asarray(y)
    if arr.ndim != 1:
        return "raw"
    return "regression" if arr.dtype.kind == "f" else "classification"


def _redirect_output(log: Any) -> None:
    """Point fds 1 and 2, and Python's streams, at the run's log file."""
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    faulthandler.enable(file=log)  # a segfault in native code still leaves a traceback


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)  # the parent never reads half a file


__all__ = ["TrainJob", "TrainOutcome", "infer_task", "read_log", "train_in_child", "warm"]
