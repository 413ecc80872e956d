"""Artifact store commands: ``store keygen`` makes an encryption key, ``store rekey`` re-seals
every artifact with the current key (after a rotation, or to encrypt older plaintext ones)."""

from __future__ import annotations

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from modelyard.cli.output import console, print_json
from modelyard.cli.state import State, pass_state
from modelyard.encryption import EncryptedStore, key_id, new_key
from modelyard.errors import ConfigError
from modelyard.registry.tables import VersionRow


@click.group(short_help="Artifact store: encryption keys and re-encryption.")
def store() -> None:
    """The artifact store: make an encryption key, re-encrypt every artifact with it."""


@store.command(short_help="Print a new artifact encryption key.")
def keygen() -> None:
    """Print a new key for MODELYARD_ARTIFACT_KEY (base64 of 32 random bytes).

    Keep it in a secret store; a lost key makes the artifacts it sealed unreadable.
    """
    click.echo(new_key())


@store.command(short_help="Re-encrypt every artifact with the current key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line.")
@pass_state
def rekey(state: State, as_json: bool) -> None:
    """Re-encrypt every version's artifact with MODELYARD_ARTIFACT_KEY.

    Artifacts sealed with a key in MODELYARD_ARTIFACT_KEY_PREVIOUS, and plaintext ones from
    before encryption was on, are decrypted, checked against their digest and sealed with the
    current key; those already under it are left alone. Safe to rerun after an interruption;
    once it reports 0 left, the previous keys can be dropped.
    """
    registry = state.local_registry()
    sealed = registry.store
    if not isinstance(sealed, EncryptedStore):
        raise ConfigError("store rekey needs MODELYARD_ARTIFACT_KEY: the key to encrypt with "
                          "(make one with: modelyard store keygen)")
    with registry.db.session() as s:
        digests = sorted(set(s.scalars(select(VersionRow.artifact_digest))))
    rewritten = 0
    with Progress(TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console(stderr=True), transient=True) as bar:
        task = bar.add_task("rekey", total=len(digests))
        for digest in digests:
            rewritten += sealed.rekey(digest)
            bar.advance(task)
    kid = key_id(sealed.keyring.current).hex()
    if as_json:
        print_json({"artifacts": len(digests), "rewritten": rewritten, "key": kid})
        return
    click.echo(f"{len(digests)} artifacts under key {kid}: {rewritten} re-encrypted, "
               f"{len(digests) - rewritten} already were")


__all__ = ["store"]
