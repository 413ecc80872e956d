"""Serving throughput: modelyard vs a naive FastAPI endpoint vs the raw model, side by side.

Run: ``python bench/serve.py`` (needs ``wrk`` and ``taskset`` on PATH and ``fastapi`` installed:
``apt-get install -y wrk``, ``pip install fastapi``).

On loopback, each server is pinned to core 0 (``taskset -c 0``, one worker, one intra-op thread)
and wrk to core 1. Two workloads:

- tabular: scikit-learn HistGradientBoostingClassifier (100 iterations, 20 features), one row per
  request, 16 connections;
- dl: PyTorch MLP 256->1024->1024->10, one vector per request, 32 connections.

For each, the naive endpoint (pydantic body, one model call per request, as a hand-written
``api.py`` does) and modelyard (``python -m modelyard.serving``) are measured in the same run,
with the raw in-process model rate (one row per call, and 32 rows per call) for reference.
Absolute numbers depend on the machine and its load; the ratios are what this script is for.
Goals: >= 5x the naive throughput on tabular, >= 4x on dl, p99 no worse than naive.
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
import time
import urllib.request
from pathlib import Path

NAIVE_APP = '''
"""A naive FastAPI endpoint: pydantic validation, one model call per request."""
import os
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
import modelyard

NAME = os.environ["NAIVE_MODEL"]
predictor = modelyard.load(f"{NAME}@production", device="cpu")
model, adapter = predictor.model, predictor.adapter
DTYPE = np.float32 if NAME == "dl" else np.float64
app = FastAPI()


class Request(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(req: Request) -> dict:
    out = np.asarray(adapter.predict(model, np.asarray(req.instances, dtype=DTYPE)))
    if out.ndim == 2:
        out = out.argmax(axis=1)
    return {"predictions": out.tolist()}
'''

LUA = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BODY_FILE"), "r")
wrk.body = f:read("*a")
f:close()
'''

WORKLOADS = {"tabular": {"connections": 16, "width": 20},
             "dl": {"connections": 32, "width": 256}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per measurement")
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="run one workload")
    args = parser.parse_args()
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"needs {', '.join(missing)} on PATH (apt-get install -y wrk util-linux)")
        return 2
    try:
        import fastapi  # noqa: F401
    except ImportError:
        print("needs fastapi for the naive baseline: pip install fastapi")
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    try:
        home = work / "home"
        print("registering models ...", flush=True)
        register(home)
        (work / "naive_app.py").write_text(NAIVE_APP)
        (work / "post.lua").write_text(LUA)
        rows = []
        for name in [args.only] if args.only else list(WORKLOADS):
            rows.append(run_workload(name, home, work, args.seconds))
        report(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def register(home: Path) -> None:
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing import register_hgb, register_mlp

    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        register_hgb(reg, "tabular", max_iter=100, n_features=20)
        register_mlp(reg, "dl", sizes=(256, 1024, 1024, 10))


def raw_rates(name: str, home: Path) -> tuple[float, float]:
    """Rows per second calling the model in-process: one row per call, and 32 rows per call."""
    code = f'''
import os, time, numpy as np
os.sched_setaffinity(0, {{0}})
import modelyard
p = modelyard.load("{name}@production", device="cpu")
x = np.random.default_rng(0).normal(size=(32, {WORKLOADS[name]["width"]}))
x = x.astype(np.float32 if "{name}" == "dl" else np.float64)
def rate(batch, seconds=2.0):
    p.adapter.predict(p.model, batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        p.adapter.predict(p.model, batch); n += len(batch)
    return n / (time.perf_counter() - start)
print(rate(x[:1]), rate(x))
'''
    env = {**os.environ, "MODELYARD_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def run_workload(name: str, home: Path, work: Path, seconds: int) -> dict[str, object]:
    spec = WORKLOADS[name]
    import numpy as np

    row = np.random.default_rng(0).normal(size=spec["width"]).astype(np.float32).tolist()
    body = work / f"{name}.json"
    body.write_text(json.dumps({"instances": [row]}))
    print(f"{name}: raw model ...", flush=True)
    one, batched = raw_rates(name, home)
    env = {**os.environ, "MODELYARD_HOME": str(home)}
    result: dict[str, object] = {"workload": name, "raw_1": one, "raw_32": batched,
                                 "connections": spec["connections"]}
    port = 18700
    servers = {
        "naive": ([sys.executable, "-m", "uvicorn", "naive_app:app", "--app-dir", str(work),
                   "--port", str(port), "--log-level", "warning", "--no-access-log",
                   "--http", "httptools", "--loop", "uvloop"], "/predict",
                  {**env, "NAIVE_MODEL": name}),
        "modelyard": ([sys.executable, "-m", "modelyard.serving", "--port", str(port + 1),
                       "--log-level", "warning"], f"/v1/models/{name}/predict", env),
    }
    for label, (cmd, path, cmd_env) in servers.items():
        p = port if label == "naive" else port + 1
        print(f"{name}: {label} ...", flush=True)
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env=cmd_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(f"http://127.0.0.1:{p}", "/readyz" if label == "modelyard" else None,
                       proc)
            url = f"http://127.0.0.1:{p}{path}"
            wrk(url, body, work, spec["connections"], 2)  # warm up
            result[label] = wrk(url, body, work, spec["connections"], seconds)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result


def wait_ready(base: str, path: str | None, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            with urllib.request.urlopen(base + (path or "/openapi.json"), timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{base} did not become ready")


def wrk(url: str, body: Path, work: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(work / "post.lua"), url],
        env={**os.environ, "BODY_FILE": str(body)}, capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": _latency(out, "50%"), "p99": _latency(out, "99%"),
            "errors": float(errors.group(1)) if errors else 0.0,
            "socket_errors": 1.0 if socket_errors else 0.0}


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        return float("nan")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
    return float(match.group(1)) * scale


def report(rows: list[dict[str, object]]) -> None:
    print()
    head = (f"{'workload':9} {'conns':>5} {'raw 1 row/s':>12} {'raw 32 rows/s':>14} "
            f"{'naive req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'modelyard req/s':>16} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'x naive':>8} {'errors':>7}")
    print(head)
    print("-" * len(head))
    goals = {"tabular": 5.0, "dl": 4.0}
    verdicts = []
    for r in rows:
        naive, ours = r["naive"], r["modelyard"]
        assert isinstance(naive, dict) and isinstance(ours, dict)
        ratio = ours["rps"] / naive["rps"]
        errors = int(naive["errors"] + ours["errors"])
        print(f"{r['workload']:9} {r['connections']:>5} {r['raw_1']:>12.0f} {r['raw_32']:>14.0f} "
              f"{naive['rps']:>12.0f} {naive['p50']:>7.2f} {naive['p99']:>7.2f} "
              f"{ours['rps']:>16.0f} {ours['p50']:>7.2f} {ours['p99']:>7.2f} {ratio:>7.1f}x "
              f"{errors:>7}")
        goal = goals[str(r["workload"])]
        verdicts.append(
            f"{r['workload']}: {ratio:.1f}x naive throughput (goal >= {goal:g}x: "
            f"{'met' if ratio >= goal else 'NOT met'}); p99 {ours['p99']:.1f} ms vs naive "
            f"{naive['p99']:.1f} ms ({'ok' if ours['p99'] <= naive['p99'] else 'WORSE'}); "
            f"modelyard at {ours['rps'] / float(r['raw_1']):.1f}x the raw one-row model rate")
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
