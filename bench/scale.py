"""Scaling out on Ray, measured side by side in one run: what a cluster buys and what it costs.

Training (``section_training``):

- four models trained one after another with the local executor, versus the same four submitted
  at once (``modelyard train --all --executor ray``) to a two-node Ray cluster started here
  (``ray.cluster_utils.Cluster``: a head and a worker node, one CPU each);
- Ray's own overhead per run: a trivial model's run time on the cluster minus its local run
  time (the median of several runs each), with the CPU each run costs.

    python bench/scale.py                 # every section
    python bench/scale.py --quick         # smaller models, fewer repeats
    python bench/scale.py --sections training

Batch scoring (``section_batch``, in ``bench/scale_batch.py``): rows/s of the local engine
versus ``--engine ray`` on the same two-node cluster, with the CPU each costs.

CPU is the whole machine's busy CPU time over a phase (``/proc/stat``), divided by the runs in
it: Ray's own daemons (GCS, raylets, workers) are separate processes, so a process tree would
miss some of them; anything else running on the machine is counted too, so run it on a quiet
machine. Each section is a function ``section_NAME(args) -> None`` registered in ``SECTIONS``;
``main`` runs those asked for, in order (more sections can be appended).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.config import Settings
from modelyard.executors import ExecutorOptions, get_executor
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.spec import Spec, load_project
from modelyard.testing import labeled_frame

TRAIN_PY = '''
import numpy as np


def train(X, y, params):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=int(params["iters"]), early_stopping=False,
                                          random_state=0).fit(X, y)


def trivial(X, y, params):
    from sklearn.dummy import DummyClassifier

    return DummyClassifier().fit(X, y)
'''


def _yaml(iters: int) -> str:
    models = "".join(f'''
  m{i}:
    train: train.py:train
    data: {{path: "data/big.csv", target: label}}
    params: {{iters: {iters}, seed: {i}}}
    metrics: [accuracy]
''' for i in range(4))
    return f'''models:{models}
  tiny:
    train: train.py:trivial
    data: {{path: "data/small.csv", target: label}}
    metrics: [accuracy]
'''


def machine_busy_s() -> float:
    """CPU-seconds every core of this machine has spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(wall seconds, machine CPU-seconds)`` of ``fn()``."""
    cpu, wall = machine_busy_s(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, machine_busy_s() - cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster() -> Any:
    """A head node and one worker node on this machine, one CPU each; connected."""
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "redis_port": _free_port(), "include_dashboard": False})  # not 6379: Redis
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    return cluster


def _project(folder: Path, *, rows: int, iters: int) -> dict[str, Spec]:
    (folder / "data").mkdir(parents=True)
    (folder / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (folder / "modelyard.yaml").write_text(_yaml(iters))
    labeled_frame(rows, seed=1).to_csv(folder / "data" / "big.csv", index=False)
    labeled_frame(200, seed=2).to_csv(folder / "data" / "small.csv", index=False)
    return load_project(folder / "modelyard.yaml")


def _all_at_once(specs: list[Spec], registry: Registry, executor: Any) -> None:
    """What ``train --all --executor ray`` does: a thread per model, each waiting on its task."""
    errors: list[BaseException] = []

    def one(spec: Spec) -> None:
        try:
            run_pipeline(spec, registry, executor=executor, force=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _runs(spec: Spec, registry: Registry, executor: Any, n: int) -> tuple[list[float], float]:
    """``n`` forced runs of ``spec``: each one's wall seconds, and the machine CPU-s per run."""
    walls: list[float] = []
    cpu = machine_busy_s()
    for _ in range(n):
        wall, _ = measure(lambda: run_pipeline(spec, registry, executor=executor, force=True))
        walls.append(wall)
    return walls, (machine_busy_s() - cpu) / n


def section_training(args: argparse.Namespace) -> None:
    """Four models locally one after another versus at once on two Ray nodes; Ray's overhead
    per run."""
    import ray

    rows, iters, repeats = (3000, 60, 3) if args.quick else (20000, 600, 5)
    print(f"== training: 4 models (HistGradientBoosting, {rows:,} rows, {iters} iterations) ==")
    # Ray gives a task of num_cpus=1 one OpenMP thread (OMP_NUM_THREADS=1); local children get
    # the same, so each side trains a model on one core and the comparison is like for like
    # (left alone, a local HistGradientBoosting uses every core, and is already parallel)
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        root = Path(tmp)
        specs = _project(root / "project", rows=rows, iters=iters)
        four = [specs[f"m{i}"] for i in range(4)]
        with Registry.open(Settings.from_env(home=root / "home", actor="bench")) as registry:
            local = get_executor("local")
            run_pipeline(specs["tiny"], registry, executor=local, force=True)  # warm the fork
            local_wall, local_cpu = measure(lambda: [
                run_pipeline(s, registry, executor=local, force=True) for s in four])
            cluster = start_cluster()
            try:
                on_ray = get_executor("ray", ExecutorOptions(
                    ray_address=cluster.address, artifacts=str(root / "home" / "artifacts")))
                # warm a worker (and its fork server) on each node, as a long-lived cluster has
                _all_at_once([specs["tiny"]] * 2, registry, on_ray)
                ray_wall, ray_cpu = measure(lambda: _all_at_once(four, registry, on_ray))
                tiny_local, tiny_local_cpu = _runs(specs["tiny"], registry, local, repeats)
                tiny_ray, tiny_ray_cpu = _runs(specs["tiny"], registry, on_ray, repeats)
            finally:
                ray.shutdown()
                cluster.shutdown()
    _report_training(local_wall, local_cpu, ray_wall, ray_cpu, tiny_local, tiny_local_cpu,
                     tiny_ray, tiny_ray_cpu)


def _report_training(local_wall: float, local_cpu: float, ray_wall: float, ray_cpu: float,
                     tiny_local: list[float], tiny_local_cpu: float, tiny_ray: list[float],
                     tiny_ray_cpu: float) -> None:
    cores = os.cpu_count() or 1
    print(f"{'':34} {'wall s':>8} {'CPU-s/run':>10}")
    print(f"{'local, one after another':34} {local_wall:8.2f} {local_cpu / 4:10.2f}")
    print(f"{'ray, 2 nodes, all at once':34} {ray_wall:8.2f} {ray_cpu / 4:10.2f}")
    print(f"speed-up ray/local: {local_wall / ray_wall:.2f}x wall; "
          f"CPU per run ray/local: {ray_cpu / max(local_cpu, 1e-9):.2f}x")
    med_local, med_ray = statistics.median(tiny_local), statistics.median(tiny_ray)
    print(f"trivial model, median of {len(tiny_local)} runs: local {med_local:.2f} s, "
          f"ray {med_ray:.2f} s -> Ray's overhead {med_ray - med_local:+.2f} s a run "
          f"(CPU-s a run: local {tiny_local_cpu:.2f}, ray {tiny_ray_cpu:.2f})")
    print(textwrap.dedent(f"""\
        What this can show: {cores} cores host both 'nodes', so at most {cores} trainings run
        at once and the GCS, raylets and workers compete with them; the speed-up is bounded by
        min(2, cores) and lowered by that contention. It shows the fixed cost of a Ray run (task
        scheduling, the streamed log, staging the artifact through the shared store) and that
        models train concurrently. What it cannot show: network transfer between machines (data
        read on the worker, artifacts through S3), GPUs, or nodes that do not share CPUs.
        Projection for N real nodes: K models of T seconds each take about
        ceil(K/N) * T + {max(med_ray - med_local, 0):.1f} s instead of K * T, while each run
        costs about {max(tiny_ray_cpu - tiny_local_cpu, 0):.1f} CPU-s more than locally."""))


def section_batch(args: argparse.Namespace) -> None:
    """Batch scoring rows/s locally versus on the cluster (``bench/scale_batch.py``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from scale_batch import batch_section

    batch_section(rows=50_000 if args.quick else 200_000)


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"training": section_training,
                                                             "batch": section_batch}


def main(argv: list[str] | None = None) -> None:
    """Run the sections asked for (all by default), one after another."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller work, fewer repeats")
    parser.add_argument("--sections", nargs="*", choices=sorted(SECTIONS), default=None,
                        help="which sections to run (default: all)")
    args = parser.parse_args(argv)
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
