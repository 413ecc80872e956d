"""A private Docker daemon, a Debian base image and image runs, for tests and benchmarks.

No image registry is reachable from here, so nothing is pulled: :class:`Dockerd` starts a
``dockerd`` of its own with networking off (no bridge, no iptables), its data, exec state and
socket under one temporary folder, and stops it by its pid; :func:`debian_python_image` makes a
base image from Debian's packages with ``mmdebstrap`` (cached as a tarball, keyed by what went
into it) and ``docker import``; :class:`Container` runs an image and waits for its ``/readyz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from modelyard.errors import ServerStartError

#: what the base image is made of: Debian 12 (its Python 3.11 takes the same wheels as the
#: host's) with python3 and venv, and no documentation.
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv")
MIRROR = "http://deb.debian.org/debian"
_NO_DOCS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


class Dockerd:
    """A ``dockerd`` of its own under ``root`` (short: unix socket paths are limited to 108
    bytes), started by :meth:`start` and stopped by its pid in :meth:`stop`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="myd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.client = _client()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> Dockerd:
        """Start the daemon and wait until it answers; :class:`ServerStartError` with its log
        when it is not installed, exits, or does not answer in time."""
        daemon = shutil.which("dockerd")
        if daemon is None or self.client is None:
            raise ServerStartError("dockerd and docker are not installed "
                                   "(apt-get install docker.io)")
        command = [daemon, "--bridge=none", "--iptables=false", "--ip-masq=false",
                   f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
                   f"--pidfile={self.root / 'dockerd.pid'}", f"--host=unix://{self.socket}"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"dockerd exited with status {self.process.returncode}"
                                       f"; {self._tail()}")
            if self.docker("version", check=False, timeout_s=10).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"dockerd did not answer within {timeout_s:g} s; {self._tail()}")

    def docker(self, *args: str, check: bool = True, timeout_s: float = 600.0,
               ) -> subprocess.CompletedProcess[str]:
        """Run ``docker ARGS`` against this daemon; a failure (with ``check``) is a
        :class:`ServerStartError` carrying docker's output."""
        if self.client is None:
            raise ServerStartError("docker is not installed (apt-get install docker.io)")
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0",
               "DOCKER_CONFIG": str(self.root / "client")}
        done = subprocess.run([self.client, *args], capture_output=True, text=True, env=env,
                              timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise ServerStartError(f"docker {' '.join(args[:3])} failed "
                                   f"({done.returncode}): {(done.stderr or done.stdout)[-3000:]}")
        return done

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and remove its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # containerd's mounts go with the daemon; what is left is plain files
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"its log ({self.log}) ends:\n{text[-3000:]}"


def _client() -> str | None:
    """The docker client beside the daemon (Debian's), else the first on PATH."""
    beside = Path("/usr/bin/docker")
    return str(beside) if beside.is_file() else shutil.which("docker")


def debian_python_image(dockerd: Dockerd, cache: Path) -> str:
    """A Debian base image with Python, imported into ``dockerd``; returns its tag.

    The root file system is made by ``mmdebstrap`` once and kept in ``cache`` under a name
    keyed by the suite, packages and mirror, so later runs only import it.
    """
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, MIRROR, _NO_DOCS]).encode()).hexdigest()
    tag = f"modelyard-test/{SUITE}-python:{key[:12]}"
    if dockerd.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    tarball = cache / f"{SUITE}-python-{key[:12]}.tar"
    if not tarball.is_file():
        _mmdebstrap(tarball)
    dockerd.docker("import", str(tarball), tag)
    return tag


def _mmdebstrap(tarball: Path) -> None:
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise ServerStartError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f".{tarball.name}.{os.getpid()}")
    command = [tool, "--variant=minbase", f"--include={','.join(PACKAGES)}", "--format=tar",
               *(f"--dpkgopt=path-exclude={p}" for p in _NO_DOCS), SUITE, str(partial), MIRROR]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ServerStartError(f"mmdebstrap failed ({done.returncode}): {done.stderr[-3000:]}")
    partial.rename(tarball)  # whole or not at all: a cancelled run leaves no half tarball


class Container:
    """``docker run -d`` of an image on the host's network; :meth:`wait_ready` polls its
    ``/readyz`` on ``port``; :meth:`stop` is ``docker stop`` and gives the exit status."""

    def __init__(self, dockerd: Dockerd, image: str, *, port: int,
                 env: dict[str, str] | None = None, volumes: tuple[str, ...] = (),
                 name: str | None = None, entrypoint: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.dockerd = dockerd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name or f"modelyard-{port}-{os.getpid()}"
        command = ["run", "--detach", "--name", self.name, "--network", "host",
                   "--env", f"MODELYARD_PORT={port}"]
        for key, value in (env or {}).items():
            command += ["--env", f"{key}={value}"]
        for volume in volumes:
            command += ["--volume", volume]
        if entrypoint is not None:
            command += ["--entrypoint", entrypoint]
        self.started = time.monotonic()
        dockerd.docker(*command, image, *args)

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds from ``docker run`` to ``/readyz`` answering 200; :class:`ServerStartError`
        with the container's log when it exits first or is not ready in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state()["Status"] == "exited":
                raise ServerStartError(f"the container exited before it was ready: {self.logs()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        raise ServerStartError(f"the container was not ready within {timeout_s:g} s: "
                               f"{self.logs()}")

    def state(self) -> dict[str, object]:
        """Docker's view of the container (``Status``, ``ExitCode``, ``Pid``, ...)."""
        out = self.dockerd.docker("inspect", "--format", "{{json .State}}", self.name).stdout
        state: dict[str, object] = json.loads(out)
        return state

    def logs(self) -> str:
        done = self.dockerd.docker("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-3000:]

    def stop(self, timeout_s: int = 30) -> int:
        """``docker stop`` (SIGTERM, SIGKILL after ``timeout_s``); the exit status."""
        self.dockerd.docker("stop", "--time", str(timeout_s), self.name,
                            timeout_s=timeout_s + 30)
        return int(str(self.state()["ExitCode"]))

    def remove(self) -> None:
        self.dockerd.docker("rm", "--force", self.name, check=False)


__all__ = ["Container", "Dockerd", "debian_python_image"]
