"""Alert rules: which fire (pure), and the Alerter's events, log lines and webhook posts."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from modelyard.monitoring.alerts import Alerter, evaluate, webhook_url
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry
from modelyard.spec import AlertRule, MonitorSpec

F1_LOW = AlertRule(on="f1", below=0.7, severity="critical")
SLOW = AlertRule(on="p99_ms", above=250, name="slow answers")


class Hook:
    """A real HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture()
def hook() -> Iterator[Hook]:
    with Hook() as server:
        yield server


@pytest.fixture()
def monitor(registry: Registry) -> Monitor:
    return Monitor(registry)


def test_evaluate_fires_rules_past_their_bounds():
    rules = [F1_LOW, SLOW, AlertRule(on="drift_share", above=0.5)]
    firing = evaluate(rules, {"f1": 0.61, "p99_ms": 120.0, "drift_share": 0.8})
    assert [f.rule.title for f in firing] == ["f1 below 0.7", "drift_share above 0.5"]
    assert firing[0].message == "f1 0.61 below 0.7" and firing[0].value == 0.61


def test_evaluate_ignores_missing_values_and_bounds_themselves():
    assert evaluate([F1_LOW, SLOW], {"f1": None}) == []
    assert evaluate([F1_LOW, SLOW], {"f1": float("nan"), "p99_ms": float("nan")}) == []
    assert evaluate([F1_LOW, SLOW], {"f1": 0.7, "p99_ms": 250.0}) == []  # at the bound: fine


def test_a_rule_fires_once_then_resolves_once(monitor: Monitor, hook: Hook,
                                              caplog: pytest.LogCaptureFixture):
    alerter = Alerter(monitor, "fraud", webhook=hook.url)
    with caplog.at_level(logging.WARNING, logger="modelyard.monitoring.alerts"):
        first = alerter.apply([F1_LOW], {"f1": 0.61})
    assert [(c.rule, c.state, c.severity) for c in first] == [
        ("f1 below 0.7", "firing", "critical")]
    assert "alert firing on fraud (critical): f1 0.61 below 0.7" in caplog.text
    assert alerter.apply([F1_LOW], {"f1": 0.55}) == []  # still firing: said once
    resolved = alerter.apply([F1_LOW], {"f1": 0.82})
    assert [(c.state, c.severity) for c in resolved] == [("resolved", "info")]
    assert alerter.apply([F1_LOW], {"f1": 0.9}) == []

    events = monitor.events("fraud", kind="alert")
    assert [(e.name, e.severity, e.details["state"]) for e in events] == [
        ("f1 below 0.7", "info", "resolved"), ("f1 below 0.7", "critical", "firing")]
    assert events[0].message.endswith("resolved")
    assert [b["state"] for b in hook.bodies] == ["firing", "resolved"]
    body = hook.bodies[0]
    assert body["model"] == "fraud" and body["rule"] == "f1 below 0.7"
    assert body["severity"] == "critical" and body["value"] == 0.61 and body["below"] == 0.7
    assert body["message"] == "f1 0.61 below 0.7" and body["id"] == events[1].id


def test_the_state_survives_a_restart_and_is_shared(monitor: Monitor, registry: Registry):
    Alerter(monitor, "fraud").apply([SLOW], {"p99_ms": 400.0})
    other_process = Alerter(Monitor(registry), "fraud")
    assert other_process.apply([SLOW], {"p99_ms": 500.0}) == []
    assert [c.state for c in other_process.apply([SLOW], {"p99_ms": 90.0})] == ["resolved"]


def test_a_missing_value_keeps_the_state(monitor: Monitor):
    alerter = Alerter(monitor, "fraud")
    alerter.apply([F1_LOW], {"f1": 0.5})
    assert alerter.apply([F1_LOW], {}) == []  # no labels this window: not resolved
    assert alerter.apply([F1_LOW], {"f1": None}) == []
    assert [e.details["state"] for e in monitor.events("fraud")] == ["firing"]


def test_rules_of_other_models_are_apart(monitor: Monitor):
    Alerter(monitor, "fraud").apply([F1_LOW], {"f1": 0.5})
    assert [c.state for c in Alerter(monitor, "churn").apply([F1_LOW], {"f1": 0.5})] == [
        "firing"]


def test_a_failing_webhook_is_logged_and_the_alert_recorded(
        monitor: Monitor, caplog: pytest.LogCaptureFixture):
    with Hook(status=500) as broken:
        changes = Alerter(monitor, "fraud", webhook=broken.url).apply([F1_LOW], {"f1": 0.1})
    assert len(broken.bodies) == 1 and [c.state for c in changes] == ["firing"]
    assert "HTTP 500" in caplog.text

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    changes = Alerter(monitor, "fraud", webhook=closed, timeout_s=2).apply(
        [SLOW], {"p99_ms": 900.0})
    assert [c.rule for c in changes] == ["slow answers"]
    assert f"alert webhook {closed} failed" in caplog.text
    assert len(monitor.events("fraud", kind="alert")) == 2


def test_only_http_webhooks_are_called(monitor: Monitor, caplog: pytest.LogCaptureFixture):
    Alerter(monitor, "fraud", webhook="file:///etc/passwd").apply([F1_LOW], {"f1": 0.1})
    assert "is not an http(s) URL; not sent" in caplog.text


def test_the_webhook_comes_from_the_spec_then_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MODELYARD_ALERT_WEBHOOK", raising=False)
    assert webhook_url(MonitorSpec()) is None
    monkeypatch.setenv("MODELYARD_ALERT_WEBHOOK", "http://hooks.local/all")
    assert webhook_url(MonitorSpec()) == "http://hooks.local/all"
    assert webhook_url(MonitorSpec(webhook="http://hooks.local/one")) == "http://hooks.local/one"
