"""Registering a composed model: a ``graph`` spec becomes a version without training.

``modelyard train NAME`` on a spec with a ``graph`` section (YAML or :func:`modelyard.compose`)
comes here from :func:`~modelyard.pipeline.run.run_pipeline`: every member must resolve in the
registry now, the graph must not contain itself (through graphs it contains), and an ensemble's
rule must suit its members' classes. The version's artifact is the declaration as JSON (the
``graph`` flavor); its meta records the member versions it was registered against (lineage),
and its signature is its entry member's inputs with its answering member's outputs, so OIP
clients see the graph like any model. The run is recorded like a training run; production
moves to the new version unless ``promote`` is False. A declaration (and serving settings)
equal to the latest version's registers nothing: the run ends ``unchanged``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, NotFoundError
from modelyard.graph import (
    EnsembleGraph,
    SequenceGraph,
    SwitchGraph,
    check_classes,
    check_feeds,
    member_names,
    parse_graph,
    parse_ref,
    refuse_cycle,
    to_data,
)
from modelyard.pipeline.gate import GateResult
from modelyard.pipeline.lineage import spec_hash
from modelyard.pipeline.run_registry import RunRegistry
from modelyard.registry import PRODUCTION, ModelVersion
from modelyard.spec import Spec
from modelyard.version_settings import VersionSettings

AnyGraph = SequenceGraph | EnsembleGraph | SwitchGraph


def resolve_members(graph: AnyGraph, registry: RunRegistry, alias: str = PRODUCTION
                    ) -> dict[str, ModelVersion]:
    """Each member reference -> the version it names now (a bare name: ``alias``'s version).

    :class:`NotFoundError` names the member that does not resolve and how to fix it."""
    out: dict[str, ModelVersion] = {}
    for text in graph.members():
        ref = parse_ref(text)
        lookup = str(ref) if ref.version is not None or ref.alias else f"{ref.name}@{alias}"
        try:
            out[text] = registry.resolve(lookup)
        except NotFoundError as exc:
            raise NotFoundError(f"graph member {text}: {exc}") from None
    return out


def graph_children(registry: RunRegistry, root: str, graph: AnyGraph) -> Callable[[str], list[str]]:
    """Member names of each model, for cycle detection: ``root``'s from ``graph``, a registered
    graph's from its served (else newest) version's declaration, nothing for other models."""
    def children(name: str) -> list[str]:
        if name == root:
            return member_names(graph)
        try:
            model = registry.get_model(name)
        except NotFoundError:
            return []
        number = dict(model.aliases).get(PRODUCTION) or model.latest_version
        if not number:
            return []
        record = registry.get_version(name, number)
        declared = record.meta.get("graph")
        return member_names(parse_graph(declared)) if record.flavor == "graph" and declared \
            else []

    return children


def graph_signature(graph: AnyGraph, members: dict[str, ModelVersion]) -> dict[str, Any]:
    """The graph's signature: its entry member's inputs, its answering member's outputs and
    classes (an ensemble that votes answers labels only)."""
    refs = graph.members()
    if isinstance(graph, SequenceGraph):
        entry, answer = refs[0], refs[-1]
    elif isinstance(graph, SwitchGraph):
        entry = answer = graph.default or next(iter(graph.routes.values()))
    else:
        entry = answer = refs[0]
    signature = dict(members[entry].signature)
    last = members[answer].signature
    signature["outputs"] = list(last.get("outputs", []))
    if "classes" in last:
        signature["classes"] = last["classes"]
    else:
        signature.pop("classes", None)
    if isinstance(graph, EnsembleGraph) and graph.rule == "vote":
        signature.pop("classes", None)
        signature["outputs"] = [f for f in signature["outputs"] if f.get("name") == "predictions"]
    if isinstance(graph, SwitchGraph) and graph.field and signature.get("layout") == "table":
        names = {f["name"] for f in signature.get("inputs", [])}
        if graph.field not in names:
            signature["inputs"] = [*signature["inputs"],
                                   {"name": graph.field, "dtype": "string", "shape": []}]
    return signature


def _classes(version: ModelVersion) -> tuple[Any, ...] | None:
    classes = version.signature.get("classes")
    return None if classes is None else tuple(classes)


def prepare_graph(spec: Spec, registry: RunRegistry) -> tuple[AnyGraph, dict[str, ModelVersion]]:
    """Check ``spec``'s graph against the registry: its members resolve, it contains no cycle,
    its rule suits its members. Returns the graph and its resolved members."""
    graph = spec.graph
    if graph is None:
        raise ConfigError(f"{spec.name} declares no graph")
    if spec.name in member_names(graph):
        raise ConfigError(f"graph {spec.name} names itself as a member")
    members = resolve_members(graph, registry)
    refuse_cycle(spec.name, graph_children(registry, spec.name, graph))
    check_classes(graph, {m: _classes(v) for m, v in members.items()})
    check_feeds(graph, {m: v.signature for m, v in members.items()})
    return graph, members


def register_graph(spec: Spec, registry: RunRegistry, *, actor: str | None = None,
                   run_id: str | None = None, force: bool = False, semver: str | None = None
                   ) -> tuple[ModelVersion | None, ModelVersion | None]:
    """Register ``spec``'s graph as a new ``graph`` version: ``(new, None)``, or ``(None,
    same)`` when the latest version declares the same graph and settings (unless ``force``).
    ``semver`` labels the new version (as :meth:`Registry.register` takes it)."""
    from modelyard.adapters import get_adapter

    graph, members = prepare_graph(spec, registry)
    digest = spec_hash(spec)
    same = None if force else _latest_same(registry, spec.name, digest)
    if same is not None:
        return None, same
    adapter = get_adapter("graph")
    task = members[graph.members()[-1]].meta.get("task")
    with tempfile.TemporaryDirectory(prefix="modelyard-graph-") as tmp:
        saved = adapter.save(graph, Path(tmp))
        version = registry.register(
            spec.name, Path(tmp), flavor="graph",
            meta={**saved, "graph": to_data(graph), "task": task,
                  # lineage: what each member named when the graph was registered
                  "members": {m: v.ref for m, v in members.items()},
                  **VersionSettings.from_spec(spec).to_meta(), "spec_hash": digest},
            signature=graph_signature(graph, members), params={"graph": to_data(graph)},
            run_id=run_id, description=spec.description, actor=actor, semver=semver)
    return version, None


def _latest_same(registry: RunRegistry, name: str, digest: str) -> ModelVersion | None:
    try:
        latest = registry.get_model(name).latest_version
    except NotFoundError:
        return None
    if not latest:
        return None
    version = registry.get_version(name, latest)
    return version if version.meta.get("spec_hash") == digest else None


def passed() -> GateResult:
    """A graph has no gate of its own (its members passed theirs)."""
    return GateResult(True, [], [])


__all__ = ["graph_children", "graph_signature", "passed", "prepare_graph", "register_graph",
           "resolve_members"]


