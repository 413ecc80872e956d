"""``modelyard federate``: train a model across sites that keep their data, with Flower.

``modelyard federate MODEL`` runs the server side (a SuperLink, modelyard's ServerApp: each
round's global model gated and registered); ``modelyard federate client MODEL --data FILE``
runs a site (a SuperNode training on FILE, which never leaves the site).
"""

from __future__ import annotations

import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from modelyard.cli.output import console, print_json
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError, FederationError, NotFoundError

_TLS_NOTE = ("modelyard federate runs Flower without TLS for now: pass --insecure to accept "
             "unencrypted traffic between the SuperLink and the sites (a private network or "
             "loopback only)")


class _Federate(click.Group):
    """``federate MODEL`` means ``federate run MODEL``; ``federate client ...`` is a site."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_Federate, short_help="Train across sites that keep their data (Flower).")
def federate() -> None:
    """Train MODEL across sites that keep their data, with Flower: the sites send weights and
    metrics, never rows.

    'modelyard federate MODEL --insecure' starts the server (a SuperLink) and runs the rounds:
    each round's global model is scored, passed through the model's gate and registered as a
    new version. At each site, 'modelyard federate client MODEL --data FILE --server HOST:PORT
    --insecure' trains on FILE. The model declares a federated section in modelyard.yaml
    (federated: {estimator: SGDClassifier, rounds: 3, min_clients: 2}).
    """


@federate.command("run", short_help="Run the server side: rounds, gate, registry.")
@click.argument("model")
@click.option("--project", "-p", default="modelyard.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The project file declaring the model.")
@click.option("--rounds", type=click.IntRange(1, 1000), help="Rounds to run (default: the "
              "spec's federated.rounds).")
@click.option("--min-clients", type=click.IntRange(1, 10_000), help="Sites each round needs "
              "(default: the spec's federated.min_clients).")
@click.option("--round-timeout", type=click.FloatRange(1, 86_400), metavar="SECONDS",
              help="How long a round waits for the sites (default: the spec's).")
@click.option("--address", default="127.0.0.1:9092", show_default=True, metavar="HOST:PORT",
              help="Where the SuperLink listens for sites (0.0.0.0:9092 for other machines).")
@click.option("--insecure", is_flag=True, help="Accept unencrypted Flower traffic (required: "
              "TLS is not supported yet).")
@click.option("--json", "as_json", is_flag=True, help="Print the finished run as JSON.")
@pass_state
def run_server(state: State, model: str, project: str, rounds: int | None,
               min_clients: int | None, round_timeout: float | None, address: str,
               insecure: bool, as_json: bool) -> None:
    """Run the server side of federated training for MODEL until its last round.

    Exit codes: 0 when a round registered a version, 12 when no round passed the gate, 23 when
    the federation failed (the SuperLink, too few sites, a site's error), 2 for bad input.
    """
    from modelyard.federated.deployment import parse_address
    from modelyard.federated.server import Plan
    from modelyard.federated.server import federate as run_federation
    from modelyard.spec import load_project

    state.require_local()  # the ServerApp registers versions in the database itself
    if not insecure:
        raise ConfigError(_TLS_NOTE)
    parse_address(address)
    specs = load_project(project)
    if model not in specs:
        raise NotFoundError(f"{project} declares no model {model!r}; it declares: "
                            f"{', '.join(sorted(specs)) or 'none'}")
    registry = state.local_registry()
    out = console(stderr=as_json)
    _stop_on_sigterm()
    plan = Plan(specs[model], Path(project), address, rounds, min_clients, round_timeout)
    run = run_federation(plan, registry, state.settings(),
                         progress=lambda line: out.print(line, markup=False, soft_wrap=True))
    if as_json:
        print_json(_summary(run))
        return
    rounds_done = (run.details or {}).get("federated", {}).get("rounds", [])
    registered = [r for r in rounds_done if r.get("version") is not None]
    out.print(f"federated run {run.id[:8]}: {len(rounds_done)} round(s), "
              f"{len(registered)} registered; latest {model}:{run.version}", markup=False)


@federate.command("client", short_help="Run a site: train on local data, send weights only.")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="This site's rows: a CSV or Parquet file (with the model's target column).")
@click.option("--server", "server", default="127.0.0.1:9092", show_default=True,
              metavar="HOST:PORT", help="The SuperLink 'modelyard federate MODEL' runs.")
@click.option("--site", help="This site's name in the registry (default: the host name).")
@click.option("--port", type=click.IntRange(1, 65535), help="Local port for the Flower app "
              "runtime (default: a free one).")
@click.option("--insecure", is_flag=True, help="Accept unencrypted Flower traffic (required: "
              "TLS is not supported yet).")
def client(model: str, data: str, server: str, site: str | None, port: int | None,
           insecure: bool) -> None:
    """Take part in federated training of MODEL as a site, until stopped (Ctrl-C).

    Starts a Flower SuperNode that connects to the SuperLink at --server; each round it trains
    the global model on --data and sends back weights, row counts and metrics, never rows.
    """
    from modelyard.federated.deployment import SuperNode

    if not insecure:
        raise ConfigError(_TLS_NOTE)
    if not Path(data).is_file():
        raise ConfigError(f"--data {data}: no such file")
    name = site or socket.gethostname()
    _stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="modelyard-site-") as tmp:
        node = SuperNode(server, model=model, data=Path(data), site=name, work=Path(tmp),
                         port=port)
        console().print(f"site {name}: training {model} on {data} for {server} (Ctrl-C stops)",
                        markup=False)
        try:
            code = node.process.wait()
        finally:
            node.stop()
        if code != 0:
            raise FederationError(f"the Flower SuperNode exited with code {code}: "
                                  f"{node.tail(1)}")


def _stop_on_sigterm() -> None:
    """A SIGTERM ends this command as Ctrl-C does, so the Flower processes it started stop too
    (they run in their own process groups, where no signal to this one reaches them)."""

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, stop)


def _summary(run: Any) -> dict[str, Any]:
    return {"run": run.id, "status": run.status, "version": run.version,
            "promoted": run.promoted, "metrics": run.metrics,
            "rounds": (run.details or {}).get("federated", {}).get("rounds", [])}


__all__ = ["federate"]
