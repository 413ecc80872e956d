"""The Grafana dashboard in deploy/grafana: importable, laid out, and built only on exported series.

Every PromQL query is checked against the text exposition of a real :class:`ServerMetrics` whose
families have all been touched, so a renamed metric or label fails here, not on a blank panel.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelyard.monitoring.predlog import LogHealth
from modelyard.serving.cost_metrics import LoadedCost
from modelyard.serving.metrics import ServerMetrics

DASHBOARD_PATH = Path(__file__).resolve().parents[2] / "deploy/grafana/modelyard-dashboard.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
GRID_WIDTH = 24
#: labels Prometheus attaches to every scraped series; the server itself does not export them.
TARGET_LABELS = frozenset({"instance", "job"})
#: variables Grafana defines itself.
BUILTIN_VARIABLES = frozenset({"__rate_interval", "__interval", "__range", "__range_s"})

SERIES = re.compile(r"\bmodelyard_\w+")
SELECTOR = re.compile(r"\b(modelyard_\w+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
VECTOR_MATCHING = re.compile(r"\b(on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*(modelyard_\w+)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")
VARIABLE = re.compile(r"\$\{?(\w+)")


# --- the dashboard ----------------------------------------------------------------------------

def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def variables() -> list[dict[str, Any]]:
    return DASHBOARD.get("templating", {}).get("list", [])


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def queries() -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every query variable."""
    found = [(f"panel {panel['id']} ({panel.get('title')}) {target.get('refId')}", target["expr"])
             for panel in all_panels(DASHBOARD["panels"])
             for target in panel.get("targets", []) if target.get("expr")]
    found += [(f"variable {v['name']}", variable_query(v))
              for v in variables() if v.get("type") == "query"]
    return found


QUERIES = queries()
QUERY_IDS = [where for where, _ in QUERIES]


def datasources(node: Any) -> Iterator[Any]:
    """Every value under a ``datasource`` key, anywhere in the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasources(item)


def group(expr: str, start: int, step: int) -> str:
    """The parenthesised group opening (``step=1``) or closing (``step=-1``) at ``expr[start]``."""
    opening, closing = ("(", ")") if step == 1 else (")", "(")
    depth = 0
    for i in range(start, len(expr) if step == 1 else -1, step):
        depth += (expr[i] == opening) - (expr[i] == closing)
        if depth == 0:
            return expr[min(start, i):max(start, i) + 1]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def groupings(expr: str) -> Iterator[tuple[set[str], str]]:
    """``(labels, aggregated expression)`` of every ``by``/``without`` clause.

    Handles both ``sum by (l) (x)`` and ``sum(x) by (l)``.
    """
    for m in GROUPING.finditer(expr):
        labels = {label.strip() for label in m.group(2).split(",") if label.strip()}
        after = m.end() + len(expr[m.end():]) - len(expr[m.end():].lstrip())
        if after < len(expr) and expr[after] == "(":
            yield labels, group(expr, after, 1)
        else:
            before = expr[:m.start()].rstrip()
            assert before.endswith(")"), f"cannot tell what {m.group(0)!r} groups in {expr!r}"
            yield labels, group(expr, len(before) - 1, -1)


# --- what the server exports ------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a server whose every family has a sample."""
    m = ServerMetrics()
    for variant in ("production", "stable", "candidate"):
        m.count_request("iris", "1", "rest", 200, variant)
        m.for_version("iris", "1").observe_duration(0.01, variant)
    m.count_request("iris", "1", "v2", 503)
    m.count_request("", "", "rest", 404)
    version = m.for_version("iris", "2")
    version.observe_batch(4, [0.001, 0.002])
    version.worker_up(True)
    version.count_restart()
    m.set_loaded([("iris", "1", 1024), ("iris", "2", 2048)])
    version.charge(0.01, 0.002)
    version.flush()
    m.cost.report([LoadedCost("iris", "2", 2048, 0.0, 32, 1.0)], now=10.0)
    m.set_run_cpu({("iris", "train"): 12.0})
    m.set_framework("sklearn", 150_000_000)
    m.set_budget(4 << 30)
    m.observe_load("iris", "2", "idle", 0.4)
    m.shadow_dropped.labels("iris", "2").inc()
    m.count_source("iris", "1", "mixed")
    m.auth_failed("forbidden")
    m.set_quality([SimpleNamespace(model="iris", version=1, variant="stable", labeled=10,
                                   values={"accuracy": 0.9, "f1": None})])
    report = {"features": {"petal_width": {"test": "psi", "score": 0.3}},
              "embedding": {"test": "mmd", "score": 0.1}}
    m.set_drift([SimpleNamespace(model="iris", version=1, share=0.5, drifted=True,
                                 report=report)])
    m.watch_prediction_log(SimpleNamespace(written=5, dropped=1, pending=2, cpu_s=0.25,
                                           health=lambda: LogHealth(0, 1, 60.0, 2)))

    families = list(text_string_to_metric_families(m.render().decode()))
    empty = [f.name for f in families if not f.samples]
    assert not empty, f"touch these families in the fixture so they render samples: {empty}"
    labels: dict[str, set[str]] = {}
    for sample in itertools.chain.from_iterable(f.samples for f in families):
        labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def test_fixture_renders_every_documented_family(exported):
    assert {"modelyard_requests_total", "modelyard_request_duration_seconds_bucket",
            "modelyard_prediction_log_written_total", "modelyard_prediction_log_pending",
            "modelyard_prediction_log_cpu_seconds_total",
            "modelyard_feature_drift_score"} <= exported.keys()
    assert exported["modelyard_request_duration_seconds_bucket"] >= {"le", "variant"}


# --- the dashboard's shape --------------------------------------------------------------------

def test_dashboard_is_importable():
    assert DASHBOARD["schemaVersion"] >= 36
    assert DASHBOARD["title"] and DASHBOARD["uid"]
    assert DASHBOARD.get("id") is None, "an exported dashboard carries no database id"
    names = {v["name"] for v in variables()}
    assert {"model", "version", "variant"} <= names


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in all_panels(DASHBOARD["panels"])]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicated, f"duplicated panel ids: {duplicated}"


def layouts() -> Iterator[list[dict[str, Any]]]:
    """The top-level panels, then the panels of each collapsed row (laid out when expanded)."""
    yield DASHBOARD["panels"]
    for panel in DASHBOARD["panels"]:
        if panel.get("panels"):
            yield panel["panels"]


def test_panels_fit_the_grid_without_overlapping():
    for panels in layouts():
        for panel in panels:
            g = panel["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["id"]
            assert g["x"] + g["w"] <= GRID_WIDTH, f"panel {panel['id']} is wider than the grid"
        for a, b in itertools.combinations(panels, 2):
            ga, gb = a["gridPos"], b["gridPos"]
            apart = (ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
                     or ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"])
            assert apart, f"panels {a['id']} and {b['id']} overlap"


def test_every_panel_has_a_description_and_a_unit():
    for panel in all_panels(DASHBOARD["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"panel {panel['id']} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {panel['id']} has no unit"
        assert panel.get("targets"), f"panel {panel['id']} has no query"


def test_every_datasource_is_the_declared_input_or_variable():
    declared = {f"${{{i['name']}}}" for i in DASHBOARD.get("__inputs", [])
                if i.get("type") == "datasource"}
    declared |= {f"${{{v['name']}}}" for v in variables() if v.get("type") == "datasource"}
    assert declared, "declare a datasource input (__inputs) or a datasource variable"
    for ds in datasources(DASHBOARD):
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        assert uid in declared, f"datasource {ds!r} is neither of {sorted(declared)}"


# --- every query against the exposition -------------------------------------------------------

@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=QUERY_IDS)
def test_query_is_balanced_and_uses_declared_variables(where, expr):
    assert expr.count("(") == expr.count(")"), f"{where}: unbalanced parentheses"
    assert expr.count("{") == expr.count("}"), f"{where}: unbalanced braces"
    declared = {v["name"] for v in variables()} | BUILTIN_VARIABLES
    unknown = set(VARIABLE.findall(expr)) - declared
    assert not unknown, f"{where}: undeclared variables {sorted(unknown)}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=QUERY_IDS)
def test_query_uses_only_exported_series(where, expr, exported):
    series = set(SERIES.findall(expr))
    assert series, f"{where}: no modelyard_ series in {expr!r}"
    missing = series - exported.keys()
    assert not missing, f"{where}: not exported by the server: {sorted(missing)}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=QUERY_IDS)
def test_query_uses_only_labels_of_its_series(where, expr, exported):
    for name, body in SELECTOR.findall(expr):
        unknown = set(MATCHER.findall(body)) - exported.get(name, set()) - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no labels {sorted(unknown)}"
    for labels, aggregated in groupings(expr):
        for name in SERIES.findall(aggregated):
            unknown = labels - exported.get(name, set()) - TARGET_LABELS
            assert not unknown, f"{where}: grouping {name} by labels it lacks: {sorted(unknown)}"
    # on()/ignoring()/group_*() compare both sides: the label must exist on one of them at least
    everywhere = set().union(*(exported.get(n, set()) for n in SERIES.findall(expr)))
    for _, listed in VECTOR_MATCHING.findall(expr):
        labels = {label.strip() for label in listed.split(",") if label.strip()}
        unknown = labels - everywhere - TARGET_LABELS
        assert not unknown, f"{where}: vector matching on unknown labels {sorted(unknown)}"
    for name, label in LABEL_VALUES.findall(expr):
        assert label in exported.get(name, set()), f"{where}: {name} has no label {label!r}"


def test_every_exported_family_has_a_panel(exported):
    used = set(itertools.chain.from_iterable(SERIES.findall(expr) for _, expr in QUERIES))
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", name) for name in exported}
    unused = sorted(f for f in families
                    if not any(re.fullmatch(rf"{f}(_total|_bucket|_sum|_count)?", u) for u in used))
    assert not unused, f"add a panel to deploy/grafana/modelyard-dashboard.json for {unused}"


# --- the alerting rules -----------------------------------------------------------------------

ALERTS_PATH = DASHBOARD_PATH.with_name("modelyard-alerts.yml")
RULES = [rule for group in yaml.safe_load(ALERTS_PATH.read_text())["groups"]
         for rule in group["rules"]]


def test_alert_rules_are_well_formed_and_watch_the_prediction_log():
    names = [rule["alert"] for rule in RULES]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in RULES:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    watched = {name for rule in RULES for name in SERIES.findall(rule["expr"])}
    assert "modelyard_prediction_log_dropping" in watched  # the log that drops everything


@pytest.mark.parametrize("rule", RULES, ids=[rule["alert"] for rule in RULES])
def test_alert_rule_uses_only_exported_series_and_labels(rule, exported):
    expr = rule["expr"]
    assert expr.count("(") == expr.count(")"), "unbalanced parentheses"
    missing = set(SERIES.findall(expr)) - exported.keys()
    assert not missing, f"not exported by the server: {sorted(missing)}"
    for name, body in SELECTOR.findall(expr):
        unknown = set(MATCHER.findall(body)) - exported.get(name, set()) - TARGET_LABELS
        assert not unknown, f"{name} has no labels {sorted(unknown)}"
    for labels, aggregated in groupings(expr):
        for name in SERIES.findall(aggregated):
            unknown = labels - exported.get(name, set()) - TARGET_LABELS
            assert not unknown, f"grouping {name} by labels it lacks: {sorted(unknown)}"
