"""``modelyard label`` (a version's semantic version label, given once) and ``modelyard lineage``
(which versions were trained on a file or a table)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from modelyard.cli.output import fmt_time, print_json, print_table
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

_SHA256 = re.compile(r"^(?:sha256:)?([0-9a-fA-F]{64})$")
#: what makes a name a file path rather than a table name when no such file exists (any more).
_FILE_SUFFIXES = (".csv", ".parquet", ".pq", ".gz", ".json", ".txt", ".tsv")


@click.command(short_help="Give a version its semantic version label (once).")
@click.argument("ref", metavar="MODEL:VERSION|MODEL@ALIAS")
@click.argument("semver", metavar="X.Y.Z|major|minor|patch")
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
@pass_state
def label(state: State, ref: str, semver: str, as_json: bool) -> None:
    """Label the version REF names with SEMVER, so it can be named MODEL@SEMVER.

    SEMVER is MAJOR.MINOR.PATCH with an optional pre-release (1.4.0, 2.0.0-rc.1), or major,
    minor or patch to bump the model's highest label. A label, once given, never changes, and
    names one version of the model: either clash exits 4. Audited as version.label.

    \b
    modelyard label fraud:7 1.4.0
    modelyard label fraud@production minor
    """
    registry = state.local_registry()
    version = registry.resolve(ref)
    labelled = registry.label(version.model, version.version, semver)
    if as_json:
        print_json(labelled.to_dict(full=False))
        return
    click.echo(f"labelled {labelled.ref} as {labelled.model}@{labelled.semver}")


@click.command(short_help="Which versions were trained on a file or a table.")
@click.argument("source", metavar="FILE|SHA256|TABLE")
@click.option("--model", metavar="NAME", help="Only this model's versions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def lineage(state: State, source: str, model: str | None, as_json: bool) -> None:
    """List the versions trained on SOURCE, newest first, with the source that matched.

    SOURCE is a data file (matched by its absolute path, and by its content's sha256 while it
    exists, so a copy or a moved file is found too), a sha256 in hex, or a table name found
    in the versions' SQL queries (transactions also matches public.transactions). A version
    records its data when it is trained: files with their sha256, the query with its database
    (without password) and the tables it reads, or the data function.

    \b
    modelyard lineage data/2026-01.csv
    modelyard lineage public.transactions --model fraud
    """
    from modelyard.registry.provenance import file_digest

    registry = state.local_registry()
    digest = _SHA256.match(source.strip())
    path = Path(source).expanduser()
    if digest is not None:
        found = registry.trained_on(digest=digest.group(1).lower(), model=model)
    elif path.is_file():
        try:
            content = file_digest(path)
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
        found = registry.trained_on(path=path, digest=content, model=model)
    elif "/" in source or source.lower().endswith(_FILE_SUFFIXES) or path.is_dir():
        found = registry.trained_on(path=path, model=model)
    else:
        found = registry.trained_on(table=source, model=model)
    if as_json:
        print_json([f.to_dict() for f in found])
        return
    print_table(
        ["version", "label", "source", "location", "digest", "created"],
        [[f.ref, f.semver or "", f.kind, f.location, (f.digest or "")[:12],
          fmt_time(f.created_at)] for f in found],
        empty=f"no version records {source} among its data sources",
    )


__all__ = ["label", "lineage"]
