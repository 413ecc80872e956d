"""Registry commands: models, versions, show, promote, rollback, alias history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from modelyard.cli.output import (
    compact,
    console,
    fmt_aliases,
    fmt_metrics,
    fmt_size,
    fmt_time,
    print_fields,
    print_json,
    print_table,
)
from modelyard.cli.params import VERSION
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_ALIAS = click.option("--alias", default="production", show_default=True,
                      help="The alias to move.")
_REASON = click.option("--reason", default="", help="Why (kept in the alias history and audit).")


@click.command(short_help="List models with their latest version and aliases.")
@_JSON
@pass_state
def models(state: State, as_json: bool) -> None:
    """List every model with its newest version and aliases."""
    found = state.registry().list_models()
    if as_json:
        print_json([m.to_dict() for m in found])
        return
    print_table(
        ["model", "latest", "aliases", "created", "by"],
        [[m.name, f"v{m.latest_version}", fmt_aliases(m.aliases), m.created_at, m.created_by]
         for m in found],
        empty="no models yet: train one with 'modelyard train NAME' or try 'modelyard demo'",
    )


@click.command(short_help="List a model's versions with metrics and aliases.")
@click.argument("model")
@_JSON
@pass_state
def versions(state: State, model: str, as_json: bool) -> None:
    """List the versions of MODEL, newest first, with metrics and aliases."""
    found = state.registry().list_versions(model)
    if as_json:
        print_json([v.to_dict(full=False) for v in found])
        return
    print_table(
        ["version", "label", "flavor", "aliases", "metrics", "created", "by", "digest"],
        [[f"v{v.version}", v.semver or "", v.flavor, fmt_aliases(v.aliases),
          fmt_metrics(v.metrics), v.created_at, v.created_by, v.artifact_digest[:12]]
         for v in found],
        empty=f"model '{model}' has no versions yet",
    )


@click.command(short_help="Show a version's lineage, signature and metrics.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS|@X.Y.Z]")
@_JSON
@pass_state
def show(state: State, ref: str, as_json: bool) -> None:
    """Show one version: lineage (code and data sources), signature, metrics, fairness per
    group and environment.

    A bare MODEL means its production alias; MODEL:3 is version 3; MODEL@staging an alias;
    MODEL@1.4.0 the version labelled 1.4.0. 'modelyard lineage FILE|TABLE' asks the other
    way: which versions were trained on a file or a table.
    """
    version = state.registry().resolve(ref)
    if as_json:
        print_json(version.to_dict())
        return
    label = f"  = {version.model}@{version.semver}" if version.semver else ""
    console().print(f"[bold]{version.ref}[/bold]{label}  {version.flavor}"
                    + (f"  ({fmt_aliases(version.aliases)})" if version.aliases else ""))
    print_fields({
        "description": version.description,
        "created": f"{fmt_time(version.created_at)} by {version.created_by}",
        "artifact": f"sha256:{version.artifact_digest} ({fmt_size(version.artifact_size)})",
        "run": version.run_id,
        "data": version.data_fingerprint,
        "code": _pairs(version.code_ref),
        "params": _pairs(version.params),
    })
    _show_sources(version.data_sources)
    _show_signature(version.signature)
    if version.metrics:
        print_fields(version.metrics, title="metrics")
    if version.meta.get("fairness"):
        from modelyard.cli.fairness_view import print_fairness

        print_fairness(version.meta["fairness"], title="fairness on the holdout")
    if version.environment:
        print_fields({k: _pairs(v) for k, v in version.environment.items()}, title="environment")


def _show_sources(sources: list[dict[str, Any]]) -> None:
    """The data the version was trained on: one line per file, query or function."""
    if not sources:
        return
    rows = []
    for source in sources:
        detail = source.get("digest") or ""
        if source.get("kind") == "sql":
            detail = f"tables {', '.join(source.get('tables') or []) or '?'}"
        elif detail:
            detail = f"sha256:{detail[:16]}"
        rows.append([source.get("kind", "?"), source.get("location", ""), detail])
    print_table(["source", "location", "detail"], rows, title="trained on")


def _show_signature(signature: dict[str, Any]) -> None:
    if not signature:
        return
    inputs = signature.get("inputs", [])
    console().print(f"[bold]signature[/bold]  {signature.get('layout', 'table')}, "
                    f"{len(inputs)} input(s)")
    print_table(["input", "dtype", "shape"],
                [[f["name"], f["dtype"], _shape(f.get("shape", []))] for f in inputs])
    if signature.get("classes") is not None:
        console().print("classes  " + ", ".join(str(c) for c in signature["classes"]),
                        highlight=False, markup=False)


def _pairs(value: Any) -> Any:
    """A flat mapping as ``key value, key value`` (empty entries left out); others unchanged."""
    if not isinstance(value, dict):
        return value
    parts = [f"{k} {compact(v)}" for k, v in value.items() if v not in (None, "", {}, [])]
    return ", ".join(parts)


def _shape(shape: list[Any]) -> str:
    return "scalar" if not shape else "(" + ", ".join("?" if d is None else str(d)
                                                      for d in shape) + ")"


@click.command(short_help="Point an alias (production) at a version.")
@click.argument("model")
@click.argument("version", type=VERSION)
@_ALIAS
@_REASON
@click.option("--no-check", is_flag=True,
              help="Move the alias without first loading VERSION the way a server would.")
@_JSON
@pass_state
def promote(state: State, model: str, version: int, alias: str, reason: str, no_check: bool,
            as_json: bool) -> None:
    """Point MODEL's alias (production by default) at VERSION.

    First VERSION is loaded and warmed in a fresh process on the CPU, as a server would: its
    artifact's digest, its adapter, its warm-up. If that fails, the alias stays where it was and
    the command exits with the reason (9 a corrupted artifact, 13 a load or warm-up error).
    Recorded in the alias history, so 'modelyard rollback MODEL' can undo it.
    """
    registry = state.registry()
    if not no_check and not state.remote:  # through a server: it loads the version first
        _check_loads(registry, model, version, alias)
    event = registry.set_alias(model, alias, version, actor=state.settings().actor,
                               reason=reason or "modelyard promote")
    if as_json:
        print_json(event.to_dict())
        return
    was = f" (was v{event.previous_version})" if event.previous_version is not None else ""
    console().print(f"{model}@{alias} -> v{version}{was}")


def _check_loads(registry: Any, model: str, version: int, alias: str) -> None:
    """Raise, with the reason and where the alias stays, if ``model:version`` cannot load."""
    from modelyard.errors import ModelyardError
    from modelyard.serving.worker import check_loads

    record = registry.get_version(model, version)  # an unknown version: 3, before anything
    try:
        check_loads(registry, record)
    except ModelyardError as err:
        current = registry.get_model(model).aliases.get(alias)
        stays = f"stays at v{current}" if current is not None else "is not set"
        message = (f"{model}:{version} cannot be loaded, so {model}@{alias} {stays}: {err}; "
                   "fix or re-register the version (or promote with --no-check)")
        raise _reworded(err, message) from None


def _reworded(err: Exception, message: str) -> Exception:
    """``err``'s class (so its exit code) with ``message``; ``err`` itself if that fails."""
    try:
        return type(err)(message)
    except TypeError:  # an error class that takes more than a message
        return err


@click.command(short_help="Move an alias back to its previous version, or end a rollout.")
@click.argument("model")
@click.option("--to", "to", type=VERSION, metavar="VERSION",
              help="Version to go back to (default: the one before the current).")
@_ALIAS
@_REASON
@_JSON
@pass_state
def rollback(state: State, model: str, to: int | None, alias: str, reason: str,
             as_json: bool) -> None:
    """Move MODEL's alias back to the version it pointed to before, or end its rollout.

    While a rollout (modelyard deploy) is active, this first rolls the rollout back: all traffic
    returns to the stable version, which is still production; without --to that is all it does.
    Otherwise repeated rollbacks keep walking back through the history; --to names a version.
    """
    from modelyard.cli.rollout_cmds import end_active_rollout

    if state.remote:
        _rollback_remote(state, model, to, alias, reason, as_json)
        return
    if alias == "production":
        ended = end_active_rollout(state, model, reason)
        if ended is not None and to is None:
            if as_json:
                print_json(ended.to_dict())
            else:
                console().print(f"{model}: rollout of v{ended.candidate_version} rolled back; "
                                f"traffic is back on v{ended.stable_version}")
            return
    event = state.local_registry().rollback(model, alias=alias, to=to, actor=state.settings().actor,
                                            reason=reason)
    if as_json:
        print_json(event.to_dict())
        return
    console().print(f"{model}@{alias} rolled back: v{event.previous_version} -> v{event.version}")


def _rollback_remote(state: State, model: str, to: int | None, alias: str, reason: str,
                     as_json: bool) -> None:
    """``rollback`` through a server: it ends an active rollout first, as locally."""
    from modelyard.cli.remote import RemoteRegistry

    registry = state.registry()
    assert isinstance(registry, RemoteRegistry)
    event, ended = registry.rollback_or_end(model, alias=alias, to=to, reason=reason)
    if event is None and ended is not None:
        if as_json:
            print_json(ended)
        else:
            console().print(f"{model}: rollout of v{ended['candidate_version']} rolled back; "
                            f"traffic is back on v{ended['stable_version']}")
        return
    assert event is not None
    if as_json:
        print_json(event.to_dict())
        return
    console().print(f"{model}@{alias} rolled back: v{event.previous_version} -> v{event.version}")


@click.command(short_help="Show alias history, or what served at a time.")
@click.argument("model")
@click.option("--alias", default=None, help="Only this alias (with --at: default production).")
@click.option("--at", "at", metavar="ISO-TIME",
              help="Say which version the alias pointed to at this time, e.g. "
                   "2026-01-31T12:00:00Z (no zone: local time).")
@_JSON
@pass_state
def history(state: State, model: str, alias: str | None, at: str | None, as_json: bool) -> None:
    """Show every move of MODEL's aliases, newest first, or what one served at a given time."""
    registry = state.registry()
    if at is not None:
        when = parse_time(at)
        alias = alias or "production"
        version = registry.alias_at(model, alias, when)
        if as_json:
            print_json({"model": model, "alias": alias, "at": when.isoformat(),
                        "version": version})
        elif version is None:
            console().print(f"{model}@{alias} did not exist at {fmt_time(when)}")
        else:
            console().print(f"{model}@{alias} pointed to v{version} at {fmt_time(when)}")
        return
    events = registry.alias_history(model, alias)
    if as_json:
        print_json([e.to_dict() for e in events])
        return
    print_table(
        ["at", "alias", "action", "version", "from", "by", "reason"],
        [[e.at, e.alias, e.action, _v(e.version), _v(e.previous_version), e.actor, e.reason]
         for e in events],
        empty=f"model '{model}' has no alias history yet",
    )


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is local time. Raises :class:`ConfigError`."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--at {text!r} is not an ISO time; write it like 2026-01-31T12:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def _v(version: int | None) -> str:
    return "" if version is None else f"v{version}"


__all__ = ["history", "models", "parse_time", "promote", "rollback", "show", "versions"]
