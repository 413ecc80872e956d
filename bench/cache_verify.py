"""What checking the unpacked artifact cache costs per load, next to the load it protects.

    python bench/cache_verify.py               # the example models and a 100 MB torch model
    python bench/cache_verify.py --big-mb 500  # a bigger synthetic model

Every ``Registry.artifact_path`` call re-packs ``<home>/cache/<digest>/`` in memory and hashes
it (``store.digest_dir``) before the folder is handed to an adapter. This prints, per artifact,
its size, the time of that check, the time of the adapter's ``load`` of the same folder, and
the check as a share of the two together. Artifacts: the fraud example's scikit-learn pipeline
(HistGradientBoosting, 200 trees), a ``torch.export`` MLP, a Keras text model, and a torch
state dict of ``--big-mb`` MB of float32 weights. Each timing is the best of ``--repeat`` runs
with the files in the page cache (a server loads what it has just unpacked).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.adapters import get_adapter
from modelyard.store import digest_dir, pack_dir, sha256_file

HERE = Path(__file__).resolve().parent


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fraud(folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "examples" / "fraud"))
    import generate
    from model import train

    data = generate.generate(5000, seed=0)
    model = train(data.drop(columns="is_fraud"), data["is_fraud"], {"max_iter": 200})
    return get_adapter("sklearn").save(model, folder)


def mlp(folder: Path) -> dict[str, Any]:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    return get_adapter("torch").save(model, folder, sample=np.zeros((8, 64), np.float32))


def text(folder: Path) -> dict[str, Any]:
    import keras

    vectorize = keras.layers.TextVectorization(max_tokens=2000, output_sequence_length=24)
    vectorize.adapt(np.array([f"ticket {i} about billing" for i in range(200)]))
    inputs = keras.Input(shape=(), dtype="string")
    x = keras.layers.Embedding(2000, 32)(vectorize(inputs))
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(x))
    return get_adapter("tensorflow").save(keras.Model(inputs, outputs), folder)


def big(folder: Path, megabytes: int) -> dict[str, Any]:
    import torch

    width = 1024
    rows = megabytes * (1 << 20) // (4 * width)
    model = torch.nn.Sequential(torch.nn.Linear(width, rows), torch.nn.Linear(rows, 1))
    return get_adapter("torch").save(model, folder, sample=np.zeros((8, width), np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    builders: list[tuple[str, str, Callable[[Path], dict[str, Any]]]] = [
        ("fraud (sklearn HGB)", "sklearn", fraud), ("MLP (torch.export)", "torch", mlp),
        ("text (Keras)", "tensorflow", text),
        (f"{args.big_mb} MB (torch.export)", "torch", lambda f: big(f, args.big_mb)),
    ]
    print(f"{'artifact':<24}{'size':>10}{'check ms':>10}{'load ms':>10}{'check share':>13}")
    for label, flavor, build in builders:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "artifact"
            folder.mkdir()
            meta = build(folder)
            digest = sha256_file(pack_dir(folder, Path(tmp) / "a.tar"))
            assert digest_dir(folder) == digest  # the check reproduces the stored digest
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            adapter = get_adapter(flavor)
            adapter.load(folder, meta, "cpu")  # first load imports the framework
            check = best(lambda f=folder: digest_dir(f), args.repeat)
            loading = best(lambda f=folder, m=meta, a=adapter: a.load(f, m, "cpu"), args.repeat)
            print(f"{label:<24}{size / 1e6:>8.2f}MB{check * 1e3:>10.2f}{loading * 1e3:>10.1f}"
                  f"{check / (check + loading):>12.1%}")


if __name__ == "__main__":
    main()
