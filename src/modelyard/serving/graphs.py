"""Serving a composed model: the runner of a ``graph`` version, which answers by calling members.

The catalog gives a ``graph`` version a :class:`GraphRunner` instead of a batching runner. Its
``submit`` runs the graph: each member call goes back through the data plane by the member's
name (``dispatch``), so each member is resolved, routed by its own rollout (canary, shadow,
A/B: a bare member name follows the served alias), validated against its own signature,
batched on its own runner on its own device, counted and logged (under the graph's request id),
exactly as a request for that member alone would be. The answer is a :class:`GraphPrediction`:
the last step's (sequence), the combined (ensemble) or the reassembled rows (switch), with
``steps`` naming each member version that answered (``clf:8(candidate)`` while a rollout sent
it to the candidate); the codecs put them in ``X-Model-Steps``, and the prediction log keeps
them with the graph's answer.

A member's error comes back with its own status and the step named (``step clf: ...``; an
input error's ``loc`` starts with ``["step", "clf"]``), so bad input anywhere in a graph is a
4xx. A graph that reaches itself while answering (a member re-registered into a loop after the
graph was) is refused with 409 instead of recursing.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modelyard.errors import AdapterError, ConflictError, InputError, ModelyardError
from modelyard.graph import (
    Answer,
    EnsembleGraph,
    SequenceGraph,
    Step,
    SwitchGraph,
    choose_routes,
    combine,
    groups,
    parse_ref,
)
from modelyard.predictor import Prediction, Predictor
from modelyard.serving.batching import BatchPolicy
from modelyard.serving.runner import Runner

#: ``dispatch(member, version or None, payload, scores, request_id) -> (answer, step label,
#: prepared input)``: one member call through the data plane (the data plane's ``step``).
Dispatch = Callable[[str, "int | None", Any, bool, "str | None"],
                    Awaitable[tuple[Prediction, str, Any]]]
#: a kind's answer and what the graph's log entry summarises as its input (None: no entry).
Answered = tuple[Prediction, Any]
#: ``(model, alias) -> version`` from the server's registry snapshot (None: no such alias).
AliasLookup = Callable[[str, str], "int | None"]

#: the graphs the current request is inside (outermost first): a graph met again is a loop.
_inside: ContextVar[tuple[str, ...]] = ContextVar("modelyard_graphs_inside", default=())
#: the id of the request a graph answers (the data plane sets it before a composed runner's
#: ``submit``), which its member calls share.
current_request: ContextVar[str | None] = ContextVar("modelyard_request_id", default=None)


@dataclass
class GraphPrediction(Prediction):
    """A graph's answer, with the member versions that made it (``"embed:3"``, ...).

    ``logged``: the input the graph's prediction log entry summarises: the prepared batch of
    the member that took the whole request under the graph's signature (the first step, the
    first member, the router), or None when none did (a switch that split rows by a field:
    then only the members' own entries are logged)."""

    steps: tuple[str, ...] = ()
    logged: Any = None


def in_step(exc: BaseException, member: str) -> ModelyardError:
    """``exc`` from member ``member``, with the same kind and status, its message naming the
    step (an input error's ``loc`` prefixed with ``["step", member]``)."""
    if not isinstance(exc, ModelyardError):
        return AdapterError(f"step {member}: {type(exc).__name__}: {exc}")
    named = copy.copy(exc)
    named.args = (f"step {member}: {exc}",)
    if isinstance(named, InputError):
        named.errors = [{**e, "loc": ["step", member, *e.get("loc", [])]}
                        for e in named.errors]
    return named


# -- payload shapes -----------------------------------------------------------------------------
def count_rows(payload: Any) -> int:
    """Rows in a request's payload (records, columns, one record, rows or an array)."""
    if isinstance(payload, np.ndarray):
        return int(payload.shape[0]) if payload.ndim else 1
    if isinstance(payload, Mapping):
        values = list(payload.values())
        first = values[0] if values else None
        if isinstance(first, list | tuple | np.ndarray):
            return len(first)
        return 1
    if isinstance(payload, list | tuple):
        return len(payload)
    return 1


def field_values(payload: Any, name: str, n: int) -> list[Any]:
    """The values of field ``name`` in each row of ``payload`` (records or columns)."""
    missing = InputError(f"field '{name}' is missing: the graph reads it from each row (send "
                         "records or columns)", [{"loc": [name], "msg": "field required"}])
    if isinstance(payload, Mapping):
        if name not in payload:
            raise missing
        value = payload[name]
        if n == 1 and not isinstance(value, list | tuple | np.ndarray):
            return [value]
        return list(value)
    if isinstance(payload, list | tuple) and payload and all(isinstance(r, Mapping)
                                                             for r in payload):
        if any(name not in r for r in payload):
            raise missing
        return [r[name] for r in payload]
    raise missing


def take(payload: Any, rows: Sequence[int], n: int, drop: str | None = None) -> Any:
    """The rows ``rows`` of ``payload`` in the same form, without field ``drop``."""
    if isinstance(payload, np.ndarray):
        return payload[list(rows)]
    if isinstance(payload, Mapping):
        kept = {k: v for k, v in payload.items() if k != drop}
        if n == 1 and not any(isinstance(v, list | tuple | np.ndarray) for v in kept.values()):
            return kept  # one record
        return {k: np.asarray(v)[list(rows)] if isinstance(v, np.ndarray)
                else [v[i] for i in rows] for k, v in kept.items()}
    if isinstance(payload, list | tuple):
        picked = [payload[i] for i in rows]
        if drop is not None:
            picked = [{k: v for k, v in r.items() if k != drop} if isinstance(r, Mapping) else r
                      for r in picked]
        return picked
    return payload


def feed(step: Step, previous: Prediction, original: Any, n: int, ref: str) -> Any:
    """What ``step`` takes from the previous step's answer (and the request's own fields)."""
    out = previous.scores if step.output == "scores" else previous.predictions
    if out is None:
        raise ConflictError(f"step {ref} takes the previous step's scores, which gives none; "
                            "use output: predictions")
    values = np.asarray(out)
    payload: Any
    if step.columns is not None:
        width = values.shape[1] if values.ndim == 2 else 1
        if width != len(step.columns):
            raise ConflictError(f"step {ref}: the previous step answers {width} values a row, "
                                f"columns names {len(step.columns)}")
        matrix = values.reshape(len(values), -1)
        payload = {c: matrix[:, j] for j, c in enumerate(step.columns)}
    elif step.input_field is not None:
        payload = {step.input_field: values}
    else:
        return values if values.ndim > 1 else values.reshape(-1, 1)
    for name in step.pass_through:
        payload[name] = field_values(original, name, n)
    return payload


def reassemble(parts: Sequence[tuple[list[int], Prediction]], n: int) -> Prediction:
    """One answer from the answers of each group of rows, back in the request's row order."""
    rows: list[Any] = [None] * n
    score_rows: list[Any] = [None] * n
    classes = parts[0][1].classes
    with_scores = all(p.scores is not None and p.classes == classes for _, p in parts)
    for idx, answer in parts:
        predictions = list(np.asarray(answer.predictions))
        scores = list(np.asarray(answer.scores)) if with_scores else None
        for j, i in enumerate(idx):
            rows[i] = predictions[j]
            if scores is not None:
                score_rows[i] = scores[j]
    return Prediction(np.asarray(rows), np.asarray(score_rows) if with_scores else None,
                      classes if with_scores else None)


# -- the runner ---------------------------------------------------------------------------------
class GraphRunner(Runner):
    """A ``graph`` version on a server: validates nothing itself (each member checks its own
    input), batches nothing itself (each member batches on its own runner)."""

    composed: ClassVar[bool] = True

    def __init__(self, predictor: Predictor, policy: BatchPolicy, *, dispatch: Dispatch,
                 aliases: AliasLookup, memory: int = 0,
                 touch: Callable[[], None] | None = None) -> None:
        super().__init__(predictor, policy, memory=memory)
        #: marks the version used (its batcher never runs, so idle unloading would not see it)
        self.touch = touch
        self.graph: SequenceGraph | EnsembleGraph | SwitchGraph = predictor.model
        self.dispatch = dispatch
        self.aliases = aliases
        self._refs = {m: parse_ref(m) for m in self.graph.members()}
        self._pending: set[asyncio.Future[Any]] = set()

    def prepare(self, payload: Any) -> tuple[Any, int]:
        """``(payload, rows)``: the payload goes to the members as it came."""
        return payload, count_rows(payload)

    def submit(self, batch: Any, n: int, scores: bool = False) -> Any:
        """Start answering now; returns a future of the :class:`GraphPrediction`."""
        if self.closed:
            from modelyard.errors import RunnerClosedError

            raise RunnerClosedError(f"{self.predictor.ref} was unloaded; retry")
        if self.touch is not None:
            self.touch()
        if self.metrics is not None:  # its members are charged the CPU; it is used, not idle
            self.metrics.last_request = time.time()
        future = asyncio.ensure_future(self.answer(batch, n, scores))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def warm(self) -> None:
        """Nothing to warm: the members warm themselves as they load."""

    async def answer(self, payload: Any, n: int, scores: bool = False) -> GraphPrediction:
        """The graph's answer to ``payload`` (``n`` rows)."""
        inside = _inside.get()
        if self.name in inside:
            raise ConflictError(f"graph {self.name} reaches itself while answering: "
                                f"{' -> '.join([*inside, self.name])}; fix the member that "
                                "loops back")
        token = _inside.set((*inside, self.name))
        steps: list[str] = []
        try:
            result, logged = await _KINDS[type(self.graph)](self, payload, n, scores, steps)
        finally:
            _inside.reset(token)
        return GraphPrediction(result.predictions, result.scores, result.classes,
                               tuple(steps), logged)

    async def call(self, member: str, payload: Any, scores: bool
                   ) -> tuple[Prediction, str, Any]:
        """One member's answer through the data plane, and its step label; errors name it."""
        ref = self._refs[member]
        version = ref.version
        if ref.alias is not None:
            version = self.aliases(ref.name, ref.alias)
            if version is None:
                raise in_step(ConflictError(f"model '{ref.name}' has no alias "
                                            f"'{ref.alias}' now"), member)
        try:
            return await self.dispatch(ref.name, version, payload, scores, current_request.get())
        except Exception as exc:
            raise in_step(exc, member) from exc

    async def close(self) -> None:
        """Stop taking requests; the graphs in flight finish on their members."""
        await super().close()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


async def _sequence(runner: GraphRunner, payload: Any, n: int, scores: bool,
                    steps: list[str]) -> Answered:
    graph = runner.graph
    assert isinstance(graph, SequenceGraph)
    current, last, logged = payload, len(graph.steps) - 1, None
    result: Prediction | None = None
    for i, step in enumerate(graph.steps):
        wants = scores if i == last else graph.steps[i + 1].output == "scores"
        result, label, batch = await runner.call(step.model, current, wants)
        steps.append(label)
        logged = batch if i == 0 else logged
        if i < last:
            nxt = graph.steps[i + 1]
            current = feed(nxt, result, payload, n, nxt.model)
    assert result is not None
    return result, logged


async def _ensemble(runner: GraphRunner, payload: Any, n: int, scores: bool,
                    steps: list[str]) -> Answered:
    graph = runner.graph
    assert isinstance(graph, EnsembleGraph)
    wants = graph.rule != "vote"
    answered = await asyncio.gather(*(runner.call(m, payload, wants) for m in graph.members()))
    steps.extend(label for _, label, _ in answered)
    combined = combine(graph, [Answer(np.asarray(p.predictions), p.scores, p.classes)
                               for p, _, _ in answered])
    return Prediction(combined.predictions, combined.scores, combined.classes), answered[0][2]


async def _switch(runner: GraphRunner, payload: Any, n: int, scores: bool,
                  steps: list[str]) -> Answered:
    graph = runner.graph
    assert isinstance(graph, SwitchGraph)
    logged = None
    if graph.field is not None:
        values = field_values(payload, graph.field, n)
        source = f"field '{graph.field}'"
    else:
        assert graph.router is not None
        routed, label, logged = await runner.call(graph.router, payload, False)
        steps.append(label)
        values = np.asarray(routed.predictions).tolist()
        source = f"router {graph.router}'s label"
    chosen = groups(choose_routes(graph, values, source=source))
    drop = graph.field if graph.drop_field else None
    members = list(chosen)
    answered = await asyncio.gather(*(
        runner.call(m, take(payload, chosen[m], n, drop), scores) for m in members))
    steps.extend(label for _, label, _ in answered)
    if len(members) == 1:
        return answered[0][0], logged
    return reassemble([(chosen[m], a) for m, (a, _, _) in zip(members, answered, strict=True)],
                      n), logged


_KINDS: dict[type, Callable[[GraphRunner, Any, int, bool, list[str]], Awaitable[Answered]]] = {
    SequenceGraph: _sequence,
    EnsembleGraph: _ensemble,
    SwitchGraph: _switch,
}


def step_label(name: str, version: int, variant: str) -> str:
    """``clf:7``, or ``clf:8(candidate)`` when a rollout's variant answered."""
    return f"{name}:{version}" if variant == "production" else f"{name}:{version}({variant})"


__all__ = ["AliasLookup", "Dispatch", "GraphPrediction", "GraphRunner", "count_rows",
           "current_request", "feed", "field_values", "in_step", "reassemble", "step_label",
           "take"]
