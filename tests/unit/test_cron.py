"""Cron schedules: parsing, the next and last run times, and the day-of-month/weekday rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelyard.errors import ConfigError
from modelyard.monitoring.cron import last_at_or_before, next_after, parse


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(("expr", "start", "expected"), [
    ("0 3 * * *", at(2024, 5, 1, 12, 0), at(2024, 5, 2, 3, 0)),
    ("0 3 * * *", at(2024, 5, 1, 2, 59, 59), at(2024, 5, 1, 3, 0)),
    ("0 3 * * *", at(2024, 5, 1, 3, 0), at(2024, 5, 2, 3, 0)),  # strictly after
    ("*/15 * * * *", at(2024, 5, 1, 12, 7, 30), at(2024, 5, 1, 12, 15)),
    ("*/15 * * * *", at(2024, 5, 1, 23, 50), at(2024, 5, 2, 0, 0)),
    ("5,35 9-17 * * *", at(2024, 5, 1, 17, 40), at(2024, 5, 2, 9, 5)),
    ("0 0 1-5/2 * *", at(2024, 5, 1, 0, 0), at(2024, 5, 3, 0, 0)),
    ("30 6 * * mon-fri", at(2024, 5, 3, 7, 0), at(2024, 5, 6, 6, 30)),  # Friday -> Monday
    ("0 0 * * 0", at(2024, 5, 1), at(2024, 5, 5)),  # Sunday as 0
    ("0 0 * * 7", at(2024, 5, 1), at(2024, 5, 5)),  # ... and as 7
    ("0 0 * * SUN", at(2024, 5, 1), at(2024, 5, 5)),
    ("0 0 1 jan,jul *", at(2024, 2, 10), at(2024, 7, 1)),
    ("0 0 1 * *", at(2024, 12, 31, 23, 59), at(2025, 1, 1)),
    ("0 12 29 feb *", at(2024, 3, 1), at(2028, 2, 29, 12, 0)),
    ("0 0 31 * *", at(2024, 4, 1), at(2024, 5, 31)),  # April has no 31st
    ("10/20 * * * *", at(2024, 5, 1, 12, 31), at(2024, 5, 1, 12, 50)),  # 10, 30, 50
])
def test_next_after(expr: str, start: datetime, expected: datetime):
    assert next_after(expr, start) == expected


def test_day_of_month_and_weekday_match_either_when_both_are_restricted():
    # the 13th, and every Friday: Friday 3 May 2024 comes before the 13th
    assert next_after("0 0 13 * fri", at(2024, 5, 1)) == at(2024, 5, 3)
    assert next_after("0 0 13 * fri", at(2024, 5, 10)) == at(2024, 5, 13)


def test_a_field_starting_with_a_star_is_unrestricted_so_both_must_match():
    # "*/2" days AND Mondays (Vixie cron): Monday 6 May is even -> skipped; Monday 13 is odd
    assert next_after("0 0 */2 * mon", at(2024, 5, 1)) == at(2024, 5, 13)


@pytest.mark.parametrize(("expr", "end", "expected"), [
    ("0 3 * * *", at(2024, 5, 1, 12, 0), at(2024, 5, 1, 3, 0)),
    ("0 3 * * *", at(2024, 5, 1, 3, 0), at(2024, 5, 1, 3, 0)),  # at counts
    ("0 3 * * *", at(2024, 5, 1, 2, 59), at(2024, 4, 30, 3, 0)),
    ("*/15 * * * *", at(2024, 5, 1, 12, 14, 59), at(2024, 5, 1, 12, 0)),
    ("0 0 1 * *", at(2024, 3, 15), at(2024, 3, 1)),
    ("0 0 1 jan *", at(2024, 3, 15), at(2024, 1, 1)),
    ("0 9 * * mon", at(2024, 5, 1), at(2024, 4, 29, 9, 0)),
    ("0 0 29 2 *", at(2027, 6, 1), at(2024, 2, 29)),
    ("59 23 31 12 *", at(2024, 6, 1), at(2023, 12, 31, 23, 59)),
])
def test_last_at_or_before(expr: str, end: datetime, expected: datetime):
    assert last_at_or_before(expr, end) == expected


def test_other_timezones_are_converted_and_the_answer_is_utc():
    plus_two = timezone(timedelta(hours=2))
    found = next_after("0 3 * * *", datetime(2024, 5, 1, 4, 30, tzinfo=plus_two))  # 02:30 UTC
    assert found == at(2024, 5, 1, 3, 0) and found.tzinfo == UTC


def test_next_and_last_agree_over_a_range_of_times():
    expr = "7,37 */5 * * 1-5"
    t = at(2024, 1, 1)
    for _ in range(200):
        following = next_after(expr, t)
        assert last_at_or_before(expr, following) == following
        assert last_at_or_before(expr, following - timedelta(minutes=1)) <= t
        assert parse(expr).matches(following)
        t = following


@pytest.mark.parametrize(("expr", "says"), [
    ("0 3 * *", "needs 5 fields"),
    ("60 * * * *", "minute field: 60 is outside 0-59"),
    ("* 24 * * *", "hour field: 24 is outside 0-23"),
    ("* * 0 * *", "day of month field: 0 is outside 1-31"),
    ("* * * 13 *", "month field: 13 is outside 1-12"),
    ("* * * * 8", "day of week field: 8 is outside 0-7"),
    ("*/0 * * * *", "step in '*/0' must be a whole number above 0"),
    ("5-1 * * * *", "range '5-1' runs backwards"),
    ("* * * * funday", "'funday' is not a number from 0 to 7 or a name (sun, mon"),
    ("* * * smarch *", "or a name (jan, feb"),
    ("a * * * *", "'a' is not a number from 0 to 59"),
    ("0 0 30 feb *", "never runs"),
    ("1,,2 * * * *", "'' is not a number"),
])
def test_bad_expressions_say_what_is_wrong(expr: str, says: str):
    with pytest.raises(ConfigError, match="cron schedule") as info:
        next_after(expr, at(2024, 1, 1))
    assert says in str(info.value)


def test_naive_datetimes_are_refused():
    with pytest.raises(ConfigError, match="timezone-aware"):
        next_after("* * * * *", datetime(2024, 1, 1))
    with pytest.raises(ConfigError, match="timezone-aware"):
        last_at_or_before("* * * * *", datetime(2024, 1, 1))
