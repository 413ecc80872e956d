"""Drift check time at size: modelyard's ``compare`` next to Evidently's ``DataDriftPreset``.

    python bench/drift.py                    # 1,000,000 current rows x 50 features, both tools
    python bench/drift.py --rows 200000      # a smaller run
    python bench/drift.py --no-evidently     # modelyard alone

The reference is 100,000 rows of 50 numeric features (normal, lognormal and integer counts, on
different scales); ``--shifted`` of them (15 by default) are moved by half a standard deviation
in the current data. modelyard profiles the reference once (what training stores with a
version) and the time of ``compare(profile, current)`` is measured; Evidently gets the two
DataFrames and the time of ``Report([DataDriftPreset()]).run(...)`` is measured. Both use their
default tests (past 1,000 rows: Wasserstein distance over the reference's standard deviation,
drifted above 0.1) and a drift share of 0.5.

Evidently runs in a subprocess of its own virtualenv, ``bench/.venv-evidently`` (created on first
use with ``pip install evidently "pandas<3"``; Evidently 0.7 does not import under pandas 3), so
it never touches the project's environment. If it cannot be installed, crashes or runs past
``--timeout``, the script says why and still prints modelyard's figure. When Evidently takes
more than ``--slow`` seconds on the full size, both also run on ``--small-rows`` rows.
Goal: ``compare`` well under 10 s on the full size on a 2-core machine.
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

HERE = Path(__file__).resolve().parent
EVIDENTLY_VENV = HERE / ".venv-evidently"
EVIDENTLY_PYTHON = EVIDENTLY_VENV / "bin" / "python"
GOAL_S = 10.0


def make_data(rows: int, ref_rows: int, features: int, shifted: int,
              seed: int = 0) -> tuple[dict, dict]:
    """Reference and current columns (name -> float64 array); the first ``shifted`` ones move."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reference, current = {}, {}
    for i in range(features):
        name = f"x{i:02d}"
        shape = i % 3
        move = 0.5 if i < shifted else 0.0  # in reference standard deviations

        def draw(n: int, move: float, shape: int = shape, i: int = i) -> np.ndarray:
            if shape == 0:
                return rng.normal(10.0 * i + move * (1 + i), 1 + i, n)
            if shape == 1:
                return rng.lognormal(1.0 + move, 1.0, n)  # half a deviation in log space
            lam = 4.0 + i / 10
            return rng.poisson(lam + move * np.sqrt(lam), n).astype(np.float64)

        reference[name] = draw(ref_rows, 0.0)
        current[name] = draw(rows, move)
    return reference, current


def run_modelyard(reference: dict, current: dict) -> dict:
    """Profile the reference, then time compare() on the current data."""
    import pandas as pd

    from modelyard.monitoring.drift import compare
    from modelyard.pipeline.profile import profile

    ref_frame, cur_frame = pd.DataFrame(reference), pd.DataFrame(current)
    start = time.perf_counter()
    stats = profile(ref_frame)
    profile_s = time.perf_counter() - start
    compare(stats, cur_frame.iloc[:2000])  # imports and first-call costs out of the timing
    start = time.perf_counter()
    report = compare(stats, cur_frame)
    seconds = time.perf_counter() - start
    drifted = sorted(n for n, f in report.features.items() if f.drifted)
    return {"seconds": seconds, "profile_seconds": profile_s, "share": report.share,
            "drifted": report.drifted, "columns": drifted,
            "tests": sorted({f.test for f in report.features.values()})}


# -- Evidently, in its own virtualenv -----------------------------------------------------------
def ensure_evidently() -> str | None:
    """Create bench/.venv-evidently with Evidently if needed; returns why not, or None."""
    if EVIDENTLY_PYTHON.exists():
        return None
    print(f"installing Evidently into {EVIDENTLY_VENV} (first time: a few minutes)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(EVIDENTLY_VENV)],
                       check=True, capture_output=True, text=True, timeout=300)
        subprocess.run([str(EVIDENTLY_PYTHON), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "evidently", "pandas<3"],
                       check=True, capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        return f"could not install Evidently: {exc} {detail.strip()[-500:]}"
    return None


def run_evidently(reference: dict, current: dict, timeout: float) -> dict:
    """Time Evidently's data drift preset in a subprocess; ``{"error": why}`` if it fails."""
    import numpy as np

    problem = ensure_evidently()
    if problem:
        return {"error": problem}
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-drift-") as tmp:
        names = list(reference)
        np.save(Path(tmp) / "reference.npy", np.column_stack([reference[n] for n in names]))
        np.save(Path(tmp) / "current.npy", np.column_stack([current[n] for n in names]))
        (Path(tmp) / "names.json").write_text(json.dumps(names))
        env = {**os.environ, "DO_NOT_TRACK": "1"}  # no usage reporting from a benchmark
        try:
            done = subprocess.run([str(EVIDENTLY_PYTHON), str(Path(__file__).resolve()),
                                   "--evidently-worker", tmp], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "timed_out": True}
    if done.returncode != 0:
        return {"error": f"exited {done.returncode}: {done.stderr.strip()[-800:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def evidently_worker(folder: str) -> None:
    """Inside the Evidently virtualenv: load the data, time the report, print one JSON line."""
    import numpy as np
    import pandas as pd
    from evidently import Report, __version__
    from evidently.presets import DataDriftPreset

    names = json.loads((Path(folder) / "names.json").read_text())
    ref = np.load(Path(folder) / "reference.npy")
    cur = np.load(Path(folder) / "current.npy")
    ref_frame = pd.DataFrame({n: np.ascontiguousarray(ref[:, i]) for i, n in enumerate(names)})
    cur_frame = pd.DataFrame({n: np.ascontiguousarray(cur[:, i]) for i, n in enumerate(names)})
    del ref, cur
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset(drift_share=0.5)]).run(current_data=cur_frame,
                                                              reference_data=ref_frame)
    seconds = time.perf_counter() - start
    share, columns, tests = 0.0, [], set()
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config.get("type", "").endswith("ValueDrift"):
            tests.add(config.get("method"))
            # p-value methods drift below their threshold, distances above it
            p_value = "p_value" in str(config.get("method", "")).lower()
            value, threshold = float(metric["value"]), float(config["threshold"])
            if (value < threshold) if p_value else (value >= threshold):
                columns.append(config["column"])
    print(json.dumps({"seconds": seconds, "share": share, "drifted": share >= 0.5,
                      "columns": sorted(columns), "tests": sorted(tests),
                      "version": __version__}))


# -- the comparison -----------------------------------------------------------------------------
def compare_once(rows: int, args: argparse.Namespace) -> dict | None:
    print(f"\n{rows:,} current rows x {args.features} features against a "
          f"{args.ref_rows:,}-row reference ({args.shifted} features shifted)", flush=True)
    reference, current = make_data(rows, args.ref_rows, args.features, args.shifted)
    ours = run_modelyard(reference, current)
    print(f"  modelyard  compare {ours['seconds']:7.2f} s   drifted share {ours['share']:.2f}"
          f"   dataset drifted: {ours['drifted']}   "
          f"({len(ours['columns'])} columns, tests {', '.join(ours['tests'])}; "
          f"profiling the reference once: {ours['profile_seconds']:.2f} s)", flush=True)
    mark = "ok" if ours["seconds"] < GOAL_S else "MISSED"
    print(f"  goal: under {GOAL_S:.0f} s on this machine: {mark}")
    if args.no_evidently:
        return None
    theirs = run_evidently(reference, current, args.timeout)
    if "error" in theirs:
        print(f"  Evidently  not measured: {theirs['error']}")
        return theirs
    print(f"  Evidently  report  {theirs['seconds']:7.2f} s   drifted share {theirs['share']:.2f}"
          f"   dataset drifted: {theirs['drifted']}   "
          f"({len(theirs['columns'])} columns, {', '.join(theirs['tests'])}; "
          f"evidently {theirs['version']})")
    same = "the same columns" if theirs["columns"] == ours["columns"] else (
        f"different columns: only modelyard {sorted(set(ours['columns']) - set(theirs['columns']))}"
        f", only Evidently {sorted(set(theirs['columns']) - set(ours['columns']))}")
    print(f"  ratio      Evidently / modelyard = {theirs['seconds'] / ours['seconds']:.1f}x"
          f"; both flag {same}")
    return theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ref-rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--shifted", type=int, default=15)
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds Evidently may take before it is stopped")
    parser.add_argument("--slow", type=float, default=300.0,
                        help="past this many seconds for Evidently, also compare --small-rows")
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--evidently-worker", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evidently_worker:
        evidently_worker(args.evidently_worker)
        return
    print(f"drift bench on {os.cpu_count()} CPUs")
    theirs = compare_once(args.rows, args)
    slow = theirs is not None and (theirs.get("timed_out") or
                                   theirs.get("seconds", 0.0) > args.slow)
    if slow and args.small_rows < args.rows:
        print(f"\nEvidently is slow at {args.rows:,} rows; the same at {args.small_rows:,}:")
        compare_once(args.small_rows, args)


if __name__ == "__main__":
    main()
