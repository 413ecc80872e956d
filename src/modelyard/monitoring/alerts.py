"""Alert rules: which fire (:func:`evaluate`, pure) and telling people (:class:`Alerter`).

A rule fires when its value crosses its bound (``f1 below 0.7``, ``p99_ms above 250``). The
:class:`Alerter` records a monitor event (``kind="alert"``) when a rule *starts* firing, and an
``info`` event ending in "resolved" when it stops; whether a rule is firing is read back from its
last alert event, so the state survives restarts and is shared by every process, and a rule that
stays firing is announced once. Each change is logged and, when a webhook URL is set
(``monitoring.webhook`` or ``MODELYARD_ALERT_WEBHOOK``), POSTed to it as JSON. A webhook that
fails is logged and never stops monitoring.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.monitoring.monitor import Monitor, MonitorEvent
    from modelyard.spec import AlertRule, MonitorSpec

log = logging.getLogger(__name__)

WEBHOOK_ENV = "MODELYARD_ALERT_WEBHOOK"
FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True)
class Firing:
    """A rule whose value crossed its bound, and the value that did."""

    rule: AlertRule
    value: float

    @property
    def message(self) -> str:
        """``f1 0.61 below 0.7``."""
        side, bound = (("above", self.rule.above) if self.rule.above is not None
                       else ("below", self.rule.below))
        return f"{self.rule.on} {_show(self.value)} {side} {_show(bound)}"


@dataclass(frozen=True)
class AlertChange:
    """A rule that started firing or resolved on this evaluation (what was recorded and sent)."""

    model: str
    rule: str
    state: str  # "firing" | "resolved"
    severity: str
    message: str
    value: float | None


def evaluate(rules: Sequence[AlertRule],
             values: Mapping[str, float | None]) -> list[Firing]:
    """The rules whose value crosses their bound; a rule without a value does not fire."""
    firing = []
    for rule in rules:
        value = values.get(rule.on)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if ((rule.above is not None and value > rule.above)
                or (rule.below is not None and value < rule.below)):
            firing.append(Firing(rule, float(value)))
    return firing


def webhook_url(monitoring: MonitorSpec) -> str | None:
    """The webhook alerts of a model go to: its ``monitoring.webhook``, else the environment's."""
    return monitoring.webhook or os.environ.get(WEBHOOK_ENV) or None


class Alerter:
    """Record, log and send alert changes of one model; state lives in its monitor events."""

    def __init__(self, monitor: Monitor, model: str, *, webhook: str | None = None,
                 timeout_s: float = 5.0) -> None:
        self.monitor = monitor
        self.model = model
        self.webhook = webhook
        self.timeout_s = timeout_s

    def apply(self, rules: Sequence[AlertRule],
              values: Mapping[str, float | None]) -> list[AlertChange]:
        """Evaluate ``rules`` on ``values`` and announce each rule that started or stopped firing.

        A rule without a value keeps its state: missing labels or traffic do not resolve it.
        """
        firing = {f.rule.title: f for f in evaluate(rules, values)}
        changes = []
        for rule in rules:
            was_firing = self._is_firing(rule.title)
            hit = firing.get(rule.title)
            if hit is not None and not was_firing:
                changes.append(self._announce(rule, FIRING, rule.severity, hit.message, hit.value))
            elif hit is None and was_firing and values.get(rule.on) is not None:
                value = values[rule.on]
                changes.append(self._announce(
                    rule, RESOLVED, "info",
                    f"{rule.on} {_show(value)}, {rule.title} resolved", value))
        return changes

    def _is_firing(self, title: str) -> bool:
        last = self.monitor.events(self.model, kind="alert", name=title, limit=1)
        return bool(last) and _state(last[0]) == FIRING

    def _announce(self, rule: AlertRule, state: str, severity: str, message: str,
                  value: float | None) -> AlertChange:
        details = {"state": state, "on": rule.on, "value": value, "above": rule.above,
                   "below": rule.below, "rule_severity": rule.severity}
        event = self.monitor.add_event(self.model, "alert", rule.title, message,
                                       severity=severity, details=details)
        log.warning("alert %s on %s (%s): %s", state, self.model, severity, message)
        if self.webhook:
            self._post({"model": self.model, "rule": rule.title, "state": state,
                        "severity": severity, "message": message, "id": event.id,
                        "at": event.at.isoformat(), **details})
        return AlertChange(self.model, rule.title, state, severity, message, value)

    def _post(self, body: dict[str, Any]) -> None:
        url = self.webhook or ""
        if not url.startswith(("http://", "https://")):
            log.warning("alert webhook %r is not an http(s) URL; not sent", url)
            return
        request = urllib.request.Request(
            url, data=json.dumps(body, default=str).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "modelyard-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # it holds the response open
            log.warning("alert webhook %s failed: %s; the alert is recorded all the same",
                        url, _reason(exc))


def _state(event: MonitorEvent) -> str:
    state = (event.details or {}).get("state")
    if isinstance(state, str):
        return state
    return RESOLVED if event.message.endswith("resolved") else FIRING


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _show(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


__all__ = ["FIRING", "RESOLVED", "WEBHOOK_ENV", "AlertChange", "Alerter", "Firing", "evaluate",
           "webhook_url"]
