"""Prediction-log overhead: the writer's CPU per request, then the server with the log off and on.

Run: ``python bench/predlog.py`` (the server part needs ``wrk`` and ``taskset``:
``apt-get install -y wrk``); ``--writer-only`` for the first part alone.

First the log writer alone (:mod:`logwriter`, a sibling script): its CPU per request for W1- and
W2-shaped predictions on SQLite and PostgreSQL, the encoding of migration 0004 (JSON, a row per
request) against today's (packed chunks), side by side.

Then one workload (scikit-learn HistGradientBoostingClassifier, 20 features, one row per request,
16 connections), the server pinned to core 0 and wrk to core 1 as in ``bench/serve.py``. Every
request logged (``sample_rate: 1``, the default) to SQLite and to Parquet, and one request in
ten (``sample_rate: 0.1``) to SQLite, against the log switched off. The configurations run in
interleaved rounds and each keeps its best round, so a slow minute of the machine does not land
on one of them. The script prints throughput, p50/p99, the server's CPU time per request (all
its threads; steadier than req/s on a shared machine), the log writer's own CPU per logged
request (``modelyard_prediction_log_cpu_seconds_total``) and how many predictions were written
and dropped.

Then each configuration again at half the log-off throughput, sent on a fixed schedule from
core 1 (:func:`paced`): latency there counts from when a request was due, so the moments the
writer takes the core show in p99 and p99.9 as a user would meet them.

The goal is stated per logged request, because that is what the log costs whatever the model:
at most 30 us of server CPU (3 % of a model that takes 1 ms a request) and nothing dropped at
this load. This model answers in about 0.17 ms of one core, the worst case a percentage can
show, so its throughput and latency changes are printed as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import logwriter  # sibling scripts
from serve import LUA, register, wait_ready, wrk

CONNECTIONS = 16
WIDTH = 20
GOAL_US = 30
#: the open-loop load, as a share of the log-off throughput, and its connections.
OPEN_LOAD = 0.5
OPEN_CONNECTIONS = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; each configuration keeps its best")
    parser.add_argument("--writer-only", action="store_true",
                        help="measure the log writer alone (no server, no wrk)")
    args = parser.parse_args()
    logwriter.main()
    if args.writer_only:
        return 0
    print()
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} on PATH (apt-get install -y wrk util-linux)")
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-log-"))
    try:
        home = work / "home"
        print("registering models ...", flush=True)
        register(home)
        _register_sampled(home)
        (work / "post.lua").write_text(LUA)
        row = np.random.default_rng(0).normal(size=WIDTH).tolist()
        body = work / "tabular.json"
        body.write_text(json.dumps({"instances": [row]}))
        runs = {"off": ("off", "tabular"), "sqlite": ("db", "tabular"),
                "parquet": (f"parquet:{work / 'log'}", "tabular"),
                "sqlite 10%": ("db", "sampled")}
        results: dict[str, dict[str, float]] = {}
        for round_ in range(args.rounds):  # interleaved rounds: drift of the machine hits all
            for label, (where, model) in runs.items():
                print(f"round {round_ + 1}: log {label} ...", flush=True)
                got = measure(home, work, body, where, model, args.seconds)
                best = results.get(label)
                if best is None or got["rps"] > best["rps"]:
                    results[label] = {**got, "cpu_us": min(got["cpu_us"], (best or got)["cpu_us"])}
                else:
                    best["cpu_us"] = min(best["cpu_us"], got["cpu_us"])
        rate = OPEN_LOAD * results["off"]["rps"]
        for round_ in range(args.rounds):
            for label, (where, model) in runs.items():
                print(f"round {round_ + 1}: log {label} at {rate:.0f} req/s ...", flush=True)
                got = measure(home, work, body, where, model, args.seconds, rate=rate)
                kept = results[label].setdefault("open", got)
                if got["p99"] < kept["p99"]:
                    results[label]["open"] = got
        report(results, rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _register_sampled(home: Path) -> None:
    """The same model again, as ``sampled``, logging one request in ten."""
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing import register_hgb

    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        register_hgb(reg, "sampled", max_iter=100, n_features=WIDTH,
                     meta={"serving": {"sample_rate": 0.1}})


def measure(home: Path, work: Path, body: Path, where: str, model: str, seconds: int,
            rate: float | None = None) -> dict[str, Any]:
    """Saturate the server with wrk, or with ``rate`` send an open-loop load (:func:`paced`)."""
    port = 18790
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_PREDICTION_LOG": where}
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "modelyard.serving", "--port", str(port),
         "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", proc)
        url = f"{base}/v1/models/{model}/predict"
        wrk(url, body, work, CONNECTIONS, 2)  # warm up
        if rate is not None:
            return asyncio.run(paced(port, f"/v1/models/{model}/predict", body.read_bytes(),
                                     rate, seconds))
        before = _cpu_seconds(proc.pid)
        result = wrk(url, body, work, CONNECTIONS, seconds)
        # CPU per request: what the server spent, all threads; unlike req/s it does not move
        # when a neighbour steals the core for a while
        result["cpu_us"] = (_cpu_seconds(proc.pid) - before) / (result["rps"] * seconds) * 1e6
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        result["written"] = _counter(text, "modelyard_prediction_log_written_total")
        result["dropped"] = _counter(text, "modelyard_prediction_log_dropped_total")
        writer_s = _counter(text, "modelyard_prediction_log_cpu_seconds_total")
        result["writer_us"] = writer_s / result["written"] * 1e6 if result["written"] else 0.0
        return result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def paced(port: int, path: str, body: bytes, rate: float,
                seconds: float) -> dict[str, float]:
    """Send ``rate`` requests a second on a fixed schedule for ``seconds``, from core 1.

    Each latency counts from when the request was due, not from when a connection was free,
    so a stall of the server shows in full (wrk's closed loop would wait it out and hide it).
    """
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.1
    due = iter(start + i / rate for i in range(total))
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for when in due:
                wait = when - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(head + body)
                status = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: *(\d+)", status, re.I).group(1))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - when)
                errors += not status.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})  # the server has core 0
    try:
        await asyncio.gather(*(client() for _ in range(OPEN_CONNECTIONS)))
    finally:
        os.sched_setaffinity(0, affinity)
    ms = np.sort(np.array(latencies)) * 1e3
    return {"sent": float(len(ms)), "errors": float(errors), "p50": float(np.quantile(ms, 0.5)),
            "p99": float(np.quantile(ms, 0.99)), "p999": float(np.quantile(ms, 0.999))}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counter(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([\d.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def report(results: dict[str, dict[str, Any]], rate: float) -> None:
    print()
    print(f"saturated: wrk, {CONNECTIONS} connections")
    head = (f"{'log':10} {'req/s':>8} {'CPU us/req':>10} {'writer us/logged':>16} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'written':>9} {'dropped':>8}")
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        print(f"{label:10} {r['rps']:>8.0f} {r['cpu_us']:>10.1f} {r['writer_us']:>16.1f} "
              f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['written']:>9.0f} {r['dropped']:>8.0f}")
    base = results["off"]
    print()
    for label in ("sqlite", "parquet", "sqlite 10%"):
        r = results[label]
        cpu = r["cpu_us"] - base["cpu_us"]
        line = (f"{label}: {cpu:+.1f} us of server CPU per request ({cpu / base['cpu_us']:+.0%}),"
                f" the writer {r['writer_us']:.0f} us per logged request; throughput "
                f"{r['rps'] / base['rps'] - 1:+.1%}, p99 {r['p99'] / base['p99'] - 1:+.0%}; "
                f"{r['dropped']:.0f} dropped")
        if label.endswith("%"):  # a tenth of the cost, within the machine's noise: no goal
            print(line)
            continue
        verdict = "met" if cpu <= GOAL_US and r["dropped"] == 0 else "NOT met"
        print(f"{line} (goal <= {GOAL_US} us per logged request, none dropped: {verdict})")
    print()
    print(f"at {OPEN_LOAD:.0%} load: {rate:.0f} requests a second on a fixed schedule, latency "
          "from when each was due")
    head = f"{'log':10} {'sent':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8}"
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        o = r["open"]
        print(f"{label:10} {o['sent']:>7.0f} {o['errors']:>6.0f} {o['p50']:>7.2f} "
              f"{o['p99']:>7.2f} {o['p999']:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
