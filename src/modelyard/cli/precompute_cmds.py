"""``modelyard precompute``: score a version's precompute input into its online store now."""

from __future__ import annotations

import click

from modelyard.cli.batch_cmds import _shown
from modelyard.cli.output import live_console, print_fields, print_json
from modelyard.cli.state import State, pass_state


@click.command(short_help="Precompute a version's answers into its online store now.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def precompute(state: State, ref: str, as_json: bool) -> None:
    """Score the version's precompute input (its spec's precompute section) into its online
    store, by key, so the server answers those keys without running the model.

    The run is a batch run ('modelyard runs'): a rerun after a kill goes on after the last
    finished chunk, a rerun after a finished one refreshes every answer. Exit codes as for
    every command: 2 when the version has no precompute section or its input is unusable, 3
    for an unknown model or version, 10 when the store cannot be reached.

    \b
    modelyard precompute fraud            # its production version
    modelyard precompute fraud:3
    """
    from modelyard.cli.progress import RowProgress
    from modelyard.precompute.job import precompute as run

    registry = state.local_registry()
    with RowProgress(live_console(quiet_unless_tty=as_json), ref) as progress:
        summary = run(registry, ref, on_chunk=progress)
    if as_json:
        print_json(summary.to_dict())
        return
    print_fields(_shown(summary.to_dict()), title=f"{summary.model}:{summary.version} "
                 f"precomputed ({summary.status})")


__all__ = ["precompute"]
