"""Prediction-log overhead: the same server with the log off, on SQLite, and on Parquet files.

Run: ``python bench/predlog.py`` (needs ``wrk`` and ``taskset``: ``apt-get install -y wrk``).

One workload (scikit-learn HistGradientBoostingClassifier, 20 features, one row per request,
16 connections), the server pinned to core 0 and wrk to core 1 as in ``bench/serve.py``. Every
request logged (``sample_rate: 1``, the default, the worst case for the log) to SQLite and to
Parquet, and one request in ten (``sample_rate: 0.1``) to SQLite, against the log switched off.
The configurations run in interleaved rounds and each keeps its best round, so a slow minute of
the machine does not land on one of them. The script prints throughput, p50/p99 and, from
``/metrics``, how many predictions were written and dropped, the server's CPU time per request
(all its threads; steadier than req/s on a shared machine), then each one's overhead. This
model answers in about 0.2 ms of one core, so the log's fixed cost per logged request (40 to
60 us in the server) shows here as much as it ever will.
Goal: at most 10 % of throughput and p99, and nothing dropped at this load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import LUA, register, wait_ready, wrk  # a sibling script

CONNECTIONS = 16
WIDTH = 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds; each configuration keeps its best")
    args = parser.parse_args()
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
        import numpy as np

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
        report(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _register_sampled(home: Path) -> None:
    """The same model again, as ``sampled``, logging one request in ten."""
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.serving.fixtures import register_hgb

    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        register_hgb(reg, "sampled", max_iter=100, n_features=WIDTH,
                     meta={"serving": {"sample_rate": 0.1}})


def measure(home: Path, work: Path, body: Path, where: str, model: str,
            seconds: int) -> dict[str, float]:
    port = 18790
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_PREDICTION_LOG": where}
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "modelyard.serving", "--port", str(port),
         "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, "/readyz", proc)
        url = f"{base}/v1/models/{model}/predict"
        wrk(url, body, work, CONNECTIONS, 2)  # warm up
        before = _cpu_seconds(proc.pid)
        result = wrk(url, body, work, CONNECTIONS, seconds)
        # CPU per request: what the server spent, all threads; unlike req/s it does not move
        # when a neighbour steals the core for a while
        result["cpu_us"] = (_cpu_seconds(proc.pid) - before) / (result["rps"] * seconds) * 1e6
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        result["written"] = _counter(text, "modelyard_prediction_log_written_total")
        result["dropped"] = _counter(text, "modelyard_prediction_log_dropped_total")
        return result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counter(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([\d.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def report(results: dict[str, dict[str, float]]) -> None:
    print()
    head = (f"{'log':10} {'req/s':>8} {'CPU us/req':>10} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'written':>9} {'dropped':>8}")
    print(head)
    print("-" * len(head))
    for label, r in results.items():
        print(f"{label:10} {r['rps']:>8.0f} {r['cpu_us']:>10.1f} {r['p50']:>7.2f} "
              f"{r['p99']:>7.2f} {r['written']:>9.0f} {r['dropped']:>8.0f}")
    base = results["off"]
    print()
    for label in ("sqlite", "parquet", "sqlite 10%"):
        r = results[label]
        cost = 1 - r["rps"] / base["rps"]
        p99 = r["p99"] / base["p99"] - 1
        cpu = r["cpu_us"] - base["cpu_us"]
        verdict = "met" if cost <= 0.10 and p99 <= 0.10 and r["dropped"] == 0 else "NOT met"
        print(f"{label}: {cpu:+.1f} us of CPU per request ({cpu / base['cpu_us']:+.0%}); "
              f"throughput {cost:+.1%} of the log-off rate lost, p99 {p99:+.1%}, "
              f"{r['dropped']:.0f} dropped (goal <= 10 %, none dropped: {verdict})")


if __name__ == "__main__":
    sys.exit(main())
