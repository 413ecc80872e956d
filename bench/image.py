"""The CPU image: its size, container start to ready, and cold start to the first prediction.

    python bench/image.py              # 5 runs of each
    python bench/image.py --runs 9

Builds the CPU image of a one-model scikit-learn project (a HistGradientBoosting classifier,
100 trees, registered in a fresh PostgreSQL database on the local server) with
``modelyard build`` and ``docker build --network none`` on a Debian base made with
``mmdebstrap``, in a ``dockerd`` of its own (networking off, as the image test does; the
Debian tarball and the wheels are cached under /tmp). Then, per run, a new container on the
host's network is timed from ``docker run`` to:

- ready: ``/readyz`` answers 200 (the production version is loaded: ``--preload``);
- cold start: the first successful prediction, asked for from the start and retried until it
  answers (what a client sees from a scale-from-zero);

once with the model read from the artifact store mounted into the container and once from the
copy baked into the image (``--bake``); and, side by side in the same rounds, ``modelyard
serve`` as a plain process on the host, so the container's own share shows. Prints min and
median of each.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from registry import pg_database  # a sibling script

from modelyard.config import Settings
from modelyard.deploy.image import BuildRequest, build_contexts
from modelyard.registry import Registry
from modelyard.serving.process import free_port
from modelyard.testing import ServerProcess, register_hgb
from modelyard.testing.docker import Container, Dockerd, debian_python_image

CACHE = Path(os.environ.get("MODELYARD_TEST_CACHE", "/tmp/modelyard-test-cache"))
PG_ADMIN = os.environ.get("MODELYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PROJECT = ("models:\n"
           "  tabular: {train: t.py:train, flavor: sklearn, data: {path: d.csv, target: y}}\n")
BODY = json.dumps({"inputs": [[0.5] * 20]}).encode()


def first_prediction(url: str, deadline: float) -> None:
    """Ask for a prediction until one answers 200 (refused connections and 503s retried)."""
    request = urllib.request.Request(f"{url}/v1/models/tabular/predict", data=BODY,
                                     headers={"Content-Type": "application/json"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    raise TimeoutError("no prediction within the deadline")


def one_run(dockerd: Dockerd, image: str, env: dict[str, str],
            volumes: tuple[str, ...]) -> tuple[float, float]:
    """(docker run -> /readyz, docker run -> first prediction) of a fresh container, seconds."""
    cold = Container(dockerd, image, port=free_port(), env=env, volumes=volumes)
    try:
        first_prediction(cold.url, time.monotonic() + 180)
        cold_s = time.monotonic() - cold.started
    finally:
        cold.remove()
    ready = Container(dockerd, image, port=free_port(), env=env, volumes=volumes)
    try:
        ready_s = ready.wait_ready()
    finally:
        ready.remove()
    return ready_s, cold_s


def host_run(home: Path, env: dict[str, str]) -> tuple[float, float]:
    """The same two times for ``modelyard serve`` as a plain process on the host: the
    baseline that shows what the container itself adds."""
    started = time.monotonic()
    with ServerProcess(home, env=env, wait=False) as cold:
        first_prediction(cold.url, time.monotonic() + 180)
        cold_s = time.monotonic() - started
    started = time.monotonic()
    with ServerProcess(home, env=env, wait=False) as ready:
        ready.wait_ready()
        ready_s = time.monotonic() - started
    return ready_s, cold_s


def summary(label: str, values: list[float]) -> str:
    return (f"{label:<58} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s"
            f"   ({len(values)} runs)")


def build_image(dockerd: Dockerd, base: str, db_url: str, work: Path) -> tuple[str, float]:
    """Register the model, write its context, build the image; (tag, build seconds)."""
    artifacts = work / "artifacts"
    settings = Settings.from_env(home=work / "home", db_url=db_url, artifacts=str(artifacts))
    with Registry.open(settings) as registry:
        register_hgb(registry, "tabular")
        (work / "modelyard.yaml").write_text(PROJECT)
        (context,) = build_contexts(BuildRequest(
            project=work / "modelyard.yaml", out=work / "build", bake=("tabular:1",),
            wheel_cache=CACHE / "wheels"), lambda: registry)
    for path in [artifacts, *artifacts.rglob("*")]:  # the container's user reads the mount
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    started = time.monotonic()
    dockerd.docker("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base}",
                   "--tag", context.tag, str(context.folder), timeout_s=1200)
    return context.tag, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-image-") as tmp, \
            pg_database(PG_ADMIN) as db_url, Dockerd() as dockerd:
        work = Path(tmp)
        base = debian_python_image(dockerd, CACHE)
        tag, build_s = build_image(dockerd, base, db_url, work)
        size = int(dockerd.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
        base_size = int(dockerd.docker("image", "inspect", "--format", "{{.Size}}",
                                       base).stdout)
        print(f"image {tag}: {size / 1e6:.0f} MB ({base_size / 1e6:.0f} MB of it the Debian "
              f"base with Python); built in {build_s:.0f} s with --network none")
        store = {"MODELYARD_DB": db_url, "MODELYARD_ARTIFACTS": str(work / "artifacts")}
        modes: dict[str, Callable[[], tuple[float, float]]] = {
            "host process, no container": lambda: host_run(work / "host", store),
            "container, store mounted": lambda: one_run(
                dockerd, tag, {**store, "MODELYARD_ARTIFACTS": "/artifacts",
                               "MODELYARD_BAKED_ARTIFACTS": ""},
                (f"{work / 'artifacts'}:/artifacts:ro",)),
            "container, baked into the image": lambda: one_run(
                dockerd, tag, {"MODELYARD_DB": db_url}, ())}
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for _ in range(args.runs):  # the modes take turns, so a busy moment hits them alike
            for mode, run in modes.items():
                times[mode].append(run())
        for mode, runs in times.items():
            print(summary(f"start -> /readyz ({mode})", [r[0] for r in runs]))
            print(summary(f"start -> first prediction ({mode})", [r[1] for r in runs]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
