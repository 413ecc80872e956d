"""``modelyard db``: the registry database's schema, created or upgraded on purpose.

Every command migrates the registry when it first opens it, so this is needed only where a
deployment wants the migration as its own step: a Kubernetes Job before the servers roll, or a
release script that should fail early when the database cannot be reached.
"""

from __future__ import annotations

import click

from modelyard.cli.state import State, pass_state


@click.group(short_help="The registry database: create or upgrade its schema.")
def db() -> None:
    """The registry database named by --db or MODELYARD_DB (SQLite in the home by default)."""


@db.command(short_help="Create or upgrade the registry schema to this release's newest.")
@pass_state
def upgrade(state: State) -> None:
    """Create the registry's tables in an empty database, or upgrade them to the newest schema
    revision this release knows, and print the revision it is at.

    Safe to run while servers use the database and from several places at once: one process
    migrates while the others wait for it. Exit 10 when the database cannot be reached.
    """
    from modelyard.registry import Database
    from modelyard.registry.database import head_revision

    state.require_local()  # never the local default when --server names another registry
    settings = state.settings()
    database = Database(settings.db_url)
    try:
        before = database.revision()
        database.migrate()
        head = head_revision()
        if before not in (None, head):  # an upgrade of a registry in use: who did it, when
            from modelyard.registry.rows import audit

            with database.session(write=True) as s:
                audit(s, settings.actor, "db.upgrade", "registry", {"from": before, "to": head})
    finally:
        database.dispose()
    if before == head:
        click.echo(f"{database.display_url} is at revision {head} (the newest): nothing to do")
    else:
        click.echo(f"{database.display_url} upgraded from revision {before or 'none (empty)'} "
                   f"to {head}")


__all__ = ["db", "upgrade"]
