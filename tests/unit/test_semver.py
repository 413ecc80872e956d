"""Semantic version labels (parsing, precedence, bumping, references) and the pure parts of
data lineage (SQL tables, URLs without passwords, the sources a version may record)."""

from __future__ import annotations

import hashlib

import pytest

from modelyard.errors import ConfigError
from modelyard.registry import parse_ref, parse_reference
from modelyard.registry.provenance import (
    check_sources,
    file_source,
    index_rows,
    redact_url,
    sql_source,
    sql_tables,
)
from modelyard.registry.rows import check_alias
from modelyard.registry.semver import SemVer, bump, looks_like_semver, next_label, parse_semver


@pytest.mark.parametrize("text, parsed", [
    ("0.0.0", SemVer(0, 0, 0)),
    ("1.4.0", SemVer(1, 4, 0)),
    ("10.20.30", SemVer(10, 20, 30)),
    ("2.0.0-rc.1", SemVer(2, 0, 0, ("rc", "1"))),
    ("1.0.0-alpha-a.b-c-0", SemVer(1, 0, 0, ("alpha-a", "b-c-0"))),
    ("1.0.0-0A.is.legal", SemVer(1, 0, 0, ("0A", "is", "legal"))),
])
def test_valid_labels_parse_and_print_back(text, parsed):
    assert parse_semver(text) == parsed
    assert str(parsed) == text
    assert looks_like_semver(text)


@pytest.mark.parametrize("text", [
    "1", "1.2", "1.2.3.4", "01.2.3", "1.02.3", "1.2.03", "v1.2.3", "1.2.3-", "1.2.3-01",
    "1.2.3-rc..1", "1.2.3+build.5", " 1.2.3", "1.2.3 ", "", "production", "1.2.x",
    "1.2.3-é", "9999999999.0.0", "1.2.3-" + "a" * 100,
])
def test_invalid_labels_are_refused_in_one_line(text):
    assert not looks_like_semver(text)
    with pytest.raises(ConfigError) as err:
        parse_semver(text)
    assert "\n" not in str(err.value) and "MAJOR.MINOR.PATCH" in str(err.value)
    assert ConfigError.exit_code == 2


def test_build_metadata_is_named_in_the_refusal():
    with pytest.raises(ConfigError, match=r"build metadata"):
        parse_semver("1.0.0+sha.5114f85")


def test_precedence_is_semver_2():
    # the example chain of the SemVer 2.0 specification, section 11
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.10.0", "2.0.0"]
    parsed = [parse_semver(t) for t in chain]
    assert sorted(reversed(parsed)) == parsed
    assert max(parsed) == SemVer(2, 0, 0)
    assert parse_semver("1.0.0-2") < parse_semver("1.0.0-10")  # numbers compare as numbers


@pytest.mark.parametrize("highest, part, expected", [
    (None, "major", "1.0.0"), (None, "minor", "0.1.0"), (None, "patch", "0.0.1"),
    ("1.4.2", "patch", "1.4.3"), ("1.4.2", "minor", "1.5.0"), ("1.4.2", "major", "2.0.0"),
    ("1.4.0-rc.1", "patch", "1.4.0"), ("1.4.0-rc.1", "minor", "1.4.0"),
    ("1.4.0-rc.1", "major", "2.0.0"), ("2.0.0-rc.1", "major", "2.0.0"),
    ("1.4.3-rc.1", "minor", "1.5.0"), ("0.9.9", "major", "1.0.0"),
])
def test_bumps(highest, part, expected):
    start = parse_semver(highest) if highest else None
    assert str(bump(start, part)) == expected


def test_next_label_bumps_from_the_highest_not_the_newest():
    assert next_label("patch", ["1.0.0", "2.1.0", "1.9.9"]) == "2.1.1"
    assert next_label("minor", ["0.1.0", "0.1.0-rc.1"]) == "0.2.0"
    assert next_label("major", []) == "1.0.0"
    assert next_label("1.4.0", ["1.0.0"]) == "1.4.0"
    with pytest.raises(ConfigError, match="major, minor or patch"):
        bump(None, "micro")
    with pytest.raises(ConfigError):
        next_label("latest", [])


def test_references_tell_labels_aliases_and_numbers_apart():
    assert parse_reference("fraud@1.4.0") == ("fraud", None, None, "1.4.0")
    assert parse_reference("fraud@2.0.0-rc.1").semver == "2.0.0-rc.1"
    assert parse_reference("fraud@staging") == ("fraud", None, "staging", None)
    assert parse_reference("fraud:7") == ("fraud", 7, None, None)
    assert parse_reference("fraud") == ("fraud", None, "production", None)
    assert parse_ref("fraud@1.4.0") == ("fraud", None, None)  # the 3-tuple form, unchanged
    assert parse_ref("fraud@staging") == ("fraud", None, "staging")
    with pytest.raises(ConfigError, match=r"MAJOR\.MINOR\.PATCH"):
        parse_reference("fraud@1.4")
    with pytest.raises(ConfigError, match=r"fraud@1\.4\.0"):
        parse_reference("fraud:1.4.0")  # a label after ':' is pointed to '@'


@pytest.mark.parametrize("alias", ["1.4.0", "2.0.0-rc.1", "0.0.1"])
def test_an_alias_can_never_look_like_a_label(alias):
    with pytest.raises(ConfigError, match="looks like a semantic version label"):
        check_alias(alias)


def test_aliases_start_with_a_letter_so_no_label_is_an_alias():
    for alias in ("production", "v1", "release-1", "staging_2"):
        assert check_alias(alias) == alias
        assert not looks_like_semver(alias)
    with pytest.raises(ConfigError):
        check_alias("1abc")


@pytest.mark.parametrize("query, tables", [
    ("SELECT * FROM transactions", ["transactions"]),
    ("select a, b from Public.Transactions t where x > 1", ["public.transactions"]),
    ('SELECT * FROM "Sales"."Orders" o JOIN customers c ON o.c = c.id',
     ["sales.orders", "customers"]),
    ("SELECT * FROM a, b AS bb, warehouse.c WHERE a.id = b.id",
     ["a", "b", "warehouse.c"]),
    ("WITH recent AS (SELECT * FROM events WHERE ts > now()) "
     "SELECT * FROM recent LEFT JOIN users u ON recent.u = u.id", ["events", "users"]),
    ("SELECT * FROM (SELECT * FROM inner_t) sub", ["inner_t"]),
    ("SELECT 'from fake' AS s, x FROM real_t -- from commented\n/* join hidden */",
     ["real_t"]),
    ("SELECT extract(year from ts) FROM logs", ["logs"]),
])
def test_sql_tables(query, tables):
    assert sql_tables(query) == tables


def test_sql_source_has_no_password_and_its_tables_are_indexed():
    query = "SELECT * FROM public.transactions JOIN merchants USING (m)"
    source = sql_source(query, "postgresql://etl:s3cr3t@db.internal:5432/warehouse")
    assert "s3cr3t" not in str(source)
    assert source["location"] == "postgresql://etl@db.internal:5432/warehouse"
    assert source["digest"] == hashlib.sha256(query.encode()).hexdigest()
    assert index_rows([source]) == [
        ("sql", "postgresql://etl@db.internal:5432/warehouse", source["digest"]),
        ("table", "public.transactions", None), ("table", "merchants", None)]


def test_redact_url_drops_secret_query_parameters_too():
    assert redact_url("mysql://u:pw@h/db?charset=utf8&password=pw2") == "mysql://u@h/db?charset=utf8"
    assert redact_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert "pw" not in redact_url("not a url://u:pw@host/x")


def test_file_source_digests_the_bytes(tmp_path):
    data = tmp_path / "part-1.csv"
    data.write_bytes(b"a,b\n1,2\n")
    source = file_source(data)
    assert source == {"kind": "file", "location": str(data.absolute()),
                      "digest": hashlib.sha256(b"a,b\n1,2\n").hexdigest(), "size": 8}


@pytest.mark.parametrize("bad", [
    "not a list", [1], [{"kind": "file"}], [{"kind": "file", "location": 3}],
    [{"kind": "file", "location": "/x", "digest": "xyz"}],
    [{"kind": "", "location": "/x"}], [{"kind": "sql", "location": "db", "tables": "t"}],
])
def test_check_sources_refuses_malformed_records(bad):
    with pytest.raises(ConfigError, match="data_sources"):
        check_sources(bad)


def test_check_sources_accepts_what_training_records(tmp_path):
    (tmp_path / "f.csv").write_text("x\n1\n")
    good = [file_source(tmp_path / "f.csv"), sql_source("SELECT 1 FROM t", "sqlite://"),
            {"kind": "function", "location": "features:load", "digest": None}]
    assert check_sources(good) == good
