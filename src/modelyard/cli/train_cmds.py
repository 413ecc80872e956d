"""``modelyard init`` (a starter project) and ``modelyard train`` (the pipeline, with progress)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelyard.cli.output import console, live_console, print_json, report_error
from modelyard.cli.progress import describe, train_many_with_progress, train_with_progress
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError, ConflictError, ForbiddenError, NotFoundError
from modelyard.registry.policy import Grant, decide
from modelyard.registry.semver import BUMPS, parse_semver

if TYPE_CHECKING:
    from rich.console import Console

    from modelyard.cli.progress import Outcome, RolloutStarter
    from modelyard.executors import ExecutorOptions
    from modelyard.pipeline.run_registry import RunRegistry
    from modelyard.spec import Spec
    from modelyard.types import Executor

STARTER_YAML = """\
# modelyard.yaml: declare each model once; modelyard trains, gates, versions and serves it.
# Train with:  modelyard train iris      (then: modelyard versions iris)
# Paths are relative to this file's folder.
models:
  iris:
    description: Tells iris species apart from petal and sepal sizes.
    train: train.py:train            # def train(X, y, params) -> fitted model
    data:
      function: train.py:load        # returns (X, y) or a DataFrame with the target column
      # path: "data/*.csv"           # ...or files (CSV/Parquet, a glob picks up new ones)
      # target: species              #    with the label column named here
      holdout: 0.2                   # share of rows kept aside to evaluate and gate
    params: {max_iter: 500}          # passed to train() as params
    validation:
      min_rows: 50                   # refuse to train on less
    metrics: [accuracy, f1_macro]
    gate:
      min: {accuracy: 0.8}                          # an absolute floor
      champion: {metric: accuracy, max_drop: 0.0}   # and never worse than production
    serving:
      device: auto                   # cpu, cuda:0, or auto (a GPU if the framework has one)
    # rollout: {strategy: canary, steps: [10, 50, 100]}
    # retrain: {schedule: "0 3 * * *"}
"""

STARTER_TRAIN = '''\
"""A starter model for modelyard: replace load() and train() with your own.

train() may return a scikit-learn, XGBoost, LightGBM, PyTorch or Keras model; modelyard picks
the matching adapter from its type.
"""

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def load():
    """The training data: features X (a DataFrame) and labels y."""
    data = load_iris(as_frame=True)
    X = data.data
    X.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    y = data.target.map(dict(enumerate(data.target_names)))
    return X, y


def train(X, y, params):
    """Fit and return the model."""
    return LogisticRegression(max_iter=int(params.get("max_iter", 500))).fit(X, y)
'''


@click.command(short_help="Write a starter modelyard.yaml and train.py here.")
def init() -> None:
    """Write a starter modelyard.yaml and train.py into the current folder.

    Never overwrites: if either file exists, nothing is written.
    """
    files = {Path("modelyard.yaml"): STARTER_YAML, Path("train.py"): STARTER_TRAIN}
    taken = [str(p) for p in files if p.exists()]
    if taken:
        raise ConflictError(
            f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''} here; "
            "init never overwrites: run it in an empty folder"
        )
    for path, text in files.items():
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path} here: {exc.strerror or exc}") from None
    out = console()
    out.print("wrote modelyard.yaml and train.py")
    out.print("next: modelyard train iris   "
              "(needs scikit-learn: pip install 'modelyard[sklearn]')", markup=False)


@click.command(short_help="Train, gate, register and promote (or roll out) models.")
@click.argument("names", nargs=-1, metavar="[MODEL]...")
@click.option("--all", "all_models", is_flag=True, help="Train every model the project declares.")
@click.option("--project", "-p", default="modelyard.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The project file declaring the models.")
@click.option("--no-promote", is_flag=True,
              help="Register a candidate that passes its gate, but leave production alone.")
@click.option("--promote", "promote_now", is_flag=True,
              help="Move production to a candidate that passes its gate now, skipping the "
                   "spec's rollout (even where its gate says promote: false).")
@click.option("--no-rollout", is_flag=True,
              help="Skip the spec's rollout: where the spec promotes, move production now.")
@click.option("--force", is_flag=True, help="Train and register even when data, code, params, "
              "spec and packages equal the latest version's.")
@click.option("--executor", "executor_name", default=None, metavar="NAME",
              help="Where the runs execute: local or ray (default: each spec's executor).")
@click.option("--ray-address", envvar="MODELYARD_RAY_ADDRESS", default=None, metavar="ADDRESS",
              help="The Ray cluster to run on (HOST:PORT or ray://HOST:10001; env "
                   "MODELYARD_RAY_ADDRESS; default RAY_ADDRESS, else a Ray started here).")
@click.option("--semver", metavar="major|minor|patch|X.Y.Z",
              help="Label each new version: bump the model's highest label, or give one "
                   "(1.4.0, 2.0.0-rc.1); a label taken by another version exits 4.")
@click.option("--json", "as_json", is_flag=True, help="Print each run's outcome as JSON.")
@pass_state
@click.pass_context
def train(ctx: click.Context, state: State, names: tuple[str, ...], all_models: bool,
          project: str, no_promote: bool, promote_now: bool, no_rollout: bool, force: bool,
          executor_name: str | None, ray_address: str | None, semver: str | None,
          as_json: bool) -> None:
    """Train MODEL(s) on fresh data, gate against production, register and promote.

    Each run loads the data, validates it, trains in a separate process, evaluates on a holdout,
    compares with the production version and, if the gate passes, registers a new version.
    Then production moves to it, or, where the spec declares a rollout (rollout.strategy canary,
    blue-green, shadow or ab) and a production version exists, that rollout starts and the
    servers' analysis promotes or rolls it back ('modelyard rollout status MODEL').
    --promote and --no-rollout move production directly instead. When nothing changed since
    the latest version (data, code, params, spec, packages) it says "unchanged: identical to
    MODEL:N" and registers nothing, unless --force. Exits non-zero if any model failed (5: bad
    data, 11: training failed), was rejected by its gate (12), or its rollout could not start
    (4: another rollout of the model is active, or the --semver label is taken).
    --semver labels each new version: major, minor or patch bumps the model's highest label,
    X.Y.Z[-pre] gives it; refer to it as MODEL@X.Y.Z.

    With --executor ray (or executor: ray in a spec) each run executes as a task on the Ray
    cluster with the resources its spec declares, and several models train at once, each with
    its own progress line. Ctrl-C cancels the runs (exit 19: cancelled); 20: a worker's
    Python or framework versions differ from this machine's.

    With MODELYARD_URL (or --server) and a key that may train (MODELYARD_API_KEY), the run
    happens here and is recorded through the server: no database or store credentials. A
    trainer key registers candidates only: a run that would promote or start a rollout needs a
    key that may also deploy (--role trainer,deployer), else it is refused before training.
    """
    from modelyard.executors import ExecutorOptions
    from modelyard.spec import load_project

    given = [flag for flag, on in (("--no-promote", no_promote), ("--promote", promote_now),
                                   ("--no-rollout", no_rollout)) if on]
    if len(given) > 1:
        raise click.UsageError(f"choose one of {' and '.join(given)}")
    if semver is not None and semver not in BUMPS:
        parse_semver(semver)  # a malformed label fails before anything is trained
    specs = load_project(project)
    chosen = _choose(specs, names, all_models, project)
    registry = state.registry()
    executor_names = {executor_name or spec.executor for spec in chosen}
    if state.remote:  # asks the server who the key is: it answers, and it takes the key
        _through_a_server(registry, chosen, executor_names, {
            spec.name: _promote(spec, no_promote, promote_now, no_rollout) for spec in chosen})
    else:
        registry.check_store()  # an unreachable store fails now, not after the training
    deployments = state.deployments()
    out = live_console(quiet_unless_tty=as_json)
    options = ExecutorOptions.from_env(ray_address=ray_address,
                                       artifacts=state.settings().artifacts)
    executors = _executors(executor_names, options)
    runs = [(spec, executors[executor_name or spec.executor],
             _promote(spec, no_promote, promote_now, no_rollout)) for spec in chosen]
    outcomes = _train_runs(runs, registry, out, force=force, deployments=deployments,
                           quiet=as_json, semver=semver)
    if as_json:
        print_json([o.to_dict() for o in outcomes])
    failed = [o.error for o in outcomes if o.error is not None]
    for err in failed:
        report_error(err)
    if failed:
        ctx.exit(failed[0].exit_code)


def _train_runs(runs: list[tuple[Spec, Executor, bool | None]], registry: RunRegistry,
                out: Console, *, force: bool, deployments: RolloutStarter,
                quiet: bool, semver: str | None = None) -> list[Outcome]:
    """Train each run: at once behind a line per model when a cluster runs them, else one
    after another; each model's outcome printed unless ``quiet``."""
    if len(runs) > 1 and any(executor.name != "local" for _, executor, _ in runs):
        outcomes = train_many_with_progress(runs, registry, out, trigger="manual", force=force,
                                            deployments=deployments, semver=semver)
        if not quiet:
            for outcome in outcomes:
                console().print(f"[bold]{outcome.model}[/bold]")
                for line in describe(outcome):
                    console().print(line)
        return outcomes
    outcomes = []
    for spec, executor, promote in runs:
        outcome = train_with_progress(spec, registry, out, trigger="manual", promote=promote,
                                      force=force, executor=executor, deployments=deployments,
                                      semver=semver)
        outcomes.append(outcome)
        if not quiet:
            for line in describe(outcome):
                console().print(line)
    return outcomes


def _through_a_server(registry: Any, specs: list[Spec], executors: set[str],
                      promotes: dict[str, bool | None]) -> None:
    """What a run through a server is refused before it starts: another executor than the
    local one (a cluster stages artifacts in the store, which a server's client does not
    reach), and promoting with a key that may not deploy (:func:`may_go_live`)."""
    if executors != {"local"}:
        raise ConfigError("--executor ray (or executor: ray in a spec) cannot act through a "
                          "server: the cluster stages artifacts in the artifact store; run it "
                          "where the registry is reachable, without MODELYARD_URL or --server")
    may_go_live(registry.whoami(), specs, promotes)


def may_go_live(whoami: dict[str, Any], specs: list[Spec],
                promotes: dict[str, bool | None]) -> None:
    """Refuse, before any training, a run through a server that would move ``production`` or
    start a rollout with a key that may not deploy that model (``trainer`` alone registers
    candidates; ``trainer,deployer`` also promotes them): what to do instead, in one line."""
    held = [Grant(g["role"], g["models"]) for g in whoami.get("grants", ())]
    for spec in specs:
        promote = promotes[spec.name]
        # a graph moves production unless told not to; a trained model as its gate says
        goes_live = promote is not False if spec.graph is not None else (
            promote is True or (promote is None and spec.gate.promote))
        if goes_live and not decide(held, "deploy", spec.name).allowed:
            roles = ",".join(sorted({g.role for g in held})) or "none"
            raise ForbiddenError(
                f"{whoami.get('principal')}'s key ({roles}) may train {spec.name} but not "
                "promote it or start its rollout, which this run would do: train with "
                "--no-promote to register the candidate only, or use a key that also deploys "
                f"(modelyard auth create-key NAME --role trainer,deployer --models "
                f"{spec.name})")


def _executors(names: set[str], options: ExecutorOptions) -> dict[str, Executor]:
    """One executor per name for the whole command (one connection to a cluster); a missing
    framework (Ray) fails here, before any run is recorded."""
    from modelyard.executors import get_executor

    return {name: get_executor(name, options) for name in sorted(names)}


def _promote(spec: Spec, no_promote: bool, promote_now: bool, no_rollout: bool) -> bool | None:
    """``run_pipeline``'s ``promote`` for the flags: False registers only, True moves production
    now, None does what the spec says (its gate's promote, through its rollout)."""
    if no_promote or promote_now:
        return promote_now
    return spec.gate.promote if no_rollout else None


def _choose(specs: dict[str, Spec], names: tuple[str, ...], all_models: bool,
            project: str) -> list[Spec]:
    if all_models and names:
        raise click.UsageError("give model names or --all, not both")
    if all_models:
        if not specs:
            raise NotFoundError(f"{project} declares no models")
        return list(specs.values())
    if not names:
        raise click.UsageError(
            f"name the model(s) to train, or --all; {project} declares: "
            f"{', '.join(specs) or 'none'}"
        )
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise NotFoundError(
            f"{project} declares no model {', '.join(repr(n) for n in unknown)}; "
            f"it declares: {', '.join(specs) or 'none'}"
        )
    return [specs[n] for n in dict.fromkeys(names)]


__all__ = ["STARTER_TRAIN", "STARTER_YAML", "init", "train"]
