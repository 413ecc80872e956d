"""The tamper-evident audit chain: every event carries its predecessor's hash; ``audit verify``
names the first edited, deleted, inserted or reordered event (exit 17); ``audit export`` gives
a SIEM the rows and hashes to check on its own. SQLite here and PostgreSQL (``any_registry``)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from modelyard.cli import main
from modelyard.errors import AuditChainError
from modelyard.registry import Registry
from modelyard.registry.audit_chain import GENESIS, chain_rows, event_hash, verify_session
from modelyard.registry.rows import audit


def _events(reg: Registry, n: int = 5) -> None:
    for i in range(n):
        reg.record("test.step", f"m{i}", {"i": i, "ratio": 0.1 * i, "name": "é"}, actor="alice")


def _verify(reg: Registry, anchor: str | None = None):  # type: ignore[no-untyped-def]
    with reg.db.session() as s:
        return verify_session(s, anchor=anchor)


def _sql(reg: Registry, statement: str, **params: object) -> None:
    with reg.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def _row(reg: Registry, row_id: int) -> dict[str, object]:
    with reg.db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM audit_events WHERE id = :i"),
                                 {"i": row_id}).mappings().one())


def test_registry_changes_form_one_intact_chain(any_registry, artifact_dir):
    reg = any_registry
    reg.register("iris", artifact_dir("a"), flavor="sklearn")
    reg.register("iris", artifact_dir("b"), flavor="sklearn")
    reg.set_alias("iris", "production", 2)
    _events(reg, 3)
    report = _verify(reg)
    assert report.intact and report.events >= 6
    with reg.db.session() as s:
        rows = list(chain_rows(s))
    assert rows[0][6] == GENESIS
    assert all(later[6] == earlier[7] for earlier, later in itertools.pairwise(rows))
    assert report.head == rows[-1][7]


def _tamper_edit(reg: Registry) -> int:
    _sql(reg, "UPDATE audit_events SET actor = 'mallory' WHERE id = 3")
    return 3


def _tamper_details(reg: Registry) -> int:
    _sql(reg, "UPDATE audit_events SET target = 'm9' WHERE id = 2")
    return 2


def _tamper_delete(reg: Registry) -> int:
    _sql(reg, "DELETE FROM audit_events WHERE id = 3")
    return 4  # the event after the gap is the first that no longer follows


def _tamper_insert(reg: Registry) -> int:
    # a forged event put in place of id 3, hashed correctly onto event 2: event 4 breaks
    with reg.db.session() as s:
        rows = {r[0]: r for r in chain_rows(s)}
    forged = event_hash(rows[3][1], "mallory", "version.delete", "m1", rows[3][5], rows[2][7])
    _sql(reg, "UPDATE audit_events SET actor = 'mallory', action = 'version.delete', "
              "target = 'm1', hash = :h WHERE id = 3", h=forged)
    return 4


def _tamper_reorder(reg: Registry) -> int:
    _sql(reg, "UPDATE audit_events SET id = 100 WHERE id = 2")
    _sql(reg, "UPDATE audit_events SET id = 2 WHERE id = 3")
    _sql(reg, "UPDATE audit_events SET id = 3 WHERE id = 100")
    return 2


def _tamper_append_fork(reg: Registry) -> int:
    # an event appended by hand, chained onto an old event instead of the head
    two = _row(reg, 2)
    _sql(reg, "INSERT INTO audit_events (id, at, actor, action, target, details, prev_hash, hash) "
              "SELECT 50, at, actor, action, target, details, :p, hash FROM audit_events "
              "WHERE id = 5", p=str(two["hash"]))
    return 50


def _tamper_no_hash(reg: Registry) -> int:
    _sql(reg, "INSERT INTO audit_events (id, at, actor, action, target, details) "
              "SELECT 60, at, actor, action, target, details FROM audit_events WHERE id = 5")
    return 60


TAMPERS = {
    "edited actor": (_tamper_edit, "edited"),
    "edited target": (_tamper_details, "edited"),
    "deleted": (_tamper_delete, "deleted"),
    "inserted": (_tamper_insert, "inserted"),
    "reordered": (_tamper_reorder, "reordered"),
    "forked": (_tamper_append_fork, "deleted or inserted"),
    "unhashed": (_tamper_no_hash, "no hash"),
}


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_verify_names_the_first_bad_event(any_registry, kind):
    reg = any_registry
    _events(reg, 5)
    assert _verify(reg).intact
    tamper, word = TAMPERS[kind]
    bad = tamper(reg)
    report = _verify(reg)
    assert not report.intact
    assert report.bad_id == bad
    assert word in report.reason


def test_deleting_from_the_end_is_caught_by_a_recorded_head(any_registry):
    reg = any_registry
    _events(reg, 4)
    head = _verify(reg).head
    assert _verify(reg, anchor=head).intact
    _sql(reg, "DELETE FROM audit_events WHERE id = 4")
    report = _verify(reg, anchor=head)
    assert report.bad_id is None and report.anchor_found is False and not report.intact


def _cli(reg: Registry, *args: str):  # type: ignore[no-untyped-def]
    home = reg.settings.home
    return CliRunner().invoke(main, ["--home", str(home), "--db", reg.db.url, *args])


def test_cli_verify_exits_0_then_17_naming_the_event(any_registry):
    reg = any_registry
    _events(reg, 3)
    ok = _cli(reg, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "intact: 3 events" in ok.output
    head = json.loads(_cli(reg, "audit", "verify", "--json").output)["head"]
    _sql(reg, "UPDATE audit_events SET target = 'elsewhere' WHERE id = 2")
    bad = _cli(reg, "audit", "verify")
    assert bad.exit_code == AuditChainError.exit_code == 17
    assert "event 2" in bad.output and "edited" in bad.output
    _sql(reg, "DELETE FROM audit_events WHERE id >= 2")
    gone = _cli(reg, "audit", "verify", "--head", head)
    assert gone.exit_code == 17 and "does not contain the head" in gone.output


def test_listing_still_works_without_the_subcommand(any_registry):
    reg = any_registry
    _events(reg, 2)
    listed = _cli(reg, "audit", "m1", "--json")
    assert listed.exit_code == 0, listed.output
    assert [e["target"] for e in json.loads(listed.output)] == ["m1"]
    assert _cli(reg, "audit", "list", "--limit", "1").exit_code == 0


def _siem_check(lines: list[str]) -> str:
    """What a SIEM does with the export, with nothing from modelyard: recompute every hash."""
    prev = "0" * 64
    for line in lines:
        event = json.loads(line)
        body = {k: event[k] for k in ("at", "actor", "action", "target", "details")}
        body["prev"] = event["prev_hash"]
        assert event["prev_hash"] == prev
        digest = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert digest == event["hash"], event["id"]
        prev = digest
    return prev


def test_export_jsonl_lets_a_siem_verify_on_its_own(any_registry, tmp_path: Path):
    reg = any_registry
    _events(reg, 4)
    out = _cli(reg, "audit", "export", "--format", "jsonl")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == 4
    assert _siem_check(lines) == _verify(reg).head
    target = tmp_path / "audit.jsonl"
    to_file = _cli(reg, "audit", "export", "-o", str(target), "--after", "2")
    assert to_file.exit_code == 0, to_file.output
    assert [json.loads(x)["id"] for x in target.read_text().splitlines()] == [3, 4]


def test_a_failed_transaction_leaves_no_event_and_no_gap(registry, artifact_dir):
    _events(registry, 2)
    with pytest.raises(RuntimeError, match="rolled back"), \
            registry.db.session(write=True) as s:
        audit(s, "alice", "test.never", "m", {})
        raise RuntimeError("rolled back")
    _events(registry, 1)
    report = _verify(registry)
    assert report.intact and report.events == 3
