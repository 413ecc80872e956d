"""Device workers: a child process that owns one version on its device and predicts batches.

The server starts a worker as a fresh interpreter -- the ``spawn`` start method's semantics (a
forked child would inherit the server's threads and, on a GPU, a CUDA context it cannot use) but
through ``subprocess`` with one inherited socket, so the parent's ``__main__`` is never re-run
(a server embedded in a script without a ``__main__`` guard still works, and nothing slow is
imported twice). It talks to the worker over that socket as a ``multiprocessing`` connection:

=============================  ==============================================================
server -> worker, once         the :class:`WorkerSpec` (plain data) and the server's ``sys.path``
worker -> server, once         ``("ready", info)`` after load and warm-up, or
                               ``("failed", error)`` -- a load failure is an answer, not a hang
server -> worker, per batch    ``(seq, batch, scores)``; ``None`` asks the worker to exit
worker -> server, per batch    ``(seq, Prediction, None, usage)`` or ``(seq, None, error,
                               usage)``; ``usage`` is ``(cpu_s, gpu_s)``, what the batch took
                               in the worker (:mod:`modelyard.cputime`), summed on
                               :attr:`Worker.cpu_s` and :attr:`Worker.gpu_s`
=============================  ==============================================================

Messages are pickled with protocol 5 (numpy buffers are copied once, not converted), one round
trip per batch. Errors cross as ``(kind, message)`` and are rebuilt as the same
:class:`~modelyard.errors.ModelyardError` class where one exists, so an error in one batch fails
that batch only, with the status an in-process model would give.

On the server side a :class:`Worker` is one incarnation of the process: ``start`` (blocking) waits
for ``ready``; ``attach`` starts a reader thread that resolves ``await predict(...)`` futures on
the event loop; when the process exits, every request in flight fails at once with
:class:`WorkerDiedError` (503) and ``on_exit`` is called so the owner can restart it
(:mod:`modelyard.serving.supervisor`). What runs inside the worker is
:mod:`modelyard.serving.worker_main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing.connection
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard import errors
from modelyard.errors import AdapterError, ModelyardError, WorkerDiedError

log = logging.getLogger(__name__)

#: the worker's entry point: ``python -c _ENTRY FD PARENT_PID`` (see :mod:`.worker_main`).
_ENTRY = "from modelyard.serving.worker_main import main; main()"
#: batches above this many bytes are written from a thread, so a big tensor never stalls the loop.
_INLINE_SEND = 256 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads, as plain data: the version's record fields, its artifact, a device.

    ``artifact`` is a local folder the server already verified against the digest (the registry
    unpacks it once), so the worker needs no database connection.
    """

    model: str
    version: int
    flavor: str
    artifact: str
    device: str
    artifact_digest: str = ""
    artifact_size: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: a load (plus warm-up) slower than this is killed and reported as a failure.
    start_timeout_s: float = 300.0
    #: the serving section's ``runtime``: ``onnx`` answers in the source version's shape
    #: (:func:`~modelyard.serving.onnx_runtime.as_source`).
    runtime: str = "native"

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.model}:{self.version}"

    @classmethod
    def from_record(cls, record: Any, artifact: str | Path, device: str,
                    **options: Any) -> WorkerSpec:
        """The spec for a registry ``ModelVersion`` whose artifact is unpacked at ``artifact``."""
        return cls(model=record.model, version=int(record.version), flavor=record.flavor,
                   artifact=str(artifact), device=device,
                   artifact_digest=record.artifact_digest,
                   artifact_size=int(record.artifact_size), meta=dict(record.meta),
                   signature=dict(record.signature), metrics=dict(record.metrics or {}),
                   **options)


OnExit = Callable[["Worker", str], None]


class Worker:
    """One worker process for one version: ``start``, ``attach``, ``await predict``, ``stop``."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.info: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.exited = False
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_exit: OnExit | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._seq = itertools.count()
        self._send_lock: asyncio.Lock | None = None
        self._stopping = False
        #: CPU and GPU seconds the worker's batches took, as it reported them with its answers
        self.cpu_s = 0.0
        self.gpu_s = 0.0

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` before ``start``)."""
        return None if self.process is None else int(self.process.pid)

    # -- lifecycle (blocking; call off the event loop) ------------------------------------------
    def start(self) -> dict[str, Any]:
        """Spawn the process and wait until it loaded and warmed the model; returns its info.

        Raises the load error (rebuilt as its modelyard class) or :class:`AdapterError` when the
        process dies or exceeds ``spec.start_timeout_s`` while loading.
        """
        ours, theirs = socket.socketpair()
        with ours, theirs:
            fd = theirs.fileno()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, str(fd), str(os.getpid())],
                pass_fds=(fd,), stdin=subprocess.DEVNULL)
            # only the worker holds its end now, so its exit reads as end of file here
            self._conn = conn = multiprocessing.connection.Connection(ours.detach())
        ref = self.spec.ref
        try:
            conn.send_bytes(pickle.dumps((self.spec, list(sys.path)), protocol=5))
            if not conn.poll(self.spec.start_timeout_s):
                self._reap(0.0)
                conn.close()
                raise AdapterError(
                    f"{ref}: the device worker did not load the model within "
                    f"{self.spec.start_timeout_s:g} s; raise worker_start_timeout_s or check "
                    "the server log")
            kind, payload = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "ready":
            self.info = payload
            return dict(payload)
        self._reap()
        conn.close()
        if kind == "failed":
            raise rebuild(*payload)
        raise AdapterError(f"{ref}: the device worker {exit_reason(self.process.returncode)} "
                           "while loading the model; see the server log")

    def attach(self, loop: asyncio.AbstractEventLoop, on_exit: OnExit | None = None) -> None:
        """Deliver results on ``loop`` (from a reader thread); ``on_exit(worker, why)`` on death."""
        self._loop = loop
        self._on_exit = on_exit
        self._send_lock = asyncio.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"modelyard-worker-reader {self.spec.ref}")
        self._reader.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit, then terminate or kill it if it does not (blocking)."""
        self._stopping = True
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send_bytes(pickle.dumps(None))
        self._reap(timeout_s)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout_s)
        if self._conn is not None:
            self._conn.close()

    def kill(self) -> None:
        """Kill the process now (a hung call); the exit is then handled like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def _reap(self, timeout_s: float = 2.0) -> None:
        """Wait for the process to exit; terminate, then kill it if it does not."""
        process = self.process
        if process is None:
            return
        for ask in (None, process.terminate, process.kill):
            if ask is not None:
                ask()
            try:
                process.wait(timeout_s if ask is None else 2.0)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- predictions (on the event loop) --------------------------------------------------------
    async def predict(self, batch: Any, scores: bool = False,
                      timeout_s: float | None = None) -> Any:
        """Predict one batch in the worker; returns its :class:`Prediction`.

        Raises :class:`WorkerDiedError` if the worker is gone or exits first, the batch's own error
        if the model failed on it, and kills the worker (then :class:`WorkerDiedError`) when no
        answer comes within ``timeout_s``: a hung device call would block every later batch.
        """
        if self.exited or self._loop is None or self._send_lock is None:
            raise WorkerDiedError(f"{self.spec.ref}: the device worker is not running; retry")
        seq = next(self._seq)
        future = self._loop.create_future()
        self._pending[seq] = future
        data = pickle.dumps((seq, batch, scores), protocol=5)
        try:
            async with self._send_lock:  # one writer at a time: messages must not interleave
                if len(data) <= _INLINE_SEND:
                    self._conn.send_bytes(data)
                else:
                    await asyncio.to_thread(self._conn.send_bytes, data)
        except (OSError, ValueError):
            self._pending.pop(seq, None)
            raise WorkerDiedError(f"{self.spec.ref}: the device worker is gone; retry") from None
        if timeout_s is None:
            return await future
        handle = self._loop.call_later(timeout_s, self._hung, seq, timeout_s)
        try:
            return await future
        finally:
            handle.cancel()

    def _hung(self, seq: int, timeout_s: float) -> None:
        if seq in self._pending:
            log.error("%s: no answer from the device worker (pid %s) within %g s; killing it",
                      self.spec.ref, self.pid, timeout_s)
            self.kill()

    def _read(self) -> None:
        """Reader thread: unpickle answers off the loop, hand them to it; report the exit."""
        loop, conn = self._loop, self._conn
        assert loop is not None
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                message = pickle.loads(data)
            except Exception as exc:  # an answer the server cannot rebuild fails what is waiting
                message = (None, None, ("AdapterError", f"{self.spec.ref}: unreadable answer "
                                        f"from the device worker: {exc}"))
            if not _call(loop, self._deliver, message):
                return
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)  # the pipe closes a moment before the exit status is known
        _call(loop, self._exited, exit_reason(self.process.returncode))

    def _deliver(self, message: tuple[Any, ...]) -> None:
        seq, result, error = message[:3]
        if len(message) > 3:
            cpu_s, gpu_s = message[3]
            self.cpu_s += cpu_s
            self.gpu_s += gpu_s
        if seq is None:
            waiting = list(self._pending.values())
            self._pending.clear()
        else:
            one = self._pending.pop(seq, None)
            waiting = [] if one is None else [one]
        for future in waiting:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(rebuild(*error))

    def _exited(self, reason: str) -> None:
        self.exited = True
        if self._pending:
            error = WorkerDiedError(
                f"{self.spec.ref}: the device worker (pid {self.pid}) {reason} during the call; "
                "retry shortly")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()
        if not self._stopping:
            log.error("%s: the device worker (pid %s) %s", self.spec.ref, self.pid, reason)
            if self._on_exit is not None:
                self._on_exit(self, reason)


def check_loads(registry: Any, record: Any, *, timeout_s: float = 300.0) -> dict[str, Any]:
    """Load and warm a registry version the way a server does, in a fresh process on the CPU,
    then stop it; returns what the worker reported (device, memory).

    Raises what a server would meet: :class:`~modelyard.errors.IntegrityError` for an artifact
    that does not match its digest, the adapter's load or warm-up error (rebuilt as its modelyard
    class), or :class:`AdapterError` when the process dies or takes over ``timeout_s``. A fresh
    process keeps a crash, a hang or the model's memory out of the caller. A version registered
    with ``runtime: onnx`` loads its ONNX export, as a server does (a :class:`ConflictError`
    naming the export command when it has none).
    """
    from modelyard.version_settings import VersionSettings

    runtime = VersionSettings.of(record, strict=False).serving.runtime
    if runtime == "onnx":
        from modelyard.serving.onnx_runtime import served_record

        record = served_record(registry, record)
    path = registry.artifact_path(record)  # verified against the registered digest
    worker = Worker(WorkerSpec.from_record(record, path, "cpu", start_timeout_s=timeout_s,
                                           runtime=runtime))
    try:
        return worker.start()
    finally:
        worker.stop()


def _call(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> bool:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: the server is gone, nobody is waiting
        return False
    return True


def exit_reason(code: int | None) -> str:
    """``"was killed by SIGKILL"``, ``"exited with code 1"``: why a process ended, in words."""
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def describe(exc: BaseException) -> tuple[str, str]:
    """``(kind, message)`` of an error, the form errors cross the pipe in."""
    return type(exc).__name__, str(exc) or type(exc).__name__


def rebuild(kind: str, message: str) -> ModelyardError:
    """The modelyard error named ``kind`` with ``message``; :class:`AdapterError` for any other."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, ModelyardError):
        with contextlib.suppress(TypeError):
            return cls(message)
    return AdapterError(message if kind == "AdapterError" else f"{kind}: {message}")


__all__ = ["Worker", "WorkerSpec", "check_loads", "describe", "exit_reason", "rebuild"]
