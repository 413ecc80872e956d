"""The console's pure parts: pagination, sorting and filtering, cookies and CSRF, latency
quantiles from histogram buckets, version comparison, the mount table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modelyard.console.compare import compare, flatten
from modelyard.console.paging import filter_rows, page_number, page_of, paginate, sort_rows
from modelyard.console.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    csrf_token,
    parse_cookies,
    same_origin,
    set_cookie,
)
from modelyard.console.traffic import quantile
from modelyard.errors import ConfigError, ForbiddenError
from modelyard.serving.mounts import Mount, mount_for


def test_pages_are_bounded_and_know_whether_more_follow() -> None:
    rows = list(range(120))
    first = paginate(rows, 1)
    assert first.rows == list(range(50)) and first.has_next and not first.has_previous
    last = paginate(rows, 3)
    assert last.rows == list(range(100, 120)) and not last.has_next
    assert page_of(list(range(51)), 2).has_next and page_of(list(range(50)), 2).rows[-1] == 49
    assert [page_number(t) for t in (None, "", "x", "0", "3", "99999999")] == [1, 1, 1, 1, 3, 1]


def test_sorting_puts_missing_values_last_and_filtering_ignores_case() -> None:
    rows = [{"name": "b", "p99_ms": 3.0}, {"name": "A", "p99_ms": None}, {"name": "c",
                                                                          "p99_ms": 1.0}]
    cols = ("name", "p99_ms")
    assert [r["name"] for r in sort_rows(rows, "p99_ms", cols)] == ["c", "b", "A"]
    assert [r["name"] for r in sort_rows(rows, "p99_ms", cols, True)] == ["b", "c", "A"]
    assert [r["name"] for r in sort_rows(rows, "bogus", cols)] == ["A", "b", "c"]
    assert [r["name"] for r in filter_rows(rows, " a ", ("name",))] == ["A"]
    assert filter_rows(rows, "", ("name",)) == rows


def test_csrf_tokens_are_bound_to_the_session() -> None:
    cookies = {CSRF_COOKIE: "secret", SESSION_COOKIE: "key-1"}
    good = csrf_token("secret", "key-1")
    check_csrf(cookies, {"csrf": good})
    for form in ({}, {"csrf": csrf_token("secret", None)}, {"csrf": csrf_token("other", "key-1")}):
        with pytest.raises(ForbiddenError):
            check_csrf(cookies, form)
    with pytest.raises(ForbiddenError):
        check_csrf({SESSION_COOKIE: "key-1"}, {"csrf": good})


def test_cookies_and_origins() -> None:
    assert parse_cookies(b'a=1; b="2"; junk; a=3') == {"a": "1", "b": "2"}
    made = set_cookie("s", "v", secure=True, max_age=60).decode()
    assert all(p in made for p in ("HttpOnly", "SameSite=Strict", "Secure", "Max-Age=60",
                                   "Path=/ui"))
    assert same_origin(None, b"h:1") and same_origin(b"http://h:1", b"h:1")
    assert not same_origin(b"https://evil", b"h:1")


def test_quantiles_from_cumulative_buckets() -> None:
    buckets = [(0.01, 50.0), (0.1, 99.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.99, buckets) == pytest.approx(0.1)
    assert quantile(0.5, []) is None and quantile(0.5, [(1.0, 0.0)]) is None


def test_compare_lists_every_key_and_marks_differences() -> None:
    a = SimpleNamespace(metrics={"acc": 0.9}, params={"depth": 3}, signature={},
                        environment={"python": "3.11"}, code_ref={})
    b = SimpleNamespace(metrics={"acc": 0.95}, params={"depth": 3, "lr": 0.1}, signature={},
                        environment={"python": "3.11"}, code_ref={})
    rows = {(r.section, r.key): r for r in compare(a, b)}
    assert rows[("metrics", "acc")].differs and not rows[("params", "depth")].differs
    assert rows[("params", "lr")].left is None
    assert flatten({"a": {"b": 1}, "c": []}) == {"a.b": 1, "c": []}


def test_mounts_own_their_prefix() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        return None
    ui = Mount("/ui", app)
    assert mount_for([ui], "/ui") is ui and mount_for([ui], "/ui/models/x") is ui
    assert mount_for([ui], "/uix") is None and mount_for([ui], "/api/v1/models") is None
    with pytest.raises(ConfigError):
        Mount("ui/", app)


def test_current_values_fall_into_the_reference_bins() -> None:
    from modelyard.console.distributions import distributions

    reference = {"kind": "table", "features": {
        "x": {"histogram": {"edges": [0.0, 1.0, 2.0], "counts": [3, 1]}},
        "label": {"type": "categorical"},  # no values profiled: nothing to draw
        "city": {"type": "categorical", "count": 10, "values": {"oslo": 6, "rome": 2}}}}
    inputs = [{"columns": {"x": [0.5, 1.5, 9.0, None], "city": ["rome", "rome", "paris"]}},
              {"columns": {"x": [-4.0], "city": ["oslo", None]}}]
    x, city = distributions(reference, inputs)
    assert x.reference == [0.75, 0.25] and x.current == [0.5, 0.5] and x.rows == 4
    assert x.labels is None
    # the most frequent values at training, then every other value (paris was never seen)
    assert city.labels == ["oslo", "rome", "other"] and city.rows == 4
    assert city.reference == [0.6, 0.2, 0.2] and city.current == [0.25, 0.5, 0.25]
    assert distributions(None, inputs) == [] and distributions({"kind": "text"}, inputs) == []
