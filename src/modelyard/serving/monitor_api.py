"""Monitoring over HTTP: feedback (delayed labels), metrics, latency, drift and events.

=====  ======================================  ==============================================
POST   ``/v1/models/{name}/feedback``          ground truth by request id (one or a list)
GET    ``/api/v1/models/{name}/metrics``       declared metrics per version and variant
GET    ``/api/v1/models/{name}/drift``         stored drift checks, newest first
POST   ``/api/v1/models/{name}/drift``         run a drift check now and store it
GET    ``/api/v1/models/{name}/events``        alerts, triggers and retraining results
GET    ``/api/v1/models/{name}/predictions/ID`` what the log holds of one request, its label
=====  ======================================  ==============================================

``GET`` calls take ``?since=1h`` (a duration ago or an ISO time) where a window applies.
``POST`` calls are mutations, admitted by the app's dispatcher like the admin API's (a JSON
body, no foreign ``Origin``, the bearer token when ``MODELYARD_TOKEN`` is set): labels decide
rollbacks and retraining, so not everyone may send them. Each is audited under the actor the
credential stands for.
The lookup of one request (``GET .../predictions/{request_id}``) needs the token too: it shows
what a client sent (sensitive fields hashed or dropped, as logged).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from modelyard.config import parse_duration
from modelyard.errors import BadJSONError, InputError, NotFoundError
from modelyard.serving.access import actor_of, in_scope
from modelyard.serving.http import (
    Endpoint,
    Receive,
    RouteTable,
    Scope,
    Send,
    query_int,
    query_param,
    read_body,
    respond,
)
from modelyard.serving.poller import Poller

if TYPE_CHECKING:
    from modelyard.monitoring.monitor import Monitor
    from modelyard.serving.dataplane import DataPlane

#: most labels one feedback call takes.
MAX_LABELS = 10_000
#: how many of a served model's latest runs the run CPU gauge reads each refresh.
RUNS_READ = 200


def parse_feedback(body: bytes) -> list[tuple[str, Any]]:
    """``(request_id, label)`` pairs from a feedback body.

    Accepts ``{"request_id": ..., "label": ...}``, ``{"labels": [{"request_id", "label"}, ...]}``
    or ``{"labels": {request_id: label, ...}}``.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJSONError(f"the body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and "labels" not in doc and {"request_id", "label"} <= set(doc):
        doc = {"labels": [doc]}
    items = doc.get("labels") if isinstance(doc, dict) else None
    if isinstance(items, dict):
        items = [{"request_id": k, "label": v} for k, v in items.items()]
    if not isinstance(items, list) or not items:
        raise InputError(
            'send {"request_id": "...", "label": ...} or {"labels": [{"request_id": "...", '
            '"label": ...}, ...]}', [{"loc": ["body"], "msg": "no labels"}])
    if len(items) > MAX_LABELS:
        raise InputError(f"at most {MAX_LABELS} labels per call; got {len(items)}",
                         [{"loc": ["body", "labels"], "msg": "too many"}])
    pairs = []
    errors = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str) or (
                item.get("label") is None):
            errors.append({"loc": ["body", "labels", i],
                           "msg": "needs a string request_id and a non-null label"})
            continue
        pairs.append((item["request_id"], item["label"]))
    if errors:
        raise InputError(f"{len(errors)} of {len(items)} labels are malformed", errors[:20])
    return pairs


class MonitorAPI:
    """The monitoring endpoints over one data plane (its registry, on the registry thread, and
    its prediction log's store)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.catalog = plane.catalog
        self._monitor: Monitor | None = None

    @property
    def monitor(self) -> Monitor:
        if self._monitor is None:
            from modelyard.monitoring.monitor import Monitor

            predlog = self.plane.predlog
            self._monitor = Monitor(self.catalog.registry,
                                    predlog.store if predlog is not None else None)
        return self._monitor

    async def monitor_feedback(self, scope: Scope, receive: Receive, send: Send,
                               name: str) -> None:
        """``POST /v1/models/{name}/feedback``: store labels, say how many match a prediction."""
        body = await read_body(scope, receive, self.plane.options.max_body_bytes)
        pairs = parse_feedback(body)
        result = await self.catalog.io(self.monitor.feedback, name, pairs,
                                          actor=actor_of(scope))
        await respond(send, 200, orjson.dumps(result.to_dict()))

    async def monitor_metrics(self, scope: Scope, receive: Receive, send: Send,
                              name: str) -> None:
        """``GET /api/v1/models/{name}/metrics[?since=1h&every=10m]``: metrics per version (per
        sub-window with ``every``) and latency in the window."""
        since = _since(scope)
        every = query_param(scope, "every")
        step = None if every is None else timedelta(seconds=parse_duration(every))
        windows = await self.catalog.io(self.monitor.metrics, name, since=since, every=step)
        latency = await self.catalog.io(self.monitor.latency, name, since=since)
        await respond(send, 200, orjson.dumps({"model": name,
                                               "windows": [w.to_dict() for w in windows],
                                               "latency": latency.to_dict()}))

    async def monitor_drift(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``GET /api/v1/models/{name}/drift[?limit=N]``: stored drift checks, newest first."""
        limit = query_int(scope, "limit", 20)
        checks = await self.catalog.io(self.monitor.drift_reports, name, limit=limit)
        await respond(send, 200, orjson.dumps({"model": name,
                                               "checks": [c.to_dict() for c in checks]}))

    async def monitor_check_drift(self, scope: Scope, receive: Receive, send: Send,
                                  name: str) -> None:
        """``POST /api/v1/models/{name}/drift[?since=1h][&version=N]``: check drift now (against
        version N's reference, default production's) and store it."""
        version = query_param(scope, "version")
        check = await self.catalog.io(self.monitor.check_drift, name, since=_since(scope),
                                      version=None if version is None else
                                      query_int(scope, "version", 1),
                                      actor=actor_of(scope))
        await respond(send, 200, orjson.dumps(check.to_dict()))

    async def monitor_events(self, scope: Scope, receive: Receive, send: Send,
                             name: str) -> None:
        """``GET /api/v1/models/{name}/events[?kind=alert&limit=N]``: newest first."""
        kind = query_param(scope, "kind")
        events = await self.catalog.io(self.monitor.events, name, kind=kind, since=_since(scope),
                                          limit=query_int(scope, "limit", 100))
        await respond(send, 200, orjson.dumps({"model": name,
                                               "events": [e.to_dict() for e in events]}))


    async def monitor_all_events(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/events[?model=M][&kind=alert][&since=1h][&limit=N]``: every model's
        monitoring events (those the caller's key covers), newest first."""
        events = await self.catalog.io(
            self.monitor.events, query_param(scope, "model"), kind=query_param(scope, "kind"),
            since=_since(scope), limit=query_int(scope, "limit", 100))
        shown = in_scope(scope, "read", {e.model for e in events})
        await respond(send, 200, orjson.dumps({"events": [e.to_dict() for e in events
                                                          if e.model in shown]}))

    async def monitor_find_prediction(self, scope: Scope, receive: Receive, send: Send,
                                      request_id: str) -> None:
        """``GET /api/v1/predictions/{request_id}``: the request in every model's log (those
        the caller's key covers); 404 when none holds it."""
        found = await self.catalog.io(self.monitor.lookup_everywhere, request_id)
        shown = in_scope(scope, "read", {f.model for f in found})
        if not shown:  # as if no log held it
            raise NotFoundError(f"no model's prediction log has request id {request_id!r}")
        await respond(send, 200, orjson.dumps({"lookups": [f.to_dict() for f in found
                                                           if f.model in shown]}))

    async def monitor_prediction(self, scope: Scope, receive: Receive, send: Send, name: str,
                                 request_id: str) -> None:
        """``GET /api/v1/models/{name}/predictions/{request_id}``: the logged rows of one
        request (time, version, variant, latency, inputs summary, outputs) and its label; 404
        when the log holds none."""
        # a read, but of what a client sent: its route is ``sensitive`` (credential needed)
        found = await self.catalog.io(self.monitor.lookup, name, request_id)
        await respond(send, 200, orjson.dumps(found.to_dict()))


class MonitorGauges(Poller):
    """Refreshes the monitoring gauges (metrics from labels, latest drift) every interval.

    Runs on the default executor, not the registry thread, so a large window never delays
    alias or rollout polling. A model no label was ever fed back for has no quality series.
    """

    doing = "refresh the monitoring gauges"

    def __init__(self, plane: DataPlane, api: MonitorAPI) -> None:
        super().__init__()
        self.plane = plane
        self.api = api

    def interval(self) -> float:
        return float(self.plane.options.monitor_interval_s)

    async def tick(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.refresh)

    def refresh(self) -> None:
        """Read every served model's metric windows and latest drift check into the gauges."""
        monitor = self.api.monitor
        windows, checks = [], []
        models = self.plane.catalog.models
        for name in sorted(models):
            if not models[name]:
                continue  # no alias: nothing served, nothing to watch
            if monitor.labels_since(name, None):
                # without a single label there is no metric to compute, and reading the
                # window's log (up to 50,000 rows, their outputs decoded) costs about a second
                # of the server's CPU a model, holding the GIL, every interval
                windows.extend(monitor.metrics(name))
            checks.extend(monitor.drift_reports(name, limit=1))
        self.plane.metrics.set_quality(windows)
        self.plane.metrics.set_drift(checks)
        self.plane.metrics.set_run_cpu(self._run_cpu(sorted(n for n in models if models[n])))

    def _run_cpu(self, names: list[str]) -> dict[tuple[str, str], float]:
        """CPU seconds of each served model's runs of the last 30 days, by kind (its latest
        :data:`RUNS_READ` runs)."""
        from modelyard.monitoring.cost import run_cpu
        from modelyard.monitoring.cost_sources import usage_of

        since = datetime.now(UTC) - timedelta(days=30)
        registry = self.plane.catalog.registry
        return run_cpu((usage_of(r) for name in names
                        for r in registry.list_runs(name, limit=RUNS_READ)), since)


def _since(scope: Scope) -> Any:
    from modelyard.config import parse_since

    text = query_param(scope, "since")
    return None if text is None else parse_since(text)


ROUTES: RouteTable = [
    ("POST", "/v1/models/{name}/feedback",
     Endpoint(MonitorAPI.monitor_feedback, mutation=True, action="feedback")),
    ("GET", "/api/v1/models/{name}/metrics", Endpoint(MonitorAPI.monitor_metrics, action="read")),
    ("GET", "/api/v1/models/{name}/drift", Endpoint(MonitorAPI.monitor_drift, action="read")),
    ("POST", "/api/v1/models/{name}/drift",
     Endpoint(MonitorAPI.monitor_check_drift, mutation=True, action="read")),
    ("GET", "/api/v1/models/{name}/events", Endpoint(MonitorAPI.monitor_events, action="read")),
    ("GET", "/api/v1/events", Endpoint(MonitorAPI.monitor_all_events, action="read")),
    ("GET", "/api/v1/predictions/{request_id}",
     Endpoint(MonitorAPI.monitor_find_prediction, action="read", sensitive=True)),
    ("GET", "/api/v1/models/{name}/predictions/{request_id}",
     Endpoint(MonitorAPI.monitor_prediction, action="read", sensitive=True)),
]

__all__ = ["MAX_LABELS", "ROUTES", "MonitorAPI", "MonitorGauges", "parse_feedback"]
