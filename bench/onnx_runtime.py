"""Native against ONNX Runtime (``serving.runtime: onnx``), side by side, through the server's
own predict path.

    python bench/onnx_runtime.py                 # W1 and W2 at 1 and 32 rows a request
    python bench/onnx_runtime.py --seconds 1 --only W1

Registers W1 (scikit-learn HistGradientBoostingClassifier, 100 trees on 20 float features) and
W2 (the PyTorch MLP 256->1024->1024->10) as bench/serve.py does, exports each to ONNX
(``export_onnx``, parity checked), then starts two in-process servers on the same registry
(``create_app``): one told ``runtime: native`` for every model, one ``runtime: onnx``
(``--model-config``'s override). Each request goes through the served version's runner exactly
as a request from the network does once decoded: input validation against the signature, the
batcher, the model call, labels and class scores (``scores=True``) and the split back; not
through HTTP (bench/serve.py measures the protocols, which do not change with the runtime).

One request at a time (closed loop), for ``--seconds`` per phase, native and onnx alternating
over ``--rounds`` rounds (the machine is shared: a neighbour's burst then hits both alike);
each runtime's best round is printed. The process is pinned to one core with one intra-op
thread for both frameworks (``OMP_NUM_THREADS=1``, which the ONNX adapter passes to ONNX
Runtime). CPU per request is the process's CPU time (every thread) over the requests answered.
Without a GPU it measures the CPU only; with onnxruntime-gpu and ``--device cuda`` both
runtimes run on the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy, torch or onnxruntime load

import numpy as np

WORKLOADS = {
    "W1": {"name": "tabular", "width": 20, "what": "HistGradientBoosting, 100 trees, 20 floats"},
    "W2": {"name": "dl", "width": 256, "what": "PyTorch MLP 256-1024-1024-10"},
}
RUNTIMES = ("native", "onnx")


def register(registry: Any) -> None:
    """W1 and W2 in production, each exported to ONNX (the derivative the onnx runtime serves)."""
    from modelyard.pipeline.export import export_onnx
    from modelyard.testing import register_hgb, register_mlp

    register_hgb(registry, "tabular", max_iter=100, n_features=20,
                 meta={"task": "classification"})
    register_mlp(registry, "dl", sizes=(256, 1024, 1024, 10))
    for name in ("tabular", "dl"):
        result = export_onnx(registry, f"{name}:1")
        print(f"exported {name}:1 -> {result.version.ref}: parity on {result.sample} "
              f"{result.parity.summary()}", flush=True)


async def start(registry: Any, runtime: str, device: str) -> Any:
    """A server on ``registry`` serving every model with ``runtime``, ready."""
    from modelyard.serving import ServeOptions, create_app

    app = create_app(registry, ServeOptions(
        poll_interval_s=3600, prediction_log="off", predict_threads=1,
        serving_overrides={"*": {"runtime": runtime, "device": device}}))
    await app.startup()
    await app.wait_ready()
    return app


async def phase(runner: Any, payload: list[Any], seconds: float) -> dict[str, float]:
    """Requests one at a time for ``seconds``: rate, latency and CPU a request."""
    for _ in range(20):  # warm: first calls allocate
        await runner.predict(*runner.prepare(payload), scores=True)
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        await runner.predict(*runner.prepare(payload), scores=True)
        latencies.append(time.perf_counter() - began)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    latencies.sort()
    return {"rps": len(latencies) / wall, "rows_s": len(latencies) * len(payload) / wall,
            "p50_us": statistics.median(latencies) * 1e6,
            "p99_us": latencies[int(0.99 * (len(latencies) - 1))] * 1e6,
            "cpu_us": cpu / len(latencies) * 1e6}


async def measure(apps: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for label in args.only:
        work = WORKLOADS[label]
        for batch in args.batches:
            X = rng.normal(size=(batch, int(work["width"]))).tolist()
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.rounds):
                for runtime in RUNTIMES:
                    runner = apps[runtime].catalog.runner_now(work["name"])
                    got = await phase(runner, X, args.seconds)
                    if runtime not in best or got["cpu_us"] < best[runtime]["cpu_us"]:
                        best[runtime] = got
            rows.append({"workload": label, "batch": batch, **{
                f"{rt}_{k}": v for rt, r in best.items() for k, v in r.items()}})
            print_row(rows[-1], flush=True)
    return rows


def print_header(args: argparse.Namespace) -> None:
    print(f"one request at a time, {args.seconds:g} s a phase, best of {args.rounds} rounds, "
          f"pinned to core {args.core}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"device {args.device}")
    print(f"{'':<10}{'':>6}  {'requests/s':^21}  {'p50 latency us':^21}  "
          f"{'p99 latency us':^21}  {'CPU us/request':^21}  {'speedup':^15}")
    print(f"{'workload':<10}{'rows':>6}  " + "  ".join(
        [f"{'native':>10}{'onnx':>11}"] * 4) + f"  {'rate':>7}{'CPU':>8}")


def print_row(r: dict[str, Any], *, flush: bool = False) -> None:
    cells = "  ".join(f"{r[f'native_{k}']:>10,.0f}{r[f'onnx_{k}']:>11,.0f}"
                      for k in ("rps", "p50_us", "p99_us", "cpu_us"))
    print(f"{r['workload']:<10}{r['batch']:>6}  {cells}  {r['onnx_rps'] / r['native_rps']:>6.2f}x"
          f"{r['native_cpu_us'] / r['onnx_cpu_us']:>7.2f}x", flush=flush)


async def run(args: argparse.Namespace) -> None:
    from modelyard.config import Settings
    from modelyard.registry import Registry

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-onnx-") as tmp, \
            Registry.open(Settings.from_env(home=Path(tmp) / "home", actor="bench")) as reg:
        register(reg)
        apps = {rt: await start(reg, rt, args.device) for rt in RUNTIMES}
        try:
            for rt, app in apps.items():
                for label in args.only:
                    runner = app.catalog.runner_now(WORKLOADS[label]["name"])
                    assert runner is not None, f"{label} did not load with runtime {rt}"
                    print(f"{rt:>6}: {label} ({WORKLOADS[label]['what']}) served as "
                          f"{runner.name}:{runner.version} by {runner.predictor.flavor} on "
                          f"{runner.predictor.device}")
            print_header(args)
            await measure(apps, args)
        finally:
            for app in apps.values():
                await app.shutdown()
    print("speedup: rate = onnx requests/s over native; CPU = native CPU a request over onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of a phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), default=["W1", "W2"])
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda with onnxruntime-gpu")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    started = time.perf_counter()
    asyncio.run(run(args))
    print(f"took {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
