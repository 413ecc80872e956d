"""The web console's page times on a large registry: every page's HTML under 200 ms?

Builds 100 models x 100 versions (one bulk transaction for versions 2..N, as bench/registry.py
does; aliases through the real API), logs a million predictions into the prediction log (the
``db`` store, in bulk through ``Monitor.log_predictions``), feeds labels for one model, then
asks each console page N times in-process through ``httpx.ASGITransport`` and prints the median
and p95 render time beside the goal.

    python bench/console.py                 # 100 x 100, 1,000,000 predictions, 20 requests/page
    python bench/console.py --quick         # 20 x 20, 50,000 predictions
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert, select, update

from modelyard.config import Settings
from modelyard.monitoring.logstore import open_store
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry
from modelyard.registry.rows import now
from modelyard.registry.tables import AuditRow, ModelRow, VersionRow
from modelyard.serving import ServeOptions, create_app

GOAL_MS = 200.0


def _name(i: int) -> str:
    return f"bench-{i:04d}"


def _fill(reg: Registry, scratch: Path, models: int, versions: int) -> None:
    first = []
    for i in range(models):
        folder = scratch / f"fill-{i}"
        folder.mkdir(parents=True)
        (folder / "model.bin").write_text(f"weights of {i}")
        first.append(reg.register(_name(i), folder, flavor="bench", metrics={"acc": 0.5}))
    with reg.db.session() as s:
        ids = {name: ident for name, ident in s.execute(select(ModelRow.name, ModelRow.id))}
    at = now()
    rows, audits = [], []
    for v1 in first:
        for n in range(2, versions + 1):
            rows.append({"model_id": ids[v1.model], "version": n, "flavor": "bench",
                         "artifact_digest": v1.artifact_digest,
                         "artifact_size": v1.artifact_size, "meta": {"metrics": ["accuracy"]},
                         "signature": {},
                         "metrics": {"accuracy": 0.5 + n / 1000}, "params": {"n": n},
                         "data_fingerprint": None, "code_ref": {}, "environment": {},
                         "reference_stats": None, "run_id": None, "description": "",
                         "created_at": at, "created_by": "bench"})
            audits.append({"at": at, "actor": "bench", "action": "version.register",
                           "target": f"{v1.model}:{n}", "details": {}})
    with reg.db.session(write=True) as s:
        s.execute(insert(VersionRow), rows)
        s.execute(insert(AuditRow), audits)
        s.execute(update(ModelRow).values(latest_version=versions))
    for i in range(models):
        reg.set_alias(_name(i), "production", max(1, versions - 1))
        reg.set_alias(_name(i), "production", versions, reason="bench promote")


def _log(reg: Registry, models: int, versions: int, total: int) -> Monitor:
    monitor = Monitor(reg, open_store(reg, "db"))
    start = datetime.now(UTC) - timedelta(hours=23)
    step = timedelta(hours=23) / max(total // models, 1)
    batch: list[dict[str, object]] = []
    labelled: list[tuple[str, int]] = []
    for i in range(total):
        model = i % models
        rid = uuid.uuid4().hex
        batch.append({"request_id": rid, "model": _name(model), "version": versions,
                      "variant": "production", "at": start + step * (i // models),
                      "latency_ms": 1.0 + (i % 17), "rows": 1,
                      "inputs": {"x": [float(i % 7), 1.0]}, "outputs": {"predictions": [1]}})
        if model == 0 and len(labelled) < 2000:
            labelled.append((rid, 1))
        if len(batch) == 20_000:
            monitor.log_predictions(batch)
            batch = []
    if batch:
        monitor.log_predictions(batch)
    monitor.feedback(_name(0), labelled, actor="bench")
    return monitor


def _pages(versions: int) -> list[tuple[str, str]]:
    a = _name(1)
    when = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    return [("overview", "/ui/"), ("overview sorted by p99", "/ui/?sort=p99_ms&dir=desc"),
            ("overview filtered", "/ui/?q=bench-00"), ("overview live part", "/ui/?page=1"),
            ("model", f"/ui/models/{a}"), ("model page 2", f"/ui/models/{a}?page=2"),
            ("model at time T", f"/ui/models/{a}?at={when}"),
            ("compare", f"/ui/models/{a}/compare?a=1&b={versions}"),
            ("rollout", f"/ui/models/{a}/rollout"),
            ("monitoring (labels)", f"/ui/models/{_name(0)}/monitoring"),
            ("monitoring", f"/ui/models/{a}/monitoring"), ("runs", "/ui/runs"),
            ("audit", "/ui/audit"), ("audit filtered", f"/ui/audit?model={a}&actor=bench"),
            ("audit page 50", "/ui/audit?page=50")]


async def _measure(reg: Registry, versions: int, n: int) -> list[tuple[str, float, float, int]]:
    app = create_app(reg, ServeOptions(preload=False, poll_interval_s=3600,
                                       monitor_interval_s=3600, prediction_log="db"))
    await app.startup()
    out = []
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, path in _pages(versions):
                headers = {"HX-Request": "true"} if "live part" in label else {}
                times, size = [], 0
                for _ in range(n + 1):  # the first warms caches and is not counted
                    t0 = time.perf_counter()
                    r = await client.get(path, headers=headers)
                    times.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
                    size = len(r.content)
                times = sorted(times[1:])
                out.append((label, statistics.median(times), times[int(0.95 * (len(times) - 1))],
                            size))
    finally:
        await app.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.versions, args.predictions, args.requests = 20, 20, 50_000, 10
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
            t0 = time.perf_counter()
            _fill(reg, Path(tmp) / "scratch", args.models, args.versions)
            t1 = time.perf_counter()
            _log(reg, args.models, args.versions, args.predictions)
            t2 = time.perf_counter()
            print(f"filled {args.models} models x {args.versions} versions in {t1 - t0:.1f} s; "
                  f"logged {args.predictions:,} predictions in {t2 - t1:.1f} s")
            results = asyncio.run(_measure(reg, args.versions, args.requests))
    print(f"\n{'page':<26}{'median ms':>11}{'p95 ms':>9}{'KiB':>7}  goal < {GOAL_MS:.0f} ms")
    ok = True
    for label, median, p95, size in results:
        meets = p95 < GOAL_MS
        ok = ok and meets
        print(f"{label:<26}{median:>11.1f}{p95:>9.1f}{size / 1024:>7.1f}  "
              f"{'ok' if meets else 'SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
