"""What a precomputed answer may be used for, decided without I/O.

Answers are stored per (model, version, key) with the time they were written. A lookup uses an
answer only when it belongs to the version the server routes to now and is younger than the
version's TTL; every other row is predicted live. A request's answer says where its rows came
from: ``precomputed``, ``live`` or ``mixed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Source = Literal["precomputed", "live", "mixed"]
PRECOMPUTED: Source = "precomputed"
LIVE: Source = "live"
MIXED: Source = "mixed"


@dataclass(frozen=True)
class Stored:
    """One stored answer: its encoded prediction and when it was written (unix seconds)."""

    answer: bytes
    written_at: float


def is_fresh(written_at: float, now: float, ttl_s: float) -> bool:
    """Whether an answer written at ``written_at`` may still be served at ``now``.

    An answer from the future (a writer's clock ahead of ours) counts as fresh only within the
    TTL too, so a skewed clock cannot keep an answer alive forever.
    """
    return abs(now - written_at) < ttl_s


@dataclass(frozen=True)
class Split:
    """Which rows of a request a store answers and which go live, in request order."""

    #: row index -> decoded stored answer
    hits: dict[int, dict[str, Any]]
    #: rows to predict live
    live: list[int]

    @property
    def source(self) -> Source:
        """What the whole answer is made of."""
        return source_of(len(self.hits), len(self.live))


def split_rows(keys: Sequence[str | None], found: Mapping[str, Stored], now: float,
               ttl_s: float, *, scores: bool) -> Split:
    """Split a request's rows by key: a fresh stored answer (with scores when asked) answers a
    row; a row without a key, with a missing, stale or unreadable answer goes live."""
    hits: dict[int, dict[str, Any]] = {}
    live: list[int] = []
    for i, key in enumerate(keys):
        stored = None if key is None else found.get(key)
        answer = None
        if stored is not None and is_fresh(stored.written_at, now, ttl_s):
            answer = decode_answer(stored.answer)
        if answer is not None and (not scores or "scores" in answer):
            hits[i] = answer
        else:
            live.append(i)
    return Split(hits, live)


def source_of(precomputed: int, live: int) -> Source:
    """``precomputed``, ``live`` or ``mixed`` for a request with that many rows of each."""
    if precomputed and live:
        return MIXED
    return PRECOMPUTED if precomputed else LIVE


def key_of(value: Any) -> str | None:
    """A record's key field as the store names it (text), or None for no usable key."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if 0 < len(text) <= 500 else None


def encode_answer(prediction: Any, scores: Any = None, classes: Any = None) -> bytes:
    """One row's answer as stored: its prediction, and its class scores and classes if any."""
    out: dict[str, Any] = {"prediction": prediction}
    if scores is not None:
        out["scores"] = scores
        if classes is not None:
            out["classes"] = classes
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_answer(data: bytes) -> dict[str, Any] | None:
    """A stored answer back, or None when it is not one (then the row goes live)."""
    try:
        out = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return out if isinstance(out, dict) and "prediction" in out else None


def merge(n: int, split: Split, live: Sequence[Any], live_scores: Sequence[Any] | None, *,
          scores_wanted: bool) -> tuple[list[Any], list[Any] | None]:
    """The predictions (and, when wanted, scores) of all ``n`` rows in request order, from the
    stored answers and the live answers of ``split.live`` (in that order)."""
    predictions: list[Any] = [None] * n
    scores: list[Any] | None = [None] * n if scores_wanted else None
    for i, answer in split.hits.items():
        predictions[i] = answer["prediction"]
        if scores is not None:
            scores[i] = answer.get("scores")
    for j, i in enumerate(split.live):
        predictions[i] = live[j]
        if scores is not None and live_scores is not None:
            scores[i] = live_scores[j]
    return predictions, scores


__all__ = ["LIVE", "MIXED", "PRECOMPUTED", "Source", "Split", "Stored", "decode_answer",
           "encode_answer", "is_fresh", "key_of", "merge", "source_of", "split_rows"]
