"""Pagination, sorting and filtering of the console's tables (pure: rows in, a page out).

Every list the console shows is a :class:`Page`: at most ``per_page`` rows, the page number
and whether there are more, so no page renders unbounded data. Lists the registry holds are
paged by the query (``LIMIT``/``OFFSET``: ask for ``per_page + 1`` rows to learn whether
another page exists, :func:`page_of`); the overview's rows, built from the server's own
numbers, are sorted and filtered here first (:func:`sort_rows`, :func:`filter_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: rows a console table shows at most.
PER_PAGE = 50
#: the highest page number accepted (a bound on OFFSET).
MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its rows, its number (from 1) and whether more follow."""

    rows: list[T]
    number: int
    per_page: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


def page_number(text: str | None) -> int:
    """The page a ``?page=`` value asks for: 1 when missing or not a number, at most
    :data:`MAX_PAGE`."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 6:
        return 1
    return min(max(int(text), 1), MAX_PAGE)


def offset_of(number: int, per_page: int = PER_PAGE) -> int:
    """The ``OFFSET`` of page ``number``."""
    return (number - 1) * per_page


def page_of(fetched: Sequence[T], number: int, per_page: int = PER_PAGE) -> Page[T]:
    """A page from a query that fetched up to ``per_page + 1`` rows at its offset."""
    return Page(list(fetched[:per_page]), number, per_page, len(fetched) > per_page)


def paginate(rows: Sequence[T], number: int, per_page: int = PER_PAGE) -> Page[T]:
    """Page ``number`` of rows already in memory."""
    start = offset_of(number, per_page)
    return page_of(rows[start:start + per_page + 1], number, per_page)


def _sort_key(column: str) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    def key(row: Mapping[str, Any]) -> tuple[int, Any]:
        value = row.get(column)
        if value is None:
            return (1, "")  # missing values last, whichever the direction
        if isinstance(value, str):
            return (0, value.lower())
        return (0, value)
    return key


def sort_rows(rows: Sequence[Mapping[str, Any]], column: str, columns: Sequence[str],
              descending: bool = False) -> list[Mapping[str, Any]]:
    """``rows`` ordered by ``column`` (one of ``columns``, else the first); missing values
    go last in both directions."""
    if column not in columns:
        column = columns[0]
    present = [r for r in rows if r.get(column) is not None]
    missing = [r for r in rows if r.get(column) is None]
    return sorted(present, key=_sort_key(column), reverse=descending) + missing


def filter_rows(rows: Sequence[Mapping[str, Any]], text: str | None,
                fields: Sequence[str]) -> list[Mapping[str, Any]]:
    """The rows where any of ``fields`` contains ``text`` (case-insensitive); all without it."""
    needle = (text or "").strip().lower()
    if not needle:
        return list(rows)
    return [r for r in rows if any(needle in str(r.get(f) or "").lower() for f in fields)]


__all__ = ["MAX_PAGE", "PER_PAGE", "Page", "filter_rows", "offset_of", "page_number",
           "page_of", "paginate", "sort_rows"]
