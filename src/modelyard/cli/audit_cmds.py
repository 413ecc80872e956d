"""Audit commands: ``audit [TARGET]`` lists events, ``audit verify`` walks the hash chain,
``audit export`` writes it as JSON lines for a SIEM."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from modelyard.cli.output import print_json, print_table
from modelyard.cli.state import State, pass_state
from modelyard.errors import AuditChainError, StorageError
from modelyard.registry.audit_chain import (
    ChainReport,
    chain_rows,
    export_record,
    verify_session,
)

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


class _AuditGroup(click.Group):
    """``audit [TARGET]`` lists events (the ``list`` subcommand is implied); ``audit verify``
    and ``audit export`` are subcommands (a model named like them: ``audit list verify``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_AuditGroup, short_help="Show who changed what; verify and export the chain.")
def audit() -> None:
    """Who changed what and when: list events, verify their hash chain, export it for a SIEM.

    'modelyard audit [TARGET]' lists events newest first (TARGET: a model or MODEL:V).
    """


@audit.command("list", short_help="Show who changed what, and when.")
@click.argument("target", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="How many events to show.")
@_JSON
@pass_state
def list_events(state: State, target: str | None, limit: int, as_json: bool) -> None:
    """Show who changed what and when, newest first; TARGET is a model name (or MODEL:V)."""
    events = state.registry().audit_events(target, limit=limit)
    if as_json:
        print_json([e.to_dict() for e in events])
        return
    print_table(
        ["at", "actor", "action", "target", "details"],
        [[e.at, e.actor, e.action, e.target, e.details] for e in events],
        empty="no audit events",
    )


@audit.command("verify", short_help="Check that no audit event was altered, added or removed.")
@click.option("--head", "anchor", metavar="HASH",
              help="A head hash recorded earlier (by 'verify' or a SIEM): it must still be in "
                   "the chain, which catches events deleted from the end.")
@_JSON
@pass_state
def verify_chain(state: State, anchor: str | None, as_json: bool) -> None:
    """Walk the audit chain and fail (exit 17) at the first event that does not follow.

    Prints the number of events and the head hash; keep the head somewhere else and pass it
    back with --head next time.
    """
    report = _report(state, anchor)
    if report.bad_id is not None:
        raise AuditChainError(
            f"audit chain broken at event {report.bad_id}: {report.reason}; "
            f"the {report.events} events before it verify"
        )
    if report.anchor_found is False:
        raise AuditChainError(
            f"audit chain does not contain the head {anchor}: events recorded up to it were "
            f"deleted from the end or rewritten ({report.events} events verify, head "
            f"{report.head})"
        )
    if as_json:
        print_json({"intact": True, "events": report.events, "head": report.head})
        return
    click.echo(f"audit chain intact: {report.events} events, head {report.head}")



@audit.command(short_help="Write the audit chain as JSON lines (for a SIEM).")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl",
              show_default=True, help="One JSON object a line, with both hashes.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
@click.option("--after", "after_id", type=click.IntRange(0), default=0, show_default=True,
              help="Only events with an id above this (the last id a SIEM already has).")
@pass_state
def export(state: State, fmt: str, output: Path | None, after_id: int) -> None:
    """Write every audit event in chain order, one JSON object a line: id, at, actor, action,
    target, details, prev_hash and hash (docs/security.md says how to recompute the hash)."""
    if output is None:
        _write(state, sys.stdout, after_id)
        return
    try:
        with output.open("w", encoding="utf-8") as fh:
            count = _write(state, fh, after_id)
    except OSError as exc:
        raise StorageError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"exported {count} audit events to {output}", err=True)


def _report(state: State, anchor: str | None) -> ChainReport:
    """The chain's verification, here or by the server (``--server``, an admin key)."""
    from modelyard.cli.remote import RemoteRegistry

    registry = state.registry()
    if isinstance(registry, RemoteRegistry):
        found = registry.remote.get("/api/v1/audit/verify", head=anchor)
        return ChainReport(found["events"], found["head"], found["bad_id"], found["reason"],
                           found["anchor_found"])
    with registry.db.session() as s:
        return verify_session(s, anchor=anchor)


def _records(state: State, after_id: int) -> Iterator[dict[str, Any]]:
    """Every event above ``after_id`` in chain order: streamed from the database, or paged
    from the server (``--server``, an admin key)."""
    from modelyard.cli.remote import RemoteRegistry

    registry = state.registry()
    if not isinstance(registry, RemoteRegistry):
        with registry.db.session() as s:
            for row in chain_rows(s, after_id=after_id):
                yield export_record(row)
        return
    while True:
        page = registry.remote.text("/api/v1/audit/export", after=after_id, limit=_PAGE)
        records = [json.loads(line) for line in page.splitlines() if line.strip()]
        yield from records
        if len(records) < _PAGE:
            return
        after_id = int(records[-1]["id"])


def _write(state: State, stream: IO[str], after_id: int) -> int:
    count = 0
    for record in _records(state, after_id):
        stream.write(json.dumps(record, sort_keys=True) + "\n")
        count += 1
    return count


#: events a page of a remote export holds
_PAGE = 10_000


__all__ = ["audit"]
