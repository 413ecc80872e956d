"""What a precomputed answer costs the server next to a live one, side by side in one run.

    python bench/precompute.py                      # W1 (HGB, 100 trees, 20 floats), 2,000 req
    python bench/precompute.py --requests 5000 --rows 8 --store redis://127.0.0.1:6379/0

Registers W1 with a ``precompute`` section over 10,000 keys, precomputes them into ``--store``
(the registry database by default), starts a real server, then sends the same number of
sequential requests of ``--rows`` rows in alternating rounds of three kinds:

- ``live``: rows with their features and no key (the model answers);
- ``precomputed``: rows with their key only (the store answers, no model call);
- ``mixed``: half the rows by key, half unknown keys with features.

It prints the server process tree's CPU per request (``/proc``; it holds on a shared machine
where requests a second swing) and each kind's ratio to ``live``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import procstat  # sibling script

from modelyard.config import Settings
from modelyard.precompute.job import precompute
from modelyard.registry import Registry
from modelyard.testing import ServerProcess
from modelyard.testing.models import register_hgb, tabular_data

FEATURES = 20
KEYS = 10_000


def bodies(kind: str, rows: int, X: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """One request body of ``kind`` per round."""
    picked = rng.integers(0, KEYS, size=rows)
    features = [{f"f{j}": float(X[i, j]) for j in range(FEATURES)} for i in picked]
    if kind == "live":
        return [{"records": features}]
    if kind == "precomputed":
        return [{"records": [{"id": int(i)} for i in picked]}]
    half = rows // 2 or 1
    return [{"records": [{"id": int(i)} for i in picked[:half]]
             + [{"id": KEYS + 1 + n, **f} for n, f in enumerate(features[half:])]}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--store", default="registry")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as tmp:
        home = Path(tmp) / "home"
        X, _ = tabular_data(n_rows=KEYS, n_features=FEATURES, seed=5)
        frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(FEATURES)])
        frame.insert(0, "id", np.arange(KEYS))
        frame.to_parquet(Path(tmp) / "population.parquet")
        section = {"input": str(Path(tmp) / "population.parquet"), "key": "id",
                   "store": args.store}
        with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
            register_hgb(reg, "w1", n_features=FEATURES, meta={"precompute": section})
            precompute(reg, "w1")
        cpu = {"live": 0.0, "precomputed": 0.0, "mixed": 0.0}
        rng = np.random.default_rng(0)
        rounds = 10
        per_round = max(1, args.requests // rounds)
        with ServerProcess(home) as server, httpx.Client(base_url=server.url) as client:
            for _ in range(rounds):
                for kind in cpu:
                    sent = [bodies(kind, args.rows, X, rng)[0] for _ in range(per_round)]
                    before = procstat.tree_cpu(server.process.pid)
                    for body in sent:
                        r = client.post("/v1/models/w1/predict", json=body)
                        assert r.status_code == 200, r.text
                        want = "mixed" if kind == "mixed" and args.rows > 1 else kind
                        assert r.headers["x-prediction-source"] in (want, "precomputed"), kind
                    cpu[kind] += procstat.cpu_between(before,
                                                      procstat.tree_cpu(server.process.pid))
                time.sleep(0)
        n = per_round * rounds
        print(f"W1, {args.rows} row(s) a request, {n} requests of each kind, store "
              f"{args.store}")
        for kind, seconds in cpu.items():
            print(f"  {kind:12s} {seconds / n * 1e6:8.0f} us CPU/request   "
                  f"x{seconds / cpu['live']:.2f} of live")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
