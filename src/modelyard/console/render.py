"""The console's templates (Jinja2, autoescaped) and the filters that format numbers with
units and times as ``<time>`` elements (UTC text; the page's script shows the viewer's zone)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

HERE = Path(__file__).parent
STATIC = HERE / "static"


def when(value: datetime | str | None) -> Markup:
    """A time as ``<time datetime=ISO>YYYY-MM-DD HH:MM:SS UTC</time>`` (``—`` when None)."""
    if value is None:
        return Markup("—")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    iso = value.isoformat()
    text = value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.utcoffset() is not None
                                                   or value.tzinfo is None else "")
    return Markup('<time datetime="{}">{}</time>').format(iso, text)


def ms(value: float | None) -> str:
    """Milliseconds with their unit (``—`` when unknown)."""
    if value is None:
        return "—"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def percent(value: float | None, digits: int = 1) -> str:
    """A share (0 to 1) as a percentage."""
    return "—" if value is None else f"{value * 100:.{digits}f} %"


def count(value: int | float | None, unit: str = "") -> str:
    """A count with thousands separators and an optional unit."""
    if value is None:
        return "—"
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"
    return f"{text} {unit}".rstrip()


def size(value: int | None) -> str:
    """Bytes in binary units."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def number(value: Any) -> str:
    """A metric value: 4 significant digits, else as it is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


@cache
def asset_version() -> str:
    """A short hash of the console's own CSS and script (their URLs change when they do)."""
    digest = hashlib.sha256()
    for name in ("console.css", "console.js"):
        digest.update((STATIC / name).read_bytes())
    return digest.hexdigest()[:12]


@cache
def environment() -> Environment:
    """The template environment (built once)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(when=when, ms=ms, percent=percent, count=count, size=size,
                       number=number)
    env.globals["asset_version"] = asset_version
    return env


def render(template: str, **context: Any) -> bytes:
    """``template`` rendered with ``context``, as UTF-8."""
    return environment().get_template(template).render(**context).encode()


__all__ = ["STATIC", "asset_version", "count", "environment", "escape", "ms", "number",
           "percent", "render", "size", "when"]
