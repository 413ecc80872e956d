"""The work of one training run, written once for every executor: load the data, validate it,
split it, fingerprint it, stop if nothing changed, then train and evaluate in a child process.

The local executor calls :func:`execute` in the client's process; the Ray executor calls the very
same function inside a Ray task on a worker node, so the data is read where the training runs
(files, fsspec URLs, SQL) and the two executors cannot drift apart. A :class:`RunJob` holds only
plain values (it crosses to a worker pickled); :class:`RunHooks` carry what the executor reports
back (stages, notes) and asks (whether to stop).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import EnvironmentMismatchError
from modelyard.pipeline import child
from modelyard.pipeline.data import load_dataset, split, write_groups, write_split
from modelyard.pipeline.lineage import environment, fingerprint
from modelyard.pipeline.profile import profile
from modelyard.pipeline.validation import check_all
from modelyard.resources import ResourcesSpec
from modelyard.spec import DataSpec, FeaturesSpec, ValidationSpec


@dataclass
class RunJob:
    """Everything one run's work needs, as plain values: it may run on another machine."""

    run_id: str
    data: DataSpec
    validation: ValidationSpec
    #: the child's part; its ``work_dir`` is set where the job runs
    train: child.TrainJob
    stratify: bool
    timeout_s: float
    #: the latest version's data fingerprint when everything else about it is the same as this
    #: run's: equal data then means nothing changed, and nothing is trained
    unchanged_if: str | None = None
    #: the client's :func:`~modelyard.pipeline.lineage.environment`, which a remote worker's
    #: must match before it trains
    environment: dict[str, Any] = field(default_factory=dict)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    retries: int = 0
    #: the spec's ``features`` section: ``data`` then gives entity rows the store completes
    features: FeaturesSpec | None = None
    #: columns the gate's fairness rules compare groups of: kept with the holdout for
    #: evaluation, whether or not they are features
    groups: list[str] = field(default_factory=list)
    #: the batch profiles of the model's last accepted batches, newest first, which the data
    #: checks compare this batch with (:mod:`~modelyard.pipeline.checks`)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Executed:
    """What a run's work produced: the outcome (None when the data was unchanged) and the facts
    about its data and environment that the version records."""

    outcome: child.TrainOutcome | None
    data_fingerprint: str
    reference_stats: dict[str, Any]
    environment: dict[str, Any]
    #: the profile of the batch that passed the data checks, stored with the run
    batch_profile: dict[str, Any] | None = None
    #: the feature service's definition the version records (None: no feature store)
    features: dict[str, Any] | None = None
    #: what the data was read from: files with digests, a query, a function (the lineage)
    data_sources: list[dict[str, Any]] = field(default_factory=list)


def _never() -> str | None:
    return None


def _ignore(_: str) -> None:
    return None


@dataclass
class RunHooks:
    """How the work talks to whoever started it: ``stage`` and ``note`` report, ``stop`` is
    asked whether to stop (a reason, or None to go on)."""

    stage: Callable[[str], None] = _ignore
    note: Callable[[str], None] = _ignore
    stop: Callable[[], str | None] = _never


def execute(job: RunJob, work: Path, hooks: RunHooks) -> Executed:
    """Load, validate, split and fingerprint the data, then train and evaluate in a child
    process with ``work`` as its folder (``work/train.log``, ``work/artifact``)."""
    work.mkdir(parents=True, exist_ok=True)
    hooks.stage("load data")
    definition = None
    if job.features is None:
        dataset = load_dataset(job.data, Path(job.train.root), job.groups)
    else:
        from modelyard.pipeline.feature_data import load_feature_dataset

        loaded = load_feature_dataset(job.data, job.features, Path(job.train.root), job.groups)
        dataset, definition = loaded.dataset, loaded.definition
        hooks.note(f"features of service {job.features.service} as of each row's "
                   f"{job.features.timestamp} ({definition['digest']}); "
                   f"{loaded.unknown} row(s) with no feature value at their time left out")
    hooks.note(f"loaded {len(dataset)} rows, features: {', '.join(dataset.feature_names[:20])}")
    hooks.stage("validate")
    accepted = check_all(dataset, job.validation, history=job.history,
                         root=Path(job.train.root), target=job.data.target)
    train_set, holdout = split(dataset, job.data.holdout, job.data.seed, job.stratify)
    hooks.note(f"train {len(train_set)} rows, holdout {len(holdout)} rows")
    # a group column that is no feature still decides the gate: its changes count as new data
    extra = dataset.extra_groups()
    if extra is not None:
        hooks.note(f"kept for fairness rules only, not trained on: {', '.join(extra.columns)}")
    data_fingerprint = fingerprint(dataset.X, dataset.y)
    if extra is not None:
        data_fingerprint = hashlib.sha256(
            (data_fingerprint + fingerprint(extra)).encode()).hexdigest()
    here = environment()
    if job.unchanged_if is not None and job.unchanged_if == data_fingerprint:
        return Executed(None, data_fingerprint, {}, here, accepted, definition,
                        dataset.sources)
    reference = profile(train_set.X)
    hooks.stage("train")
    write_split(train_set.X, train_set.y, work / "train")
    write_split(holdout.X, holdout.y, work / "holdout")
    write_groups(holdout.groups, work / "holdout")
    sources = dataset.sources
    del dataset, train_set, holdout
    train = dataclasses.replace(job.train, work_dir=str(work))
    outcome = child.train_in_child(train, timeout_s=job.timeout_s, run_id=job.run_id,
                                   on_stage=hooks.stage, should_stop=hooks.stop)
    return Executed(outcome, data_fingerprint, reference, here, accepted, definition, sources)


def environment_differences(client: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    """What differs between two :func:`~modelyard.pipeline.lineage.environment` s that matters
    to a model: the Python version and the ML packages' versions (not the platform)."""
    found = []
    if client.get("python") != worker.get("python"):
        found.append(f"python {client.get('python')} on the client, "
                     f"{worker.get('python')} on the worker")
    mine, other = client.get("packages") or {}, worker.get("packages") or {}
    for name in sorted(set(mine) | set(other)):
        if mine.get(name) != other.get(name):
            found.append(f"{name} {mine.get(name) or 'not installed'} on the client, "
                         f"{other.get(name) or 'not installed'} on the worker")
    return found


def check_environment(expected: dict[str, Any], where: str) -> None:
    """Raise :class:`EnvironmentMismatchError` when this process's environment differs from
    ``expected`` (the client's) in Python or ML package versions; ``where`` names this place."""
    differences = environment_differences(expected, environment())
    if differences:
        raise EnvironmentMismatchError(
            f"the environment on {where} differs from the client's: {'; '.join(differences)}; "
            "install the same versions on the cluster's nodes (the image, or a Ray runtime_env) "
            "and train again")


__all__ = ["Executed", "RunHooks", "RunJob", "check_environment", "environment_differences",
           "execute"]
