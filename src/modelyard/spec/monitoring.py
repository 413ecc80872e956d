"""The monitoring section of a spec: the window, drift verdicts and alert rules."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from modelyard.spec.base import STRICT

#: what alert rules may watch besides the model's declared metrics.
ALERT_SIGNALS = ("drift_share", "p99_ms", "error_rate")
#: the largest per-group metric gap of a model's ``gate.fairness`` rules, over the window: an
#: alert may watch it when the gate has a rule with a metric.
FAIRNESS_GAP = "fairness_gap"


class AlertRule(BaseModel):
    """Fire an alert when a monitored value crosses a bound over the monitoring window.

    ``on`` is a declared metric (``f1``, ``iou``, ...), ``drift_share``, ``p99_ms``,
    ``error_rate`` or ``fairness_gap`` (with a ``gate.fairness`` rule); give ``above`` or
    ``below``.
    """

    model_config = STRICT

    on: str
    above: float | None = None
    below: float | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    name: str | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("an alert rule takes exactly one of above or below")
        return self

    @property
    def title(self) -> str:
        """The rule's name, or one made from it (``f1 below 0.7``)."""
        if self.name:
            return self.name
        return f"{self.on} above {self.above}" if self.above is not None else (
            f"{self.on} below {self.below}")


class MonitorSpec(BaseModel):
    """How a model is watched in production: the window, drift verdicts and alert rules."""

    model_config = STRICT

    window_s: float = Field(3600.0, gt=0)  # how far back metrics, drift and alerts look
    min_rows: int = Field(100, ge=1)  # fewest logged rows a drift check needs
    drift_share: float = Field(0.5, gt=0, le=1)  # share of drifted features = dataset drift
    alerts: list[AlertRule] = Field(default_factory=list)
    webhook: str | None = None  # alerts are POSTed here too (or MODELYARD_ALERT_WEBHOOK)
    #: logged predictions and labels older than this many days are deleted by the servers
    #: (None keeps them forever)
    retention_days: float | None = Field(30.0, gt=0)


__all__ = ["ALERT_SIGNALS", "FAIRNESS_GAP", "AlertRule", "MonitorSpec"]
