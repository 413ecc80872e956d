"""What a loaded version really costs, per framework, next to the estimate --max-memory used before.

    python bench/memory.py

Registers two versions of five models (scikit-learn HistGradientBoosting, 100 trees on 20
features; XGBoost and LightGBM, 100 trees each; the PyTorch MLP 256-1024-1024-10; a Keras text
model: vectorizer, embedding, pooling, dense), then, for each, starts a fresh interpreter that
loads version 1 and then version 2 through the server's own cache (``Catalog``) and prints:

- ``1st load``: how much the process grew across version 1's load (the framework's import and
  its first model; read from ``/proc/self/statm`` around it, nothing freed in between);
- ``framework``: the part of it the server charged to the framework (never evicted, not
  counted against ``--max-memory``);
- ``v1``, ``v2``: what each version is charged against ``--max-memory``;
- ``v2 grew``: the process's growth across version 2's load, read independently here;
- ``estimate``: what the server charged before (tensor bytes for PyTorch, else the artifact's
  size) and ``charged/est``, the ratio;
- ``load v1``/``load v2``: the load times (version 1's includes the framework's import and the
  second, measuring load of a flavor's first version).

A last row puts the PyTorch MLP in a device worker (``isolation: process``): it is charged its
worker process's resident memory (interpreter, torch and the model).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MB = 1e6
ISOLATED = {"serving": {"isolation": "process"}}


def register_all(home: Path) -> list[tuple[str, str, str]]:
    """Two versions of each model; returns ``(label, model, flavor)`` rows."""
    import keras
    import lightgbm
    import xgboost

    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.testing.models import register_hgb, register_mlp, register_model, tabular_data

    texts = np.array([f"ticket {i} about billing and {i % 7} refunds" for i in range(400)])
    with Registry.open(Settings.from_env(home=home, actor="bench")) as reg:
        X, y = tabular_data()
        for seed in (0, 1):
            register_hgb(reg, "hgb", max_iter=100, seed=seed)
            register_model(reg, "xgb", xgboost.XGBClassifier(
                n_estimators=100, max_depth=6, random_state=seed).fit(X, y), "xgboost", X, y)
            register_model(reg, "lgbm", lightgbm.LGBMClassifier(
                n_estimators=100, random_state=seed, verbose=-1).fit(X, y), "lightgbm", X, y)
            register_mlp(reg, "mlp")
            register_mlp(reg, "mlp-worker", meta=ISOLATED)
            keras.utils.set_random_seed(seed)
            vectorize = keras.layers.TextVectorization(max_tokens=2000,
                                                       output_sequence_length=24)
            vectorize.adapt(texts)
            inputs = keras.Input(shape=(), dtype="string")
            hidden = keras.layers.Embedding(2000, 32)(vectorize(inputs))
            outputs = keras.layers.Dense(4, activation="softmax")(
                keras.layers.GlobalAveragePooling1D()(hidden))
            register_model(reg, "text", keras.Model(inputs, outputs), "tensorflow", texts,
                           np.arange(len(texts)) % 4)
    return [("sklearn HGB", "hgb", "sklearn"), ("XGBoost", "xgb", "xgboost"),
            ("LightGBM", "lgbm", "lightgbm"), ("PyTorch MLP", "mlp", "torch"),
            ("Keras text", "text", "tensorflow"),
            ("PyTorch MLP, worker", "mlp-worker", "torch")]


async def child(home: str, name: str) -> dict[str, Any]:
    """Load versions 1 and 2 of ``name`` through a server's catalog in this fresh process."""
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.serving import ServeOptions, create_app
    from modelyard.serving.footprint import release_memory, rss_bytes
    from modelyard.serving.runner import estimate_memory

    out: dict[str, Any] = {}
    with Registry.open(Settings.from_env(home=Path(home), actor="bench")) as reg:
        app = create_app(reg, ServeOptions(poll_interval_s=3600, preload=False,
                                           prediction_log="off"))
        await app.startup()
        for version in (1, 2):
            release_memory()  # as the server does before it reads
            before, start = rss_bytes(), time.perf_counter()
            runner = await app.catalog.cache.get((name, version))
            out[f"load{version}_s"] = time.perf_counter() - start
            out[f"grew{version}"] = rss_bytes() - before
            out[f"v{version}"] = runner.memory
        record = reg.get_version(name, 2)
        model = runner.predictor.model
        out["estimate"] = estimate_memory(model, int(record.artifact_size)) if model is not None \
            else int(record.artifact_size)
        out["frameworks"] = app.catalog.footprint.frameworks
        await app.shutdown()
    return out


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(child(sys.argv[2], sys.argv[3]))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-memory-") as tmp:
        home = Path(tmp) / "home"
        rows = register_all(home)
        print(f"{'model':<21}{'1st load':>10}{'framework':>11}{'v1':>9}{'v2':>9}{'v2 grew':>9}"
              f"{'estimate':>10}{'charged/est':>12}{'load v1':>9}{'load v2':>9}")
        for label, name, flavor in rows:
            done = subprocess.run([sys.executable, __file__, "--child", str(home), name],
                                  capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                print(f"{label:<21} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            framework = r["frameworks"].get(flavor, 0)
            print(f"{label:<21}{r['grew1'] / MB:>8.1f}MB{framework / MB:>9.1f}MB"
                  f"{r['v1'] / MB:>7.1f}MB{r['v2'] / MB:>7.1f}MB{r['grew2'] / MB:>7.1f}MB"
                  f"{r['estimate'] / MB:>8.2f}MB{r['v2'] / max(r['estimate'], 1):>11.1f}x"
                  f"{r['load1_s'] * 1e3:>7.0f}ms{r['load2_s'] * 1e3:>7.0f}ms")


if __name__ == "__main__":
    main()
