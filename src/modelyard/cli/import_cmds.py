"""``modelyard import``: bring the models of another registry in (``import mlflow``)."""

from __future__ import annotations

import os

import click

from modelyard.cli.output import print_json
from modelyard.cli.state import State, pass_state

#: MLflow's own HTTP client retries for minutes; an import says at once that a server is down.
#: Its download progress bars would bury the one line per version.
_MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@click.group(name="import", short_help="Import models from another registry (MLflow).")
def import_group() -> None:
    """Import the models of another registry as modelyard versions."""


@import_group.command(short_help="Import an MLflow model registry's versions, proven equal.")
@click.option("--tracking-uri", required=True, metavar="URI",
              help="MLflow tracking URI: sqlite:///mlflow.db, a store folder, http://host:5000.")
@click.option("--registry-uri", metavar="URI",
              help="MLflow model registry URI, where it is not the tracking URI.")
@click.option("--model", metavar="NAME", help="Import this MLflow model only (default: all).")
@click.option("--all-versions", is_flag=True,
              help="Import every version, oldest first (default: the newest of each model).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--trust", is_flag=True,
              help="Load MLflow artifacts that are pickles (cloudpickle scikit-learn or "
                   "LightGBM models, torch.save models, custom pyfuncs): only for a registry "
                   "you trust. Each file's sha256 is audited (version.trust); the version is "
                   "stored in its flavor's safe format.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@pass_state
def mlflow(state: State, tracking_uri: str, registry_uri: str | None, model: str | None,
           all_versions: bool, dry_run: bool, trust: bool, as_json: bool) -> None:
    """Import MLflow model versions: each becomes a version of the model of the same name.

    Each version keeps its source run's params and metrics, its tags, its signature, and its
    lineage (run id, experiment, tracking URI) in meta.source; MLflow aliases become aliases,
    and the stages Production/Staging the aliases production/staging where no alias says
    otherwise. Every version must answer its MLflow input example like the MLflow-loaded model
    (parity figures are kept as parity_* metrics), else it is refused. Versions imported before
    are skipped. Exit 22: the MLflow registry is unreachable, the model unknown, or a version
    refused; exit 7: a pickle without --trust.

    \b
    modelyard import mlflow --tracking-uri sqlite:///mlflow.db --dry-run
    modelyard import mlflow --tracking-uri http://mlflow:5000 --model churn --all-versions
    """
    from modelyard.pipeline.mlflow_import import import_mlflow

    registry = state.local_registry()
    for key, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)
    report = import_mlflow(
        registry, tracking_uri, registry_uri=registry_uri, model=model,
        all_versions=all_versions, dry_run=dry_run, trust=trust)
    if as_json:
        print_json({"dry_run": dry_run, "aliases": report.aliases,
                    "versions": [{"model": o.model, "version": o.version, "action": o.action,
                                  "ref": o.ref, "detail": o.detail} for o in report.outcomes]})
    else:
        for outcome in report.outcomes:
            click.echo(outcome.line())
        for alias in report.aliases:
            click.echo(f"alias    {alias}")
    if report.refused:
        first = report.refused[0].error
        assert first is not None
        raise type(first)(f"{len(report.refused)} of {len(report.outcomes)} MLflow versions "
                          f"refused; the first: {first}")


__all__ = ["import_group"]
