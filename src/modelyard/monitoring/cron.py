"""Five-field cron schedules (``minute hour day-of-month month day-of-week``), in UTC. Pure.

Each field takes ``*``, a number, a range ``1-5``, a step ``*/15`` or ``1-30/2`` (``5/10`` means
``5-max/10``), and comma lists of those; months take ``jan``-``dec`` and weekdays ``sun``-``sat``
(Sunday is 0 or 7). As in Vixie cron, when both day fields are restricted a day matches if
*either* does (``0 0 1 * mon``: the 1st and every Monday); a field that starts with ``*`` (even
``*/2``) counts as unrestricted.

    >>> next_after("0 3 * * *", datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    datetime.datetime(2024, 5, 2, 3, 0, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelyard.errors import ConfigError

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
# (label, lowest, highest, names) per field, in cron's order
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
# Long enough for the rarest schedules to come round (Feb 29 is a Monday once in 28 years).
_HORIZON = timedelta(days=366 * 29)
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Cron:
    """A parsed schedule: the allowed values of each field (weekdays 0-6, Sunday 0)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, t: datetime) -> bool:
        """Whether the day of ``t`` is a scheduled day (the day-of-month/day-of-week OR rule)."""
        if t.month not in self.months:
            return False
        in_days = t.day in self.days
        in_weekdays = (t.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def matches(self, t: datetime) -> bool:
        """Whether the minute of ``t`` is a scheduled one."""
        return self.day_matches(t) and t.hour in self.hours and t.minute in self.minutes


@functools.lru_cache(maxsize=256)
def parse(expr: str) -> Cron:
    """Parse a 5-field cron expression; :class:`ConfigError` says which part is wrong."""
    if not isinstance(expr, str):
        raise ConfigError(f"a cron schedule is a string like '0 3 * * *', not {expr!r}")
    parts = expr.split()
    if len(parts) != 5:
        raise ConfigError(f"cron schedule {expr!r} needs 5 fields (minute hour day-of-month "
                          f"month day-of-week), e.g. '0 3 * * *', not {len(parts)}")
    values = [_field(part, spec, expr) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in values[4])  # 7 is Sunday too
    cron = Cron(expr, values[0], values[1], values[2], values[3], weekdays,
                days_restricted=not parts[2].startswith("*"),
                weekdays_restricted=not parts[4].startswith("*"))
    if not cron.weekdays_restricted and not any(
            d <= _longest_month(m) for m in cron.months for d in cron.days):
        raise ConfigError(f"cron schedule {expr!r} never runs: no month it names has those days")
    return cron


def next_after(expr: str, t: datetime) -> datetime:
    """The first scheduled minute strictly after ``t`` (timezone-aware; the answer is UTC)."""
    cron = parse(expr)
    at = _utc(t, "next_after").replace(second=0, microsecond=0) + _MINUTE
    limit = at + _HORIZON
    while at <= limit:
        if not cron.day_matches(at):
            if at.month not in cron.months:
                at = _start_of_next_month(at)
            else:
                at = at.replace(hour=0, minute=0) + timedelta(days=1)
        elif at.hour not in cron.hours:
            at = at.replace(minute=0) + timedelta(hours=1)
        elif at.minute not in cron.minutes:
            at += _MINUTE
        else:
            return at
    raise ConfigError(f"cron schedule {expr!r} has no run within {_HORIZON.days // 366} years")


def last_at_or_before(expr: str, t: datetime) -> datetime:
    """The latest scheduled minute at or before ``t`` (timezone-aware; the answer is UTC)."""
    cron = parse(expr)
    at = _utc(t, "last_at_or_before").replace(second=0, microsecond=0)
    limit = at - _HORIZON
    while at >= limit:
        if not cron.day_matches(at):
            if at.month not in cron.months:
                at = at.replace(day=1, hour=0, minute=0) - _MINUTE
            else:
                at = at.replace(hour=0, minute=0) - _MINUTE
        elif at.hour not in cron.hours:
            at = at.replace(minute=0) - _MINUTE
        elif at.minute not in cron.minutes:
            at -= _MINUTE
        else:
            return at
    raise ConfigError(f"cron schedule {expr!r} has no run within {_HORIZON.days // 366} years")


def _field(text: str, spec: tuple[str, int, int, dict[str, int]], expr: str) -> frozenset[int]:
    label, low, high, names = spec
    values: set[int] = set()
    for item in text.split(","):
        values.update(_item(item, label, low, high, names, expr))
    return frozenset(values)


def _item(item: str, label: str, low: int, high: int, names: dict[str, int],
          expr: str) -> range:
    where = f"cron schedule {expr!r}, {label} field"
    body, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ConfigError(f"{where}: step in {item!r} must be a whole number above 0")
        step = int(step_text)
    if body == "*":
        first, last = low, high
    elif "-" in body:
        start, _, end = body.partition("-")
        first, last = (_value(start, label, low, high, names, where),
                       _value(end, label, low, high, names, where))
        if first > last:
            raise ConfigError(f"{where}: range {body!r} runs backwards; write it low-high")
    else:
        first = _value(body, label, low, high, names, where)
        last = high if slash else first  # "5/10": from 5 to the end, every 10
    return range(first, last + 1, step)


def _value(text: str, label: str, low: int, high: int, names: dict[str, int], where: str) -> int:
    key = text.strip().lower()
    if key in names:
        return names[key]
    if not key.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise ConfigError(f"{where}: {text!r} is not a number from {low} to {high}{known}")
    number = int(key)
    if not low <= number <= high:
        raise ConfigError(f"{where}: {number} is outside {low}-{high}")
    return number


def _longest_month(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _start_of_next_month(t: datetime) -> datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0)


def _utc(t: datetime, caller: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ConfigError(f"{caller} needs a timezone-aware datetime, e.g. "
                          f"datetime.now(UTC), not the naive {t.isoformat()}")
    return t.astimezone(UTC)


__all__ = ["Cron", "last_at_or_before", "next_after", "parse"]
