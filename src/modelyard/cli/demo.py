"""``modelyard demo``: train, gate, register and promote the three example models in one go.

The examples are a small product: fraud scoring (scikit-learn on CSV batches), digit reading (a
PyTorch CNN) and ticket routing (a Keras text model). The demo writes the first fraud batch if
there is none, runs every model through the same pipeline into the current registry, and ends
with commands to try next. Running it again is fine: each model either gets a new version or is
kept as it is by its champion gate, and both are normal outcomes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelyard.cli.output import console, fmt_duration, fmt_metrics, print_table, report_error
from modelyard.cli.params import PORT
from modelyard.cli.progress import Outcome, describe, train_with_progress
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from modelyard.registry import Registry

_DEFAULT_PROJECT = Path("examples") / "modelyard.yaml"


@click.command(short_help="Train and promote the three example models.")
@click.option("--project", "-p", type=click.Path(dir_okay=False), default=None,
              help=f"The examples' project file (default: {_DEFAULT_PROJECT}, here or in the "
                   "modelyard source tree).")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Serve the models afterwards (until Ctrl-C) and print a curl for each.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=8000, show_default=True, type=PORT, help="Port to serve on.")
@click.option("--heal", is_flag=True,
              help="Then let the fraud model's world drift: modelyard detects the drift, "
                   "retrains, canaries and promotes the new version by itself.")
@click.option("--model", "only", multiple=True, metavar="NAME",
              help="Train only this example model (repeatable; default: all three).")
@pass_state
@click.pass_context
def demo(ctx: click.Context, state: State, project: str | None, serve: bool, host: str,
         port: int, heal: bool, only: tuple[str, ...]) -> None:
    """Train and promote the three example models (scikit-learn, PyTorch, Keras), then serve them.

    Uses the current registry (./.modelyard unless --home/--db say otherwise). Safe to run
    again: a model either gets a new version or its gate keeps production as it is. With
    --heal, the fraud model's traffic then drifts and modelyard closes the loop with no human
    step: drift check, retraining, gate, canary with analysis on fed-back labels, promotion,
    and the audit trail of it all. With --serve (the default) it ends by serving the models on
    one server until Ctrl-C.
    """
    from modelyard.spec import load_project

    path = find_project(project)
    out = console()
    started = time.perf_counter()
    generated = ensure_fraud_data(path.parent)
    if generated is not None:
        out.print(f"generated the first fraud batch: {_rel(generated)}", markup=False)
    specs = load_project(path)
    unknown = sorted(set(only) - set(specs))
    if unknown:
        raise ConfigError(f"no example model {', '.join(unknown)}; the examples are "
                          f"{', '.join(specs)}")
    if heal and "fraud" not in specs:
        raise ConfigError(f"--heal needs the fraud example in {path}")
    if only:
        specs = {name: spec for name, spec in specs.items() if name in only or
                 (heal and name == "fraud")}
    registry = state.local_registry()
    out.print(f"registry: {_safe_url(registry.settings.db_url)}\n", markup=False)
    outcomes = []
    for spec in specs.values():
        # the demo promotes what passes (as its README says); 'modelyard train' would start
        # the rollout each example declares, which needs a server to progress
        outcome = train_with_progress(spec, registry, out, trigger="demo",
                                      promote=spec.gate.promote)
        outcomes.append(outcome)
        for line in describe(outcome):
            out.print(line)
        out.print()
    _summary(outcomes, registry)
    out.print(f"\ndemo took {fmt_duration(time.perf_counter() - started)}")
    _next_steps(path.parent, state, out)
    failed = [o.error for o in outcomes if o.status == "failed" and o.error is not None]
    for err in failed:
        report_error(err)
    if failed:
        ctx.exit(failed[0].exit_code)
    if heal:
        from modelyard.cli.demo_heal import heal as run_heal

        if not run_heal(path.parent, specs["fraud"], registry, state.settings(), out):
            ctx.exit(1)
    if serve:
        _serve(path.parent, registry, state, out, host, port)


def _serve(examples: Path, registry: Registry, state: State, out: Console, host: str,
           port: int) -> None:
    """Serve the promoted models, after printing one working curl per model."""
    import json

    from modelyard.serving.server import serve

    requests = registry.settings.home / "demo-requests"
    requests.mkdir(parents=True, exist_ok=True)
    out.print(f"\n[bold]serving on http://{host}:{port}[/bold] (Ctrl-C stops it); "
              "once it reports 'startup complete', try:")
    for model, key in (("fraud", "records"), ("digits", "instances"), ("tickets", "instances")):
        example = examples / model / "example_input.json"
        if not example.is_file():
            continue
        body = requests / f"{model}.json"
        body.write_text(json.dumps({key: json.loads(example.read_text())}))
        scores = "?scores=true" if model != "digits" else ""
        out.print(f"  curl -s -X POST http://{host}:{port}/v1/models/{model}/predict{scores} "
                  f"-H 'content-type: application/json' -d @{_rel(body)}",
                  highlight=False, soft_wrap=True, markup=False)
    out.print(f"  curl -s http://{host}:{port}/v2/models/tickets   [dim](Open Inference "
              f"Protocol metadata; metrics at /metrics, API docs at /docs)[/dim]",
              highlight=False, soft_wrap=True)
    serve(host, port, settings=state.settings(), log_level="info")


def find_project(project: str | None) -> Path:
    """The project file: as given, else ``examples/modelyard.yaml`` here or in the source tree."""
    if project is not None:
        path = Path(project)
        if not path.is_file():
            raise ConfigError(f"no project file {project}; pass --project examples/modelyard.yaml")
        return path
    here = _DEFAULT_PROJECT
    source_tree = Path(__file__).resolve().parents[3] / _DEFAULT_PROJECT  # editable installs
    for candidate in (here, source_tree):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {_DEFAULT_PROJECT} here; run the demo from a modelyard checkout or pass "
        "--project PATH/TO/examples/modelyard.yaml"
    )


def ensure_fraud_data(examples: Path) -> Path | None:
    """Write ``fraud/data/batch-000.csv`` with the example's generator if no batch exists yet."""
    generator = examples / "fraud" / "generate.py"
    data = examples / "fraud" / "data"
    if not generator.is_file() or any(data.glob("*.csv")):
        return None
    from modelyard.entrypoints import import_file

    module = import_file(generator)
    return Path(module.write_batch(data, batch=0, rows=5000, drift=0.0))


def _summary(outcomes: list[Outcome], registry: Registry) -> None:
    from modelyard.errors import NotFoundError

    rows = []
    for o in outcomes:
        version = o.result.version if o.result is not None else None
        try:
            production = registry.resolve(f"{o.model}@production")
            alias, flavor = f"production=v{production.version}", production.flavor
        except NotFoundError:
            alias, flavor = "", ""
        outcome = {"promoted": "new version, promoted", "registered": "new version",
                   "rollout": "new version, rolling out",
                   "rejected": "kept production (gate)", "failed": "failed",
                   "unchanged": "unchanged: nothing registered"}[o.status]
        rows.append([o.model, f"v{version.version}" if version else "-",
                     version.flavor if version else flavor, fmt_metrics(o.metrics), alias,
                     outcome])
    print_table(["model", "version", "flavor", "metrics", "alias", "outcome"], rows,
                title="summary")


def _next_steps(examples: Path, state: State, out: Console) -> None:
    ex = _rel(examples)
    my = f"modelyard {state.global_args()}"
    steps = [
        ("see the registry", f"{my}models"),
        ("a model's versions", f"{my}versions fraud"),
        ("one version's lineage", f"{my}show fraud@production"),
        ("predict in-process", f"{my}predict fraud@production --input {ex}/fraud/example_input.json"
                               " --scores"),
        ("", f"{my}predict digits --input {ex}/digits/example_input.json"),
        ("", f"{my}predict tickets --input {ex}/tickets/example_input.json --scores"),
        ("new, drifted data", f"python {ex}/fraud/generate.py --drift 0.6"),
        ("retrain; the gate decides", f"{my}train fraud --project {ex}/modelyard.yaml"),
        ("who moved production", f"{my}history fraud"),
        ("undo the last promotion", f"{my}rollback fraud"),
    ]
    out.print("\n[bold]what to try next[/bold]")
    width = max(len(label) for label, _ in steps)
    for label, command in steps:
        out.print(f"  [dim]{label:<{width}}[/dim]  {command}", highlight=False, soft_wrap=True)


def _safe_url(url: str) -> str:
    """The database URL with any password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _rel(path: Path) -> str:
    """``path`` relative to the current folder when it is below it, else absolute."""
    try:
        return os.path.relpath(path.resolve(), Path.cwd()) if path.resolve().is_relative_to(
            Path.cwd().resolve()) else str(path.resolve())
    except ValueError:
        return str(path)


__all__ = ["demo", "ensure_fraud_data", "find_project"]
