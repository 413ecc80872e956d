"""A modelyard server in a child process: start it on a port, wait until it is ready, stop it.

For a program that needs a real server beside it (``modelyard demo --heal`` sends its traffic to
one) without running the app in its own process. The child is ``python -m modelyard.serving``,
the ``modelyard serve`` command itself, so it is the server users run; the test helper
:class:`modelyard.testing.ServerProcess` builds on this one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from modelyard.errors import ServerStartError

#: how much of a failed server's output a :class:`ServerStartError` quotes.
_TAIL_CHARS = 4000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m modelyard.serving`` on 127.0.0.1 in a child process, its output in ``log``.

    Ready when constructed unless ``wait=False`` (then call :meth:`wait_ready`, so several start
    in parallel). ``port=None`` picks a free port. ``env`` adds to this process's environment,
    with ``MODELYARD_HOME`` set to ``home``; ``args`` are more ``modelyard serve`` options.
    ``url`` is its base URL, ``name`` how it names itself in rollout windows. Stop it with
    :meth:`stop`, or use it as a context manager.
    """

    def __init__(self, home: Path, *, port: int | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), log_level: str = "warning", wait: bool = True,
                 ready_timeout_s: float = 120.0) -> None:
        self.port = port or free_port()
        full_env = {**os.environ, "MODELYARD_HOME": str(home), **(env or {})}
        self.log = Path(home) / f"server-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelyard.serving", "--port", str(self.port),
                 "--log-level", log_level, *args], env=full_env, stdout=out,
                stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"server:{socket.gethostname()}:{self.process.pid}"
        if wait:
            self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until ``/readyz`` answers 200; :class:`ServerStartError` with the server's
        output if it exits first or is not ready within ``timeout_s`` (it is stopped then)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status is not None:
                raise ServerStartError(f"the server on port {self.port} exited with status "
                                       f"{status} before it was ready; {self._output()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet, or 503 while it loads its models
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"the server on port {self.port} was not ready within "
                               f"{timeout_s:g} s; {self._output()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``) and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _output(self) -> str:
        text = self.log.read_text(errors="replace")
        shown = text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]
        return f"its output ({self.log}) says why:\n{shown}"


__all__ = ["ServerProcess", "free_port"]
