"""Reference statistics: complete enough for drift checks, small enough for a registry row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelyard.pipeline.profile import QUANTILES, decode_sample, profile, project

rng = np.random.default_rng(0)


def test_numeric_and_categorical_features():
    n = 5000
    df = pd.DataFrame({
        "amount": rng.lognormal(3, 1, n),
        "visits": pd.array(rng.integers(0, 9, n), dtype="Int64"),
        "country": rng.choice(["FR", "DE", "IT"], n),
        "flag": rng.random(n) > 0.5,
    })
    df.loc[:9, "amount"] = np.nan
    df.loc[:4, "visits"] = pd.NA
    stats = profile(df)
    assert stats["kind"] == "table" and stats["rows"] == n
    amount = stats["features"]["amount"]
    assert amount["type"] == "numeric" and amount["missing"] == 10 and amount["count"] == n - 10
    present = df["amount"].dropna().to_numpy()
    assert amount["mean"] == pytest.approx(present.mean(), rel=1e-6)
    assert amount["quantiles"] == pytest.approx(np.percentile(present, QUANTILES), rel=1e-6)
    assert sum(amount["histogram"]["counts"]) == n - 10
    assert len(amount["histogram"]["edges"]) == 21
    sample = decode_sample(amount["sample"])
    assert len(sample) == 1000 and amount["sample"]["n"] == 1000
    nearest = np.abs(sample[:, None] - np.sort(present)[None, :]).min(axis=1)
    assert nearest.max() <= np.ptp(present) / 65535  # every sampled value is a real one
    assert stats["features"]["visits"]["type"] == "numeric"
    assert stats["features"]["visits"]["missing"] == 5
    country = stats["features"]["country"]
    assert country["type"] == "categorical" and set(country["values"]) == {"FR", "DE", "IT"}
    assert stats["features"]["flag"]["type"] == "categorical"


def test_sample_round_trips_within_precision():
    values = rng.normal(100, 20, 300)
    stats = profile(values[:, None])
    decoded = decode_sample(stats["features"]["f0"]["sample"])
    assert np.allclose(np.sort(decoded), np.sort(values), atol=np.ptp(values) / 65535)


def test_fifty_features_stay_compact_and_json_ready():
    X = rng.normal(size=(20_000, 50))
    stats = profile(X)
    text = json.dumps(stats)
    assert len(text) < 200_000
    assert len(stats["features"]) == 50


def test_profile_is_deterministic():
    X = rng.normal(size=(3000, 3))
    assert json.dumps(profile(X)) == json.dumps(profile(X))


def test_images_get_channel_stats_and_a_projected_sample():
    images = rng.random((700, 8, 8, 3)).astype(np.float32)
    images[..., 2] += 5.0
    stats = profile(images)
    assert stats["kind"] == "tensor" and stats["channel_axis"] == 3
    assert stats["channels"]["mean"][2] == pytest.approx(5.5, abs=0.05)
    emb = stats["embedding"]
    assert emb["rows"] == 500 and emb["out_dim"] == 64 and emb["in_dim"] == 192
    sample = decode_sample(emb["sample"])
    assert sample.shape == (500, 64)
    live = project(images[:10], emb)
    assert live.shape == (10, 64)
    first_kept = project(images[:1], emb)[0]
    assert np.abs(sample - first_kept).max(axis=1).min() < (emb["sample"]["hi"] -
                                                            emb["sample"]["lo"]) * 1e-3
    nchw = profile(rng.random((20, 3, 8, 8)))
    assert nchw["channel_axis"] == 1 and len(nchw["channels"]["mean"]) == 3
    assert len(json.dumps(stats)) < 200_000


def test_text_profiles_lengths_tokens_and_top_tokens():
    texts = ["the cat sat", "the dog ran far", "a cat", None]
    stats = profile(np.array(texts, dtype=object))
    assert stats["kind"] == "text" and stats["missing"] == 1
    assert stats["tokens"]["max"] == 4 and stats["length"]["min"] == 5
    assert stats["top_tokens"]["the"] == 2 and stats["top_tokens"]["cat"] == 2
    assert profile(["x y", "z"])["vocabulary"] == 3


def test_text_profiles_carry_a_hashed_word_embedding():
    from modelyard.pipeline.profile import embed_text

    texts = [f"word{i % 7} shared Word{i % 3}" for i in range(800)]
    stats = profile(texts)
    emb = stats["embedding"]
    assert emb["dims"] == 64 and emb["rows"] == 500
    sample = decode_sample(emb["sample"])
    assert sample.shape == (500, 64)
    assert np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-3)
    assert json.dumps(profile(texts)) == json.dumps(stats)
    # CRC-32, not Python's salted hash(): the same vector in every process, on every machine.
    vector = embed_text(["Hello hello"])[0]
    assert np.flatnonzero(vector).tolist() == [6] and vector[6] == -1.0
    assert np.array_equal(embed_text(["HELLO   hello"]), embed_text(["hello hello"]))
    assert not embed_text(["", None]).any()
    assert embed_text([]).shape == (0, 64) and embed_text(["a b"], dims=16).shape == (1, 16)


def test_text_and_tensor_additions_leave_older_fields_as_they_were():
    texts = [f"token{i % 50} and more {i}" for i in range(3000)]
    stats = profile(texts)
    rng_again = np.random.default_rng(0)
    from modelyard.pipeline.profile import _numeric

    # The embedding's rows are drawn after the length and token samples: those are unchanged.
    lengths = _numeric(np.array([len(t) for t in texts], dtype=float), rng_again)
    assert stats["length"] == lengths
    images = rng.random((1500, 4, 4, 3)).astype(np.float32)
    tensor = profile(images)
    assert tensor["row_mean"]["count"] == 1500
    assert tensor["row_mean"]["mean"] == pytest.approx(images.mean(), rel=1e-5)
    assert tensor["row_std"]["type"] == "numeric"
