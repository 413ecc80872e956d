"""The training sections of a spec: where data comes from, its checks, the gate, retraining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictStr, field_validator, model_validator

from modelyard.metrics import CLASSIFICATION_METRICS
from modelyard.spec.base import STRICT


class DataSpec(BaseModel):
    """Where training data comes from, so a rerun picks up new data.

    Exactly one of ``path`` (CSV/Parquet file or glob), ``sql`` (a query, with ``url``) or
    ``function`` (``"file.py:fn"`` / ``"module:fn"`` or a callable returning ``(X, y)`` or a
    DataFrame) is given.
    """

    model_config = STRICT

    path: str | None = None
    format: Literal["csv", "parquet"] | None = None
    sql: str | None = None
    url: str | None = None
    function: str | Callable[..., Any] | None = None
    target: str | None = None
    features: list[str] | None = None
    holdout: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("path", "sql", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, sql or function")
        if self.sql is not None and not self.url:
            raise ValueError("a sql source needs url: the database URL to run it against")
        if self.path is not None and self.target is None:
            raise ValueError("a file source needs target: the label column")
        return self


class ValidationSpec(BaseModel):
    """Checks the training data must pass before anything is trained."""

    model_config = STRICT

    min_rows: int = Field(10, ge=1)
    max_missing: float = Field(0.0, ge=0.0, le=1.0)  # per column, as a fraction of rows
    columns: dict[str, str] | None = None  # expected dtype per column: float64, int64, string, ...
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    allowed: dict[str, list[Any]] = Field(default_factory=dict)  # categorical values


class ChampionRule(BaseModel):
    """Compare the candidate with the current ``production`` version on the same holdout."""

    model_config = STRICT

    metric: str
    max_drop: float = Field(0.0, ge=0.0)  # how much worse than the champion is still accepted


class FairnessRule(BaseModel):
    """Bound how differently a model treats the groups of one column of the holdout.

    ``group`` is a column of the training data (a model feature or not); ``metric`` is scored
    per group and ``max_gap`` bounds its max - min across groups. ``max_demographic_parity``
    and ``max_equalized_odds`` bound Fairlearn's differences of the same names (binary tasks).
    Give at least one bound.
    """

    model_config = STRICT

    group: StrictStr = Field(min_length=1)
    metric: str | None = None
    max_gap: float | None = Field(None, ge=0.0)
    max_demographic_parity: float | None = Field(None, ge=0.0, le=1.0)
    max_equalized_odds: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("metric")
    @classmethod
    def _classification(cls, value: str | None) -> str | None:
        if value is not None and value not in CLASSIFICATION_METRICS:
            raise ValueError(f"fairness metric {value!r} is not a classification metric; use one "
                             f"of {', '.join(CLASSIFICATION_METRICS)}")
        return value

    @model_validator(mode="after")
    def _bounded(self) -> FairnessRule:
        if self.max_gap is not None and self.metric is None:
            raise ValueError("max_gap bounds the gap of a metric: set metric too (recall, ...)")
        if self.metric is not None and self.max_gap is None:
            raise ValueError(f"metric {self.metric} is compared across groups by max_gap: set it")
        if self.max_gap is None and self.max_demographic_parity is None and (
                self.max_equalized_odds is None):
            raise ValueError("a fairness rule needs a bound: max_gap (with metric), "
                             "max_demographic_parity or max_equalized_odds")
        return self


class GateSpec(BaseModel):
    """When a new version may be promoted: absolute thresholds, the champion comparison and
    fairness bounds per group."""

    model_config = STRICT

    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    champion: ChampionRule | None = None
    #: one rule or a list; each bounds the differences between the groups of a column
    fairness: list[FairnessRule] = Field(default_factory=list)
    promote: bool = True  # move the production alias when the gate passes

    @field_validator("fairness", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict | FairnessRule) else value


class RetrainSpec(BaseModel):
    """When to retrain by itself: a cron schedule and trigger rules."""

    model_config = STRICT

    schedule: str | None = None  # cron, e.g. "0 3 * * *"
    drift_share: float | None = Field(None, gt=0, le=1)
    metric_below: dict[str, float] = Field(default_factory=dict)
    new_labels: int | None = Field(None, ge=1)
    auto_rollout: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("schedule must be a 5-field cron expression, e.g. '0 3 * * *'")
        return value


__all__ = ["ChampionRule", "DataSpec", "FairnessRule", "GateSpec", "RetrainSpec", "ValidationSpec"]
