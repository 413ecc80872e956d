"""A small document model and its two renderings, Markdown and HTML, from the same blocks.

A card is built once as blocks (headings, paragraphs, lists, tables); ``to_markdown`` and
``to_html`` are pure. Every piece of text a user or a model's trainer wrote (a description, a
tag, a reason) is escaped in both forms, so a card can be published as it is: a description
with ``<script>`` stays text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Heading:
    """A section title (level 1 is the card's title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Running text; ``muted`` for a note such as "none recorded"."""

    text: str
    muted: bool = False


@dataclass(frozen=True)
class Bullets:
    """An unordered list."""

    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """Rows under a header; cells are rendered with :func:`cell`."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    numeric: frozenset[int] = field(default_factory=frozenset)  # right-aligned columns


Block = Heading | Paragraph | Bullets | Table

#: characters Markdown would read as markup (tables, emphasis, links, code, html); a ">" only
#: at the start, where it opens a quote.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<|#]|^>)")


def cell(value: Any) -> str:
    """One value as text: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\r", "").replace("\n", " ")).replace(
        "&", "&amp;")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown, user text escaped."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(f"_{_md(block.text)}_" if block.muted else _md(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md(item)}" for item in block.items))
        else:
            out.append(_md_table(block))
    return "\n\n".join(out) + "\n"


def _md_table(table: Table) -> str:
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.header))]
    lines = ["| " + " | ".join(_md(h) for h in table.header) + " |", "| " + " | ".join(align)
             + " |"]
    lines += ["| " + " | ".join(_md(cell(v)) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
          "padding:0 1rem;color:#1b1f24}h1{font-size:1.6rem}h2{font-size:1.2rem;"
          "margin-top:2rem;border-bottom:1px solid #d0d7de}table{border-collapse:collapse;"
          "margin:.5rem 0}th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left}"
          "td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#59636e}")


def to_html(blocks: Sequence[Block], *, title: str) -> str:
    """The blocks as one self-contained HTML page (inline style, no script), user text escaped."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + html_body(blocks) + "\n</body></html>\n")


def html_body(blocks: Sequence[Block]) -> str:
    """The blocks as HTML elements, to place in a page of one's own (user text escaped)."""
    e = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f'<p class="muted">{e(block.text)}</p>' if block.muted
                        else f"<p>{e(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block.items) + "</ul>")
        else:
            body.append(_html_table(block))
    return "\n".join(body)


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    rows = "".join(
        "<tr>" + "".join(
            f'<td class="n">{e(cell(v))}</td>' if i in table.numeric else f"<td>{e(cell(v))}</td>"
            for i, v in enumerate(row)) + "</tr>"
        for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


__all__ = ["Block", "Bullets", "Heading", "Paragraph", "Table", "cell", "html_body", "to_html",
           "to_markdown"]
