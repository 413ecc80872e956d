"""Prediction log summaries: compact and JSON-ready, no raw text or sensitive value, drift-ready."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import orjson
import pandas as pd
import pytest

from modelyard.monitoring.drift import compare
from modelyard.monitoring.summary import current_from_log, hash_value, summarize, summarize_many
from modelyard.pipeline.profile import embed_text, profile, project
from modelyard.schema import Signature

KEY = b"a secret only the server knows"


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "amount": rng.normal(100 + 30 * shift, 30, n),
        "score": rng.random(n).astype(np.float32),
        "visits": rng.poisson(3, n),
        "country": rng.choice(["FR", "DE", "IT"], n),
        "card": [f"4970-{i:04d}-{rng.integers(10**8)}" for i in range(n)],
        "email": [f"user{i}@example.com" for i in range(n)],
    })


def _json(summary: dict) -> bytes:
    return orjson.dumps(summary)  # raises on anything that is not plain JSON


def test_table_summary_keeps_plain_values():
    rng = np.random.default_rng(0)
    frame = _frame(rng, 4)
    frame.loc[1, "amount"] = np.nan
    frame.loc[2, "amount"] = np.inf
    frame.loc[3, "country"] = None
    batch, _ = Signature.infer(frame).prepare(frame)
    summary = summarize(batch, Signature.infer(frame), None)
    columns = summary["columns"]
    assert columns["amount"][0] == frame["amount"][0]
    assert columns["amount"][1] is None and columns["amount"][2] is None
    assert columns["score"][0] == float(str(frame["score"][0]))  # float32, shortest form
    assert columns["visits"] == frame["visits"].tolist()
    assert all(type(v) is int for v in columns["visits"])
    assert columns["country"][3] is None and columns["country"][0] in {"FR", "DE", "IT"}
    assert "hashed" not in summary and "dropped" not in summary
    _json(summary)


def test_sensitive_fields_are_dropped_or_hashed_never_logged():
    frame = _frame(np.random.default_rng(1), 20)
    signature = Signature.infer(frame)
    batch, _ = signature.prepare(frame)
    summary = summarize(batch, signature, None, sensitive={"card": "hash", "email": "drop"},
                        hash_key=KEY)
    text = _json(summary).decode()
    for value in [*frame["card"], *frame["email"]]:
        assert value not in text
    assert summary["hashed"] == ["card"] and summary["dropped"] == ["email"]
    assert "email" not in summary["columns"]
    hashes = summary["columns"]["card"]
    assert hashes[0] == hash_value(frame["card"][0], KEY) and len(hashes[0]) == 32
    assert len(set(hashes)) == 20
    with pytest.raises(ValueError, match="'drop' or 'hash'"):
        summarize(batch, signature, None, sensitive={"card": "mask"})


def test_hash_value_is_a_keyed_hmac():
    expected = hmac.new(KEY, b"4970-0001", hashlib.sha256).hexdigest()[:32]
    assert hash_value("4970-0001", KEY) == expected
    assert hash_value("4970-0001", b"another key") != expected
    assert hash_value(42, KEY) == hash_value(42.0, KEY) == hash_value(np.int64(42), KEY)
    assert hash_value(42.5, KEY) != hash_value(42, KEY)


def test_plain_array_tables_use_the_signature_names():
    X = np.random.default_rng(2).normal(size=(5, 3))
    signature = Signature.infer(X)
    batch, _ = signature.prepare(X.tolist())
    summary = summarize(batch, signature, profile(X), sensitive={"f2": "drop"})
    assert list(summary["columns"]) == ["f0", "f1"]
    assert summary["columns"]["f1"] == X[:, 1].tolist()


def test_text_summary_never_keeps_the_text():
    texts = ["My card number is 4970 1234", "call me at home", "x"]
    reference = profile(texts * 10)
    signature = Signature.infer(texts)
    batch, _ = signature.prepare(texts)
    summary = summarize(batch, signature, reference)
    text = _json(summary).decode().lower()
    for word in {w for t in texts for w in t.lower().split() if len(w) > 3}:
        assert word not in text
    assert summary["length"] == [len(t) for t in texts]
    assert summary["tokens"] == [6, 4, 1]
    vectors = np.array(summary["embedding"])
    assert vectors.shape == (3, 64)
    assert np.allclose(vectors, embed_text(texts), rtol=1e-3, atol=1e-12)
    hidden = summarize(batch, signature, reference, sensitive={"text": "hash"})
    assert "embedding" not in hidden and hidden["dropped"] == ["embedding"]


def test_tensor_summary_keeps_projections_and_row_statistics():
    rng = np.random.default_rng(3)
    images = rng.random((40, 8, 8, 3)).astype(np.float32)
    reference = profile(images)
    signature = Signature.infer(images)
    batch, _ = signature.prepare(images[:5].tolist())
    summary = summarize(batch, signature, reference)
    assert set(summary) == {"embedding", "row_mean", "row_std"}
    expected = project(images[:5], reference["embedding"])
    assert np.allclose(summary["embedding"], expected, rtol=1e-3)
    assert summary["row_mean"] == pytest.approx(images[:5].reshape(5, -1).mean(axis=1), rel=1e-5)
    assert len(_json(summary)) < 5 * 64 * 12 + 400  # no pixels: a 64-number row per image
    bare = summarize(batch, signature, None)
    assert set(bare) == {"row_mean", "row_std"}


def test_logged_tables_rebuild_the_current_data():
    rng = np.random.default_rng(4)
    train = _frame(rng, 5000)
    reference = profile(train)
    signature = Signature.infer(train)

    def logged(shift: float) -> list[dict]:
        out = []
        for _ in range(60):
            batch, _ = signature.prepare(_frame(rng, 25, shift))
            summary = summarize(batch, signature, reference,
                                sensitive={"card": "hash", "email": "drop"}, hash_key=KEY)
            out.append(orjson.loads(orjson.dumps(summary)))  # as the log stores it
        return out

    current = current_from_log(logged(0.0), reference)
    assert isinstance(current, pd.DataFrame) and len(current) == 1500
    assert set(current.columns) == {"amount", "score", "visits", "country"}
    steady = compare(reference, current)
    assert not steady.drifted and set(steady.features) == set(current.columns)
    moved = compare(reference, current_from_log(logged(1.0), reference))
    assert moved.features["amount"].drifted and not moved.features["country"].drifted
    empty = current_from_log([], reference)
    with pytest.raises(ValueError, match="no rows"):
        compare(reference, empty)


def test_logged_texts_and_tensors_rebuild_the_current_data():
    rng = np.random.default_rng(5)
    words_a, words_b = [f"a{i}" for i in range(100)], [f"b{i}" for i in range(100)]

    def texts(words: list[str], n: int) -> list[str]:
        return [" ".join(rng.choice(words, rng.integers(3, 10))) for _ in range(n)]

    reference = profile(texts(words_a, 2000))
    signature = Signature.infer(["some text"])
    for words, drifted in ((words_a, False), (words_b, True)):
        summaries = [summarize(signature.prepare(texts(words, 10))[0], signature, reference)
                     for _ in range(30)]
        current = current_from_log(summaries, reference)
        assert current["embedding"].shape == (300, 64) and len(current["length"]) == 300
        assert compare(reference, current).embedding.drifted is drifted

    images = rng.random((600, 8, 8, 3)).astype(np.float32)
    reference = profile(images)
    signature = Signature.infer(images)
    for shift, drifted in ((0.0, False), (0.3, True)):
        batches = (rng.random((10, 8, 8, 3)).astype(np.float32) + shift for _ in range(30))
        summaries = [summarize(b, signature, reference) for b in batches]
        report = compare(reference, current_from_log(summaries, reference))
        assert report.rows == 300 and report.embedding.drifted is drifted
        assert report.features["row_mean"].drifted is drifted


def test_a_tensor_models_vector_input_is_logged_as_rows_of_its_profiled_columns():
    # A PyTorch MLP over 256 floats: one tensor input in the signature, 256 columns in the
    # profile. The log used to summarise it as a table of one column and fail on every request.
    rng = np.random.default_rng(6)
    X = rng.normal(size=(500, 256)).astype(np.float32)
    X[1, 3] = np.nan
    signature = Signature.infer(X, layout="tensor")
    reference = profile(X)
    assert signature.layout == "tensor" and reference["kind"] == "table"
    batches = [signature.prepare(X[i:i + 1].tolist())[0] for i in range(3)]
    stacked = list(summarize_many(batches, signature, reference))
    alone = [summarize(b, signature, reference) for b in batches]
    assert stacked == alone
    (row,) = stacked[2]["vectors"]
    assert len(row) == 256 and row[7] == float(str(X[2, 7]))  # float32 in its shortest form
    assert stacked[1]["vectors"][0][3] is None  # missing, as in tables
    _json(stacked[0])

    # the drift check rebuilds the profile's columns from the logged rows
    current = current_from_log(alone, reference)
    assert list(current.columns) == [f"f{i}" for i in range(256)] and len(current) == 3
    assert current["f7"].tolist()[2] == pytest.approx(X[2, 7])
    shifted = [summarize(signature.prepare(row[None] + 1.0)[0], signature, reference)
               for row in rng.normal(size=(300, 256)).astype(np.float32)]
    assert compare(reference, current_from_log(shifted, reference)).drifted
    same = [summarize(signature.prepare(row[None])[0], signature, reference)
            for row in rng.normal(size=(300, 256)).astype(np.float32)]
    assert not compare(reference, current_from_log(same, reference)).drifted

    hidden = summarize(batches[0], signature, reference, sensitive={"input": "drop"})
    assert hidden == {"dropped": ["vectors"]}
    with pytest.raises(ValueError, match="do not match the 256 columns"):
        summarize(np.zeros((1, 8), np.float32), signature, reference)
