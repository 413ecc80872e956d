"""``modelyard auth``: principals and API keys, made and ended against the registry database.

The first admin key comes from here, run where the registry database is reachable (a local
command, never an open endpoint): ``modelyard auth create-key alice --role admin``. The key is
printed once; the registry keeps only a slow salted hash of it. Once a key exists, every server
on this registry enforces auth (see ``docs/security.md``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from modelyard.cli.output import console, fmt_time, print_json, print_table
from modelyard.cli.state import State, pass_state
from modelyard.config import parse_duration
from modelyard.errors import ConfigError
from modelyard.registry.keys import KINDS, ApiKey, KeyStore, NewKey, describe
from modelyard.registry.policy import ROLES, check_roles

if TYPE_CHECKING:
    from modelyard.cli.remote import RemoteKeys


@click.group(short_help="API keys: create, list, rotate and revoke them.")
def auth() -> None:
    """Principals (users and service accounts) and their API keys, in the registry database.

    Each key grants a role over the models a pattern names: viewer, predictor, deployer,
    trainer or admin (see docs/security.md for what each may do); a few joined by commas
    (trainer,deployer: a CI key that trains and promotes).
    """


def _roles(value: str) -> str:
    try:
        return check_roles(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _keys(state: State) -> KeyStore | RemoteKeys:
    """The registry's keys, or a server's key API with an admin key (``--server``)."""
    return state.registry().keys


@auth.command("create-key", short_help="Make an API key for NAME; printed once.")
@click.argument("name")
@click.option("--role", required=True, callback=lambda _c, _p, v: _roles(v),
              help=f"What the key may do: {', '.join(ROLES)}; or a few, comma-separated "
                   "(trainer,deployer).")
@click.option("--models", default="*", show_default=True,
              help="Which models: a name or a glob (fraud-*).")
@click.option("--expires", default=None, metavar="DURATION",
              help="Lifetime (90d, 12h); default: until revoked.")
@click.option("--kind", default="user", show_default=True, type=click.Choice(KINDS),
              help="A person or a service account (made with its first key).")
@click.option("--note", default="", help="What the key is for (shown in lists).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the key) instead.")
@pass_state
def create_key(state: State, name: str, role: str, models: str, expires: str | None, kind: str,
               note: str, as_json: bool) -> None:
    """Make an API key for the principal NAME (a user or service account, made on first use)
    and print it once: store it now, it cannot be shown again."""
    lifetime = timedelta(seconds=parse_duration(expires)) if expires else None
    made = _keys(state).create_key(name, role, models=models, kind=kind, expires=lifetime,
                                   note=note, actor=state.settings().actor)
    _show_new(made, as_json)


@auth.command("keys", short_help="List API keys (never their secrets).")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def list_keys(state: State, name: str | None, as_json: bool) -> None:
    """List every API key, or NAME's: id, principal, role, scope, state, expiry, last use."""
    found = _keys(state).list_keys(name)
    at = datetime.now(UTC)
    if as_json:
        print_json([describe(k, at) for k in found])
        return
    print_table(["key", "principal", "kind", "role", "models", "state", "expires", "last used",
                 "note"],
                [_row(k, at) for k in found],
                empty="no API keys: make the first admin key with "
                      "'modelyard auth create-key NAME --role admin'")


@auth.command(short_help="End an API key now.")
@click.argument("key_id")
@pass_state
def revoke(state: State, key_id: str) -> None:
    """Revoke the key KEY_ID (its id, as 'auth keys' lists it): servers refuse it within
    seconds. Exit 3 for an unknown key, 4 when it was already revoked."""
    key = _keys(state).revoke(key_id, actor=state.settings().actor)
    click.echo(f"revoked key {key.id} of {key.principal} ({key.role} on {key.models})")


@auth.command(short_help="Replace an API key, the old one working for a grace period.")
@click.argument("key_id")
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="How long the old key keeps working.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the key) instead.")
@pass_state
def rotate(state: State, key_id: str, grace: str, as_json: bool) -> None:
    """Make a new key with KEY_ID's principal, role, scope and lifetime, print it once, and let
    the old key work for --grace more, so clients switch with no failed call."""
    made = _keys(state).rotate(key_id, grace=timedelta(seconds=parse_duration(grace)),
                               actor=state.settings().actor)
    _show_new(made, as_json)
    if not as_json:
        console(stderr=True).print(f"the old key {key_id} stops working in {grace}")


def _show_new(made: NewKey, as_json: bool) -> None:
    key = made.key
    if as_json:
        print_json({**describe(key, datetime.now(UTC)), "key": made.secret})
        return
    click.echo(made.secret)
    expiry = f", expires {fmt_time(key.expires_at)}" if key.expires_at else ""
    console(stderr=True).print(
        f"key {key.id} for {key.kind} {key.principal}: {key.role} on {key.models}{expiry}. "
        "This is the only time it is shown: store it now.")


def _row(key: ApiKey, at: datetime) -> list[object]:
    return [key.id, key.principal, key.kind, key.role, key.models, key.state(at),
            fmt_time(key.expires_at) if key.expires_at else "never",
            fmt_time(key.last_used_at) if key.last_used_at else "", key.note]


__all__ = ["auth"]
