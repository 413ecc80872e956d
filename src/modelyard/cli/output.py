"""How the CLI writes: rich tables for people, plain JSON for scripts, one-line errors on stderr.

Standard output carries results (tables, JSON); standard error carries errors and, under
``--json``, the live progress display, so ``modelyard models --json | jq`` always gets clean JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelyard.errors import DataValidationError, GateFailed, ModelyardError


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr); made per call so test runners can swap the streams."""
    stream = sys.stderr if stderr else sys.stdout
    out = Console(file=stream, highlight=False, soft_wrap=False, emoji=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 120  # logs and pipes: rich's 80 columns would fold most tables
    return out


def live_console(*, quiet_unless_tty: bool) -> Console:
    """Where progress goes: stdout normally; stderr (shown only on a terminal) under ``--json``."""
    if not quiet_unless_tty:
        return console()
    err = console(stderr=True)
    err.quiet = not err.is_terminal
    return err


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout (datetimes as ISO strings)."""
    click.echo(json.dumps(data, indent=2, default=_json_default, ensure_ascii=False))


def print_json_flat(data: Mapping[str, Any]) -> None:
    """A JSON object with one key per line and each value on one line (long arrays stay short)."""
    body = ",\n".join(
        f"  {json.dumps(str(k))}: "
        + json.dumps(v, default=_json_default, ensure_ascii=False, separators=(", ", ": "))
        for k, v in data.items()
    )
    click.echo("{\n" + body + "\n}" if data else "{}")


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    empty: str = "nothing to show",
) -> None:
    """A borderless table on stdout; ``empty`` is printed instead when there are no rows."""
    rows = list(rows)
    out = console()
    if not rows:
        out.print(empty)
        return
    table = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    out.print(table)


def print_fields(fields: Mapping[str, Any], *, title: str | None = None) -> None:
    """``name  value`` lines (a two-column grid), skipping empty values."""
    out = console()
    if title:
        out.print(f"[bold]{title}[/bold]")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in fields.items():
        if value not in (None, "", {}, []):
            grid.add_row(key, _cell(value))
    out.print(grid)


def report_error(err: ModelyardError) -> None:
    """``error: <message>`` as one line on stderr, then a data report's failed checks if any."""
    click.echo(f"error: {one_line(str(err)) or type(err).__name__}", err=True)
    extra: list[Any] = []
    if isinstance(err, DataValidationError):
        extra = err.report
    elif isinstance(err, GateFailed):
        extra = err.reasons
    for line in [str(x) for x in extra if str(x) not in str(err)]:
        click.echo(f"  - {one_line(str(line))}", err=True)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, so an error is always a single line."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


# -- formatting ---------------------------------------------------------------------------------
def fmt_time(value: datetime | str | None) -> str:
    """``2026-01-31 12:00:03Z`` (UTC, seconds) for a datetime or ISO string."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = parsed
    if value.tzinfo is None:
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_value(value: Any) -> str:
    """A number with four significant decimals, anything else as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            text = f"{value:.4f}".rstrip("0")
            return text + "0" if text.endswith(".") else text
        return f"{value:.4g}"
    return str(value)


def fmt_metrics(metrics: Mapping[str, Any] | None) -> str:
    """``f1=0.6241 accuracy=0.981`` in the metrics' own order."""
    return " ".join(f"{k}={fmt_value(v)}" for k, v in (metrics or {}).items())


def fmt_duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s`` or ``2m05s``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def fmt_size(size: int | None) -> str:
    """Bytes as ``812 B``, ``12.3 kB``, ``4.1 MB``."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def fmt_aliases(aliases: Mapping[str, int] | Sequence[str]) -> str:
    """``production=v3 staging=v4`` for a model, ``production, staging`` for a version."""
    if isinstance(aliases, Mapping):
        return " ".join(f"{a}=v{v}" for a, v in aliases.items())
    return ", ".join(aliases)


def compact(value: Any) -> str:
    """A dict or list as short one-line JSON (for details columns)."""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    return fmt_value(value)


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return fmt_time(value)
    if isinstance(value, Mapping | list | tuple):
        return compact(value)
    # rich reads "[...]" as markup; user text (reasons, details) must print as written.
    return escape(fmt_value(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


__all__ = [
    "compact",
    "console",
    "fmt_aliases",
    "fmt_duration",
    "fmt_metrics",
    "fmt_size",
    "fmt_time",
    "fmt_value",
    "live_console",
    "one_line",
    "print_fields",
    "print_json",
    "print_json_flat",
    "print_table",
    "report_error",
]
