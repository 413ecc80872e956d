"""The registry client: versions, aliases and their history, rollback, runs, audit, integrity.

Tests taking ``any_registry`` run on SQLite and on PostgreSQL (the core contract); the rest run on
the embedded SQLite registry only.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from modelyard.config import Settings
from modelyard.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    StorageError,
)
from modelyard.registry import ModelVersion, Registry, parse_ref
from modelyard.registry import client as client_module
from modelyard.registry.owners import STALE_AFTER_S, Owner, this_host
from modelyard.registry.rows import now
from modelyard.registry.tables import (
    AliasEventRow,
    AliasRow,
    AuditRow,
    ModelRow,
    RunRow,
    VersionRow,
)

US = timedelta(microseconds=1)


def _register(reg: Registry, artifact_dir: Any, name: str = "iris", **kw: Any) -> ModelVersion:
    kw.setdefault("flavor", "sklearn")
    return reg.register(name, artifact_dir(kw.pop("content", f"w-{name}")), **kw)


def _versions(reg: Registry, name: str, n: int, artifact_dir: Any) -> None:
    for i in range(n):
        _register(reg, artifact_dir, name, content=f"{name}-{i}")


def _counts(reg: Registry) -> dict[str, int]:
    with reg.db.session() as s:
        return {
            t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
            for t in (ModelRow, VersionRow, AliasRow, AliasEventRow, AuditRow)
        }


# -- versions ---------------------------------------------------------------------------------
def test_versions_are_numbered_from_one_and_listed_newest_first(any_registry, artifact_dir):
    reg = any_registry
    got = [_register(reg, artifact_dir, content=f"v{i}").version for i in range(3)]
    assert got == [1, 2, 3]
    assert [v.version for v in reg.list_versions("iris")] == [3, 2, 1]
    model = reg.get_model("iris")
    assert (model.latest_version, model.created_by) == (3, "tester")
    # a second model numbers its own versions from 1
    assert _register(reg, artifact_dir, "mnist").version == 1


def test_register_creates_the_model_and_audit_events(any_registry, artifact_dir):
    reg = any_registry
    v = _register(reg, artifact_dir, metrics={"acc": 0.9}, params={"depth": 3}, actor="alice",
                  run_id="r-1", description="first")
    assert (v.model, v.version, v.ref, v.flavor) == ("iris", 1, "iris:1", "sklearn")
    assert (v.metrics, v.params, v.run_id, v.created_by) == ({"acc": 0.9}, {"depth": 3}, "r-1",
                                                             "alice")
    assert len(v.artifact_digest) == 64 and v.artifact_size > 0
    assert [m.name for m in reg.list_models()] == ["iris"]
    events = reg.audit_events("iris")
    assert [(e.action, e.target, e.actor) for e in reversed(events)] == [
        ("model.create", "iris", "alice"),
        ("version.register", "iris:1", "alice"),
    ]
    assert events[0].details["digest"] == v.artifact_digest
    _register(reg, artifact_dir, content="second")
    # the model is created once, not once per version
    assert [e.action for e in reg.audit_events("iris")].count("model.create") == 1


def test_versions_are_immutable(any_registry, artifact_dir):
    reg = any_registry
    v1 = _register(reg, artifact_dir, metrics={"acc": 0.8})
    before = reg.get_version("iris", 1).to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.metrics = {"acc": 1.0}  # type: ignore[misc]
    # every public change leaves version 1's record as it was
    _register(reg, artifact_dir, content="other", metrics={"acc": 0.9})
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "production", 2)
    reg.rollback("iris")
    reg.delete_alias("iris", "production")
    run = reg.start_run("iris")
    reg.finish_run(run.id, status="succeeded", version=1, metrics={"acc": 0.1})
    after = reg.get_version("iris", 1).to_dict()
    before.pop("aliases"), after.pop("aliases")
    assert after == before
    # no public method edits or deletes a version
    assert not [m for m in dir(Registry) if "version" in m and m.split("_")[0] in
                {"update", "edit", "delete", "set", "replace"}]


def test_registering_identical_content_makes_a_new_version_stored_once(registry, artifact_dir):
    a = registry.register("iris", artifact_dir("same"), flavor="sklearn")
    b = registry.register("iris", artifact_dir("same"), flavor="sklearn")
    assert (a.version, b.version) == (1, 2)
    assert a.artifact_digest == b.artifact_digest
    blobs = [p for p in Path(registry.settings.artifacts).rglob("*") if p.is_file()]
    assert len(blobs) == 1


# -- references -------------------------------------------------------------------------------
def test_resolve_by_number_alias_and_bare_name(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 3, artifact_dir)
    reg.set_alias("iris", "production", 2)
    reg.set_alias("iris", "staging", 3)
    assert reg.resolve("iris:1").version == 1
    assert reg.resolve("iris@staging").version == 3
    assert reg.resolve("iris@production").version == 2
    assert reg.resolve("iris").version == 2  # bare name means production
    assert reg.resolve("iris").aliases == ("production",)
    assert reg.get_version("iris", 3).aliases == ("staging",)
    assert reg.get_model("iris").aliases == {"production": 2, "staging": 3}


def test_parse_ref_forms():
    assert parse_ref("iris") == ("iris", None, "production")
    assert parse_ref("iris:12") == ("iris", 12, None)
    assert parse_ref("iris@canary") == ("iris", None, "canary")
    assert parse_ref("team.model-v2:3") == ("team.model-v2", 3, None)


def test_unknown_model_names_the_models_that_exist(any_registry, artifact_dir):
    reg = any_registry
    with pytest.raises(NotFoundError, match="registry is empty"):
        reg.resolve("iris:1")
    _register(reg, artifact_dir, "iris")
    _register(reg, artifact_dir, "mnist")
    with pytest.raises(NotFoundError, match=r"no model named 'irsi'.*iris, mnist"):
        reg.resolve("irsi:1")
    with pytest.raises(NotFoundError, match="irsi"):
        reg.list_versions("irsi")


def test_unknown_version_and_alias_name_what_exists(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 2, artifact_dir)
    with pytest.raises(NotFoundError, match=r"no version 7; it has versions 1 to 2"):
        reg.resolve("iris:7")
    with pytest.raises(NotFoundError, match=r"no version 7"):
        reg.get_version("iris", 7)
    with pytest.raises(NotFoundError, match=r"no alias 'production'.*modelyard promote iris"):
        reg.resolve("iris")
    reg.set_alias("iris", "staging", 1)
    with pytest.raises(NotFoundError, match=r"no alias 'canary'; its aliases: staging"):
        reg.resolve("iris@canary")


@pytest.mark.parametrize(
    "call",
    [
        lambda r, a: r.register("bad name", a(), flavor="sklearn"),
        lambda r, a: r.register("-leading", a(), flavor="sklearn"),
        lambda r, a: r.register("", a(), flavor="sklearn"),
        lambda r, a: r.resolve("iris:latest"),
        lambda r, a: r.resolve("iris@Prod!"),
        lambda r, a: r.resolve("@production"),
        lambda r, a: r.set_alias("iris", "Production", 1),
        lambda r, a: r.start_run("a/b"),
    ],
    ids=["space", "leading-dash", "empty", "version-word", "alias-chars", "no-name",
         "alias-upper", "run-slash"],
)
def test_invalid_names_are_config_errors(registry, artifact_dir, call):
    _register(registry, artifact_dir)
    with pytest.raises(ConfigError):
        call(registry, artifact_dir)
    assert registry.get_model("iris").latest_version == 1


# -- aliases ----------------------------------------------------------------------------------
def test_alias_history_records_actor_reason_and_previous(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 2, artifact_dir)
    first = reg.set_alias("iris", "production", 1, actor="alice", reason="launch")
    second = reg.set_alias("iris", "production", 2, actor="bob", reason="better f1")
    reg.set_alias("iris", "staging", 2)
    assert (first.previous_version, first.version) == (None, 1)
    history = reg.alias_history("iris", "production")
    assert [(e.version, e.previous_version, e.actor, e.reason, e.action) for e in history] == [
        (2, 1, "bob", "better f1", "set"),
        (1, None, "alice", "launch", "set"),
    ]
    assert history[0] == second
    assert len(reg.alias_history("iris")) == 3  # every alias
    audit = [(e.action, e.target, e.actor, e.details["previous_version"])
             for e in reg.audit_events("iris") if e.action.startswith("alias.")]
    assert audit[-2:] == [("alias.set", "iris@production", "bob", 1),
                          ("alias.set", "iris@production", "alice", None)]


def test_alias_at_answers_what_served_at_a_time(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 3, artifact_dir)
    e1 = reg.set_alias("iris", "production", 1)
    e2 = reg.set_alias("iris", "production", 2)
    e3 = reg.rollback("iris")
    gone = reg.delete_alias("iris", "production")
    e4 = reg.set_alias("iris", "production", 3)
    at = reg.alias_at
    assert at("iris", "production", e1.at - US) is None  # before it existed
    assert at("iris", "production", e1.at) == 1
    assert at("iris", "production", e2.at - US) == 1
    assert at("iris", "production", e2.at) == 2
    assert at("iris", "production", e3.at) == 1
    assert at("iris", "production", gone.at) is None  # removed
    assert at("iris", "production", e4.at - US) is None
    assert at("iris", "production", e4.at + timedelta(days=1)) == 3
    assert at("iris", "staging", e4.at) is None
    with pytest.raises(ConfigError, match="timezone"):
        at("iris", "production", datetime(2030, 1, 1))


def test_delete_alias(any_registry, artifact_dir):
    reg = any_registry
    _register(reg, artifact_dir)
    reg.set_alias("iris", "production", 1)
    event = reg.delete_alias("iris", "production", actor="carol", reason="incident")
    assert (event.action, event.version, event.previous_version) == ("delete", None, 1)
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        reg.resolve("iris")
    assert reg.get_model("iris").aliases == {}
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        reg.delete_alias("iris", "production")


# -- rollback ---------------------------------------------------------------------------------
def test_repeated_rollback_walks_back_through_history(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 3, artifact_dir)
    for v in (1, 2, 3):
        reg.set_alias("iris", "production", v)
    first = reg.rollback("iris", actor="ops", reason="latency")
    assert (first.version, first.previous_version, first.action) == (2, 3, "rollback")
    assert (first.actor, first.reason) == ("ops", "latency")
    assert reg.resolve("iris").version == 2
    assert reg.rollback("iris").version == 1
    assert reg.resolve("iris").version == 1
    with pytest.raises(ConflictError, match="no earlier version"):
        reg.rollback("iris")
    assert reg.resolve("iris").version == 1
    assert reg.alias_history("iris", "production")[0].reason == "rollback"


def test_rollback_after_repromotion_returns_to_the_version_it_replaced(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 3, artifact_dir)
    reg.set_alias("iris", "production", 1)
    reg.set_alias("iris", "production", 2)
    assert reg.rollback("iris").version == 1
    reg.set_alias("iris", "production", 2)  # the fix is in; 2 goes back out
    reg.set_alias("iris", "production", 3)
    assert reg.rollback("iris").version == 2
    assert reg.rollback("iris").version == 1


def test_rollback_to_a_named_version(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 3, artifact_dir)
    for v in (1, 2, 3):
        reg.set_alias("iris", "production", v)
    assert reg.rollback("iris", to=1).version == 1
    assert reg.resolve("iris").version == 1
    with pytest.raises(ConflictError, match="already points to version 1"):
        reg.rollback("iris", to=1)
    with pytest.raises(NotFoundError, match="no version 9"):
        reg.rollback("iris", to=9)
    assert reg.rollback("iris", alias="production", to=3).version == 3


def test_rollback_with_nothing_to_roll_back_to(registry, artifact_dir):
    _register(registry, artifact_dir)
    with pytest.raises(ConflictError):
        registry.rollback("iris")  # no alias at all
    registry.set_alias("iris", "production", 1)
    with pytest.raises(ConflictError, match="--to VERSION"):
        registry.rollback("iris")
    with pytest.raises(NotFoundError):
        registry.rollback("nope")
    assert registry.resolve("iris").version == 1


def test_rollback_of_one_alias_leaves_the_others(registry, artifact_dir):
    _versions(registry, "iris", 2, artifact_dir)
    registry.set_alias("iris", "staging", 1)
    registry.set_alias("iris", "staging", 2)
    registry.set_alias("iris", "production", 2)
    assert registry.rollback("iris", alias="staging").version == 1
    assert registry.get_model("iris").aliases == {"production": 2, "staging": 1}


# -- runs -------------------------------------------------------------------------------------
def test_runs_start_finish_get_and_list(any_registry):
    reg = any_registry
    run = reg.start_run("iris", trigger="cron", actor="scheduler")
    assert (run.status, run.trigger, run.ended_at, run.created_by) == (
        "running", "cron", None, "scheduler")
    done = reg.finish_run(run.id, status="succeeded", version=4, promoted=True,
                          metrics={"f1": 0.91}, gate={"passed": True}, logs="ok\n")
    assert (done.status, done.version, done.promoted, done.metrics) == (
        "succeeded", 4, True, {"f1": 0.91})
    assert done.ended_at is not None and done.duration_s is not None and done.duration_s >= 0
    assert reg.get_run(run.id[:8]) == reg.get_run(run.id)
    assert reg.get_run(run.id[:8]).logs == "ok\n"
    other = reg.start_run("mnist")
    failed = reg.start_run("iris")
    reg.finish_run(failed.id, status="failed", failure_reason="boom")
    assert [r.id for r in reg.list_runs("iris")] == [failed.id, run.id]
    assert [r.id for r in reg.list_runs()] == [failed.id, other.id, run.id]
    assert len(reg.list_runs(limit=1)) == 1
    assert reg.get_run(failed.id).failure_reason == "boom"
    with pytest.raises(NotFoundError, match="no run matches"):
        reg.get_run("zzzz")
    with pytest.raises(NotFoundError, match="ambiguous"):
        reg.get_run("")
    with pytest.raises(NotFoundError):
        reg.finish_run("zzzz", status="failed")
    actions = [(e.action, e.actor) for e in reg.audit_events("iris")]
    assert ("run.start", "scheduler") in actions and ("run.succeeded", "scheduler") in actions
    assert ("run.failed", "tester") in actions


# -- audit and atomicity ----------------------------------------------------------------------
def test_audit_trail_covers_every_change_with_its_actor(any_registry, artifact_dir):
    reg = any_registry
    _versions(reg, "iris", 2, artifact_dir)  # default actor from settings
    reg.set_alias("iris", "production", 1, actor="alice")
    reg.set_alias("iris", "production", 2, actor="bob")
    reg.rollback("iris", actor="carol")
    reg.delete_alias("iris", "production", actor="dave")
    reg.record("deploy.start", "iris", {"variant": "a"}, actor="erin")
    events = list(reversed(reg.audit_events("iris")))
    assert [(e.action, e.target, e.actor) for e in events] == [
        ("model.create", "iris", "tester"),
        ("version.register", "iris:1", "tester"),
        ("version.register", "iris:2", "tester"),
        ("alias.set", "iris@production", "alice"),
        ("alias.set", "iris@production", "bob"),
        ("alias.rollback", "iris@production", "carol"),
        ("alias.delete", "iris@production", "dave"),
        ("deploy.start", "iris", "erin"),
    ]
    assert all(e.at.tzinfo is not None for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert reg.audit_events("iris", limit=2)[0].action == "deploy.start"
    assert reg.audit_events("mnist") == []


def test_failed_alias_move_writes_nothing(any_registry, artifact_dir):
    reg = any_registry
    _register(reg, artifact_dir)
    reg.set_alias("iris", "production", 1)
    before = _counts(reg)
    with pytest.raises(NotFoundError, match="no version 5"):
        reg.set_alias("iris", "production", 5)
    with pytest.raises(NotFoundError):
        reg.set_alias("ghost", "production", 1)
    assert _counts(reg) == before
    assert reg.resolve("iris").version == 1


def test_register_failing_midway_leaves_no_partial_rows(any_registry, artifact_dir, monkeypatch):
    reg = any_registry
    real_audit = client_module.audit

    def audit_then_fail(s, actor, action, *args):
        real_audit(s, actor, action, *args)
        if action == "version.register":
            s.flush()  # the model and version rows are really in the transaction now
            raise RuntimeError("disk full")

    monkeypatch.setattr(client_module, "audit", audit_then_fail)
    with pytest.raises(RuntimeError):
        _register(reg, artifact_dir, "brand-new")
    assert _counts(reg) == dict.fromkeys(_counts(reg), 0)
    with pytest.raises(NotFoundError):
        reg.get_model("brand-new")
    monkeypatch.undo()

    _register(reg, artifact_dir, "brand-new")
    monkeypatch.setattr(client_module, "audit", audit_then_fail)
    with pytest.raises(RuntimeError):
        _register(reg, artifact_dir, "brand-new", content="second")
    monkeypatch.undo()
    assert reg.get_model("brand-new").latest_version == 1
    # no number was burnt by the failed attempt
    assert _register(reg, artifact_dir, "brand-new", content="third").version == 2


# -- artifacts --------------------------------------------------------------------------------
def test_artifact_path_gives_back_the_registered_folder(registry, artifact_dir):
    src = artifact_dir("the weights")
    v = registry.register("iris", src, flavor="sklearn")
    path = registry.artifact_path(v)
    assert (path / "model.bin").read_text() == "the weights"
    assert (path / "sub" / "meta.json").read_text() == '{"k": 1}'
    assert registry.artifact_path(v) == path  # cached


def test_corrupted_artifact_is_refused(registry, artifact_dir):
    v = _register(registry, artifact_dir)
    registry.artifact_path(v)
    blob = registry.store.local_path(v.artifact_digest)
    assert blob is not None
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    registry.clear_cache()
    with pytest.raises(IntegrityError, match=r"iris:1") as err:
        registry.artifact_path(v)
    assert "digest mismatch" in str(err.value)
    assert not (registry.settings.cache_dir / v.artifact_digest).exists()


def test_missing_artifact_is_refused(registry, artifact_dir):
    v = _register(registry, artifact_dir)
    registry.store.delete(v.artifact_digest)
    with pytest.raises(IntegrityError, match=r"iris:1.*missing"):
        registry.artifact_path(v)


# -- database errors --------------------------------------------------------------------------
def test_unreachable_database_is_a_one_line_storage_error(tmp_path):
    settings = Settings.from_env(home=tmp_path, db_url="postgresql://nobody@127.0.0.1:1/x")
    with pytest.raises(StorageError) as err:
        Registry.open(settings)
    message = str(err.value)
    assert "\n" not in message
    assert "127.0.0.1:1" in message and "MODELYARD_DB" in message


@pytest.mark.parametrize("url", ["not a url", "nosuchdriver://host/db", "postgresql://h:port/x"])
def test_malformed_database_url_is_a_config_error(tmp_path, url):
    with pytest.raises(ConfigError):
        Registry.open(Settings.from_env(home=tmp_path, db_url=url))


def test_open_is_idempotent_and_keeps_data(tmp_path, artifact_dir):
    settings = Settings.from_env(home=tmp_path / "home", actor="tester")
    with Registry.open(settings) as reg:
        _register(reg, artifact_dir)
    with Registry.open(settings) as reg:
        assert reg.resolve("iris:1").version == 1
        assert _register(reg, artifact_dir, content="again").version == 2


def test_a_run_whose_process_is_gone_is_finished_as_abandoned(any_registry):
    reg = any_registry
    here = this_host()
    live = reg.start_run("iris")  # this process: alive
    assert (live.host, live.pid, live.heartbeat_at) == (here, os.getpid(), live.started_at)
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = reg.start_run("iris", owner=Owner(here, dead.pid, None))
    reused = reg.start_run("iris", owner=Owner(here, os.getpid(), "another-boot:1"))
    peer = reg.start_run("iris", owner=Owner("elsewhere", 4242, None))  # beat just now

    runs = {r.id: r for r in reg.list_runs("iris")}
    assert runs[live.id].status == "running" and runs[peer.id].status == "running"
    assert (runs[gone.id].status, runs[gone.id].failure_reason) == (
        "failed", f"abandoned: process {dead.pid} on {here} is gone")
    assert runs[gone.id].ended_at is not None
    assert f"failed: abandoned: process {dead.pid}" in reg.get_run(gone.id).logs
    if os.path.isdir("/proc/self"):  # start tokens: a reused pid is not the owner
        assert reg.get_run(reused.id).failure_reason == (
            f"abandoned: process {os.getpid()} on {here} is gone")
    assert ("run.failed", "tester") in [(e.action, e.actor) for e in reg.audit_events("iris")]

    # a peer whose heartbeat stopped long ago is judged by it; a beat keeps a run alive
    with reg.db.session(write=True) as s:
        s.execute(update(RunRow).where(RunRow.id == peer.id)
                  .values(heartbeat_at=now() - timedelta(seconds=STALE_AFTER_S + 60)))
    assert reg.beat_run(live.id) and not reg.beat_run(gone.id)
    reaped = reg.reap_runs("iris")
    assert [r.id for r in reaped] == [peer.id]
    assert reaped[0].failure_reason.startswith("abandoned: process 4242 on elsewhere is gone")
    assert reg.reap_runs() == []
    assert reg.get_run(live.id).status == "running"
    # the owner may still finish it: what it reports is the truth
    assert reg.finish_run(gone.id, status="succeeded").status == "succeeded"
