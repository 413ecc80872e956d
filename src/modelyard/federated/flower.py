"""modelyard's Flower app: the ServerApp and ClientApp a SuperLink and its SuperNodes run.

The only module that imports ``flwr``. ``modelyard federate`` submits a run of this app to the
SuperLink it starts (the run config names the project, the model, the registry run and the
rounds); each ``modelyard federate client`` is a SuperNode whose node config names its data
file. Every message carries the :class:`~modelyard.federated.site.Task` as JSON; a site answers
with weights (``arrays``), its row count and metrics (``metrics``) and its name (``config``),
or with ``config["error"]``: one line the server reports.

A round: the server sends the global weights to train, averages what comes back by rows,
then gates and registers the average (:class:`~modelyard.federated.rounds.Federation`). With a
holdout of its own (the spec's ``data``) the server scores it there, and the sites' metrics are
those of their own updates on their own holdouts; without one, the average goes back to every
site to be scored on its holdout (an evaluate message), and the gate sees those scores.
Without a server holdout each site first describes its data (a query: its feature names, class
labels and row count, never a row), to agree on the columns and the classes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from modelyard.errors import FederationError, GateFailed, ModelyardError
from modelyard.federated import site
from modelyard.federated.rounds import (
    Federation,
    SiteReport,
    probe,
    server_holdout,
    weighted_average,
)

log = logging.getLogger(__name__)

server_app = ServerApp()
client_app = ClientApp()

#: seconds between looks for SuperNodes while waiting for enough to join.
_POLL_S = 0.5


# -- the server ---------------------------------------------------------------------------------
@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.spec import load_project

    with Registry.open(Settings.from_env()) as registry:
        run_id = str(config["run-id"])
        try:
            spec = load_project(str(config["project"]))[str(config["model"])]
            federation = Federation(spec, registry, run_id, holdout=server_holdout(spec),
                                    actor=str(config["actor"]) or None)
        except ModelyardError as exc:  # recorded at once: the CLI would only see Flower's end
            registry.finish_run(run_id, status="failed", failure_reason=str(exc),
                                logs=f"failed: {exc}")
            raise
        try:
            _drive(grid, federation, rounds=int(config["rounds"]),
                   min_clients=int(config["min-clients"]),
                   timeout=float(config["round-timeout"]))
        except ModelyardError as exc:
            federation.fail(str(exc))
            raise
        except Exception as exc:
            federation.fail(f"{type(exc).__name__}: {exc}")
            raise
        try:
            federation.finish()
        except GateFailed as exc:  # recorded as rejected; `modelyard federate` reports it
            log.warning("%s", exc)


def _drive(grid: Grid, federation: Federation, *, rounds: int, min_clients: int,
           timeout: float) -> None:
    nodes = _wait_for_nodes(grid, min_clients, timeout)
    schemas: dict[str, Any] = {}
    if federation.holdout is None:  # else the server's holdout has the columns and classes
        answers = _ask(grid, nodes, MessageType.QUERY, probe(federation.spec), None, 0,
                       timeout, min_clients, federation.note)
        schemas = {name: json.loads(str(reply.content.config_records["config"]["schema"]))
                   for name, reply in _distinct(answers)}
        nodes = [reply.metadata.src_node_id for _, reply in answers]
    task, weights = federation.start(schemas)
    for number in range(1, rounds + 1):
        federation.note(f"round {number}: training at {len(nodes)} site(s)")
        trained = _ask(grid, nodes, MessageType.TRAIN, task, weights, number, timeout,
                       min_clients, federation.note)
        weights = weighted_average([(_weights(reply), _examples(reply))
                                    for _, reply in trained])
        reports = [SiteReport(name, _examples(reply), _metrics(reply))
                   for name, reply in _distinct(trained)]
        if federation.holdout is None:  # the sites' holdouts are all there is to gate on
            scored = _ask(grid, nodes, MessageType.EVALUATE, task, weights, number, timeout,
                          min_clients, federation.note)
            reports = [SiteReport(name, _examples(reply), _metrics(reply), "global")
                       for name, reply in scored]
        federation.conclude(number, weights, reports)


def _distinct(answers: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
    names = [name for name, _ in answers]
    if len(set(names)) != len(names):
        raise FederationError(f"two SuperNodes call themselves the same site ({names}); give "
                              "each 'modelyard federate client' its own --site")
    return answers


def _wait_for_nodes(grid: Grid, min_clients: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_clients:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of the {min_clients} sites needed joined "
                                  f"within {timeout:g}s; start more with 'modelyard federate "
                                  "client'")
        time.sleep(_POLL_S)


def _ask(grid: Grid, nodes: Sequence[int], kind: str, task: site.Task,
         weights: list[np.ndarray] | None, number: int, timeout: float,
         min_clients: int, note: Callable[[str], None]) -> list[tuple[str, Message]]:
    """Send ``task`` (and ``weights``) to every node; the answers of those that answered, by
    site name. Sites that failed are left out (``note`` says why) while ``min_clients``
    answer; fewer is a :class:`FederationError` naming why."""
    messages = []
    for node in nodes:
        content = RecordDict({"config": ConfigRecord({"task": task.to_json(), "round": number})})
        if weights is not None:
            content["arrays"] = ArrayRecord(numpy_ndarrays=list(weights))
        messages.append(Message(content=content, dst_node_id=node, message_type=kind,
                                group_id=str(number)))
    answered: list[tuple[str, Message]] = []
    problems: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node}: {_last_line(reply.error.reason or '')}")
            continue
        config = reply.content.config_records["config"]
        name = str(config.get("site") or f"node-{node}")
        if config.get("error"):
            problems.append(f"{name}: {config['error']!s}")
        else:
            answered.append((name, reply))
    if problems and len(answered) >= min_clients:
        stage = "describing their data" if kind == MessageType.QUERY else f"round {number}"
        note(f"{stage}: left out {'; '.join(problems)}")
    if len(answered) < min_clients:
        missing = len(nodes) - len(answered) - len(problems)
        why = "; ".join(problems + ([f"{missing} site(s) did not answer within {timeout:g}s"]
                                    if missing else []))
        stage = "describing their data" if kind == MessageType.QUERY else f"round {number}"
        raise FederationError(f"{stage} ({kind}): {len(answered)} of the {min_clients} sites "
                              f"needed answered: {why}")
    return answered


def _weights(reply: Message) -> list[np.ndarray]:
    return list(reply.content.array_records["arrays"].to_numpy_ndarrays())


def _examples(reply: Message) -> int:
    return int(reply.content.metric_records["metrics"]["examples"])  # type: ignore[arg-type]


def _metrics(reply: Message) -> dict[str, float]:
    return {k: float(v) for k, v in  # type: ignore[arg-type]
            reply.content.metric_records["metrics"].items() if k != "examples"}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed without a reason"


# -- a site -------------------------------------------------------------------------------------
_Work = Callable[[site.Task, Any, list[np.ndarray]], tuple[list[np.ndarray] | None, int,
                                                           dict[str, float], dict[str, str]]]


def _answer(message: Message, context: Context, work: _Work) -> Message:
    """Run ``work`` on this site's data; a modelyard error goes back as one line."""
    node = context.node_config
    name = str(node.get("site") or "")
    try:
        task = site.Task.from_json(str(message.content.config_records["config"]["task"]))
        if str(node.get("model") or task.model) != task.model:
            raise FederationError(f"this site trains {node.get('model')}, not {task.model}")
        data = site.load(str(node["data"]), task)
        arrays_in = message.content.array_records
        weights = arrays_in["arrays"].to_numpy_ndarrays() if "arrays" in arrays_in else []
        arrays, examples, metrics, extra = work(task, data, weights)
    except ModelyardError as exc:
        return Message(RecordDict({"config": ConfigRecord({"site": name, "error": str(exc)})}),
                       reply_to=message)
    content = RecordDict({
        "config": ConfigRecord({"site": name, **extra}),
        "metrics": MetricRecord({"examples": examples, **metrics}),
    })
    if arrays is not None:
        content["arrays"] = ArrayRecord(numpy_ndarrays=arrays)
    return Message(content, reply_to=message)


@client_app.query()
def _describe(message: Message, context: Context) -> Message:
    def work(task: site.Task, data: Any, _: list[np.ndarray]) -> Any:
        return None, len(data), {}, {"schema": json.dumps(site.describe(data, task))}

    return _answer(message, context, work)


@client_app.train()
def _train(message: Message, context: Context) -> Message:
    def work(task: site.Task, data: Any, weights: list[np.ndarray]) -> Any:
        update = site.train(task, data, weights)
        return update.weights, update.examples, update.metrics, {}

    return _answer(message, context, work)


@client_app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    def work(task: site.Task, data: Any, weights: list[np.ndarray]) -> Any:
        rows, metrics = site.evaluate(task, data, weights)
        return None, rows, metrics, {}

    return _answer(message, context, work)


__all__ = ["client_app", "server_app"]
