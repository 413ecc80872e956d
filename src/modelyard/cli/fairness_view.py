"""Fairness records as people read them: one table of groups per rule, then its differences.

Shared by ``modelyard show`` (the holdout figures a version was gated on) and ``modelyard
monitor metrics`` (the same rules over the labels fed back in the window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.cli.output import console, print_table


def print_fairness(records: Sequence[Mapping[str, Any]], *, title: str) -> None:
    """Per rule: a table of its groups (rows, metric, selection rate, TPR, FPR) and a line with
    the gap and differences against their bounds."""
    out = console()
    for record in records:
        metric = record.get("metric")
        out.print(f"[bold]{title}[/bold]  by {record.get('group')}"
                  + (f", {metric}" if metric else "") + f", {record.get('rows', 0)} rows",
                  highlight=False)
        columns = ["group", "n", *([metric] if metric else []), "selection rate", "TPR", "FPR"]
        rows = [[name, g.get("n"), *([_num(g.get("value"))] if metric else []),
                 _num(g.get("selection_rate")), _num(g.get("tpr")), _num(g.get("fpr"))]
                for name, g in (record.get("groups") or {}).items()]
        print_table(columns, rows, empty="  no labeled rows to compare")
        out.print("  " + summary(record), highlight=False, markup=False)


def summary(record: Mapping[str, Any]) -> str:
    """``recall gap 0.031 (max 0.05), demographic parity 0.02, ...`` and the note if any."""
    parts = []
    if record.get("metric"):
        parts.append(f"{record['metric']} gap {_num(record.get('gap'))}"
                     + _bound(record.get("max_gap")))
    parts.append(f"demographic parity {_num(record.get('demographic_parity'))}"
                 + _bound(record.get("max_demographic_parity")))
    parts.append(f"equalized odds {_num(record.get('equalized_odds'))}"
                 + _bound(record.get("max_equalized_odds")))
    note = record.get("note")
    return ", ".join(parts) + (f" ({note})" if note else "")


def _bound(value: Any) -> str:
    return "" if value is None else f" (max {value:g})"


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


__all__ = ["print_fairness", "summary"]
