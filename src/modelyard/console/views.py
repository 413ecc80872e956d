"""What each console page shows, read through the server's own objects.

Each function takes the :class:`~modelyard.serving.app.App` and returns plain data for one
template. Registry calls run on the catalog's registry thread (``catalog.io``), as the JSON
API's do, and every list is bounded (:mod:`~modelyard.console.paging`); the overview's traffic
and latency come from the server's in-memory metrics (:mod:`~modelyard.console.traffic`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelyard.console.compare import compare
from modelyard.console.distributions import distributions
from modelyard.console.paging import PER_PAGE, Page, offset_of, page_of
from modelyard.console.traffic import by_model
from modelyard.errors import NotFoundError
from modelyard.governance.card import build, gather
from modelyard.governance.document import html_body
from modelyard.monitoring.monitor import Monitor

#: the overview's columns, in order (the sortable keys of each row).
OVERVIEW_COLUMNS = ("name", "version", "since", "flavor", "pool", "requests", "p50_ms",
                    "p99_ms", "error_rate", "drift", "alerts", "rollout")
#: how far back the overview counts open alerts.
ALERTS_SINCE = timedelta(hours=24)


def deployments_of(app: Any) -> Any:
    """The app's rollout store (one per console: its reads are plain registry queries)."""
    from modelyard.rollout.deployments import Deployments

    return Deployments(app.catalog.registry)


def monitor_of(app: Any) -> Any:
    """The app's monitor (the same one its monitoring API uses)."""
    return app.gauges.api.monitor


async def overview_rows(app: Any, allowed: set[str] | None) -> list[dict[str, Any]]:
    """One row per model the caller may read (``allowed``; None: every model)."""
    catalog = app.catalog
    registry, monitor = catalog.registry, monitor_of(app)
    models = await catalog.io(registry.list_models)
    served = await catalog.io(registry.versions_at_alias, app.options.alias)
    moves = await catalog.io(registry.last_moves, app.options.alias)
    active = {d.model: d for d in await catalog.io(deployments_of(app).list_active)}
    alerts: dict[str, int] = {}
    since = datetime.now(UTC) - ALERTS_SINCE
    for event in await catalog.io(monitor.events, kind="alert", since=since, limit=1000):
        alerts[event.model] = alerts.get(event.model, 0) + 1
    drift = await catalog.io(monitor.latest_drift)
    metrics = catalog.metrics  # every worker's series under --workers, as /metrics shows them
    traffic = by_model(metrics.samples_of(metrics.requests), metrics.samples_of(metrics.duration))
    rows = []
    for model in models:
        if allowed is not None and model.name not in allowed:
            continue
        row = _row(model, served.get(model.name), catalog.placed.get(model.name),
                   traffic.get(model.name), drift.get(model.name), alerts.get(model.name, 0),
                   active.get(model.name))
        moved = moves.get(model.name)
        if moved is not None:
            row.update(since=moved.at, why=f"{moved.action} by {moved.actor}"
                       + (f": {moved.reason}" if moved.reason else ""))
        rows.append(row)
    return rows


def _row(model: Any, version: Any, placed: Any, seen: Any, drift: Any, alerts: int,
         rollout: Any) -> dict[str, Any]:
    return {
        "name": model.name, "latest": model.latest_version,
        "version": None if version is None else version.version,
        "flavor": None if version is None else version.flavor,
        "pool": None if placed is None else placed.pool,
        "device": None if placed is None else placed.device,
        "requests": None if seen is None else seen.requests,
        "p50_ms": None if seen is None else seen.p50_ms,
        "p99_ms": None if seen is None else seen.p99_ms,
        "error_rate": None if seen is None else seen.error_rate,
        "drift": None if drift is None else ("drifted" if drift.drifted else "ok"),
        "drift_share": None if drift is None else drift.share,
        "alerts": alerts,
        "rollout": None if rollout is None else
        f"{rollout.strategy} v{rollout.candidate_version} {rollout.state}",
        "since": None, "why": None,
    }


async def model_page(app: Any, name: str, page: int, at: datetime | None) -> dict[str, Any]:
    """A model: its page of versions, alias timeline, rollouts and what served at ``at``."""
    catalog, registry = app.catalog, app.catalog.registry
    model = await catalog.io(registry.get_model, name)
    versions = page_of(await catalog.io(registry.list_versions, name, limit=PER_PAGE + 1,
                                        offset=offset_of(page)), page)
    history = await catalog.io(registry.alias_history, name, limit=100)
    served_at = None
    if at is not None:
        served_at = await catalog.io(registry.alias_at, name, app.options.alias, at)
    rollouts = await catalog.io(deployments_of(app).history, name, limit=20)
    return {"model": model, "versions": versions, "history": history, "at": at,
            "served_at": served_at, "rollouts": rollouts,
            "placement": catalog.placement_of(name), "alias": app.options.alias}


async def card_body(app: Any, name: str, version: int) -> str:
    """Version ``name:version``'s model card as HTML elements (user text escaped)."""
    registry = app.catalog.registry
    facts = await app.catalog.io(gather, registry, Monitor(registry), f"{name}:{version}")
    return html_body(build(facts)[1:])  # the page has its own title


async def version_pair(app: Any, name: str, a: int, b: int) -> dict[str, Any]:
    """Two versions of ``name`` and every difference between them."""
    catalog, registry = app.catalog, app.catalog.registry
    left = await catalog.io(registry.get_version, name, a)
    right = await catalog.io(registry.get_version, name, b)
    return {"name": name, "left": left, "right": right, "rows": compare(left, right)}


async def rollout_page(app: Any, name: str) -> dict[str, Any]:
    """A model's current (or last) rollout as status describes it, and its transitions."""
    catalog = app.catalog
    deployments = deployments_of(app)
    await catalog.io(catalog.registry.get_model, name)  # 404 for an unknown model
    try:
        current = await catalog.io(deployments.get, name)
    except NotFoundError:
        return {"name": name, "rollout": None, "events": [], "described": None}
    described = await catalog.io(deployments.describe, current)
    events = await catalog.io(deployments.history, name, limit=50)
    return {"name": name, "rollout": current, "described": described, "events": events}


async def runs_page(app: Any, model: str | None, page: int) -> Page[Any]:
    """A page of runs, newest first."""
    catalog = app.catalog
    fetched = await catalog.io(catalog.registry.list_runs, model, limit=PER_PAGE + 1,
                               offset=offset_of(page))
    return page_of(fetched, page)


async def audit_page(app: Any, filters: dict[str, Any], page: int) -> Page[Any]:
    """A page of audit events matching ``filters`` (target, actor, action, since, until)."""
    catalog = app.catalog
    fetched = await catalog.io(catalog.registry.audit_events, filters.get("target"),
                               limit=PER_PAGE + 1, offset=offset_of(page),
                               actor=filters.get("actor"), action=filters.get("action"),
                               since=filters.get("since"), until=filters.get("until"))
    return page_of(fetched, page)


async def monitoring_page(app: Any, name: str, since: datetime) -> dict[str, Any]:
    """Metrics from labels over time per version and variant, the latest drift check and the
    model's monitoring events."""
    catalog, monitor = app.catalog, monitor_of(app)
    await catalog.io(catalog.registry.get_model, name)
    windows: list[Any] = []
    error = None
    try:
        if await catalog.io(monitor.labels_since, name, since):
            windows = await catalog.io(monitor.metrics, name, since=since,
                                       every=timedelta(hours=1))
    except Exception as exc:  # no production version, no declared metric: say so, show the rest
        error = str(exc)
    drift = await catalog.io(monitor.drift_reports, name, limit=1)
    events = await catalog.io(monitor.events, name, limit=50)
    drawn = await catalog.io(_distributions, monitor, name, drift[0] if drift else None)
    return {"name": name, "windows": windows, "series": series(windows), "error": error,
            "drift": drift[0] if drift else None, "events": events, "since": since,
            "distributions": drawn}


#: logged requests read at most for the current distributions (newest hour).
DISTRIBUTION_REQUESTS = 2000


def _distributions(monitor: Any, name: str, check: Any) -> list[Any]:
    """Reference against current distributions of the checked (else watched) version's
    features, from at most :data:`DISTRIBUTION_REQUESTS` requests of the last hour."""
    try:
        version = monitor.watched_version(name, None if check is None else check.version)
    except Exception:  # nothing served, nothing to compare
        return []
    if not version.reference_stats:
        return []
    logged = monitor.predictions(name, since=datetime.now(UTC) - timedelta(hours=1),
                                 version=version.version, limit=DISTRIBUTION_REQUESTS)
    return distributions(version.reference_stats, [p.inputs for p in logged])


def series(windows: list[Any]) -> dict[str, dict[str, list[Any]]]:
    """``{metric: {"version/variant": [(window end ISO, value), ...]}}`` for the charts."""
    out: dict[str, dict[str, list[Any]]] = {}
    for w in windows:
        label = f"v{w.version} {w.variant}"
        end = getattr(w, "end", None) or getattr(w, "window_end", None)
        for metric, value in w.values.items():
            if value is not None:
                out.setdefault(metric, {}).setdefault(label, []).append(
                    (None if end is None else end.isoformat(), value))
    return out


__all__ = ["OVERVIEW_COLUMNS", "audit_page", "model_page", "monitoring_page", "overview_rows",
           "rollout_page", "runs_page", "version_pair"]
