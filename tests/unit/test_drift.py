"""Drift statistics: agree with scipy, find shifts, leave steady data alone, store as JSON."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest
import scipy.stats as st
from scipy.spatial.distance import jensenshannon

from modelyard.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    DriftReport,
    FeatureDrift,
    chi_squared,
    choose_test,
    compare,
    jensen_shannon,
    ks_test,
    mmd,
    psi,
    psi_counts,
    wasserstein_distance,
)
from modelyard.pipeline.profile import profile


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the tests against scipy --------------------------------------------------------------------
SAMPLES = {
    "continuous": lambda r: (r.normal(size=80), r.normal(0.3, 1.2, size=150)),
    "ties": lambda r: (r.integers(0, 5, 60).astype(float), r.integers(0, 7, 90).astype(float)),
    "rounded": lambda r: (r.normal(size=300).round(1), r.normal(size=500).round(1)),
    "disjoint": lambda r: (r.uniform(0, 1, 40), r.uniform(5, 6, 70)),
    "identical": lambda r: (np.arange(50.0), np.arange(50.0)),
    "one reference value": lambda r: (np.array([2.0]), r.normal(2, 1, 30)),
    "outliers": lambda r: (np.concatenate([r.normal(size=900) * 1e-3, [1e6, -1e6]]),
                           r.normal(size=5000) * 1e-3),
    "large current": lambda r: (r.normal(size=1000), r.normal(0.05, 1, 200_000)),
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_ks_and_wasserstein_match_scipy(case):
    ref, cur = SAMPLES[case](_rng(3))
    d, p = ks_test(ref, cur)
    expected = st.ks_2samp(ref, cur, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    if len(ref) > 1:
        assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)
    assert wasserstein_distance(ref, cur) == pytest.approx(st.wasserstein_distance(ref, cur),
                                                           rel=1e-9, abs=1e-12)


def test_many_random_small_samples_match_scipy():
    rng = _rng(11)
    for _ in range(200):
        m, n = rng.integers(2, 40, size=2)
        ref = rng.integers(0, 8, m) * rng.choice([0.5, 1.0])
        cur = rng.integers(0, 8, n) + rng.choice([0.0, 0.25])
        assert ks_test(ref, cur)[0] == pytest.approx(st.ks_2samp(ref, cur).statistic)
        assert wasserstein_distance(ref, cur) == pytest.approx(
            st.wasserstein_distance(ref, cur), abs=1e-12)


def test_missing_and_infinite_values_are_left_out():
    rng = _rng(1)
    ref, cur = rng.normal(size=100), rng.normal(size=100)
    dirty = np.concatenate([cur, [np.nan, np.inf, -np.inf]])
    assert ks_test(ref, dirty) == ks_test(ref, cur)
    with pytest.raises(ValueError, match="no finite values"):
        wasserstein_distance(ref, [np.nan, np.inf])


def test_chi_squared_matches_scipy_and_handles_unseen_categories():
    ref, cur = [50, 30, 20, 0], [10, 30, 40, 5]
    stat, p = chi_squared(ref, cur)
    expected = st.chi2_contingency(np.array([ref, cur]), correction=False)
    assert stat == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert chi_squared([5, 0], [7, 0]) == (0.0, 1.0)  # one category seen: nothing to test


def test_jensen_shannon_matches_scipy():
    ref, cur = [50, 30, 20, 0], [10, 30, 40, 5]
    assert jensen_shannon(ref, cur) == pytest.approx(jensenshannon(ref, cur, base=2))
    assert jensen_shannon(ref, ref) == 0.0
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same categories"):
        jensen_shannon([1, 2], [1, 2, 3])


def test_psi_by_hand_and_on_shifted_samples():
    p, q = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    assert psi_counts([50, 50], [80, 20]) == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert psi_counts([10, 0], [10, 0]) == 0.0  # an empty bin does not make it infinite
    rng = _rng(2)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=5000)) < 0.05
    assert psi(ref, rng.normal(0.5, 1, size=5000)) > 0.2
    assert psi(ref, ref, edges=[-1.0, 0.0, 1.0]) == 0.0


def test_mmd_finds_moved_vectors_only():
    rng = _rng(4)
    ref = rng.normal(size=(400, 16))
    stat, p = mmd(ref, rng.normal(size=(300, 16)))
    assert p > 0.05 and stat >= 0
    stat_moved, p_moved = mmd(ref, rng.normal(0.4, 1, size=(300, 16)))
    assert p_moved < 0.05 and stat_moved > stat
    assert mmd(np.ones((10, 3)), np.ones((12, 3)))[1] == 1.0  # identical rows, no bandwidth
    assert mmd(ref, ref[:50], seed=1) == mmd(ref, ref[:50], seed=1)
    with pytest.raises(ValueError, match="vectors of 3 values"):
        mmd(ref, np.zeros((5, 3)))


def test_choose_test_by_kind_and_size():
    assert choose_test("numeric", 100_000, 1000) == "ks"
    assert choose_test("numeric", 100_000, 1001) == "wasserstein"
    assert choose_test("numeric", 500, 1_000_000) == "ks"  # the small side bounds the power
    assert choose_test("categorical", 100_000, 200) == "chi2"
    assert choose_test("categorical", 100_000, 50_000) == "jensen_shannon"
    assert choose_test("embedding", 500, 10) == choose_test("embedding", 500, 10**6) == "mmd"
    with pytest.raises(ValueError, match="unknown feature kind"):
        choose_test("image", 1, 1)


# -- tables -------------------------------------------------------------------------------------
def _table(rng: np.random.Generator, n: int, *, shift: float = 0.0,
           countries: tuple[str, ...] = ("FR", "DE", "IT", "ES")) -> pd.DataFrame:
    weights = np.array([0.4, 0.3, 0.2, 0.1])[: len(countries)]
    return pd.DataFrame({
        "amount": rng.lognormal(3 + shift, 1, n),
        "age": rng.normal(40 + 10 * shift, 12, n),
        "visits": rng.poisson(3 + 3 * shift, n),
        "country": rng.choice(countries, n, p=weights / weights.sum()),
        "constant": np.full(n, 7.0),
    })


@pytest.fixture(scope="module")
def reference() -> dict:
    return profile(_table(_rng(10), 20_000))


@pytest.mark.parametrize("rows", [600, 20_000])
def test_steady_table_does_not_drift(reference, rows):
    report = compare(reference, _table(_rng(rows), rows))
    assert not report.drifted
    assert [f.name for f in report.features.values() if f.drifted] == []
    numeric = "ks" if rows <= 1000 else "wasserstein"
    assert report.features["age"].test == numeric
    assert report.features["country"].test == ("chi2" if rows <= 1000 else "jensen_shannon")
    assert report.rows == rows and report.share == 0.0


@pytest.mark.parametrize("rows", [600, 20_000])
def test_shifted_table_drifts(reference, rows):
    shifted = _table(_rng(rows + 1), rows, shift=0.5, countries=("DE", "FR", "IT", "ES"))
    report = compare(reference, shifted)
    assert report.drifted
    assert {n for n, f in report.features.items() if f.drifted} == {"amount", "age", "visits",
                                                                    "country"}
    assert report.share == pytest.approx(4 / 5)


def test_integer_features_keep_their_ties(reference):
    # The stored sample is quantised; a steady count feature must not drift because of it.
    report = compare(reference, _table(_rng(5), 800))
    visits = report.features["visits"]
    assert visits.test == "ks" and visits.p_value > 0.05 and visits.score < 0.08


def test_constant_features(reference):
    rows = _table(_rng(6), 5000)
    assert compare(reference, rows).features["constant"].score == 0.0
    rows.loc[:99, "constant"] = 8.0
    moved = compare(reference, rows).features["constant"]
    assert moved.drifted and np.isfinite(moved.score)
    small = compare(reference, rows.iloc[:500]).features["constant"]
    assert small.test == "ks" and small.drifted


def test_unseen_categories_are_drift(reference):
    rows = _table(_rng(7), 3000)
    steady = compare(reference, rows).features["country"]
    rows.loc[:899, "country"] = "ZZ"  # never seen in training
    unseen = compare(reference, rows).features["country"]
    assert not steady.drifted and unseen.drifted and unseen.score > steady.score
    chi2 = compare(reference, rows.iloc[:400]).features["country"]
    assert chi2.test == "chi2" and chi2.drifted


def test_missing_columns_values_and_empty_data(reference):
    rows = _table(_rng(8), 2000).drop(columns=["country"])
    rows["unknown"] = 1.0
    rows.loc[:49, "age"] = np.nan
    rows.loc[50:59, "age"] = np.inf
    rows["amount"] = np.nan  # an upstream break: every value missing
    report = compare(reference, rows)
    assert "country" not in report.features and "unknown" not in report.features
    assert report.features["age"].rows == 1940 and not report.features["age"].drifted
    assert report.features["amount"].rows == 0 and not report.features["amount"].drifted
    assert report.share == 0.0  # the untestable column is listed, not counted
    with pytest.raises(ValueError, match="no rows"):
        compare(reference, rows.iloc[:0])
    with pytest.raises(ValueError, match="none of the reference's features"):
        compare(reference, pd.DataFrame({"other": [1.0, 2.0]}))


def test_dict_of_columns_and_plain_arrays():
    rng = _rng(9)
    ref = profile(rng.normal(size=(5000, 3)))
    cur = rng.normal(size=(3000, 3))
    cur[:, 1] += 1.0
    by_array = compare(ref, cur)
    by_dict = compare(ref, {f"f{i}": cur[:, i].tolist() for i in range(3)})
    assert by_array == by_dict
    assert [f.drifted for f in by_array.features.values()] == [False, True, False]
    with pytest.raises(ValueError, match="does not match"):
        compare(ref, cur[:, :2])


def test_forced_tests_and_thresholds(reference):
    rows = _table(_rng(12), 5000, shift=0.5)
    rows["age"] += 7  # PSI is the least sensitive test: it takes about one deviation to fire
    report = compare(reference, rows, numeric_test="psi", categorical_test="chi2")
    assert report.features["age"].test == "psi" and report.features["age"].drifted
    assert report.features["age"].threshold == DEFAULT_THRESHOLDS["psi"]
    assert report.features["country"].test == "chi2"
    lenient = compare(reference, rows, thresholds={"wasserstein": 100.0})
    assert not lenient.features["age"].drifted and lenient.features["age"].threshold == 100.0
    steady = compare(reference, _table(_rng(13), 5000), numeric_test="psi")
    assert not any(f.drifted for f in steady.features.values())
    with pytest.raises(ValueError, match="numeric_test"):
        compare(reference, rows, numeric_test="t-test")
    with pytest.raises(ValueError, match="unknown tests"):
        compare(reference, rows, thresholds={"kl": 1.0})
    with pytest.raises(ValueError, match="drift_share"):
        compare(reference, rows, drift_share=2.0)


def test_drift_share_decides_the_verdict(reference):
    rows = _table(_rng(14), 5000)
    rows["age"] += 20
    report = compare(reference, rows, drift_share=0.2)
    assert report.share == pytest.approx(1 / 5) and report.drifted
    assert not compare(reference, rows).drifted


def test_report_round_trips_and_is_json_ready(reference):
    report = compare(reference, _table(_rng(15), 3000, shift=0.5))
    data = report.to_dict()
    assert DriftReport.from_dict(json.loads(orjson.dumps(data))) == report
    assert json.loads(json.dumps(data)) == data  # plain types only, no NaN
    feature = report.features["age"]
    assert FeatureDrift.from_dict(feature.to_dict()) == feature
    assert isinstance(data["features"]["age"]["score"], float)


# -- text and tensors ---------------------------------------------------------------------------
WORDS_A = [f"alpha{i}" for i in range(150)]
WORDS_B = [f"beta{i}" for i in range(150)]


def _texts(rng: np.random.Generator, n: int, words: list[str]) -> list[str]:
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    return [" ".join(rng.choice(words, rng.integers(3, 12), p=weights)) for _ in range(n)]


def test_text_embedding_drift():
    reference = profile(_texts(_rng(20), 3000, WORDS_A))
    steady = compare(reference, _texts(_rng(21), 300, WORDS_A))
    assert steady.embedding is not None and not steady.embedding.drifted
    assert set(steady.features) == {"length", "tokens"} and not steady.drifted
    other = compare(reference, _texts(_rng(22), 300, WORDS_B))
    assert other.embedding.drifted and other.embedding.test == "mmd"
    assert not other.features["tokens"].drifted  # same lengths: only the words moved
    with pytest.raises(ValueError, match="no texts"):
        compare(reference, [None])


def test_text_profile_without_embedding_still_compares():
    reference = profile(_texts(_rng(23), 1000, WORDS_A))
    del reference["embedding"]  # stored before embeddings were profiled
    report = compare(reference, _texts(_rng(24), 200, WORDS_A))
    assert report.embedding is None and set(report.features) == {"length", "tokens"}


def _images(rng: np.random.Generator, n: int, brightness: float = 0.0) -> np.ndarray:
    base = rng.beta(2, 5, size=(n, 1, 1, 3)) + rng.normal(0, 0.05, size=(n, 8, 8, 3))
    return (base + brightness).astype(np.float32)


def test_tensor_embedding_and_row_statistics_drift():
    reference = profile(_images(_rng(30), 800))
    steady = compare(reference, _images(_rng(31), 300))
    assert steady.embedding is not None and not steady.drifted
    assert set(steady.features) == {"row_mean", "row_std"}
    brighter = compare(reference, _images(_rng(32), 300, brightness=0.2))
    assert brighter.embedding.drifted and brighter.features["row_mean"].drifted
    assert brighter.drifted


def test_tensor_current_given_as_projected_rows():
    from modelyard.pipeline.profile import project

    reference = profile(_images(_rng(33), 800))
    shifted = project(_images(_rng(34), 300, brightness=0.2), reference["embedding"])
    report = compare(reference, {"embedding": shifted})
    assert report.embedding.drifted and report.features == {} and report.rows == 300
    old = {k: v for k, v in reference.items() if k not in ("row_mean", "row_std")}
    assert compare(old, _images(_rng(35), 100)).features == {}
    with pytest.raises(ValueError, match="reference's rows have 64 values"):
        compare(reference, {"embedding": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="kind"):
        compare({"kind": "audio"}, [])
