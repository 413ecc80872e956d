"""The ``modelyard`` command: train, version, promote, roll back and query models.

Every command shares the global options ``--home``, ``--db`` and ``--artifacts`` (which override
``MODELYARD_HOME``, ``MODELYARD_DB`` and ``MODELYARD_ARTIFACTS``). Errors modelyard raises on
purpose are caught in one place, :meth:`_Main.invoke`, and printed as one line
``error: <message>`` on stderr with the error's exit code:

====  ==============================================================
0     success (a retrain that found nothing changed says ``unchanged``)
1     an unexpected error (a bug: its traceback is printed), or a server it
      started did not start (its output is shown)
2     bad usage, configuration or input (a number out of range too)
3     unknown model, version, alias or run
4     conflicts with the registry's state (e.g. nothing to roll back to)
5     training data failed validation
6     an optional framework is not installed
7     loading an artifact would need untrusted code or types
8     a requested device is not available
9     an artifact does not match its recorded digest
10    the registry database or artifact store cannot be reached
11    training failed
12    the candidate was rejected by its promotion gate
13    a framework failed while saving, loading or predicting
14    monitoring has too little data yet
15    a server could not answer now (a full queue, a timeout): retry
16    a batch row failed validation under ``batch --on-error fail``
17    ``audit verify`` found the audit chain broken (an event altered, added or removed)
18    an encrypted artifact did not decrypt (wrong or missing key, or altered)
19    a training run was cancelled (``runs cancel``; Ctrl-C of several runs at once)
20    a Ray worker's Python or framework versions differ from this machine's
21    an export was refused: an unsupported part of the model, or parity outside tolerance
22    ``import mlflow``: the MLflow registry is unreachable, the model unknown, or a version
      refused (a flavor that cannot be brought in, or parity outside tolerance)
23    federated training failed (the Flower SuperLink or a site, too few sites, a timeout)
130   interrupted
====  ==============================================================

The README's exit-code table lists the same codes; a test keeps both complete.

Commands import their heavy dependencies (the pipeline, pandas, frameworks) when they run, so
``modelyard --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from modelyard.cli.output import report_error
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError, ModelyardError


class _Main(click.Group):
    """The root group: the one place that turns a ``ModelyardError`` into a line and a code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelyardError as err:
            report_error(err)
            ctx.exit(err.exit_code)
        except OverflowError as exc:
            # a number past what a date, a timer or a database column holds: bad input that
            # slipped past a command's own checks is still one line, never a traceback
            report_error(ConfigError(f"a number is out of range ({exc}); give a smaller one"))
            ctx.exit(ConfigError.exit_code)
        except UnicodeDecodeError as exc:  # likewise a file that is not text
            report_error(ConfigError(f"a file given is not UTF-8 text ({exc.reason} at byte "
                                     f"{exc.start}); save it as UTF-8"))
            ctx.exit(ConfigError.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # the lifecycle's order, not the alphabet's


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"],
                                          "max_content_width": 100})
@click.option("--home", metavar="DIR", help="Registry folder (default ./.modelyard; "
              "env MODELYARD_HOME).")
@click.option("--db", metavar="URL", help="Registry database URL, e.g. "
              "postgresql://user@host/db (env MODELYARD_DB; default SQLite in the home).")
@click.option("--artifacts", metavar="DIR|URL", help="Artifact store: a folder or fsspec URL "
              "(env MODELYARD_ARTIFACTS; default <home>/artifacts).")
@click.option("--server", metavar="URL", envvar="MODELYARD_URL",
              help="Act through this modelyard server's API with the key in "
                   "MODELYARD_API_KEY, instead of opening the registry (env MODELYARD_URL).")
@click.version_option(package_name="modelyard", prog_name="modelyard")
@click.pass_context
def main(ctx: click.Context, home: str | None, db: str | None, artifacts: str | None,
         server: str | None) -> None:
    """One yard for every model: train, version, serve, roll out, watch and retrain.

    Declare models in modelyard.yaml (start with 'modelyard init'), train them with
    'modelyard train NAME', and refer to versions as NAME (its production alias), NAME:3 or
    NAME@alias. Try 'modelyard demo' for a tour with three real models, and
    'modelyard demo --heal' to watch one heal itself when its data drifts.
    """
    ctx.obj = State(home=home, db=db, artifacts=artifacts, server=server or None)


def _register() -> None:
    from modelyard.cli.audit_cmds import audit
    from modelyard.cli.auth_cmds import auth
    from modelyard.cli.batch_cmds import batch
    from modelyard.cli.build_cmds import build
    from modelyard.cli.card_cmds import card
    from modelyard.cli.cost_cmds import cost
    from modelyard.cli.db_cmds import db
    from modelyard.cli.demo import demo
    from modelyard.cli.export_cmds import export
    from modelyard.cli.federate_cmds import federate
    from modelyard.cli.import_cmds import import_group
    from modelyard.cli.lineage_cmds import label, lineage
    from modelyard.cli.monitor_cmds import feedback, monitor
    from modelyard.cli.precompute_cmds import precompute
    from modelyard.cli.predict_cmds import predict
    from modelyard.cli.register_cmds import register
    from modelyard.cli.registry_cmds import (
        history,
        models,
        promote,
        rollback,
        show,
        versions,
    )
    from modelyard.cli.rollout_cmds import deploy, rollout
    from modelyard.cli.runs_cmds import runs
    from modelyard.cli.scheduler_cmds import scheduler
    from modelyard.cli.store_cmds import store
    from modelyard.cli.train_cmds import init, train
    from modelyard.serving.command import serve
    from modelyard.serving.queue.command import consume

    for command in (init, train, register, import_group, models, versions, show, label, lineage,
                    promote, rollback, deploy, rollout, history, runs, audit, predict, batch,
                    precompute, serve, consume, monitor, feedback, cost, export, card, build,
                    federate, demo):
        main.add_command(command)
    main.add_command(scheduler)
    main.add_command(db)
    main.add_command(auth)
    main.add_command(store)


_register()

__all__ = ["State", "main", "pass_state"]
