"""Flower's processes for a federated run: the SuperLink ``modelyard federate`` starts, the run
it submits there, and the SuperNode ``modelyard federate client`` runs at a site.

They are Flower's own commands (``flower-superlink``, ``flwr run``, ``flower-supernode``),
started from this Python's ``bin`` folder; nothing here imports ``flwr``. Each process gets its
own ``FLWR_HOME`` in a work folder, so runs never share Flower state, and its own process group,
so stopping it stops the apps it started too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from modelyard.errors import ConfigError, FederationError, FrameworkMissingError

#: the Flower app a run is submitted as: modelyard's ServerApp and ClientApp, and the run
#: config keys `modelyard federate` sets (a run may only override keys declared here).
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "modelyard-federated"
version = "1.0.0"
description = "modelyard federated training: sites send weights and metrics, never data"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "modelyard"

[tool.flwr.app.components]
serverapp = "modelyard.federated.flower:server_app"
clientapp = "modelyard.federated.flower:client_app"

[tool.flwr.app.config]
project = ""
model = ""
run-id = ""
actor = ""
rounds = 3
min-clients = 2
round-timeout = 300.0
"""

#: the name of the SuperLink connection in a run's own Flower config.
_CONNECTION = "modelyard"
#: how long a Flower process may take to start listening.
START_TIMEOUT_S = 60.0


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``; :class:`ConfigError` for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{address!r} is not HOST:PORT (e.g. 0.0.0.0:9092)")
    return host.strip("[]"), int(port)


def free_port() -> int:
    """A TCP port nothing on this machine listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_tool(name: str) -> str:
    """The path of Flower's command ``name`` beside this Python, else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise FrameworkMissingError(f"{name} is not installed: federated training needs Flower;"
                                    " pip install 'modelyard[federated]'")
    return found


def flower_env(home: Path) -> dict[str, str]:
    """This process's environment for a Flower process: its own ``FLWR_HOME``, Flower's
    commands on ``PATH`` (the SuperLink starts its helpers by name) and modelyard importable
    (its apps run ``modelyard.federated.flower``)."""
    import modelyard

    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(modelyard.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def quote(value: str) -> str:
    """``value`` as a Flower config value: a TOML literal string."""
    if "'" in value or "\n" in value:
        raise ConfigError(f"{value!r}: a value passed to Flower cannot hold a ' or a line break")
    return f"'{value}'"


def config_arg(values: Mapping[str, Any]) -> str:
    """``key=value ...`` for ``--run-config``/``--node-config``: strings quoted, numbers bare."""
    return " ".join(f"{k}={quote(v) if isinstance(v, str) else json.dumps(v)}"
                    for k, v in values.items())


class FlowerProcess:
    """A Flower command running in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], home: Path, log_path: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name, self.home, self.log_path = name, home, log_path
        home.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [flower_tool(name), *args], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**flower_env(home), **(env or {})},
            start_new_session=True)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of its output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop it and whatever it started (SIGTERM to its group, then SIGKILL)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):  # helpers left in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


class SuperLink(FlowerProcess):
    """A SuperLink for one federated run: SuperNodes, the run's ServerApp and ``flwr`` all
    reach it at ``address`` (Flower serves them on one HTTP port), without TLS."""

    def __init__(self, address: str, work: Path, env: Mapping[str, str] | None = None) -> None:
        self.host, self.port = parse_address(address)
        self.work = work
        super().__init__("flower-superlink", [
            "--insecure", "--disable-runtime-dependency-installation",
            "--host", self.host, "--port", str(self.port),
            "--database", str(work / "superlink.db")], work / "flwr-home", work / "superlink.log",
            env)
        local = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        self.local_address = f"{local}:{self.port}"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
            f'address = "{self.local_address}"\ninsecure = true\n')

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once it listens; :class:`FederationError` with its output if it never
        does."""
        host, port = parse_address(self.local_address)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise FederationError(f"the Flower SuperLink on {self.host}:{self.port} "
                                      f"exited at start: {_last(self.tail())}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                return
            time.sleep(0.2)
        raise FederationError(f"the Flower SuperLink did not listen on {self.host}:{self.port} "
                              f"within {timeout_s:g}s: {_last(self.tail())}")

    def submit(self, run_config: Mapping[str, Any]) -> str:
        """Submit a run of modelyard's Flower app with ``run_config``; its Flower run id."""
        app = self.work / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        out = self.flwr("run", str(app), _CONNECTION, "--run-config", config_arg(run_config),
                        "--format", "json")
        try:
            return str(json.loads(out[out.index("{"):])["run-id"])
        except (ValueError, KeyError, TypeError):
            raise FederationError(f"the SuperLink did not start the run: {_last(out)}") from None

    def status(self, run_id: str) -> str:
        """The Flower run's status: ``pending``, ``running``, ``finished:completed``,
        ``finished:failed``..., or ``unknown`` when ``flwr`` cannot tell."""
        try:
            out = self.flwr("ls", _CONNECTION, "--run-id", run_id, "--format", "json")
            return str(json.loads(out[out.index("{"):])["runs"][0]["status"])
        except (FederationError, ValueError, KeyError, IndexError, TypeError):
            return "unknown"

    def logs(self, run_id: str) -> str:
        """What the run's ServerApp printed (its last lines)."""
        try:
            return self.flwr("log", run_id, _CONNECTION, "--show", timeout_s=30)
        except FederationError as exc:
            return str(exc)

    def flwr(self, *args: str, timeout_s: float = 60) -> str:
        """Run ``flwr ARGS`` against this SuperLink; its output."""
        try:
            done = subprocess.run([flower_tool("flwr"), *args], capture_output=True, text=True,
                                  env=flower_env(self.home), timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise FederationError(f"flwr {args[0]} did not answer within {timeout_s:g}s") from None
        if done.returncode != 0:
            raise FederationError(f"flwr {args[0]} failed: {_last(done.stdout + done.stderr)}")
        return done.stdout


class SuperNode(FlowerProcess):
    """A SuperNode for ``model`` at a site: it connects to the SuperLink at ``server`` and
    runs modelyard's ClientApp on ``data`` when a run asks (the data never leaves)."""

    def __init__(self, server: str, *, model: str, data: Path, site: str, work: Path,
                 port: int | None = None) -> None:
        parse_address(server)
        node_config = config_arg({"model": model, "data": str(data.absolute()), "site": site})
        super().__init__("flower-supernode", [
            "--insecure", "--superlink", server, "--node-config", node_config,
            "--host", "127.0.0.1", "--port", str(port or free_port())],
            work / "flwr-home", work / "supernode.log")


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


__all__ = ["APP_PYPROJECT", "START_TIMEOUT_S", "FlowerProcess", "SuperLink", "SuperNode",
           "config_arg", "flower_env", "flower_tool", "free_port", "parse_address", "quote"]
