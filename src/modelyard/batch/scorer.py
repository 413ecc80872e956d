"""Scoring one chunk: validate it as the server does, route bad rows aside, predict the rest.

The chunk goes through the server's :class:`~modelyard.serving.inputs.InputPath` whole (the fast
path for numeric tables). When validation refuses it, :func:`~modelyard.batch.plan.find_bad_rows`
bisects it to the rows that fail, each with the reason the server would have answered, and the
remaining rows are predicted together, so a few bad rows cost a few extra checks, not a
row-at-a-time chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from modelyard.batch.columns import (
    ERROR_COLUMN,
    ROW_COLUMN,
    Columns,
    answer_metadata,
    answers,
    payload,
    take,
)
from modelyard.batch.plan import find_bad_rows
from modelyard.batch.sources import LINE_ERROR
from modelyard.errors import AdapterError, InputError
from modelyard.predictor import Prediction, Predictor
from modelyard.serving.inputs import InputPath


@dataclass
class ScoredChunk:
    """One chunk's answers and bad rows, plus what the prediction log samples from."""

    answers: pa.Table
    errors: pa.Table
    #: the prepared model input of the good rows and their prediction (None: no good rows)
    batch: Any = None
    prediction: Prediction | None = None
    #: the key (or row number) of each good row, for the prediction log's request ids
    ids: np.ndarray | None = None


class ChunkScorer:
    """Scores chunks for one loaded version: ``score(columns, first_row)``."""

    def __init__(self, predictor: Predictor, key: Sequence[str], *, scores: bool) -> None:
        self.predictor = predictor
        self.inputs = InputPath(predictor.signature)
        self.key = tuple(key)
        self.scores = scores
        self._meta = answer_metadata(predictor.name, predictor.version, None)

    def score(self, columns: Columns, rows: int, first_row: int) -> ScoredChunk:
        """Answers for the good rows of ``columns`` (input rows ``first_row`` on), and the bad
        rows with their reasons."""
        carried = self._carried(columns, rows, first_row)
        line_errors = columns.get(LINE_ERROR)
        inputs = payload(columns, self.predictor.signature)
        bad = self._bad_rows(inputs, rows, line_errors)
        if bad:
            good = np.setdiff1d(np.arange(rows), [row for row, _ in bad], assume_unique=True)
            inputs, carried_good = take(inputs, good), take(carried, good)
        else:
            carried_good = carried
        errors = self._errors(carried, bad, first_row)
        if len(next(iter(carried_good.values()))) == 0:
            return ScoredChunk(pa.table({}), errors)
        batch, n = self.inputs.prepare(inputs)
        batch = self.inputs.finalize(batch)
        prediction = self.predictor.predict_batch(batch, scores=self.scores)
        if len(prediction.predictions) != n:
            raise AdapterError(f"{self.predictor.ref} returned {len(prediction.predictions)} "
                               f"predictions for {n} rows; the model must return one per row")
        table = pa.table(answers(prediction, carried_good, scores=self.scores))
        meta = answer_metadata(self.predictor.name, self.predictor.version, prediction)
        ids = next(iter(carried_good.values()))
        return ScoredChunk(table.replace_schema_metadata(meta), errors, batch, prediction, ids)

    def _carried(self, columns: Columns, rows: int, first_row: int) -> Columns:
        if self.key:
            return {name: columns[name] for name in self.key}
        return {ROW_COLUMN: np.arange(first_row, first_row + rows, dtype=np.int64)}

    def _bad_rows(self, inputs: Columns, rows: int,
                  line_errors: np.ndarray | None) -> list[tuple[int, str]]:
        """``(row, reason)`` of each row the server would refuse (and each unreadable line)."""
        unreadable: dict[int, str] = {}
        if line_errors is not None:
            unreadable = {int(i): str(line_errors[i]) for i in np.flatnonzero(line_errors)}
        if not unreadable and self._valid(inputs) is None:
            return []

        def check(lo: int, hi: int) -> str | None:
            if hi - lo == 1 and lo in unreadable:
                return unreadable[lo]
            if any(lo <= i < hi for i in unreadable):
                return "an unreadable line"
            return self._valid(take(inputs, slice(lo, hi)))

        return find_bad_rows(rows, check)

    def _valid(self, inputs: Columns) -> str | None:
        """None when the server's input path takes ``inputs``, else its reason."""
        try:
            self.inputs.prepare(inputs)
        except InputError as exc:
            return _reason(exc)
        return None

    def _errors(self, carried: Columns, bad: list[tuple[int, str]], first_row: int
                ) -> pa.Table:
        """The bad rows: their key, their input row number and the reason."""
        if not bad:
            return pa.table({})
        where = np.array([row for row, _ in bad], dtype=np.int64)
        columns = answers(Prediction(np.empty(0)), take(carried, where), scores=False)
        columns.pop("predictions")
        columns[ROW_COLUMN] = pa.array(where + first_row)
        columns[ERROR_COLUMN] = pa.array([reason for _, reason in bad], pa.string())
        return pa.table(columns).replace_schema_metadata(self._meta)


def _reason(exc: InputError) -> str:
    """The server's reason for refusing one row, without the position inside the check (always
    0: the row's own number is in the error table)."""
    if not exc.errors:
        return str(exc)
    parts = [f"{e['loc'][0] if e.get('loc') else 'input'}: {e['msg']}" for e in exc.errors[:5]]
    return "; ".join(parts)


__all__ = ["ChunkScorer", "ScoredChunk"]
