"""``modelyard batch`` against the model's own batched rate, on one core, and its peak memory.

    python bench/batch.py                   # 200,000 rows (1x) and 2,000,000 (10x), HGB W1
    python bench/batch.py --rows 50000 --core 1 --model mlp

Registers the W1 model (scikit-learn HistGradientBoosting, 100 trees on 20 float features; or
``--model mlp``, the PyTorch MLP 256-1024-1024-10), writes ``--rows`` rows of input to Parquet
(and ten times as many), then runs, each in a fresh process pinned with ``taskset`` to one core:

- ``raw``: the model's own ``predict`` over the same rows in batches of ``--chunk-rows``, the
  input already in memory as one numpy array (no reading, no validation, no writing): the rate
  batch scoring is held to;
- ``batch``: ``modelyard batch MODEL -i in.parquet -o out/ --key id`` over the 1x input and the
  10x input, which reads, validates, predicts and writes Parquet parts with the manifest.

It prints rows/s of each (``batch``: the job's own chunk loop, reading and writing included, as
its summary reports it; ``e2e``: the whole command, start-up and model load included), the
loop's rate as a share of the raw rate measured just before and after it (the machine is
shared, and rates swing over a minute), and the peak resident memory (the kernel's
``ru_maxrss`` of each process) at 1x and 10x: flat memory means the 10x figure stays close to
the 1x one. Both inputs have row groups of 10,000 rows: a Parquet reader decodes a whole row
group, so memory is bounded by the chunk and the row group, not by the input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 20


def setup(home: Path, model: str) -> None:
    """Register the model as ``bench`` (production) in the registry at ``home``."""
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing.models import register_hgb, register_mlp

    with Registry.open(Settings.from_env(home=home)) as reg:
        if model == "mlp":
            register_mlp(reg, "bench")
        else:
            register_hgb(reg, "bench", n_features=FEATURES)


def write_input(path: Path, rows: int, model: str, seed: int = 0) -> None:
    """``rows`` rows of input with an ``id`` column, written a slice at a time (flat memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    step = 100_000
    writer = None
    for start in range(0, rows, step):
        n = min(step, rows - start)
        columns: dict[str, Any] = {"id": np.arange(start, start + n, dtype=np.int64)}
        if model == "mlp":
            X = rng.normal(size=(n, 256)).astype(np.float32)
            columns["input"] = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 256)
        else:
            X = rng.normal(size=(n, FEATURES))
            columns.update({f"f{i}": X[:, i] for i in range(FEATURES)})
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        # the same row groups at 1x and 10x: a Parquet reader decodes a row group at once, so
        # its size (the writer's choice), not the file's, bounds what reading holds
        writer.write_table(table, row_group_size=10_000)
    if writer is not None:
        writer.close()


def raw(home: Path, path: Path, chunk_rows: int) -> None:
    """Child: print the model's own batched rate over ``path`` (read into memory first)."""
    import pyarrow.parquet as pq

    from modelyard.config import Settings
    from modelyard.predictor import load
    from modelyard.registry import Registry

    with Registry.open(Settings.from_env(home=home)) as reg:
        predictor = load("bench", registry=reg)
    table = pq.read_table(path)
    if "input" in table.column_names:
        flat = table.column("input").combine_chunks().flatten().to_numpy()
        X = flat.reshape(table.num_rows, -1)
    else:
        X = np.column_stack([table.column(f"f{i}").to_numpy() for i in range(FEATURES)])
    model, adapter = predictor.model, predictor.adapter
    adapter.predict(model, X[:chunk_rows])  # warm
    start = time.perf_counter()
    for lo in range(0, len(X), chunk_rows):
        adapter.predict(model, X[lo:lo + chunk_rows])
    took = time.perf_counter() - start
    print(json.dumps({"rows_per_s": len(X) / took}))


def pinned(core: int, argv: list[str]) -> tuple[str, float, float]:
    """Run ``argv`` (a ``--wrap`` of the command measured) on one core: its stdout, wall
    seconds and the measured command's peak RSS in MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(["taskset", "-c", str(core), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    out, err = proc.communicate()
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
    return out, took, peak_of(out)


def peak_of(out: str) -> float:
    """The ``peak_rss_mb`` line the wrapper printed last."""
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def wrapped(argv: list[str]) -> None:
    """Child: run ``argv``, then print its output and its own peak RSS (via wait4)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err.decode())
        raise SystemExit(proc.returncode)
    sys.stdout.write(out.decode())
    print(json.dumps({"peak_rss_mb": usage.ru_maxrss / 1024}))  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--model", choices=["hgb", "mlp"], default="hgb")
    parser.add_argument("--raw", nargs=2, metavar=("HOME", "INPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--wrap", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wrap:
        wrapped(args.wrap)
        return
    if args.raw:
        raw(Path(args.raw[0]), Path(args.raw[1]), args.chunk_rows)
        return

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-batch-") as tmp:
        work = Path(tmp)
        setup(work / "home", args.model)
        sizes = {"1x": args.rows, "10x": args.rows * 10}
        for name, rows in sizes.items():
            write_input(work / f"in-{name}.parquet", rows, args.model)
        me = [sys.executable, __file__]
        raw_argv = [*me, "--wrap", *me, "--chunk-rows", str(args.chunk_rows), "--raw",
                    str(work / "home"), str(work / "in-1x.parquet")]
        modelyard = str(Path(sys.executable).with_name("modelyard"))
        print(f"model {args.model}, chunks of {args.chunk_rows:,} rows, one core "
              f"(taskset -c {args.core}). The machine is shared: each batch run is compared "
              "with the mean of raw runs just before and just after it")
        print(f"{'run':<12}{'rows':>12}{'rows/s':>14}{'of raw':>9}{'peak RSS':>11}")
        for name, rows in sizes.items():
            before = run_raw(args.core, raw_argv)
            out, took, peak = pinned(args.core, [
                *me, "--wrap", modelyard, "--home", str(work / "home"), "batch", "bench",
                "-i", str(work / f"in-{name}.parquet"), "-o", str(work / f"out-{name}"),
                "--key", "id", "--chunk-rows", str(args.chunk_rows), "--json"])
            after = run_raw(args.core, raw_argv)
            raw_rate = (before[0] + after[0]) / 2
            print(f"{'raw predict':<12}{args.rows:>12,}{raw_rate:>14,.0f}{'100%':>9}"
                  f"{before[1]:>8.0f} MB   (before {before[0]:,.0f}, after {after[0]:,.0f})")
            summary = json.loads("\n".join(out.strip().splitlines()[:-1]))
            loop = summary["rows_per_s"]
            print(f"{'batch ' + name:<12}{rows:>12,}{loop:>14,.0f}{loop / raw_rate:>9.0%}"
                  f"{peak:>8.0f} MB   (e2e {rows / took:,.0f} rows/s, {took:.1f} s)")


def run_raw(core: int, argv: list[str]) -> tuple[float, float]:
    """The raw rate (rows/s) and the peak RSS (MB) of one pinned raw run."""
    out, _, peak = pinned(core, argv)
    return float(json.loads(out.splitlines()[0])["rows_per_s"]), peak

if __name__ == "__main__":
    main()
