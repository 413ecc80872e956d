"""``modelyard batch``: score files or a SQL query with a registered version, resumably."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from modelyard.cli.output import live_console, print_fields, print_json
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.batch import BatchJob


@click.command(short_help="Score files or a SQL query with a version, into Parquet or SQL.")
@click.argument("ref", metavar="MODEL[:VERSION|@ALIAS]")
@click.option("--input", "-i", "inputs", multiple=True, required=True, metavar="SRC",
              help="Parquet, CSV or JSON-lines files, folders or globs, local or any fsspec URL "
                   "(repeatable), or 'sql:SELECT ...' with --sql-db.")
@click.option("--output", "-o", required=True, metavar="DST",
              help="A folder or fsspec URL for Parquet parts, 'sql:TABLE' with --sql-db, or "
                   "'precomputed:STORE' (registry or a redis:// URL; needs one --key).")
@click.option("--key", "keys", multiple=True, metavar="COL",
              help="An id column carried into the output (repeatable); without one, each "
                   "answer carries its input row number.")
@click.option("--chunk-rows", default=10_000, show_default=True,
              type=click.IntRange(1, 10_000_000), help="Rows scored and committed at a time.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="skip: set bad rows aside with their reason and go on; "
                                      "fail: stop at the first one (exit 16).")
@click.option("--scores", is_flag=True, help="Also write class scores (column 'scores').")
@click.option("--restart", is_flag=True,
              help="Replace what the output holds instead of resuming it.")
@click.option("--log-sample", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              metavar="RATE", help="Share of rows written to the prediction log (variant "
                                   "'batch'), so drift monitoring sees them.")
@click.option("--sql-db", metavar="URL", help="SQLAlchemy URL for sql: inputs and outputs.")
@click.option("--format", "input_format", type=click.Choice(["parquet", "csv", "json"]),
              help="The input files' format (default: from their names).")
@click.option("--device", help="Where to run the model (default: its serving section's).")
@click.option("--engine", default="local", show_default=True,
              help="Where the job runs: local (this process) or ray (read and scored on a Ray "
                   "cluster, committed here; pip install 'modelyard[ray]').")
@click.option("--ray-address", metavar="ADDRESS", envvar="MODELYARD_RAY_ADDRESS",
              help="The Ray cluster for --engine ray (ray://host:10001, or host:6379 on a "
                   "node; env MODELYARD_RAY_ADDRESS; default: a local one).")
@click.option("--actors", type=click.IntRange(1, 100_000), metavar="N",
              help="Scoring actors for --engine ray, each loading the model once (default: as "
                   "many as the cluster's CPUs, or GPUs for a CUDA model, fit).")
@click.option("--actor-resource", "actor_resources", multiple=True, metavar="NAME[=N]",
              help="A custom Ray resource each actor asks for (repeatable): pins scoring to "
                   "the nodes that offer it.")
@click.option("--checks", "checks_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Data checks the whole input must pass before anything is scored (exit 5 "
                   "if not): a YAML/JSON file of a spec's validation section, or the project "
                   "file, whose model's section is used.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_state
def batch(state: State, ref: str, inputs: tuple[str, ...], output: str, keys: tuple[str, ...],
          chunk_rows: int, on_error: str, scores: bool, restart: bool, log_sample: float,
          sql_db: str | None, input_format: str | None, device: str | None, engine: str,
          ray_address: str | None, actors: int | None, actor_resources: tuple[str, ...],
          checks_file: str | None, as_json: bool) -> None:
    """Score an input with a registered version, chunk by chunk, into Parquet or a SQL table.

    Rows are validated as the server validates requests; refused rows go to _errors/ in the
    output folder (or TABLE_errors) with the reason. A rerun after a kill goes on after the
    last finished chunk; a run over an output of another version or input is refused unless
    --restart. The run is listed by 'modelyard runs'. Through a server (MODELYARD_URL, a key
    that may train) the model comes down from it and the run is recorded there; --engine ray,
    --log-sample and --output precomputed:registry need the database itself.

    With --checks, the input is first read once through the data checks that a pass over its
    chunks can decide (rows, missing values, dtypes, ranges, allowed values, unique keys,
    freshness); a failed one stops the run before anything is written (exit 5), one line per
    failed check. Volume, shift, schema and Great Expectations checks run before training only.

    \b
    modelyard batch fraud@production -i 'data/2026-12-*.parquet' -o scores/ --key id
    modelyard batch fraud:3 -i 'sql:SELECT * FROM tx ORDER BY id' --sql-db postgresql://db/app \\
        -o sql:fraud_scores --key id
    modelyard batch fraud@production -i 's3://lake/tx/*.parquet' -o s3://lake/scores/ \\
        --key id --engine ray --ray-address ray://head:10001 --actors 8
    """
    import modelyard.precompute.sink  # noqa: F401  (registers --output precomputed:STORE)
    from modelyard.batch import BatchJob, score
    from modelyard.batch.ray_engine import parse_resources
    from modelyard.cli.progress import RowProgress

    checks = None
    if checks_file is not None:
        from pathlib import Path

        from modelyard.batch.checks import TRAINING_ONLY, load_checks
        from modelyard.registry.rows import parse_ref

        checks = load_checks(Path(checks_file), parse_ref(ref)[0])
        skipped = [name for name in TRAINING_ONLY if getattr(checks, name)]
        if skipped and not as_json:
            click.echo(f"note: {', '.join(skipped)} check(s) run before training only; not on "
                       "a batch input", err=True)
    job = BatchJob(ref, inputs if len(inputs) > 1 else inputs[0], output, keys, chunk_rows,
                   "fail" if on_error == "fail" else "skip", scores, restart, log_sample, sql_db,
                   input_format, device, engine, ray_address=ray_address, actors=actors,
                   actor_resources=parse_resources(actor_resources), checks=checks)
    if engine == "ray":
        _quiet_ray_data()
    registry = state.registry()
    if state.remote:
        _through_a_server(job)
    registry.check_store()  # an unreachable store (or server) fails now, not mid-run
    with RowProgress(live_console(quiet_unless_tty=as_json), ref) as progress:
        summary = score(job, registry, on_chunk=progress)
    if as_json:
        print_json(summary.to_dict())
        return
    print_fields(_shown(summary.to_dict()), title=f"{summary.model}:{summary.version} "
                 f"{'already complete' if summary.run_id is None else summary.status}")


def _through_a_server(job: BatchJob) -> None:
    """Refuse, in one line before any work, what a batch run through a server cannot do: the
    parts that write the registry database or read the store directly."""
    needs = [what for what, used in (
        ("--engine ray (the cluster reads the artifact store itself)", job.engine != "local"),
        ("--log-sample (it writes the prediction log)", job.log_sample > 0),
        ("--output precomputed:registry (it writes the registry database)",
         str(job.output).startswith("precomputed:registry"))) if used]
    if needs:
        raise ConfigError(f"{' and '.join(needs)} cannot act through a server: run it where the "
                          "registry database is reachable, without MODELYARD_URL or --server")


def _quiet_ray_data() -> None:
    """Ray Data's own progress lines off the terminal: the command shows its progress and
    summary, and Ray Data's errors still print. (Set after importing it: its
    import configures its loggers.)"""
    import logging

    try:
        import ray.data  # noqa: F401
    except ImportError:
        return  # the engine says what to install
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _shown(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's fields worth a line each."""
    return {"run": summary["run_id"], "rows": f"{summary['rows']:,}",
            "errors": f"{summary['errors']:,}" + (f" in {summary['errors_location']}"
                                                  if summary["errors"] else ""),
            "output": summary["output"], "chunks": summary["chunks"],
            "resumed": f"{summary['resumed_chunks']} chunks done before"
            if summary["resumed_chunks"] else None,
            "took": f"{summary['duration_s']:.2f} s",
            "rate": f"{summary['rows_per_s']:,.0f} rows/s" if summary["rows_per_s"] else None,
            "logged": summary["logged"] or None}


__all__ = ["batch"]
