"""Every metric against scikit-learn (or a hand-computed value), and the registry around them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from modelyard.errors import ConfigError
from modelyard.metrics import Metric, compute, get_metric, greater_is_better, register_metric
from modelyard.predictor import Prediction

rng = np.random.default_rng(7)


def score(name: str, y_true, y_pred, scores=None, classes=None) -> float:
    return get_metric(name).fn(y_true, y_pred, scores=scores, classes=classes)


def probs(n: int, k: int) -> np.ndarray:
    raw = rng.random((n, k)) + 0.01
    return raw / raw.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def binary():
    y = rng.integers(0, 2, 200)
    p = probs(200, 2)
    p[:, 1] = np.clip(p[:, 1] * 0.5 + y * 0.4, 0.01, 0.99)
    p[:, 0] = 1 - p[:, 1]
    return y, p.argmax(axis=1), p


@pytest.fixture(scope="module")
def multi():
    y = rng.integers(0, 6, 300)
    p = probs(300, 6)
    p[np.arange(300), y] += 0.3
    p /= p.sum(axis=1, keepdims=True)
    return y, p.argmax(axis=1), p


def test_binary_classification_matches_sklearn(binary):
    y, pred, p = binary
    assert score("accuracy", y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert score("precision", y, pred) == pytest.approx(skm.precision_score(y, pred))
    assert score("recall", y, pred) == pytest.approx(skm.recall_score(y, pred))
    assert score("f1", y, pred) == pytest.approx(skm.f1_score(y, pred))
    assert score("roc_auc", y, pred, p, (0, 1)) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert score("roc_auc", y, pred, p[:, 1]) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert score("log_loss", y, pred, p, (0, 1)) == pytest.approx(skm.log_loss(y, p))


def test_binary_positive_is_the_last_class_for_string_labels():
    y = np.array(["no", "yes", "yes", "no", "yes"])
    pred = np.array(["no", "yes", "no", "yes", "yes"])
    assert score("f1", y, pred) == pytest.approx(skm.f1_score(y, pred, pos_label="yes"))
    assert score("precision", y, pred, classes=("no", "yes")) == pytest.approx(
        skm.precision_score(y, pred, pos_label="yes")
    )


def test_multiclass_averages_match_sklearn(multi):
    y, pred, p = multi
    for name, kwargs in [
        ("precision", {"average": "macro"}),
        ("recall", {"average": "macro"}),
        ("f1", {"average": "macro"}),
        ("f1_macro", {"average": "macro"}),
        ("precision_macro", {"average": "macro"}),
        ("recall_macro", {"average": "macro"}),
        ("f1_micro", {"average": "micro"}),
    ]:
        sk_fn = {"precision": skm.precision_score, "recall": skm.recall_score}.get(
            name.split("_")[0], skm.f1_score
        )
        assert score(name, y, pred) == pytest.approx(sk_fn(y, pred, **kwargs)), name
    classes = tuple(range(6))
    assert score("roc_auc", y, pred, p, classes) == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert score("log_loss", y, pred, p, classes) == pytest.approx(skm.log_loss(y, p))
    assert score("top_3", y, pred, p, classes) == pytest.approx(
        skm.top_k_accuracy_score(y, p, k=3)
    )
    assert score("top_5", y, pred, p, classes) == pytest.approx(
        skm.top_k_accuracy_score(y, p, k=5)
    )


def test_zero_division_scores_zero_like_sklearn():
    y = np.array([0, 0, 1, 2])
    pred = np.array([0, 0, 0, 0])
    assert score("precision_macro", y, pred) == pytest.approx(
        skm.precision_score(y, pred, average="macro", zero_division=0)
    )


def test_roc_auc_with_ties_matches_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.4, 0.2, 0.9, 0.8])
    assert score("roc_auc", y, None, s) == pytest.approx(skm.roc_auc_score(y, s))


def test_regression_matches_sklearn():
    y = rng.normal(size=100)
    pred = y + rng.normal(scale=0.3, size=100)
    assert score("rmse", y, pred) == pytest.approx(skm.root_mean_squared_error(y, pred))
    assert score("mae", y, pred) == pytest.approx(skm.mean_absolute_error(y, pred))
    assert score("r2", y, pred) == pytest.approx(skm.r2_score(y, pred))
    y2, p2 = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert score("r2", y2, p2) == pytest.approx(skm.r2_score(y2, p2))
    assert score("rmse", y2, p2) == pytest.approx(skm.root_mean_squared_error(y2, p2))


def test_iou_on_binary_masks_and_miou_on_label_masks():
    t = rng.integers(0, 2, (4, 16, 16))
    p = rng.integers(0, 2, (4, 16, 16))
    assert score("iou", t, p) == pytest.approx(skm.jaccard_score(t.ravel(), p.ravel()))
    lt, lp = rng.integers(0, 4, (3, 8, 8)), rng.integers(0, 4, (3, 8, 8))
    assert score("miou", lt, lp) == pytest.approx(
        skm.jaccard_score(lt.ravel(), lp.ravel(), average="macro")
    )
    square = np.zeros((1, 4, 4), dtype=bool)
    square[0, :2, :2] = True
    shifted = np.zeros_like(square)
    shifted[0, :2, 1:3] = True
    assert score("iou", square, shifted) == pytest.approx(2 / 6)


def test_box_iou():
    boxes = [[0, 0, 2, 2], [0, 0, 1, 1]]
    preds = [[1, 1, 3, 3], [0, 0, 1, 1]]
    assert score("box_iou", boxes, preds) == pytest.approx((1 / 7 + 1) / 2)


def test_bleu_on_known_examples():
    assert score("bleu", ["the cat sat on the mat"], ["the cat sat on the mat"]) == 1.0
    ref = ["the", "cat", "is", "on", "the", "mat"]
    hyp = ["the", "cat", "the", "cat", "on", "the", "mat"]
    # clipped matches: 1-grams 5/7, 2-grams 3/6 (the cat, on the, the mat), 3-grams 1/5, 4-grams 0/4
    p4 = 1 / (2 * 4)  # exponential smoothing of the first order without a match
    expected = math.exp((math.log(5 / 7) + math.log(3 / 6) + math.log(1 / 5) + math.log(p4)) / 4)
    assert score("bleu", [ref], [hyp]) == pytest.approx(expected)
    # a short hypothesis pays the brevity penalty
    short = score("bleu", ["a b c d e f g h"], ["a b c d e f"])
    assert short == pytest.approx(math.exp(1 - 8 / 6))
    # several references: the closest length is used, n-grams clip to the best reference
    assert score("bleu", [["a b c d e", "a b c d"]], ["a b c d"]) == 1.0


@pytest.mark.parametrize("words", [["yes"], ["thank", "you"], ["see", "you", "soon"]])
def test_bleu_of_identical_short_sentences_is_one(words):
    # orders longer than the sentence are left out of the mean instead of scoring 0
    assert score("bleu", [" ".join(words)], [" ".join(words)]) == pytest.approx(1.0)
    assert score("bleu", [words, words], [words, words]) == pytest.approx(1.0)


BLEU_CASES = {
    "one token": (["hello"], ["hello"]),
    "two tokens": (["thank you"], ["thank you"]),
    "three tokens": (["see you soon"], ["see you soon"]),
    "short, one wrong": (["see you soon"], ["see you later"]),
    "short, reordered": (["the red car"], ["car the red"]),
    "no match at all": (["a b c d e"], ["v w x y z"]),
    "only unigrams match": (["a b c d"], ["d c b a"]),
    "brevity": (["a b c d e f g h"], ["a b c d e f"]),
    "longer hypothesis": (["a b c"], ["a b c d e"]),
    "mixed corpus": (
        ["the cat is on the mat", "there is a cat here", "hi", "good morning to you"],
        ["the cat the cat on the mat", "a cat is here", "hi", "good evening to you all"]),
    "short corpus": (["a b", "c d e", "f"], ["a b", "c e d", "f"]),
    "several references": ([["a b c d e", "a b c d"], ["x y z w", "x y q"]],
                           ["a b c d", "x y z"]),
}


@pytest.mark.parametrize("case", sorted(BLEU_CASES))
def test_bleu_matches_sacrebleu(case):
    import sacrebleu  # test-only dependency (the dev extra): the reference implementation

    refs, hyps = BLEU_CASES[case]
    per_row = [[r] if isinstance(r, str) else list(r) for r in refs]
    # sacreBLEU takes one stream per reference position; rows with fewer references get None
    width = max(len(r) for r in per_row)
    streams = [[row[i] if i < len(row) else None for row in per_row] for i in range(width)]
    expected = sacrebleu.BLEU(tokenize="none", smooth_method="exp",
                              effective_order=True).corpus_score(hyps, streams).score / 100
    assert score("bleu", refs, hyps) == pytest.approx(expected, abs=1e-9)


def test_bleu_matches_sacrebleu_on_random_corpora():
    import sacrebleu

    words = list("abcdefgh")
    for seed in range(20):
        local = np.random.default_rng(seed)
        rows = int(local.integers(1, 6))
        refs = [" ".join(local.choice(words, int(local.integers(1, 9)))) for _ in range(rows)]
        hyps = [" ".join(local.choice(words, int(local.integers(1, 9)))) for _ in range(rows)]
        expected = sacrebleu.BLEU(tokenize="none", effective_order=True).corpus_score(
            hyps, [refs]).score / 100
        assert score("bleu", refs, hyps) == pytest.approx(expected, abs=1e-9), (refs, hyps)


def test_compute_and_scores_needed():
    pred = Prediction(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]), (0, 1))
    out = compute(["accuracy", "roc_auc", "log_loss"], [0, 1, 0], pred)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert set(out) == {"accuracy", "roc_auc", "log_loss"}
    no_scores = Prediction(np.array([0, 1, 1]))
    with pytest.raises(ConfigError, match=r"roc_auc.*needs class scores"):
        compute(["roc_auc"], [0, 1, 0], no_scores)
    assert compute(["accuracy", "roc_auc"], [0, 1, 0], no_scores, missing_scores="skip") == {
        "accuracy": pytest.approx(2 / 3)
    }


def test_unknown_metric_lists_known_names():
    with pytest.raises(ConfigError, match=r"unknown metric 'f2'.*accuracy.*f1"):
        get_metric("f2")


def test_register_metric_and_direction():
    register_metric(Metric("max_error", lambda t, p, **_: float(np.max(np.abs(
        np.asarray(t) - np.asarray(p)))), greater_is_better=False))
    assert compute(["max_error"], [1, 2], Prediction(np.array([1, 5]))) == {"max_error": 3.0}
    assert not greater_is_better("max_error") and not greater_is_better("rmse")
    assert greater_is_better("f1")


def test_mismatched_lengths_are_a_config_error():
    with pytest.raises(ConfigError, match="2 labels but 3 predictions"):
        compute(["accuracy"], [0, 1], Prediction(np.array([0, 1, 1])))
