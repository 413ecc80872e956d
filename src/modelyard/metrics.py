"""Metrics by name, one registry for every kind of model: classification, regression, ranking,
segmentation and translation. Pure numpy, so monitoring and the pipeline score alike.

Each metric is ``fn(y_true, y_pred, scores=None, classes=None) -> float``. ``scores`` are class
probabilities, one column per entry of ``classes`` (the signature's class order); a 1-D
``scores`` is the probability of the positive (last) class. ``compute`` evaluates a list of names
on a :class:`~modelyard.predictor.Prediction`.

Binary ``precision``/``recall``/``f1`` take the larger (last) class as positive; with more than
two classes they are macro averages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.predictor import Prediction

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    """A named metric: its function, which direction is better, and whether it needs scores."""

    name: str
    fn: MetricFn
    greater_is_better: bool = True
    needs_scores: bool = False


_metrics: dict[str, Metric] = {}


def register_metric(metric: Metric) -> None:
    """Add ``metric`` (or replace the one of the same name)."""
    _metrics[metric.name] = metric


def get_metric(name: str) -> Metric:
    """The metric called ``name``; :class:`ConfigError` lists the known names otherwise."""
    try:
        return _metrics[name]
    except KeyError:
        raise ConfigError(
            f"unknown metric {name!r}; known metrics: {', '.join(metric_names())}"
        ) from None


def metric_names() -> list[str]:
    """Every registered metric name, sorted."""
    return sorted(_metrics)


def greater_is_better(name: str) -> bool:
    """Whether a higher value of metric ``name`` is better."""
    return get_metric(name).greater_is_better


def compute(
    names: Iterable[str],
    y_true: Any,
    prediction: Prediction,
    *,
    missing_scores: Literal["raise", "skip"] = "raise",
) -> dict[str, float]:
    """Score ``prediction`` against ``y_true`` on each metric in ``names``.

    A metric that needs class scores when the prediction has none raises :class:`ConfigError`
    (or is left out with ``missing_scores="skip"``).
    """
    out: dict[str, float] = {}
    for name in names:
        metric = get_metric(name)
        if metric.needs_scores and prediction.scores is None:
            if missing_scores == "skip":
                continue
            raise ConfigError(
                f"metric {name!r} needs class scores, but the model gives none "
                "(no predict_proba or probability output); drop it from metrics"
            )
        try:
            value = metric.fn(y_true, prediction.predictions, scores=prediction.scores,
                              classes=prediction.classes)
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"metric {name!r} cannot score these predictions: {exc}") from None
        out[name] = float(value)
    return out


# -- classification -----------------------------------------------------------------------------
def _flat(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    return arr.reshape(-1) if arr.ndim > 1 and arr.shape[-1] == 1 else arr


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _flat(y_true), _flat(y_pred)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"{t.shape[0]} labels but {p.shape[0]} predictions")
    if t.shape[0] == 0:
        raise ValueError("no rows to score")
    return t, p


def _confusion(
    t: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """Per-label true positives, predicted counts and true counts, over labels seen in either."""
    labels, inverse = np.unique(np.concatenate([t, p]), return_inverse=True)
    ti, pi = inverse[: len(t)], inverse[len(t):]
    k = len(labels)
    tp = np.bincount(ti[ti == pi], minlength=k).astype(float)
    pred = np.bincount(pi, minlength=k).astype(float)
    true = np.bincount(ti, minlength=k).astype(float)
    return tp, pred, true, labels.tolist()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # 0 where undefined


def _prf(t: np.ndarray, p: np.ndarray, average: str, classes: Any) -> tuple[float, float, float]:
    """Precision, recall and F1: ``micro``, ``macro``, or ``auto`` (binary if two classes)."""
    tp, pred, true, labels = _confusion(t, p)
    if average == "micro":
        share = float(tp.sum() / len(t))
        return share, share, share
    if average == "auto" and (pos := _positive(labels, classes)) is not None:
        keep = np.array([label == pos for label in labels], dtype=bool)
        tp, pred, true = tp[keep], pred[keep], true[keep]  # empty: the positive never occurs
    prec, rec = _ratio(tp, pred), _ratio(tp, true)
    f1 = _ratio(2 * prec * rec, prec + rec)
    return tuple(float(v.mean()) if v.size else 0.0 for v in (prec, rec, f1))  # type: ignore[return-value]


def _positive(labels: list[Any], classes: Any) -> Any:
    """The positive label of a binary problem (the last class), or None for multiclass."""
    if classes is not None and len(classes) == 2:
        return list(classes)[-1]
    if classes is None and len(labels) == 2:
        return labels[-1]
    return None


def accuracy(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Share of rows predicted exactly right."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def _prf_metric(index: int, average: str) -> MetricFn:
    def fn(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
        t, p = _pair(y_true, y_pred)
        return _prf(t, p, average, classes)[index]

    return fn


def _score_matrix(y_true: np.ndarray, scores: Any, classes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores as ``(n, k)`` and each row's true column index."""
    s = np.asarray(scores, dtype=float)
    if s.ndim == 1:
        s = np.column_stack([1.0 - s, s])
    labels = list(classes) if classes is not None else sorted(set(y_true.tolist()))
    if s.shape != (len(y_true), len(labels)):
        raise ValueError(f"scores have shape {s.shape}; expected ({len(y_true)}, {len(labels)})")
    index = {c: i for i, c in enumerate(labels)}
    try:
        cols = np.array([index[v] for v in y_true.tolist()])
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} is not one of the classes {labels}") from None
    return s, cols


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative rows")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=float)
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """ROC AUC: binary on the last class's score; one-vs-rest macro average for multiclass."""
    t = _flat(y_true)
    s, cols = _score_matrix(t, scores, classes)
    if s.shape[1] == 2:
        return _auc(cols == 1, s[:, 1])
    present = [k for k in range(s.shape[1]) if np.any(cols == k)]
    return float(np.mean([_auc(cols == k, s[:, k]) for k in present]))


def log_loss(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped away from 0)."""
    t = _flat(y_true)
    s, cols = _score_matrix(t, scores, classes)
    eps = np.finfo(float).eps
    p = np.clip(s[np.arange(len(t)), cols], eps, 1.0)
    return float(-np.mean(np.log(p)))


def _top_k(k: int) -> MetricFn:
    def fn(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
        t = _flat(y_true)
        s, cols = _score_matrix(t, scores, classes)
        if k >= s.shape[1]:
            return 1.0
        # a true class is in the top k when fewer than k classes score strictly higher
        true_scores = s[np.arange(len(t)), cols][:, None]
        return float(np.mean((s > true_scores).sum(axis=1) < k))

    return fn


# -- regression ---------------------------------------------------------------------------------
def _numeric(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _pair(y_true, y_pred)
    return t.astype(float), p.astype(float)


def rmse(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Root mean squared error."""
    t, p = _numeric(y_true, y_pred)
    return float(np.mean(np.sqrt(np.mean((t - p) ** 2, axis=0))))  # averaged over outputs


def mae(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Mean absolute error."""
    t, p = _numeric(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def r2(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Coefficient of determination (1 is perfect, 0 is predicting the mean)."""
    t, p = _numeric(y_true, y_pred)
    total = np.atleast_1d(np.sum((t - t.mean(axis=0)) ** 2, axis=0))
    resid = np.atleast_1d(np.sum((t - p) ** 2, axis=0))
    safe = np.where(total > 0, total, 1.0)
    # a constant target: perfect predictions score 1, anything else 0 (as scikit-learn does)
    per_output = np.where(total > 0, 1.0 - resid / safe, np.where(resid == 0, 1.0, 0.0))
    return float(np.mean(per_output))


# -- segmentation and boxes ---------------------------------------------------------------------
def iou(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Intersection over union of binary masks, pooled over every pixel of the batch."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape:
        raise ValueError(f"masks have shapes {t.shape} and {p.shape}")
    union = np.sum(t | p)
    return float(np.sum(t & p) / union) if union else 1.0


def miou(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Mean IoU over the labels of label masks (each label seen in either mask counts once)."""
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"masks have {t.size} and {p.size} pixels")
    labels = np.union1d(t, p)
    ious = [np.sum((t == c) & (p == c)) / np.sum((t == c) | (p == c)) for c in labels]
    return float(np.mean(ious))


def box_iou(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Mean IoU of paired boxes ``(x1, y1, x2, y2)``, one true and one predicted box per row."""
    t = np.asarray(y_true, dtype=float).reshape(-1, 4)
    p = np.asarray(y_pred, dtype=float).reshape(-1, 4)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} true boxes but {len(p)} predicted")
    w = np.clip(np.minimum(t[:, 2], p[:, 2]) - np.maximum(t[:, 0], p[:, 0]), 0, None)
    h = np.clip(np.minimum(t[:, 3], p[:, 3]) - np.maximum(t[:, 1], p[:, 1]), 0, None)
    inter = w * h
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    union = area(t) + area(p) - inter
    return float(np.mean(_ratio(inter, union)))


# -- translation --------------------------------------------------------------------------------
def _tokens(text: Any) -> list[str]:
    return text.split() if isinstance(text, str) else [str(t) for t in text]


def _references(ref: Any) -> list[list[str]]:
    """One reference (a string or token list) or several (a list of those)."""
    if isinstance(ref, str):
        return [ref.split()]
    items = list(ref)
    if items and all(isinstance(r, str) for r in items) and any(" " in r for r in items):
        return [r.split() for r in items]
    if items and not isinstance(items[0], str) and isinstance(items[0], Sequence):
        return [_tokens(r) for r in items]
    return [_tokens(items)]


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(y_true: Any, y_pred: Any, scores: Any = None, classes: Any = None) -> float:
    """Corpus BLEU-4 in [0, 1] with the brevity penalty, exponential smoothing, effective order.

    ``y_true`` holds one reference per row (a string, a token list, or a list of several
    references); ``y_pred`` one hypothesis per row. Strings are split on whitespace. An n-gram
    order with no match counts as ``1 / (2**k * total)`` (the k-th such order: the NIST
    smoothing, Chen & Cherry 2014 method 3, sacreBLEU's default), and orders longer than every
    hypothesis are left out of the mean (sacreBLEU's "effective order"), so identical sentences
    of one to three tokens score 1 instead of 0. No matching unigram at all scores 0. Equal to
    ``sacrebleu.BLEU(tokenize="none", effective_order=True).corpus_score(...) / 100``.
    """
    refs, hyps = list(y_true), list(y_pred)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    matches, totals = np.zeros(4), np.zeros(4)
    hyp_len = ref_len = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        h, rs = _tokens(hyp), _references(ref)
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(h)), n))
        for n in range(1, 5):
            counts = _ngrams(h, n)
            best: Counter[tuple[str, ...]] = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            matches[n - 1] += sum((counts & best).values())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or not matches.any():
        return 0.0
    log_p, k, order = 0.0, 1, 0
    for m, total in zip(matches, totals, strict=True):
        if total == 0:  # no hypothesis is this long: the order is left out, not scored 0
            break
        order += 1
        if m == 0:
            k *= 2
            log_p += np.log(1.0 / (k * total))
        else:
            log_p += np.log(m / total)
    brevity = 1.0 if hyp_len > ref_len else np.exp(1 - ref_len / hyp_len)
    return float(brevity * np.exp(log_p / order))


for _metric in (
    Metric("accuracy", accuracy),
    Metric("precision", _prf_metric(0, "auto")),
    Metric("recall", _prf_metric(1, "auto")),
    Metric("f1", _prf_metric(2, "auto")),
    Metric("precision_macro", _prf_metric(0, "macro")),
    Metric("recall_macro", _prf_metric(1, "macro")),
    Metric("f1_macro", _prf_metric(2, "macro")),
    Metric("f1_micro", _prf_metric(2, "micro")),
    Metric("roc_auc", roc_auc, needs_scores=True),
    Metric("log_loss", log_loss, greater_is_better=False, needs_scores=True),
    Metric("top_3", _top_k(3), needs_scores=True),
    Metric("top_5", _top_k(5), needs_scores=True),
    Metric("rmse", rmse, greater_is_better=False),
    Metric("mae", mae, greater_is_better=False),
    Metric("r2", r2),
    Metric("iou", iou),
    Metric("miou", miou),
    Metric("box_iou", box_iou),
    Metric("bleu", bleu),
):
    register_metric(_metric)

#: the built-in metrics of class labels: what a fairness rule may compare across groups.
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "precision_macro",
                          "recall_macro", "f1_macro", "f1_micro", "roc_auc", "log_loss", "top_3",
                          "top_5")


__all__ = [
    "CLASSIFICATION_METRICS",
    "Metric",
    "compute",
    "get_metric",
    "greater_is_better",
    "metric_names",
    "register_metric",
]
