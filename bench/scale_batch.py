"""Batch scoring rows/s locally versus on a two-node Ray cluster on this machine, in one run.

    python bench/scale_batch.py                    # 200,000 rows, HGB W1, chunks of 10,000
    python bench/scale_batch.py --rows 50000 --chunk-rows 5000

Registers the W1 model (scikit-learn HistGradientBoosting, 100 trees on 20 float features) in a
temporary registry, writes ``--rows`` rows of Parquet, then scores them into Parquet with:

- ``local``: ``BatchJob(engine="local")``, this process, chunk after chunk;
- ``ray x1`` / ``ray x2``: ``BatchJob(engine="ray")`` on a ``ray.cluster_utils.Cluster`` of two
  nodes (a head and a worker, one CPU each, object stores of 100 MB), with one actor and with
  two (one a node);
- ``local'``: the local engine again, after the cluster is gone (the ratios divide by the mean
  of the two local runs: the machine is shared and its rates drift).

For each it prints the rate of the job's own chunk loop (the summary's ``rows_per_s``: reading,
scoring, committing; on Ray it includes starting the actors and loading the model in them), the
steady rate (the rows after the first committed chunk over the time after it: the cluster's
throughput once its actors are up), the time to the first committed chunk, the end-to-end
rate, and the CPU seconds spent, side by side: this process's (the driver: plan,
commits, and for ``local`` everything) and the whole machine's (``/proc/stat``, so the cluster's
raylets, reader and actors are counted; other load on the machine is too), then the ratios
against ``local``. Ray's start-up (two nodes) is reported apart.

What two simulated nodes on a 2-core machine can show: the cost Ray adds per chunk (the
reader's pickling, the object store, the answers' trip back as Arrow IPC) and that the output
and its commits stay on the driver. What they cannot show: a speed-up, since both "nodes", the
driver and the reader share the same two cores. On N real nodes the scoring spreads over the
actors; the ceiling is then the driver (the commits, measured here as driver CPU per row) and
the single reader, whichever is slower, which the ``driver-only ceiling`` line estimates.
The numbers measured here, and what they project, are in docs/batch-ray.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 20
STORE_BYTES = 100 * 1024 * 1024


def machine_cpu_s() -> float:
    """CPU seconds (user + system, all cores) the machine has spent since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(v) for v in fields[:3])
    irq, softirq = int(fields[5]), int(fields[6])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this process has spent (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_input(path: Path, rows: int) -> None:
    """``rows`` rows of W1 input with an ``id`` column, row groups of 10,000."""
    import pandas as pd

    X = np.random.default_rng(0).random((rows, FEATURES))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(FEATURES)])
    frame.insert(0, "id", np.arange(rows, dtype=np.int64))
    frame.to_parquet(path, row_group_size=10_000)


def timed(label: str, registry: Any, job: Any) -> dict[str, Any]:
    """Run ``job``; its rates and the CPU it took."""
    from modelyard.batch import ChunkDone, score

    first: list[tuple[float, int]] = []

    def mark(done: ChunkDone) -> None:
        if not first:
            first.append((time.perf_counter(), done.total_rows + done.total_errors))

    cpu, machine, start = own_cpu_s(), machine_cpu_s(), time.perf_counter()
    summary = score(job, registry, on_chunk=mark)
    end = time.perf_counter()
    wall = end - start
    at, done_rows = first[0]
    steady = (summary.rows - done_rows) / (end - at) if end > at else 0.0
    return {"engine": label, "rows": summary.rows, "loop_rows_per_s": summary.rows_per_s,
            "steady_rows_per_s": round(steady, 1), "first_chunk_s": round(at - start, 2),
            "e2e_rows_per_s": round(summary.rows / wall, 1), "wall_s": round(wall, 2),
            "driver_cpu_s": round(own_cpu_s() - cpu, 2),
            "machine_cpu_s": round(machine_cpu_s() - machine, 2)}


def start_cluster() -> tuple[Any, float]:
    """A head and a worker node, one CPU each; the seconds it took to start and join."""
    import socket

    import ray
    from ray.cluster_utils import Cluster

    with socket.socket() as s:  # a free port: not 6379, where Redis may listen
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "object_store_memory": STORE_BYTES, "gcs_server_port": port,
        "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=STORE_BYTES)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    return cluster, time.perf_counter() - start


def batch_section(rows: int = 200_000, chunk_rows: int = 10_000) -> list[dict[str, Any]]:
    """Score ``rows`` rows locally, then on the two-node cluster with 1 and 2 actors; print the
    table and the ratios, and return the rows."""
    import ray

    from modelyard.batch import BatchJob
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing.models import register_hgb

    with tempfile.TemporaryDirectory() as tmp, \
            Registry.open(Settings.from_env(home=Path(tmp) / "home")) as registry:
        register_hgb(registry, "bench", n_features=FEATURES)
        write_input(Path(tmp) / "in.parquet", rows)
        source = str(Path(tmp) / "in.parquet")

        def job(name: str, **more: Any) -> BatchJob:
            return BatchJob("bench", source, str(Path(tmp) / name), key=("id",),
                            chunk_rows=chunk_rows, **more)

        results = [timed("local", registry, job("local"))]
        cluster, started_s = start_cluster()
        try:
            for actors in (1, 2):
                results.append(timed(f"ray x{actors}", registry,
                                     job(f"ray{actors}", engine="ray", actors=actors)))
        finally:
            ray.shutdown()
            cluster.shutdown()
        # again after, on the quiet machine: the machine is shared and rates drift
        results.append(timed("local'", registry, job("local-after")))
    report(results, rows, chunk_rows, started_s)
    return results


def report(results: list[dict[str, Any]], rows: int, chunk_rows: int, started_s: float) -> None:
    """Print the table, the ratios against local, and the driver-only ceiling."""
    print(f"batch scoring, HGB W1, {rows:,} rows in chunks of {chunk_rows:,} "
          f"({os.cpu_count()} CPUs on this machine); two-node Ray cluster started and joined in "
          f"{started_s:.1f} s")
    print(f"{'engine':<8} {'loop rows/s':>12} {'steady rows/s':>14} {'e2e rows/s':>11} "
          f"{'1st chunk s':>12} {'wall s':>7} {'driver CPU s':>13} {'machine CPU s':>14} "
          f"{'e2e vs local':>13} {'steady vs local':>16}")
    locals_ = [r for r in results if r["engine"].startswith("local")]
    base = sum(r["e2e_rows_per_s"] for r in locals_) / len(locals_)
    steady = sum(r["steady_rows_per_s"] for r in locals_) / len(locals_)
    for r in results:
        print(f"{r['engine']:<8} {r['loop_rows_per_s']:>12,.0f} {r['steady_rows_per_s']:>14,.0f} "
              f"{r['e2e_rows_per_s']:>11,.0f} {r['first_chunk_s']:>12.2f} {r['wall_s']:>7.2f} "
              f"{r['driver_cpu_s']:>13.2f} {r['machine_cpu_s']:>14.2f} "
              f"{r['e2e_rows_per_s'] / base:>12.2f}x "
              f"{(r['steady_rows_per_s'] / steady) if steady else 0:>15.2f}x")
    two = results[-2]
    if two["driver_cpu_s"] > 0:
        print(f"driver-only ceiling on Ray (rows / driver CPU s, x2): "
              f"{two['rows'] / two['driver_cpu_s']:,.0f} rows/s")
    print(json.dumps(results))


def main() -> None:
    """``python bench/scale_batch.py [--rows N] [--chunk-rows N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    args = parser.parse_args()
    batch_section(args.rows, args.chunk_rows)


if __name__ == "__main__":
    main()
