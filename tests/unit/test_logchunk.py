"""The prediction log's chunks: packed records read back as the JSON records they replace, and
the database store keeping a row per chunk on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from modelyard.config import Settings
from modelyard.monitoring.chunk import (
    decode_part,
    encode_inputs,
    encode_outputs,
    pack,
    unpack,
)
from modelyard.monitoring.predlog import (
    DatabaseStore,
    LogBatch,
    LogPolicy,
    PredictionLog,
    outputs_of,
)
from modelyard.monitoring.summary import summarize, summarize_many
from modelyard.pipeline.profile import profile
from modelyard.predictor import Prediction
from modelyard.registry import Registry
from modelyard.schema import Signature

RNG = np.random.default_rng(7)
WIDE = RNG.normal(size=(32, 20))
TABLE = Signature.infer(WIDE, np.arange(32) % 2)
VECTORS = RNG.normal(size=(32, 16)).astype(np.float32)
TENSOR = Signature.infer(VECTORS, np.arange(32) % 2, layout="tensor")
MIXED = pd.DataFrame({"amount": [10.5, np.nan, 3.0], "card": ["4111", "5500", None],
                      "count": [1, 2, 3], "flag": [True, False, True]})
MIXED_SIGNATURE = Signature.infer(MIXED, np.array([0, 1, 0]))


def rows_of(matrix: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``matrix`` cut into requests of ``sizes`` rows."""
    return np.split(matrix, np.cumsum(sizes)[:-1])


def test_a_record_packs_a_header_and_arrays_and_refuses_what_it_did_not_write() -> None:
    arrays = [np.arange(5, dtype=np.int64), np.ones((2, 3), dtype=np.float32),
              np.array([True, False])]
    header, got = unpack(pack({"ids": ["a", "b"]}, arrays))
    assert header == {"ids": ["a", "b"]}
    for want, have in zip(arrays, got, strict=True):
        assert have.dtype == want.dtype and np.array_equal(have, want)
    data = pack({}, [np.arange(4.0)])
    with pytest.raises(ValueError, match="magic"):
        unpack(b"JSON" + data[4:])
    with pytest.raises(ValueError, match="cut short"):
        unpack(data[:-1])
    with pytest.raises(ValueError, match="holds a object"):
        unpack(data.replace(b"<f8", b"|O8"))


@pytest.mark.parametrize("sizes", [[1] * 9, [1, 3, 2], [5]])
def test_stacked_table_inputs_read_back_as_the_summaries_they_replace(sizes: list[int]) -> None:
    matrix = WIDE[:sum(sizes)].copy()
    matrix[0, 3] = np.nan
    batches = rows_of(matrix, sizes)
    data = encode_inputs(batches, TABLE, None, sensitive={}, hash_key=b"k")
    assert data is not None
    assert decode_part(data) == list(summarize_many(batches, TABLE, None))
    assert decode_part(data)[0]["columns"]["f3"][0] is None  # NaN as JSON's null
    assert len(data) < 8 * matrix.size + 1000  # numbers as 8 bytes, not as text


def test_float32_inputs_read_back_in_their_shortest_form() -> None:
    values = np.array([[0.1, 2.5, -1e-3]], dtype=np.float32)
    signature = Signature.infer(values, np.array([1]))
    data = encode_inputs([values, values], signature, None, sensitive={}, hash_key=b"")
    assert data is not None
    assert decode_part(data)[0] == {"columns": {"f0": [0.1], "f1": [2.5], "f2": [-0.001]}}


@pytest.mark.parametrize("sensitive", [{}, {"card": "hash"}, {"card": "drop", "count": "hash"}])
def test_mixed_frames_stack_with_sensitive_fields_hashed_or_dropped(
        sensitive: dict[str, str]) -> None:
    batches = [MIXED.iloc[:1], MIXED.iloc[1:]]
    data = encode_inputs(batches, MIXED_SIGNATURE, None, sensitive=sensitive, hash_key=b"k")
    assert data is not None
    assert decode_part(data) == list(summarize_many(batches, MIXED_SIGNATURE, None,
                                                    sensitive=sensitive, hash_key=b"k"))
    assert b"4111" not in data if sensitive else b"4111" in data


@pytest.mark.parametrize("hidden", [False, True])
def test_vector_inputs_profiled_as_a_table_stack_as_one_matrix(hidden: bool) -> None:
    reference = profile(VECTORS)
    sensitive = {TENSOR.names[0]: "drop"} if hidden else {}
    batches = rows_of(VECTORS[:6], [1, 2, 3])
    data = encode_inputs(batches, TENSOR, reference, sensitive=sensitive, hash_key=b"")
    assert data is not None
    assert decode_part(data) == list(summarize_many(batches, TENSOR, reference,
                                                    sensitive=sensitive))


def test_text_and_tensors_are_left_to_the_per_request_summaries() -> None:
    texts = Signature.infer(np.array(["a b", "c"], dtype=object), np.array([0, 1]))
    assert encode_inputs([np.array(["a b"], dtype=object)], texts, None, sensitive={},
                         hash_key=b"") is None


def test_stacked_outputs_read_back_as_each_answer_alone() -> None:
    answers = [Prediction(np.array([1]), np.array([[0.25, 0.75]], dtype=np.float32), ("a", "b")),
               Prediction(np.array([0, 1]), np.array([[0.9, 0.1], [np.inf, 0.5]],
                                                     dtype=np.float32), ("a", "b"))]
    header, arrays = unpack(encode_outputs(answers))
    assert header["kind"] == "stacked" and len(arrays) == 3  # lengths, labels, scores
    assert decode_part(encode_outputs(answers)) == [outputs_of(a) for a in answers]
    labels = [Prediction(np.array(["spam"])), Prediction(np.array(["ham", "eggs"]))]
    assert decode_part(encode_outputs(labels)) == [outputs_of(a) for a in labels]


# -- through the writer, into the database --------------------------------------------------------
def policy(name: str, signature: Signature, reference: Any,
           sensitive: dict[str, str] | None = None) -> LogPolicy:
    return LogPolicy(name, 1, 1.0, sensitive or {}, signature, reference)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = str(request.getfixturevalue("pg_url")) if request.param == "postgres" else None
    with Registry.open(Settings.from_env(home=tmp_path / "home", db_url=url,
                                         actor="t")) as registry:
        from modelyard.testing import register_constant

        register_constant(registry, "w1", 1)
        register_constant(registry, "w2", 1)
        yield DatabaseStore(registry)


def test_the_writer_keeps_a_row_per_chunk_that_reads_back_every_request(store: Any) -> None:
    w1 = policy("w1", TABLE, None)
    w2 = policy("w2", TENSOR, profile(VECTORS))
    log = PredictionLog(store)
    expected: dict[str, tuple[Any, ...]] = {}
    for i in range(600):
        if i % 50 == 7:
            log.record_error(w1, f"e{i}", "production", 0.002, 503)
            expected[f"e{i}"] = ("w1", {}, {"error": 503}, 0)
            continue
        pol, matrix = (w1, WIDE) if i % 3 else (w2, VECTORS)
        batch = matrix[i % 30:i % 30 + 1]
        answer = Prediction(np.array([i % 2]), np.array([[0.5, 0.5]]), (0, 1))
        variant = "shadow" if i % 7 == 0 else "production"
        log.record(pol, f"r{i}", variant, 0.001 + i * 1e-6, batch, 1, answer)
        expected[f"r{i}"] = (pol.model, summarize(batch, pol.signature, pol.reference),
                             outputs_of(answer), 1)
    log.flush()
    assert (log.written, log.dropped) == (600, 0)
    with store.registry.db.session() as s:
        rows, requests = s.execute(text("SELECT count(*), sum(size) FROM predictions")).one()
    assert requests == 600 and rows < 30  # a row per chunk, not per request
    got = store.read("w1") + store.read("w2")
    assert sorted(p.request_id for p in got) == sorted(expected)
    for p in got:
        model, inputs, outputs, n = expected[p.request_id]
        assert (p.model, p.inputs, p.outputs, p.rows) == (model, inputs, outputs, n)
    times = [p.at for p in store.read("w1")]
    assert times == sorted(times) and abs(times[-1] - datetime.now(UTC)) < timedelta(minutes=1)
    assert [p.request_id for p in store.find("w2", ["r0", "r3", "r1", "nope"])] == ["r0", "r3"]
    assert {p.variant for p in store.find("w2", ["r21"])} == {"shadow"}


def test_reads_take_the_newest_requests_across_chunks_and_retention_cuts_inside_one(
        store: Any) -> None:
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    store.write(LogBatch.of({"request_id": f"r{i}", "model": "w1", "version": 1 + i % 2,
                             "variant": "production", "at": t0 + timedelta(seconds=i),
                             "latency_ms": 1.0, "rows": 1, "inputs": {"columns": {"x": [i]}},
                             "outputs": {"predictions": [i]}} for i in range(600)))
    assert [p.request_id for p in store.read("w1", limit=3)] == ["r597", "r598", "r599"]
    window = store.read("w1", since=t0 + timedelta(seconds=10), until=t0 + timedelta(seconds=14),
                        versions=[1])
    assert [p.request_id for p in window] == ["r10", "r12"]
    assert store.read("w1", limit=1, with_inputs=False)[0].inputs == {}
    assert store.delete_before("w1", t0 + timedelta(seconds=301)) == 301
    left = store.read("w1")
    assert len(left) == 299 and left[0].request_id == "r301"
    assert left[0].inputs == {"columns": {"x": [301]}}
    assert [p.request_id for p in store.find("w1", ["r300", "r301"])] == ["r301"]


def test_a_batch_of_rows_is_cut_into_chunks_and_keeps_values_as_given() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    batch = LogBatch.of({"request_id": f"r{i}", "model": "m", "version": 1, "variant": "a",
                         "at": at, "latency_ms": 2.5, "rows": 1, "inputs": {"n": i},
                         "outputs": "[1]"} for i in range(600))
    assert [len(c) for c in batch.chunks] == [250, 250, 100]
    columns = dict(zip(("request_id", "model", "version", "variant", "at", "latency_ms", "rows",
                        "inputs", "outputs"), batch.columns(), strict=True))
    assert columns["inputs"][599] == '{"n":599}' and columns["outputs"][0] == '"[1]"'
    assert columns["at"][0] == at.timestamp() and columns["latency_ms"][0] == 2.5
