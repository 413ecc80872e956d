"""Generate card transactions with a learnable but noisy fraud pattern, batch by batch.

Each batch is one CSV file (``batch-000.csv``, ``batch-001.csv``, ...). ``drift`` (0.0 to 1.0)
moves the world away from batch 0: larger amounts, more night-time and foreign transactions, and
a fraud pattern that shifts from large foreign online purchases towards rapid small "card
testing" purchases at a card-present terminal. A model trained on batch 0 alone gets worse on
drifted batches; retraining on every batch recovers.

    python generate.py --batch 0 --rows 5000 --out data
    python generate.py --batch 1 --rows 5000 --drift 0.6 --out data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = (
    "grocery", "gas", "restaurant", "online_retail", "electronics", "travel", "entertainment",
    "pharmacy",
)
_CATEGORY_SHARE = np.array([0.24, 0.14, 0.17, 0.16, 0.06, 0.05, 0.10, 0.08])
_CATEGORY_RISK = {"online_retail": 0.9, "electronics": 1.1, "travel": 0.6, "entertainment": 0.2}
#: the intercept that puts the fraud rate near 2.5% with no drift.
_BASE_LOGIT = -13.0
#: how sharply the features decide fraud; the noise below keeps it from being certain.
_SHARPNESS = 2.5


def generate(rows: int = 5000, *, drift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """One batch of ``rows`` transactions; ``drift`` in [0, 1] shifts distributions and pattern."""
    if not 0.0 <= drift <= 1.0:
        raise ValueError("drift must be between 0.0 and 1.0")
    rng = np.random.default_rng(seed)
    amount = np.round(rng.lognormal(mean=3.6 + 0.5 * drift, sigma=1.0, size=rows), 2)
    night_share = 0.08 + 0.17 * drift
    hour = np.where(
        rng.random(rows) < night_share,
        rng.integers(0, 6, rows),
        np.clip(np.round(rng.normal(14, 4, rows)), 6, 23),
    ).astype(np.int64)
    share = _CATEGORY_SHARE.copy()
    share[3] += 0.1 * drift  # online shopping keeps growing
    category = rng.choice(np.array(CATEGORIES), size=rows, p=share / share.sum())
    foreign = (rng.random(rows) < 0.05 + 0.15 * drift).astype(np.int64)
    distance = np.round(
        np.where(foreign == 1, rng.lognormal(6.5, 0.8, rows), rng.lognormal(2.0, 1.1, rows)), 1
    )
    card_present = np.where(
        np.isin(category, ["online_retail", "travel"]), 0, (rng.random(rows) < 0.9)
    ).astype(np.int64)
    n_tx_last_24h = rng.poisson(2.5, rows).astype(np.int64)
    account_age_days = rng.integers(1, 3650, rows).astype(np.int64)
    avg_amount_30d = np.round(amount * rng.lognormal(0.0, 0.6, rows), 2)

    frame = pd.DataFrame({
        "amount": amount,
        "hour": hour,
        "merchant_category": category,
        "distance_from_home": distance,
        "foreign": foreign,
        "card_present": card_present,
        "n_tx_last_24h": n_tx_last_24h,
        "account_age_days": account_age_days,
        "avg_amount_30d": avg_amount_30d,
    })
    frame["is_fraud"] = _label(frame, drift, rng)
    return frame


def _label(df: pd.DataFrame, drift: float, rng: np.random.Generator) -> np.ndarray:
    """Fraud from a logistic rule plus noise; drift blends in a second, different pattern."""
    night = df["hour"].between(0, 5).astype(float)
    big = np.log1p(df["amount"]) - np.log1p(df["avg_amount_30d"])
    young = (df["account_age_days"] < 90).astype(float)
    risky = df["merchant_category"].map(_CATEGORY_RISK).fillna(0.0)
    classic = (
        1.6 * big.clip(-1, 3) + 1.4 * night + 1.8 * df["foreign"] + 0.5 * np.log1p(
            df["distance_from_home"]) + 1.2 * young + risky - 0.8 * df["card_present"]
    )
    # "card testing": bursts of small card-present purchases on young accounts.
    testing = (
        0.55 * df["n_tx_last_24h"].clip(0, 12) + 1.5 * (df["amount"] < 15) + 1.4 * young
        + 1.0 * df["card_present"] + 0.8 * night - 1.0
    )
    pattern = (1 - 0.6 * drift) * classic + 0.9 * drift * testing
    logit = _BASE_LOGIT + 1.5 * drift + _SHARPNESS * pattern
    logit = logit + rng.normal(0, 0.4, len(df))  # what no feature explains
    fraud = rng.random(len(df)) < 1 / (1 + np.exp(-logit))
    return fraud.astype(np.int64)


def write_batch(out: str | Path, *, batch: int, rows: int = 5000, drift: float = 0.0,
                seed: int | None = None) -> Path:
    """Write batch number ``batch`` as ``out/batch-NNN.csv`` and return its path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    frame = generate(rows, drift=drift, seed=1000 + batch if seed is None else seed)
    path = folder / f"batch-{batch:03d}.csv"
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)  # a half-written batch is never picked up by a training run
    return path


def next_batch_number(out: str | Path) -> int:
    """The number after the highest ``batch-NNN.csv`` in ``out`` (0 for an empty folder)."""
    numbers = [int(p.stem.split("-")[1]) for p in Path(out).glob("batch-*.csv")
               if p.stem.split("-")[1].isdigit()]
    return max(numbers, default=-1) + 1


def main(argv: list[str] | None = None) -> None:
    """Command line: write one batch of transactions."""
    parser = argparse.ArgumentParser(description="Generate a batch of card transactions.")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch number (default: the next free one in --out)")
    parser.add_argument("--rows", type=int, default=5000, help="transactions in the batch")
    parser.add_argument("--drift", type=float, default=0.0,
                        help="0.0 (like batch 0) to 1.0 (fully drifted)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: by batch)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"),
                        help="folder to write batch-NNN.csv into")
    args = parser.parse_args(argv)
    if not 0.0 <= args.drift <= 1.0:
        parser.error("--drift must be between 0.0 and 1.0")
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    batch = next_batch_number(args.out) if args.batch is None else args.batch
    path = write_batch(args.out, batch=batch, rows=args.rows, drift=args.drift, seed=args.seed)
    frame = pd.read_csv(path)
    print(f"wrote {path} ({len(frame)} rows, {frame['is_fraud'].mean():.1%} fraud, "
          f"drift {args.drift})")


if __name__ == "__main__":
    main()
