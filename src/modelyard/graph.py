"""Composed models: a graph of registered models declared as plain data, and its pure decisions.

A spec with a ``graph`` section declares no training: its version's artifact is the declaration
itself (``graph.json``, never code), and the server answers it by calling each member model
through its own data plane path (:mod:`modelyard.serving.graphs`). Three kinds::

    graph: {kind: sequence, steps: [embed, {model: "clf@production", output: predictions}]}
    graph: {kind: ensemble, members: [a, b:3], rule: mean}          # mean | vote | weighted
    graph: {kind: switch, field: region, routes: {eu: clf_eu, us: clf_us}, default: clf_eu}
    graph: {kind: switch, router: lang_id, routes: {en: clf_en, de: clf_de}}

A member is ``name`` (the member's served alias, so its rollouts apply inside the graph),
``name:N`` (that version) or ``name@alias`` (that alias, followed as it moves). Everything here
is pure: parsing and checking declarations, finding cycles, the ensemble rules and the switch's
choice; the registry checks and the serving live above.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelyard.errors import ConfigError, ConflictError, InputError

_STRICT = ConfigDict(extra="forbid", frozen=True)
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,199})"
                  r"(?::(?P<version>[0-9]{1,18})|@(?P<alias>[A-Za-z0-9][A-Za-z0-9._-]{0,99}))?$")


@dataclass(frozen=True)
class MemberRef:
    """A member as a graph names it: ``name``, ``name:N`` or ``name@alias``."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> MemberRef:
    """``"clf:3"`` -> ``MemberRef("clf", 3)``; :class:`ConfigError` for anything else."""
    match = _REF.match(str(text))
    if match is None or match["version"] == "0" * len(match["version"] or "x"):
        raise ConfigError(f"member {text!r} is not a model reference: use name, name:N or "
                          "name@alias")
    version = match["version"]
    return MemberRef(match["name"], int(version) if version else None, match["alias"])


def _checked_ref(value: str) -> str:
    try:
        parse_ref(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


class Step(BaseModel):
    """One step of a sequence: a member, and how the previous step's answer becomes its input.

    ``output``: which part of the previous answer feeds this step (``predictions`` or class
    ``scores``). ``input_field``: the input it fills (a tensor's name, or a column for a 1-D
    output); otherwise the output goes in as rows. ``pass_through``: fields of the graph's own
    request added beside it (they need ``input_field`` or ``columns``). ``columns``: names for
    a 2-D output's columns, when the step takes them as table columns.
    """

    model_config = _STRICT

    model: str
    output: Literal["predictions", "scores"] = "predictions"
    input_field: str | None = None
    columns: list[str] | None = None
    pass_through: list[str] = Field(default_factory=list)

    @field_validator("model")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _checked_ref(value)

    @model_validator(mode="after")
    def _named_when_passing(self) -> Step:
        if self.pass_through and self.input_field is None and self.columns is None:
            raise ValueError("pass_through needs input_field or columns: the names the "
                             "previous output takes beside the passed fields")
        return self


class SequenceGraph(BaseModel):
    """Each step's answer feeds the next; the last step answers."""

    model_config = _STRICT

    kind: Literal["sequence"]
    steps: list[Step] = Field(min_length=2)

    @field_validator("steps", mode="before")
    @classmethod
    def _short_steps(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    def members(self) -> list[str]:
        """Every member reference, in order."""
        return [s.model for s in self.steps]


class EnsembleGraph(BaseModel):
    """Every member answers the same request; ``rule`` combines the answers."""

    model_config = _STRICT

    kind: Literal["ensemble"]
    members_: list[str] = Field(alias="members", min_length=2)
    rule: str = "mean"
    weights: list[float] | None = None

    @field_validator("members_")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        return [_checked_ref(m) for m in value]

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        if value not in RULES:
            raise ValueError(f"unknown rule {value!r}; rules: {', '.join(RULES)}")
        return value

    @model_validator(mode="after")
    def _weights_fit(self) -> EnsembleGraph:
        if (self.rule == "weighted") != (self.weights is not None):
            raise ValueError("weights go with rule: weighted, one per member")
        weights = self.weights or []
        if weights and (len(weights) != len(self.members_) or min(weights) < 0
                        or sum(weights) <= 0):
            raise ValueError(f"weights: give {len(self.members_)} numbers >= 0 (one per "
                             "member), not all 0")
        return self

    def members(self) -> list[str]:
        """Every member reference, in order."""
        return list(self.members_)


class SwitchGraph(BaseModel):
    """Each row goes to one member: the one ``routes`` names for the row's ``field`` value, or
    for the label the ``router`` model predicts for it; ``default`` for any other value."""

    model_config = _STRICT

    kind: Literal["switch"]
    field: str | None = None
    router: str | None = None
    routes: dict[str, str] = Field(min_length=1)
    default: str | None = None
    #: leave the ``field`` out of what the chosen member gets (members rarely take it).
    drop_field: bool = True

    @field_validator("router", "default")
    @classmethod
    def _ref_or_none(cls, value: str | None) -> str | None:
        return None if value is None else _checked_ref(value)

    @field_validator("routes")
    @classmethod
    def _route_refs(cls, value: dict[str, str]) -> dict[str, str]:
        return {str(k): _checked_ref(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _one_chooser(self) -> SwitchGraph:
        if (self.field is None) == (self.router is None):
            raise ValueError("give exactly one of field (a request field) or router (a model "
                             "whose predicted label picks the route)")
        return self

    def members(self) -> list[str]:
        """Every member reference: the router, the routes, the default."""
        refs = ([self.router] if self.router else []) + list(self.routes.values())
        refs += [self.default] if self.default else []
        return list(dict.fromkeys(refs))


Graph = Annotated[SequenceGraph | EnsembleGraph | SwitchGraph, Field(discriminator="kind")]


class GraphSpec(BaseModel):
    """A graph declaration on its own: what a ``graph`` version's artifact holds."""

    model_config = _STRICT

    graph: Graph


def parse_graph(data: Any, *, where: str = "") -> SequenceGraph | EnsembleGraph | SwitchGraph:
    """A declaration from plain data (a spec section or ``graph.json``); :class:`ConfigError`
    names the bad field."""
    from pydantic import ValidationError

    try:
        return GraphSpec.model_validate({"graph": data}).graph
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p not in ("sequence", "ensemble", "switch"))
        loc = loc.replace("members_", "members")
        message = f"{loc}: {err['msg'].removeprefix('Value error, ')}"
        raise ConfigError(f"{where}: {message}" if where else message) from None


def to_data(graph: SequenceGraph | EnsembleGraph | SwitchGraph) -> dict[str, Any]:
    """The declaration as plain JSON-ready data (what ``graph.json`` holds)."""
    return graph.model_dump(mode="json", by_alias=True, exclude_none=True)


# -- cycles -------------------------------------------------------------------------------------
def find_cycle(root: str, children: Callable[[str], Iterable[str]]) -> list[str] | None:
    """A path ``[root, ..., root]`` if ``root`` reaches itself through ``children`` (the member
    names of a graph model, nothing for a plain one), else None."""
    path: list[str] = [root]
    done: set[str] = set()

    def walk(name: str) -> list[str] | None:
        for child in children(name):
            if child in path:
                return [*path[path.index(child):], child]
            if child in done:
                continue
            path.append(child)
            found = walk(child)
            if found is not None:
                return found
            path.pop()
            done.add(child)
        return None

    return walk(root)


def refuse_cycle(root: str, children: Callable[[str], Iterable[str]]) -> None:
    """:class:`ConfigError` naming the loop when ``root`` contains itself."""
    cycle = find_cycle(root, children)
    if cycle is not None:
        raise ConfigError(f"graph {root} contains itself: {' -> '.join(cycle)}; a graph may "
                          "contain other graphs, never one that leads back to it")


# -- ensemble rules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One member's answer to a batch: labels or values, class scores, their classes."""

    predictions: np.ndarray
    scores: np.ndarray | None = None
    classes: tuple[Any, ...] | None = None


def _same_classes(answers: Sequence[Answer]) -> tuple[Any, ...] | None:
    classes = answers[0].classes
    if any(a.classes != classes for a in answers[1:]):
        raise ConflictError("ensemble members answer different classes ("
                            + "; ".join(str(list(a.classes or [])) for a in answers)
                            + "): mean and weighted need the same classes in the same order")
    return classes


def _averaged(answers: Sequence[Answer], weights: Sequence[float]) -> Answer:
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    classes = _same_classes(answers)
    if all(a.scores is not None for a in answers) and classes is not None:
        scores = sum(wi * np.asarray(a.scores, dtype=np.float64) for wi, a in zip(w, answers,
                                                                                  strict=True))
        labels = np.asarray(classes, dtype=object)[np.asarray(scores).argmax(axis=1)]
        return Answer(np.asarray(labels.tolist()), np.asarray(scores), classes)
    if classes is not None:
        raise ConflictError("a member of a mean/weighted ensemble of classifiers gave no class "
                            "scores; use rule: vote, or members with predict_proba")
    try:
        values = [np.asarray(a.predictions, dtype=np.float64) for a in answers]
    except (TypeError, ValueError):
        raise ConflictError("mean and weighted combine numbers; use rule: vote for "
                            "labels") from None
    return Answer(np.asarray(sum(wi * v for wi, v in zip(w, values, strict=True))))


def mean_rule(answers: Sequence[Answer], weights: Sequence[float] | None = None) -> Answer:
    """The average of the members' class scores (label: their argmax), or of their values."""
    return _averaged(answers, [1.0] * len(answers))


def weighted_rule(answers: Sequence[Answer], weights: Sequence[float] | None = None) -> Answer:
    """Like :func:`mean_rule`, each member counted by its weight."""
    return _averaged(answers, weights if weights is not None else [1.0] * len(answers))


def vote_rule(answers: Sequence[Answer], weights: Sequence[float] | None = None) -> Answer:
    """The label most members predict for each row; a tie goes to the earliest member's label
    among the tied (so the first member breaks ties)."""
    columns = [np.asarray(a.predictions).tolist() for a in answers]
    labels = []
    for row in zip(*columns, strict=True):
        counts: dict[Any, int] = {}
        for label in row:
            counts[label] = counts.get(label, 0) + 1
        top = max(counts.values())
        labels.append(next(label for label in row if counts[label] == top))
    return Answer(np.asarray(labels))


#: rule name -> how it combines the members' answers (registered here, chosen by name).
RULES: dict[str, Callable[[Sequence[Answer], Sequence[float] | None], Answer]] = {
    "mean": mean_rule,
    "vote": vote_rule,
    "weighted": weighted_rule,
}


def combine(graph: EnsembleGraph, answers: Sequence[Answer]) -> Answer:
    """The ensemble's answer from each member's (in member order)."""
    return RULES[graph.rule](answers, graph.weights)


# -- the switch ---------------------------------------------------------------------------------
def choose_routes(graph: SwitchGraph, values: Sequence[Any], *, source: str) -> list[str]:
    """The member for each row's value (``source`` names where the values came from for the
    error: the request field, or the router's labels). A value no route names goes to
    ``default``; without one it is an :class:`InputError` naming the value."""
    routes, default = graph.routes, graph.default
    chosen: list[str] = []
    for i, value in enumerate(values):
        member = routes.get(_route_key(value), default)
        if member is None:
            raise InputError(
                f"{source} is {value!r} in row {i}: no route for it and no default; routes: "
                + ", ".join(sorted(routes)),
                [{"loc": [graph.field or "router", i],
                  "msg": "no route for this value; routes: " + ", ".join(sorted(routes))}])
        chosen.append(member)
    return chosen


def _route_key(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def groups(chosen: Sequence[str]) -> dict[str, list[int]]:
    """Row indices per member, members in order of first use."""
    out: dict[str, list[int]] = {}
    for i, member in enumerate(chosen):
        out.setdefault(member, []).append(i)
    return out


def member_names(graph: SequenceGraph | EnsembleGraph | SwitchGraph) -> list[str]:
    """The model names a graph calls (without versions or aliases), in order."""
    return list(dict.fromkeys(parse_ref(m).name for m in graph.members()))


def check_classes(graph: SequenceGraph | EnsembleGraph | SwitchGraph,
                  classes: Mapping[str, tuple[Any, ...] | None]) -> None:
    """Refuse an ensemble whose rule cannot combine its members (by their registered classes):
    mean and weighted need every member to answer the same classes, or none (numbers)."""
    if not isinstance(graph, EnsembleGraph) or graph.rule == "vote":
        return
    seen = {m: classes.get(m) for m in graph.members()}
    if len({tuple(c) if c is not None else None for c in seen.values()}) > 1:
        shown = "; ".join(f"{m}: {list(c) if c is not None else 'no classes'}"
                          for m, c in seen.items())
        raise ConfigError(f"graph.rule: {graph.rule} needs members with the same classes "
                          f"({shown}); use rule: vote")


def _row_width(fields: Sequence[Mapping[str, Any]]) -> int | None:
    """Values a row of one field holds (its shape's product), or None when unknown."""
    if len(fields) != 1:
        return None
    width = 1
    for dim in fields[0].get("shape") or []:
        if not isinstance(dim, int) or dim < 0:
            return None
        width *= dim
    return width


def check_feeds(graph: SequenceGraph | EnsembleGraph | SwitchGraph,
                signatures: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a sequence whose step cannot take what the step before it answers, by the
    registered signatures (outputs and inputs): the values a row of the previous step's output
    holds must be as many as the next step's inputs (or its ``columns``). Unknown shapes pass:
    the server still checks every call."""
    if not isinstance(graph, SequenceGraph):
        return
    for i, (before, step) in enumerate(itertools.pairwise(graph.steps), start=1):
        if step.input_field is not None:
            continue
        outputs = [f for f in signatures[before.model].get("outputs", [])
                   if f.get("name") == step.output]
        given = _row_width(outputs)
        taken = _taken_width(step, signatures[step.model])
        if given is not None and taken is not None and given != taken:
            raise ConfigError(f"graph.steps.{i}: {step.model} takes {taken} values a row, but "
                              f"{before.model} answers {given} {step.output} a row")


def _taken_width(step: Step, signature: Mapping[str, Any]) -> int | None:
    if step.columns is not None:
        return len(step.columns)
    inputs = signature.get("inputs", [])
    if signature.get("layout") == "tensor":
        return _row_width(inputs)
    return len(inputs) or None


__all__ = ["RULES", "Answer", "EnsembleGraph", "Graph", "GraphSpec", "MemberRef",
           "SequenceGraph", "Step", "SwitchGraph", "check_classes", "check_feeds",
           "choose_routes", "combine", "find_cycle", "groups", "mean_rule", "member_names",
           "parse_graph", "parse_ref", "refuse_cycle", "to_data", "vote_rule", "weighted_rule"]
