"""``modelyard register``: bring a model trained elsewhere into the registry as a version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from modelyard.cli.output import print_json
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError, InputError

#: sample file suffixes and how each is read (pandas for tables, numpy without pickles).
_SAMPLE_FORMATS = (".csv", ".parquet", ".json", ".npy")


@click.command(short_help="Register an existing model file (pickle, .json, .pt2, .keras, ...).")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--flavor", default="auto", show_default=True,
              help="The adapter to store it with; auto picks it from the loaded model's type.")
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), metavar="SAMPLE",
              help="Sample input rows (CSV, Parquet, JSON records or .npy): the signature, "
                   "reference statistics for drift and the data lineage come from it.")
@click.option("--target", metavar="COLUMN",
              help="A label column in --data (left out of the inputs; tells classification "
                   "from regression).")
@click.option("--metrics", "metric_args", multiple=True, metavar="NAME=VALUE",
              help="A metric measured elsewhere, recorded with the version (repeatable).")
@click.option("--description", default="", help="What the model is for.")
@click.option("--trust", is_flag=True,
              help="Load this one pickle/joblib file although loading a pickle runs the code "
                   "it names: only for a file you made or whose source you trust. The file's "
                   "sha256 is audited (version.trust) and kept in the version's meta; the "
                   "version itself is stored in its flavor's safe format, not as a pickle.")
@click.option("--semver", metavar="major|minor|patch|X.Y.Z",
              help="Label the new version: bump the model's highest label, or give one "
                   "(1.4.0, 2.0.0-rc.1); a label taken by another version exits 4.")
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
@pass_state
def register(state: State, name: str, path: Path, flavor: str, data: Path | None,
             target: str | None, metric_args: tuple[str, ...], description: str, trust: bool,
             semver: str | None, as_json: bool) -> None:
    """Register the model in PATH as a new version of NAME, like a trained one.

    PATH is a pickle/joblib file of a scikit-learn, XGBoost or LightGBM model, an XGBoost
    .json/.ubj, a LightGBM .txt, a TorchScript .pt/.ts or torch.export .pt2, a Keras .keras, an
    .onnx or .skops file, or a folder an adapter saved. A pickle is refused (exit 7) unless
    --trust is given: see --trust.

    \b
    modelyard register churn model.joblib --data sample.csv --target churned --trust
    modelyard register ranker ranker.json --data sample.parquet --metrics auc=0.91
    """
    from modelyard.pipeline.bring import register_model

    registry = state.local_registry()
    sample, labels = read_sample(data, target) if data is not None else (None, None)
    version = register_model(
        registry, name, path, flavor=flavor, sample=sample, labels=labels,
        metrics=parse_metrics(metric_args), description=description, trust=trust,
        semver=semver)
    if as_json:
        print_json(version.to_dict())
        return
    source = version.meta.get("source", {})
    label = f" = {version.model}@{version.semver}" if version.semver else ""
    click.echo(f"registered {version.ref}{label} ({version.flavor}, {version.meta.get('task')})"
               + (f"; trusted pickle sha256 {source['sha256'][:12]} audited"
                  if source.get("trusted") else ""))


def parse_metrics(args: tuple[str, ...]) -> dict[str, float]:
    """``NAME=VALUE`` pairs as floats; :class:`ConfigError` names a malformed one."""
    metrics: dict[str, float] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            metrics[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--metrics {arg!r}: write NAME=NUMBER, e.g. auc=0.91") from None
    return metrics


def read_sample(path: Path, target: str | None = None) -> tuple[Any, Any]:
    """Input rows (and labels from ``target``) from a CSV, Parquet, JSON or ``.npy`` file."""
    import numpy as np
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            frame: Any = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".json":
            frame = pd.read_json(path, orient="records")
        else:
            raise InputError(f"--data {path.name}: give a {', '.join(_SAMPLE_FORMATS)} file")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read --data {path.name}: {exc}") from None
    if target is None:
        return frame, None
    if not isinstance(frame, pd.DataFrame) or target not in frame.columns:
        raise InputError(f"--target {target!r} is not a column of {path.name}")
    return frame.drop(columns=[target]), frame[target]


__all__ = ["parse_metrics", "read_sample", "register"]
