"""Overhead of cost accounting: W1 served with the per-batch CPU accounting on and off.

Run: ``python bench/cost.py`` (needs ``taskset``; about 1.5 minutes; ``--seconds 5`` for a
quicker look). W1 is ``bench/serve.py``'s tabular workload (a HistGradientBoostingClassifier, 100
trees, 20 features, one row a request over native REST). Servers with accounting on and off
(``MODELYARD_COST_ACCOUNTING=0``, for this bench only) alternate, ``--pairs`` times, each pinned to
core 0 with the open-loop load generator (``loadgen.py http --rate``) on core 1, so both ways
meet the same neighbours. The measure is ``bench/serve.py``'s: the server's CPU per request
(its whole process tree from ``/proc``, the timed chores left out), from which the ratio on/off
is printed per pair and overall (goal: below 1.03), with the CPU the accounting charged the model
per request (``modelyard_model_cpu_seconds_total``: the batches' thread CPU, a share of the
process's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import serve  # sibling script: its server, load generator and CPU measure

GOAL = 1.03
PORT = serve.PORT + 10


def charged_cpu_s(base: str) -> float:
    """CPU seconds the server charged its models so far (``modelyard_model_cpu_seconds_total``)."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modelyard_model_cpu_seconds_total{"))


def phase(accounting: bool, home: Path, body: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One server, warmed up, then ``args.seconds`` of W1 at ``args.rate``: CPU per request."""
    env = {**os.environ, "MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1",
           "MODELYARD_COST_ACCOUNTING": "1" if accounting else "0"}
    base = f"http://127.0.0.1:{PORT}"
    cmd = [sys.executable, "-m", "modelyard.serving", "--port", str(PORT), "--log-level",
           "warning"]

    def load(seconds: float) -> dict[str, float]:
        return serve.loadgen("http", "--port", str(PORT), "--path", "/v1/models/tabular/predict",
                             "--body", str(body), "--rate", str(args.rate), "--seconds",
                             str(seconds), "--connections", "32")

    with serve.Server(cmd, env, base + "/readyz") as server:
        load(2)  # warm up
        charged0 = charged_cpu_s(base)
        result = serve.measured(server, base, lambda: load(args.seconds))
        result["charged_us"] = (charged_cpu_s(base) - charged0) / max(result["requests"], 1) * 1e6
    return result


MICRO = '''
import asyncio, json, time
import modelyard
from modelyard.serving.batching import BatchPolicy, Item
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.runner import Runner

p = modelyard.load("tabular@production", device="cpu")
runner = Runner(p, BatchPolicy())
vm = ServerMetrics().for_version("tabular", "1")
loop = asyncio.new_event_loop()
row = runner.prepare([{{f.name: 0.5 for f in p.signature.inputs}}])[0]
items = [Item(row, 1, None, loop.create_future(), 0.0)]
def block(account, n):
    runner.account = account
    start = time.thread_time_ns()
    for _ in range(n):
        runner._run(items)
    return (time.thread_time_ns() - start) / n / 1e3
block(None, 300)
on, off = [], []
for _ in range({rounds}):
    off.append(block(None, {calls}))
    on.append(block(vm.charge, {calls}))
print(json.dumps({{"on": sorted(on)[len(on) // 2], "off": sorted(off)[len(off) // 2]}}))
'''


def micro(home: Path, rounds: int = 9, calls: int = 400) -> dict[str, float]:
    """µs of thread CPU per one-row batch through ``Runner._run``, accounting on and off
    (medians of alternating blocks, in one pinned process): what the accounting adds a batch."""
    import subprocess

    code = MICRO.format(rounds=rounds, calls=calls)
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True,
                         text=True, check=True,
                         env={**os.environ, "MODELYARD_HOME": str(home),
                              "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6, help="duration of each measurement")
    parser.add_argument("--rate", type=float, default=1000, help="requests a second offered")
    parser.add_argument("--pairs", type=int, default=3, help="on/off pairs (alternating)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-cost-") as tmp:
        work = Path(tmp)
        home = work / "home"
        print("registering W1 ...", flush=True)
        _register(home)
        body = serve.bodies("tabular", work)["native"]
        print("one-row batches in process ...", flush=True)
        batch = micro(home)
        rows = []
        for pair in range(args.pairs):
            for accounting in (True, False) if pair % 2 == 0 else (False, True):
                print(f"pair {pair + 1}: accounting {'on' if accounting else 'off'} ...",
                      flush=True)
                got = phase(accounting, home, body, args)
                rows.append({"pair": pair + 1, "accounting": accounting, **{
                    k: got[k] for k in ("requests", "rps", "cpu_us", "charged_us", "p99")}})
    report(rows)
    added = batch["on"] - batch["off"]
    off_us = statistics.mean(r["cpu_us"] for r in rows if not r["accounting"])
    print(f"one-row batch in process: {batch['off']:.1f} µs off, {batch['on']:.1f} µs on: "
          f"accounting adds {added:.2f} µs a batch, {added / off_us:.2%} of W1's "
          f"{off_us:.0f} µs a request (at most one batch a request)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"phases": rows, "batch_us": batch},
                                                  indent=2))
    return 0


def _register(home: Path) -> None:
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing import register_hgb

    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        register_hgb(reg, "tabular", max_iter=100, n_features=20)


def report(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'pair':>4} {'accounting':>10} {'req/s':>8} {'CPU µs/req':>11} "
          f"{'charged µs/req':>15} {'p99 ms':>7}")
    for r in rows:
        print(f"{r['pair']:>4} {'on' if r['accounting'] else 'off':>10} {r['rps']:>8.0f} "
              f"{r['cpu_us']:>11.1f} {r['charged_us']:>15.1f} {r['p99']:>7.2f}")
    ratios = []
    for pair in sorted({r["pair"] for r in rows}):
        on = next(r for r in rows if r["pair"] == pair and r["accounting"])
        off = next(r for r in rows if r["pair"] == pair and not r["accounting"])
        ratios.append(on["cpu_us"] / off["cpu_us"])
        print(f"pair {pair}: on/off CPU per request {ratios[-1]:.3f}")
    ratio = statistics.mean(ratios)
    verdict = "meets" if ratio < GOAL else "misses"
    print(f"accounting overhead: {ratio:.3f}x CPU per request ({verdict} the goal < {GOAL})")


if __name__ == "__main__":
    sys.exit(main())
