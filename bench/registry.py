"""Registry latency at size (resolve, register, list versions) and the pipeline's overhead per run.

Fills a registry with ``--models`` x ``--versions`` versions on each backend (SQLite in a temporary
folder; PostgreSQL in a temporary database, created and dropped here), then times each operation
through the public ``Registry`` API and prints the median and p95 next to the goals.

    python bench/registry.py                      # 100 models x 100 versions, both backends
    python bench/registry.py --quick              # a smaller, faster run
    python bench/registry.py --backends sqlite

The fill uses one bulk transaction for versions 2..N of every model (the registry's own tables,
so the rows are what ``register`` writes); every alias, the first version and all timed calls go
through the real API.

The pipeline part trains a small scikit-learn model through ``run_pipeline`` (data load,
validation, child process, holdout evaluation, gate, register) and compares the median run with
calling the same train function directly in this process: the difference is the overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.registry.rows import now
from modelyard.registry.tables import AuditRow, ModelRow, VersionRow
from modelyard.store import pack_dir

GOAL_MS = {"resolve name@production": 10.0, "register (tiny artifact)": 10.0}


@dataclass
class Timing:
    backend: str
    operation: str
    samples: list[float]  # wall-clock milliseconds
    cpu: list[float]  # this process's CPU milliseconds (what the code costs, load aside)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    timings: list[Timing] = []
    for backend in args.backends:
        with _registry(backend, args.pg_admin_url) as (reg, scratch):
            started = time.perf_counter()
            _fill(reg, scratch, args.models, args.versions)
            fill_s = time.perf_counter() - started
            print(f"{backend}: filled {args.models} models x {args.versions} versions "
                  f"in {fill_s:.1f} s", flush=True)
            timings += _measure(backend, reg, scratch, args)
            print(f"{backend}: disk probe, new 512-byte file + fsync: median "
                  f"{_disk_fsync_ms(scratch / 'probe'):.2f} ms", flush=True)
    _report(timings)
    ok = all(_meets_goal(t) for t in timings)
    if args.pipeline_runs:
        ok = _pipeline_overhead(args.pipeline_runs) and ok
    return 0 if ok else 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=100, help="versions per model")
    parser.add_argument("--samples", type=int, default=200, help="timed calls per operation")
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL database to connect to while creating the temporary one")
    parser.add_argument("--quick", action="store_true",
                        help="20 models x 20 versions, 50 samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline-runs", type=int, default=20,
                        help="timed pipeline runs for the overhead figure (0: skip)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.versions, args.samples = 20, 20, 50
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.models < 1 or args.versions < 1 or args.samples < 1:
        parser.error("--models, --versions and --samples must be at least 1")
    random.seed(args.seed)
    return args


@contextlib.contextmanager
def _registry(backend: str, pg_admin_url: str) -> Iterator[tuple[Registry, Path]]:
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        home = Path(tmp) / "home"
        with _database(backend, home, pg_admin_url) as url:
            settings = Settings.from_env(home=home, db_url=url, actor="bench")
            with Registry.open(settings) as reg:
                yield reg, Path(tmp) / "scratch"


@contextlib.contextmanager
def _database(backend: str, home: Path, pg_admin_url: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'registry.db'}"
        return
    with pg_database(pg_admin_url) as url:
        yield url


@contextlib.contextmanager
def pg_database(pg_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the server of ``pg_admin_url``, dropped afterwards."""
    import psycopg

    name = f"modelyard_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_admin_url.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tiny_artifact(scratch: Path, label: str) -> Path:
    folder = scratch / label
    folder.mkdir(parents=True)
    (folder / "model.bin").write_text(f"weights of {label}")
    (folder / "meta.json").write_text('{"framework": "bench"}')
    return folder


def _model_name(i: int) -> str:
    return f"bench-{i:04d}"


def _fill(reg: Registry, scratch: Path, models: int, versions: int) -> None:
    first = [reg.register(_model_name(i), _tiny_artifact(scratch, f"fill-{i}"), flavor="bench",
                          metrics={"acc": 0.5}) for i in range(models)]
    with reg.db.session() as s:
        ids = {name: model_id for name, model_id in s.execute(select(ModelRow.name, ModelRow.id))}
    at = now()
    rows, audits = [], []
    for v1 in first:
        model_id = ids[v1.model]
        for n in range(2, versions + 1):
            rows.append({
                "model_id": model_id, "version": n, "flavor": "bench",
                "artifact_digest": v1.artifact_digest, "artifact_size": v1.artifact_size,
                "meta": {}, "signature": {}, "metrics": {"acc": 0.5 + n / 1000}, "params": {},
                "data_fingerprint": None, "code_ref": {}, "environment": {},
                "reference_stats": None, "run_id": None, "description": "", "created_at": at,
                "created_by": "bench",
            })
            audits.append({"at": at, "actor": "bench", "action": "version.register",
                           "target": f"{v1.model}:{n}", "details": {}})
    with reg.db.session(write=True) as s:
        if rows:
            s.execute(insert(VersionRow), rows)
            s.execute(insert(AuditRow), audits)
        s.execute(update(ModelRow).values(latest_version=versions))
    for i in range(models):
        reg.set_alias(_model_name(i), "production", max(1, versions - 1))
        reg.set_alias(_model_name(i), "production", versions, reason="bench promote")
    # a long-lived database has planner statistics (autovacuum); a bulk fill has none yet
    with reg.db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def _time(backend: str, operation: str, calls: Callable[[int], object], samples: int,
          warmup: int = 10) -> Timing:
    for i in range(warmup):
        calls(-1 - i)
    wall, cpu = [], []
    for i in range(samples):
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        calls(i)
        wall.append((time.perf_counter_ns() - start) / 1e6)
        cpu.append((time.process_time_ns() - start_cpu) / 1e6)
    return Timing(backend, operation, wall, cpu)


def _measure(backend: str, reg: Registry, scratch: Path, args: argparse.Namespace) -> list[Timing]:
    pick = [_model_name(random.randrange(args.models)) for _ in range(args.samples + 20)]
    # artifact folders are made before timing; each registration stores new bytes
    folders = {i: _tiny_artifact(scratch, f"timed-{i}") for i in range(-10, args.samples)}
    folders.update({-1 - i: folders[-10 + i] for i in range(10)})
    store_folders = {i: _tiny_artifact(scratch, f"store-{i}") for i in range(-10, args.samples)}

    def resolve(i: int) -> object:
        return reg.resolve(f"{pick[i]}@production")

    def list_versions(i: int) -> object:
        return reg.list_versions(pick[i])

    def register(i: int) -> object:
        return reg.register(pick[i], folders[i], flavor="bench", metrics={"acc": 0.9})

    def store_only(i: int) -> object:  # the artifact half of register: pack, hash, fsync
        fd, tmp = tempfile.mkstemp(suffix=".tar")
        os.close(fd)
        try:
            return reg.store.put_file(pack_dir(store_folders[i], Path(tmp)))
        finally:
            os.unlink(tmp)

    def promote(i: int) -> object:
        return reg.set_alias(pick[i], "staging", 1 + i % args.versions, reason="bench")

    return [
        _time(backend, "resolve name@production", resolve, args.samples),
        _time(backend, f"list versions ({args.versions})", list_versions, args.samples),
        _time(backend, "register (tiny artifact)", register, args.samples),
        _time(backend, "  of which: store artifact", store_only, args.samples),
        _time(backend, "set alias (promote)", promote, args.samples),
    ]


def _disk_fsync_ms(folder: Path, samples: int = 50) -> float:
    """Median time to create, write and fsync a small file here: the disk's durability cost."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(samples):
        start = time.perf_counter_ns()
        with open(folder / f"probe-{i}", "wb") as fh:
            fh.write(b"x" * 512)
            fh.flush()
            os.fsync(fh.fileno())
        out.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(out)


def _meets_goal(t: Timing) -> bool:
    goal = GOAL_MS.get(t.operation)
    return goal is None or t.median < goal


def _report(timings: list[Timing]) -> None:
    print()
    print(f"{'backend':<9} {'operation':<26} {'median ms':>10} {'p95 ms':>9} {'cpu ms':>7}  goal")
    for t in timings:
        goal = GOAL_MS.get(t.operation)
        verdict = "-" if goal is None else (
            f"median < {goal:g} ms: {'MET' if t.median < goal else 'MISSED'} "
            f"({t.median / goal:.0%} of budget)")
        print(f"{t.backend:<9} {t.operation:<26} {t.median:>10.2f} {t.p95:>9.2f} "
              f"{statistics.median(t.cpu):>7.2f}  {verdict}")
    print("(median and p95: wall clock per call; cpu: median CPU time of this process per call)")
    by_key = {(t.backend, t.operation): t for t in timings}
    if {"sqlite", "postgres"} <= {t.backend for t in timings}:
        print()
        for op in dict.fromkeys(t.operation for t in timings):
            ratio = by_key["postgres", op].median / by_key["sqlite", op].median
            print(f"{op:<26} postgres / sqlite median: {ratio:.2f}x")


PIPELINE_GOAL_S = 1.0

_TRAIN_PY = """
from sklearn.linear_model import LogisticRegression


def train(X, y, params):
    return LogisticRegression(max_iter=200).fit(X, y)
"""

_PROJECT_YAML = """
models:
  bench:
    train: train.py:train
    data: {path: "data.csv", target: label}
    metrics: [accuracy, f1]
    gate: {min: {accuracy: 0.5}}
"""


def _pipeline_overhead(runs: int) -> bool:
    """Median ``run_pipeline`` time minus the median direct ``train`` call; prints both."""
    import numpy as np
    import pandas as pd

    from modelyard.entrypoints import import_file
    from modelyard.pipeline import run_pipeline
    from modelyard.spec import load_project

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        root = Path(tmp)
        (root / "train.py").write_text(_TRAIN_PY)
        (root / "modelyard.yaml").write_text(_PROJECT_YAML)
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2000, 8))
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
        frame["label"] = (X[:, 0] - X[:, 1] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
        frame.to_csv(root / "data.csv", index=False)
        spec = load_project(root / "modelyard.yaml")["bench"]
        train = import_file(root / "train.py").train
        features, target = frame.drop(columns=["label"]).iloc[:1600], frame["label"][:1600]
        train(features, target, {})  # import scikit-learn before timing the direct path
        direct = []
        for _ in range(runs):
            started = time.perf_counter()
            train(features, target, {})
            direct.append(time.perf_counter() - started)
        with Registry.open(Settings.from_env(home=root / "home")) as reg:
            started = time.perf_counter()
            run_pipeline(spec, reg)
            first = time.perf_counter() - started
            piped = []
            for _ in range(runs):
                started = time.perf_counter()
                run_pipeline(spec, reg, force=True)  # the same data again: train it anyway
                piped.append(time.perf_counter() - started)
    overhead = statistics.median(piped) - statistics.median(direct)
    print()
    print(f"pipeline: direct train median {statistics.median(direct) * 1000:.0f} ms; "
          f"run_pipeline median {statistics.median(piped) * 1000:.0f} ms over {runs} runs "
          f"(first run, starting the fork server: {first:.2f} s)")
    print(f"pipeline overhead per run: {overhead:.2f} s; goal < {PIPELINE_GOAL_S:g} s: "
          f"{'MET' if overhead < PIPELINE_GOAL_S else 'MISSED'}")
    return overhead < PIPELINE_GOAL_S


if __name__ == "__main__":
    sys.exit(main())
