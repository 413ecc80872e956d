"""The ``graph`` flavor: a composed model's version, whose artifact is its declaration.

The artifact is ``graph.json``: the graph as plain data (:mod:`modelyard.graph`), never code, so
loading it runs nothing and ``verify`` only checks that it parses. A graph predicts through the
server, which calls each member on its own runner (:mod:`modelyard.serving.graphs`); loaded in
process (``modelyard.load``) it gives its declaration, and predicting with it says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from modelyard.errors import ConfigError, UnsafeArtifactError
from modelyard.graph import EnsembleGraph, SequenceGraph, SwitchGraph, parse_graph, to_data
from modelyard.schema import Signature

FILE = "graph.json"
_KINDS = (SequenceGraph, EnsembleGraph, SwitchGraph)


class GraphAdapter:
    """Save and load a graph declaration; its predictions come from its members, on a server."""

    flavor: ClassVar[str] = "graph"
    extra: ClassVar[str] = ""
    accelerated: ClassVar[bool] = False
    #: the server answers this flavor by calling its members, not by batching it on a runner.
    composed: ClassVar[bool] = True

    @classmethod
    def gpu_count(cls) -> int:
        """Always 0: a graph computes nothing itself (its members run where they are placed)."""
        return 0

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a parsed graph declaration."""
        return isinstance(model, _KINDS)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Write the declaration as ``graph.json`` (sorted keys: equal graphs, equal bytes)."""
        graph = model if isinstance(model, _KINDS) else parse_graph(model)
        (Path(path) / FILE).write_text(json.dumps(to_data(graph), sort_keys=True, indent=1))
        return {"file": FILE, "graph_kind": graph.kind}

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """The declaration in ``graph.json``."""
        return _read(Path(path))

    def verify(self, path: Path, meta: dict[str, Any]) -> None:
        """Refuse an artifact whose ``graph.json`` is not a graph declaration."""
        try:
            _read(Path(path))
        except ConfigError as exc:
            raise UnsafeArtifactError(f"graph: the artifact is not a graph declaration: "
                                      f"{exc}") from None

    def predict(self, model: Any, batch: Any) -> Any:
        """A graph answers through a server (its members are called there)."""
        raise ConfigError("a graph version predicts through a server (modelyard serve), which "
                          "calls each member; load its members to predict in process")

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """A graph gives no scores in process (see :meth:`predict`)."""
        return None

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A graph's signature is its entry member's, taken from the registry when it is
        registered; there is nothing to infer from data."""
        raise ConfigError("a graph's signature comes from its members (register it with "
                          "modelyard train on its spec)")


def _read(path: Path) -> Any:
    target = path / FILE
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {FILE}: {exc}") from None
    return parse_graph(data, where=FILE)


__all__ = ["FILE", "GraphAdapter"]
