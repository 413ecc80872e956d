"""Monitoring commands: ``modelyard monitor drift|metrics|events|request`` and
``modelyard feedback``."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelyard.cli.output import console, fmt_time, print_fields, print_json, print_table
from modelyard.cli.params import VERSION
from modelyard.cli.state import State, pass_state
from modelyard.config import parse_duration
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.cli.remote import RemoteMonitor
    from modelyard.monitoring.monitor import Monitor

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_SINCE = click.option("--since", default=None, metavar="AGO|TIME",
                      help="Window start: a duration ago (30m, 1h, 2d) or an ISO time "
                           "(default: the model's monitoring.window_s).")


def _monitor(state: State) -> Monitor | RemoteMonitor:
    """The monitor over the registry, or the server's monitoring API (``--server``)."""
    from modelyard.cli.remote import RemoteRegistry

    registry = state.registry()
    if isinstance(registry, RemoteRegistry):
        return registry.monitor
    from modelyard.monitoring.monitor import Monitor

    return Monitor(registry)


def _since(text: str | None) -> Any:
    from modelyard.config import parse_since

    return None if text is None else parse_since(text)


@click.group(short_help="Watch models: drift, metrics from labels, alerts and events.")
def monitor() -> None:
    """Watch models in production from the prediction log and fed-back labels."""


@monitor.command(short_help="Check a model's inputs for drift against its training data.")
@click.argument("model")
@_SINCE
@click.option("--version", type=VERSION, default=None,
              help="Compare with this version's reference (default: production).")
@click.option("--history", is_flag=True, help="List stored checks instead of running one.")
@click.option("--all-features", is_flag=True, help="Show every feature, not only drifted ones "
                                                    "and the 20 highest scores.")
@_JSON
@pass_state
def drift(state: State, model: str, since: str | None, version: int | None, history: bool,
          all_features: bool, as_json: bool) -> None:
    """Compare MODEL's logged inputs with its training data, feature by feature; store the result.

    Numeric features use KS on small windows and Wasserstein distance on large ones;
    categorical features chi-squared or Jensen-Shannon; image and text models compare
    embeddings (MMD). The dataset drifts when the share of drifted features reaches the model's
    monitoring.drift_share.
    """
    mon = _monitor(state)
    if history:
        checks = mon.drift_reports(model)
        if as_json:
            print_json([c.to_dict() for c in checks])
            return
        print_table(["id", "at", "version", "rows", "drifted share", "dataset drift"],
                    [[c.id, c.at, f"v{c.version}", c.rows, f"{c.share:.0%}",
                      "yes" if c.drifted else "no"] for c in checks],
                    empty=f"no drift checks of '{model}' yet: run 'modelyard monitor drift "
                          f"{model}'")
        return
    check = mon.check_drift(model, version=version, since=_since(since),
                            actor=state.settings().actor)
    if as_json:
        print_json(check.to_dict())
        return
    report = check.report
    verdict = "[red]DRIFT[/red]" if check.drifted else "[green]no drift[/green]"
    console().print(f"[bold]{model}[/bold] v{check.version}: {verdict} — "
                    f"{check.share:.0%} of features drifted "
                    f"(threshold {report.get('drift_share', 0):.0%}), {check.rows} rows "
                    f"from {fmt_time(check.window_start)} to {fmt_time(check.window_end)}")
    features = dict(report.get("features") or {})
    if report.get("embedding"):
        features["(embedding)"] = report["embedding"]
    rows = sorted(features.items(), key=lambda kv: (not kv[1].get("drifted"),
                                                    -float(kv[1].get("score") or 0)))
    if not all_features:
        rows = [r for i, r in enumerate(rows) if r[1].get("drifted") or i < 20]
    print_table(["feature", "kind", "test", "score", "threshold", "p-value", "drifted"],
                [[name, f.get("kind"), f.get("test"), _num(f.get("score")),
                  _num(f.get("threshold")), _num(f.get("p_value")),
                  "yes" if f.get("drifted") else ""] for name, f in rows],
                empty="no features compared")


@monitor.command(short_help="A model's declared metrics from fed-back labels, per version.")
@click.argument("model")
@_SINCE
@click.option("--every", default=None, metavar="DURATION",
              help="Cut the window into windows this long (10m, 1h): a series per version.")
@_JSON
@pass_state
def metrics(state: State, model: str, since: str | None, every: str | None,
            as_json: bool) -> None:
    """Show MODEL's declared metrics per version and variant over the window, computed from
    the labels sent with 'modelyard feedback' (or POST /v1/models/MODEL/feedback), and the
    latency of its logged requests. A model gated on fairness also gets its rules' figures
    per group (the group column read from the logged inputs) and the fairness_gap column."""
    mon = _monitor(state)
    start = _since(since)
    step = None if every is None else timedelta(seconds=parse_duration(every))
    windows = mon.metrics(model, since=start, every=step)
    latency = mon.latency(model, since=start)
    if as_json:
        print_json({"windows": [w.to_dict() for w in windows], "latency": latency.to_dict()})
        return
    names = sorted({n for w in windows for n in w.values})
    window = ["from", "to"] if step is not None else []
    print_table([*window, "version", "variant", "requests", "labeled", *names],
                [[*([w.start, w.end] if step is not None else []), f"v{w.version}", w.variant,
                  w.requests, w.labeled, *[_num(w.values.get(n)) for n in names]]
                 for w in windows],
                empty=f"no logged predictions of '{model}' in the window")
    if step is None:
        from modelyard.cli.fairness_view import print_fairness

        for w in windows:
            print_fairness(w.fairness, title=f"fairness v{w.version} {w.variant}".rstrip())
    if latency.requests:
        print_fields({"logged requests": latency.requests, "p50": f"{latency.p50_ms} ms",
                      "p99": f"{latency.p99_ms} ms"}, title="latency")


@monitor.command(short_help="Alerts, retraining triggers and their results.")
@click.argument("model", required=False)
@click.option("--kind", default=None, help="Only this kind: alert, trigger, retrain, ...")
@_SINCE
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@_JSON
@pass_state
def events(state: State, model: str | None, kind: str | None, since: str | None, limit: int,
           as_json: bool) -> None:
    """List monitoring events of MODEL (or every model), newest first."""
    found = _monitor(state).events(model, kind=kind, since=_since(since), limit=limit)
    if as_json:
        print_json([e.to_dict() for e in found])
        return
    print_table(["at", "model", "kind", "severity", "name", "message"],
                [[e.at, e.model, e.kind, e.severity, e.name, e.message] for e in found],
                empty="no monitoring events")


@monitor.command(short_help="What the prediction log holds of one request, and its label.")
@click.argument("request_id")
@click.option("--model", default=None, help="The model that answered (default: look in every "
                                            "model's log).")
@_JSON
@pass_state
def request(state: State, request_id: str, model: str | None, as_json: bool) -> None:
    """Show the logged prediction(s) of REQUEST_ID (the request_id every answer carries): when,
    which version and variant answered, how fast, what the log kept of the inputs, the outputs,
    and the label fed back for it, if any."""
    mon = _monitor(state)
    found = [mon.lookup(model, request_id)] if model else mon.lookup_everywhere(request_id)
    if as_json:
        print_json([f.to_dict() for f in found] if model is None else found[0].to_dict())
        return
    for lookup in found:
        label = json.dumps(lookup.label) if lookup.labeled else "none yet"
        console().print(f"[bold]{lookup.model}[/bold] request {lookup.request_id}: label {label}")
        print_table(["at", "version", "variant", "latency ms", "rows", "outputs", "inputs"],
                    [[fmt_time(p["at"]), f"v{p['version']}", p["variant"], p["latency_ms"],
                      p["rows"], _short(p["outputs"]), _short(p["inputs"])]
                     for p in lookup.predictions])


@click.command(short_help="Send ground truth for earlier predictions, by request id.")
@click.argument("model")
@click.argument("request_id", required=False)
@click.argument("label", required=False)
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Many labels: a CSV with request_id,label columns or JSON lines "
                   '{"request_id": ..., "label": ...}.')
@_JSON
@pass_state
def feedback(state: State, model: str, request_id: str | None, label: str | None,
             path: Path | None, as_json: bool) -> None:
    """Record the true LABEL of the prediction REQUEST_ID of MODEL (or many with --file).

    The request id is in every prediction response (request_id, X-Request-Id). LABEL is read
    as JSON when it parses (1, 0.5, [1, 0], "cat"), else as text.
    """
    if path is not None:
        if request_id is not None:
            raise ConfigError("give REQUEST_ID LABEL or --file, not both")
        pairs = read_labels(path)
    elif request_id is None or label is None:
        raise ConfigError("give REQUEST_ID and LABEL, or --file labels.csv")
    else:
        pairs = [(request_id, _label(label))]
    result = _monitor(state).feedback(model, pairs, actor=state.settings().actor)
    if as_json:
        print_json(result.to_dict())
        return
    console().print(f"stored {result.stored} label(s) for {model}: {result.message}")
    if result.unmatched:
        console().print(f"not in the prediction log yet: {', '.join(result.unmatched[:5])}")


def read_labels(path: Path) -> list[tuple[str, Any]]:
    """``(request_id, label)`` pairs from a CSV (request_id,label) or JSON-lines file."""
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    text = path.read_text()
    pairs: list[tuple[str, Any]] = []
    if text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                pairs.append((str(doc["request_id"]), doc["label"]))
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{path}:{number}: expected "
                                  '{"request_id": ..., "label": ...}') from None
        return pairs
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"request_id", "label"} <= set(reader.fieldnames):
        raise ConfigError(f"{path}: a CSV needs a header with request_id and label columns")
    return [(row["request_id"], _label(row["label"])) for row in reader]


def _label(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _short(value: Any, width: int = 60) -> str:
    """Compact JSON of ``value``, cut at ``width`` characters (``--json`` shows it whole)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= width else text[:width - 1] + "…"


def _num(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["drift", "events", "feedback", "metrics", "monitor", "read_labels", "request"]
