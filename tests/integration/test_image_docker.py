"""A real CPU image: ``modelyard build``, ``docker build --network none``, run it, predict.

A ``dockerd`` of the test's own (networking off, state under /tmp, stopped by its pid) builds
the image on a Debian base made with ``mmdebstrap`` (no image registry is reachable here). The
container runs on the host's network against the test PostgreSQL registry: first with the
artifact folder mounted read-only, where a version promoted while it runs is served without a
new image; then with no artifact store at all, from the version baked into the image. Under CI
a Docker that cannot start fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ServerStartError
from modelyard.registry import Registry
from modelyard.serving.process import free_port
from modelyard.testing import register_hgb
from modelyard.testing.docker import Container, Dockerd, debian_python_image

pytestmark = pytest.mark.integration

#: kept between runs (CI starts without it): the Debian tarball and the downloaded wheels.
CACHE = Path(os.environ.get("MODELYARD_TEST_CACHE", "/tmp/modelyard-test-cache"))
PROJECT = """\
models:
  tabular:
    train: train.py:train
    flavor: sklearn
    data: {path: data.csv, target: y}
"""
ROW = {"inputs": [[0.5] * 20]}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Docker cannot run images here: {reason} (CI is set: this fails)")
    pytest.skip(f"Docker cannot run images here: {reason}")


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    daemon = Dockerd()
    try:
        daemon.start()
    except ServerStartError as exc:
        daemon.stop()
        _unavailable(str(exc))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def base_image(dockerd: Dockerd) -> str:
    try:
        return debian_python_image(dockerd, CACHE)
    except ServerStartError as exc:
        _unavailable(str(exc))
        raise


def _readable(folder: Path) -> None:
    """Let the image's unprivileged user read a mounted artifact folder (blobs are 0600)."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))


def _predict(container: Container, key: str) -> tuple[str, dict[str, object]]:
    """The version that answered and its answer; a refusal fails with the container's log.
    The server listens on 0.0.0.0 in its container, so it enforces API keys: ``key`` is a
    predictor's."""
    request = urllib.request.Request(f"{container.url}/v1/models/tabular/predict",
                                     data=json.dumps(ROW).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["X-Model-Version"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"{exc.code} {exc.read()[:500]!r}; the container's log:\n{container.logs()}")


def _serves_version(container: Container, version: str, key: str,
                    timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _predict(container, key)[0] == version:
            return True
        time.sleep(0.2)
    return False


def _pid1(container: Container) -> tuple[int, list[str]]:
    """The uid and command line of the container's PID 1."""
    status = container.dockerd.docker("exec", container.name, "cat", "/proc/1/status").stdout
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    cmdline = container.dockerd.docker("exec", container.name, "cat", "/proc/1/cmdline").stdout
    return uid, [part for part in cmdline.split("\0") if part]


@pytest.mark.timeout(1200)
def test_a_cpu_image_builds_offline_serves_from_the_registry_and_from_baked_artifacts(
        dockerd: Dockerd, base_image: str, pg_url: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    settings = Settings.from_env(home=tmp_path / "home", db_url=pg_url,
                                 artifacts=str(artifacts), actor="tester")
    with Registry.open(settings) as registry:
        register_hgb(registry, "tabular", max_iter=5)
        key = registry.keys.create_key("shop", "predictor", kind="service").secret
    (tmp_path / "modelyard.yaml").write_text(PROJECT)
    out = tmp_path / "build"
    result = CliRunner().invoke(main, [
        "--db", pg_url, "--artifacts", str(artifacts), "--home", str(tmp_path / "home"),
        "build", "--project", str(tmp_path / "modelyard.yaml"), "--out", str(out),
        "--bake", "tabular:1", "--wheel-cache", str(CACHE / "wheels"), "--json"])
    assert result.exit_code == 0, result.output
    (context,) = json.loads(result.output)
    assert context["pool"] == "cpu" and context["baked"] == ["tabular:1"]
    dockerd.docker("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base_image}",
                   "--tag", context["image"], context["context"], timeout_s=900)

    frameworks = dockerd.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", context["image"], "-c",
        "import importlib.util as u; print([m for m in ('sklearn', 'torch', 'tensorflow', "
        "'xgboost') if u.find_spec(m)])").stdout
    assert frameworks.strip() == "['sklearn']"  # an sklearn-only pool carries no torch or TF

    _readable(artifacts)
    _serve_from_the_shared_store(dockerd, context["image"], settings, artifacts, key)
    with Registry.open(settings) as registry:
        registry.set_alias("tabular", "production", 1)
    _serve_from_the_baked_version(dockerd, context["image"], pg_url, key)


def _serve_from_the_shared_store(dockerd: Dockerd, image: str, settings: Settings,
                                 artifacts: Path, key: str) -> None:
    container = Container(dockerd, image, port=free_port(), volumes=(
        f"{artifacts}:/artifacts:ro",), env={"MODELYARD_DB": settings.db_url,
                                             "MODELYARD_ARTIFACTS": "/artifacts",
                                             # this run reads the store, not what is baked
                                             "MODELYARD_BAKED_ARTIFACTS": ""})
    try:
        container.wait_ready()
        assert _predict(container, key)[0] == "1"
        uid, cmdline = _pid1(container)  # the server itself is PID 1, so SIGTERM reaches it
        assert uid != 0
        assert cmdline[1] == "/opt/modelyard/venv/bin/modelyard" and "serve" in cmdline
        with Registry.open(settings) as registry:  # a new version: no new image
            register_hgb(registry, "tabular", max_iter=6, seed=1, promote=False)
            _readable(artifacts)
            registry.set_alias("tabular", "production", 2)
        assert _serves_version(container, "2", key), container.logs()
        assert container.stop() == 0, container.logs()  # SIGTERM: a clean exit, not a kill
    finally:
        container.remove()


def _serve_from_the_baked_version(dockerd: Dockerd, image: str, pg_url: str, key: str) -> None:
    container = Container(dockerd, image, port=free_port(), env={"MODELYARD_DB": pg_url})
    try:
        container.wait_ready()  # its artifact store is an empty folder: only the baked blob
        version, answer = _predict(container, key)
        assert version == "1" and len(answer["predictions"]) == 1  # type: ignore[arg-type]
        started = time.monotonic()
        assert container.stop() == 0, container.logs()
        assert time.monotonic() - started < 25
    finally:
        container.remove()
