"""What runs inside a device worker: load one version, warm it, then answer batches.

Started by :class:`modelyard.serving.worker.Worker` as ``python -c "...main()" FD PARENT_PID``;
the protocol is described there. The worker exits by itself when the server dies: its socket
reads end of file, and a watchdog thread notices a new parent pid during a long load or call
(when nothing reads the socket).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from modelyard.serving.worker import WorkerSpec, describe

_PARENT_POLL_S = 1.0


class _Unpacked:
    """What ``open_version`` needs of a registry, once the server has unpacked the artifact."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def artifact_path(self, version: Any) -> Path:
        return self.path


def main() -> None:
    """The worker process: ``python -c "...main()" FD PARENT_PID`` (started by :class:`Worker`)."""
    # Ctrl-C reaches the whole process group; the server stops its workers itself, in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="modelyard-parent-watch").start()
    conn = multiprocessing.connection.Connection(fd)
    try:
        spec, path = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    sys.path[:] = path  # user code the model imports (state dicts, python models) resolves alike
    serve(spec, conn)


def serve(spec: WorkerSpec, conn: Any) -> None:
    """Load, warm and report, then answer batches on ``conn`` until told to stop or orphaned."""
    try:
        predictor, outputs = _load(spec)
        from modelyard.serving.runner import estimate_memory

        info = {"device": predictor.device, "pid": os.getpid(),
                "memory": estimate_memory(predictor.model, spec.artifact_size),
                "outputs": [f.to_dict() for f in outputs]}
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps(("failed", describe(exc)), protocol=5))
        return
    conn.send_bytes(pickle.dumps(("ready", info), protocol=5))
    from modelyard.cputime import gpu_timer

    gpu = gpu_timer(spec.flavor, str(predictor.device))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            return
        seq, batch, scores = message
        start = time.thread_time_ns()
        gpu_s = 0.0
        try:
            if gpu is None:
                result = predictor.predict_batch(batch, scores=scores)
            else:
                result, gpu_s = gpu.run(partial(predictor.predict_batch, batch, scores=scores))
            answer: tuple[Any, Any] = (result, None)
        except Exception as exc:  # that batch fails; the worker keeps serving
            answer = (None, describe(exc))
        usage = ((time.thread_time_ns() - start) / 1e9, gpu_s)
        try:
            reply = pickle.dumps((seq, *answer, usage), protocol=5)
        except Exception as exc:  # an answer that cannot be pickled fails that batch alone
            reply = pickle.dumps((seq, None, describe(exc), usage), protocol=5)
        try:
            conn.send_bytes(reply)
        except OSError:
            return


def _load(spec: WorkerSpec) -> tuple[Any, Any]:
    """Load the version on its device and run one warm-up row (first calls are slow on GPUs);
    returns the predictor and the outputs the warm-up measured."""
    from modelyard.predictor import open_version
    from modelyard.serving.inputs import InputPath

    predictor = open_version(spec, _Unpacked(spec.artifact), device=spec.device)
    if spec.runtime == "onnx":
        from modelyard.serving.onnx_runtime import as_source

        predictor = as_source(predictor)
    inputs = InputPath(predictor.signature)
    batch, _ = inputs.prepare(inputs.warmup_payload())
    outputs = predictor.predict_batch(inputs.finalize(batch), scores=True).fields()
    return predictor, outputs


def _watch_parent(parent_pid: int) -> None:
    """Exit when the server is gone, even during a long load or call that holds the pipe."""
    while True:
        time.sleep(_PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(0)


__all__ = ["main", "serve"]
