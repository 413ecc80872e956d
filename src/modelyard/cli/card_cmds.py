"""``modelyard card``: a version's model card, generated for a reviewer (Markdown or HTML)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError


@click.command(short_help="Write a version's model card (Markdown or HTML) for a reviewer.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.option("--format", "fmt", type=click.Choice(["markdown", "html"]), default=None,
              help="Default: html when --out ends in .html, otherwise markdown.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the card to FILE (replaced whole, never half-written) instead of "
                   "printing it.")
@pass_state
def card(state: State, ref: str, fmt: str | None, out: Path | None) -> None:
    """Generate REF's model card from the registry: purpose, data and lineage, metrics and the
    gate, fairness figures, drift at promotion, approvals and rollouts from the audit trail.

    A card is generated, never edited: regenerate it whenever it is needed. Through a server
    (--server or MODELYARD_URL) the server generates it, for a key that may read the model.

    \b
    modelyard card fraud:3
    modelyard card fraud@production --out fraud-card.html
    """
    from modelyard.governance.card import gather, render
    from modelyard.monitoring.monitor import Monitor
    from modelyard.registry import Registry

    chosen = fmt or ("html" if out is not None and out.suffix.lower() in (".html", ".htm")
                     else "markdown")
    registry = state.registry()
    if isinstance(registry, Registry):
        text = render(gather(registry, Monitor(registry), ref),
                      "html" if chosen == "html" else "markdown")
    else:  # through a server (--server / MODELYARD_URL): it generates the card
        text = registry.card(ref, chosen)
    if out is None:
        click.echo(text, nl=False)
        return
    _write(out, text)
    click.echo(f"wrote the model card of {ref} to {out}")


def _write(path: Path, text: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--out: folder {folder} does not exist")
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
