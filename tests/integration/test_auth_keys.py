"""API keys in the registry (SQLite and PostgreSQL) and the ``modelyard auth`` commands: a key
is shown once and stored only as a salted hash; it verifies until it expires or is revoked;
rotation keeps the old key for a grace period; every change is audited."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from modelyard.cli import main
from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry import Registry
from modelyard.registry.keys import hash_secret, secret_matches, split_key
from modelyard.registry.policy import Grant
from modelyard.registry.tables import ApiKeyRow


def test_a_key_is_stored_only_as_a_salted_hash(any_registry: Registry) -> None:
    made = any_registry.keys.create_key("alice", "deployer", models="fraud-*", note="ci")
    assert made.secret.startswith(f"myk_{made.key.id}_")
    with any_registry.db.session() as s:
        row = s.scalars(select(ApiKeyRow)).one()
    secret = made.secret.split("_", 2)[2]
    assert secret not in row.secret_hash and row.secret_hash.startswith("scrypt$")
    again = hash_secret(secret)
    assert again != row.secret_hash and secret_matches(secret, again)  # salted
    identity = any_registry.keys.verify(made.secret)
    assert identity is not None and identity.principal == "alice"
    assert identity.grants == (Grant("deployer", "fraud-*"),)
    for wrong in (made.secret[:-1] + ("A" if made.secret[-1] != "A" else "B"), "myk_x",
                  f"myk_{'0' * 12}_{secret}", ""):
        assert any_registry.keys.verify(wrong) is None
    event = any_registry.audit_events("alice", limit=1)[0]
    assert event.action == "auth.key.create" and event.details["key"] == made.key.id
    assert secret not in json.dumps(event.details)


def test_expired_and_revoked_keys_do_not_verify(any_registry: Registry) -> None:
    short = any_registry.keys.create_key("svc", "predictor", kind="service",
                                         expires=timedelta(seconds=1))
    kept = any_registry.keys.create_key("svc", "viewer", kind="service")
    assert any_registry.keys.verify(short.secret) is not None
    assert any_registry.keys.any_active()
    any_registry.keys.revoke(kept.key.id)
    assert any_registry.keys.verify(kept.secret) is None
    with pytest.raises(ConflictError, match="already revoked"):
        any_registry.keys.revoke(kept.key.id)
    time.sleep(1.1)
    assert any_registry.keys.verify(short.secret) is None
    assert not any_registry.keys.any_active()
    states = {k.id: k.state(datetime.now(UTC)) for k in any_registry.keys.list_keys("svc")}
    assert states == {short.key.id: "expired", kept.key.id: "revoked"}
    assert [e.action for e in any_registry.audit_events("svc", limit=10)] == [
        "auth.key.revoke", "auth.key.create", "auth.key.create", "auth.principal.create"]


def test_rotation_keeps_the_old_key_for_the_grace_period(any_registry: Registry) -> None:
    old = any_registry.keys.create_key("etl", "trainer", kind="service", models="m*",
                                       expires=timedelta(days=90))
    new = any_registry.keys.rotate(old.key.id, grace=timedelta(hours=1))
    assert (new.key.principal, new.key.role, new.key.models) == ("etl", "trainer", "m*")
    assert new.key.expires_at is not None
    assert abs((new.key.expires_at - new.key.created_at) - timedelta(days=90)) < timedelta(
        seconds=5)
    assert any_registry.keys.verify(old.secret) is not None  # still, for an hour
    assert any_registry.keys.verify(new.secret) is not None
    (listed_old,) = [k for k in any_registry.keys.list_keys("etl") if k.id == old.key.id]
    assert listed_old.expires_at is not None
    assert listed_old.expires_at - datetime.now(UTC) < timedelta(hours=1, seconds=5)
    rotated = any_registry.audit_events("etl", limit=1)[0]
    assert rotated.action == "auth.key.rotate" and rotated.details["new_key"] == new.key.id


def test_bad_requests_name_what_is_wrong(any_registry: Registry) -> None:
    keys = any_registry.keys
    with pytest.raises(ConfigError, match="role 'root'"):
        keys.create_key("a", "root")
    with pytest.raises(ConfigError, match="models pattern"):
        keys.create_key("a", "viewer", models="a b")
    with pytest.raises(ConfigError, match="principal name"):
        keys.create_key("no spaces", "viewer")
    with pytest.raises(NotFoundError, match="no API key"):
        keys.revoke("000000000000")
    keys.create_key("bot", "viewer", kind="service")
    with pytest.raises(ConflictError, match="is a service"):
        keys.create_key("bot", "viewer", kind="user")
    assert split_key("myk_0123456789ab_" + "x" * 43) == ("0123456789ab", "x" * 43)


# -- the CLI ------------------------------------------------------------------------------------
def _cli(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_auth_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out, err = _cli(home, "auth", "keys")
    assert code == 0 and "make the first admin key" in out
    code, out, err = _cli(home, "auth", "create-key", "alice", "--role", "admin")
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("myk_") and "only time it is shown" in err
    code, out, _ = _cli(home, "auth", "create-key", "ci", "--role", "predictor", "--kind",
                        "service", "--models", "fraud-*", "--expires", "90d", "--json")
    assert code == 0
    ci = json.loads(out)
    assert ci["key"].startswith("myk_") and ci["state"] == "active" and ci["kind"] == "service"
    code, out, _ = _cli(home, "auth", "keys", "--json")
    listed = json.loads(out)
    assert [k["principal"] for k in listed] == ["alice", "ci"]
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    assert secret not in out
    code, out, err = _cli(home, "auth", "rotate", ci["id"], "--grace", "10m")
    assert code == 0 and out.strip().startswith("myk_") and "stops working in 10m" in err
    code, out, _ = _cli(home, "auth", "revoke", ci["id"])
    assert code == 0 and f"revoked key {ci['id']} of ci" in out
    code, _, err = _cli(home, "auth", "revoke", ci["id"])
    assert code == 4 and err.startswith("error:") and "already revoked" in err
    code, _, err = _cli(home, "auth", "revoke", "nosuchkey")
    assert code == 3 and "no API key" in err
    code, _, err = _cli(home, "auth", "create-key", "bob", "--role", "admin", "--expires", "x")
    assert code == 2 and "duration" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _cli(home, "auth", "keys")
    assert "alice" in out and "revoked" in out
