"""A model's one declaration: train entrypoint, data, checks, metrics, gate, serving, rollout.

Declared in ``modelyard.yaml`` or with the :func:`model` decorator; both build the same
:class:`Spec`, validated at once so a typo fails before any training starts.

.. code-block:: yaml

    models:
      fraud:
        train: examples/fraud/model.py:train
        data: {path: "examples/fraud/data/*.csv", target: is_fraud}
        metrics: [f1, accuracy, roc_auc]
        gate: {min: {f1: 0.6}, champion: {metric: f1, max_drop: 0.0}}
        serving: {device: cpu, batching: {max_batch_size: 32, max_delay_ms: 2}}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from modelyard.errors import ConfigError
from modelyard.graph import Graph
from modelyard.resources import ResourcesSpec, flatten_train
from modelyard.spec.base import STRICT, parse_duration
from modelyard.spec.monitoring import ALERT_SIGNALS, FAIRNESS_GAP, AlertRule, MonitorSpec
from modelyard.spec.serving import BatchingSpec, PrecomputeSpec, RolloutSpec, ServingSpec
from modelyard.spec.training import (
    ChampionRule,
    DataSpec,
    FairnessRule,
    GateSpec,
    RetrainSpec,
    ValidationSpec,
)
from modelyard.spec.yaml_loader import SpecLoader, load_yaml, read_text


class Spec(BaseModel):
    """Everything modelyard knows about one model, from one declaration."""

    model_config = STRICT

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    #: the training function; a graph spec has none (see ``graph``).
    train: str | Callable[..., Any] | None = None
    data: DataSpec | None = None
    #: a composed model: a graph of registered models instead of training code
    #: (:mod:`modelyard.graph`); registering it trains nothing.
    graph: Graph | None = None
    flavor: str | None = None
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    task: Literal["classification", "regression", "raw"] | None = None
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    metrics: list[str] = Field(default_factory=list)
    gate: GateSpec = Field(default_factory=GateSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    monitoring: MonitorSpec = Field(default_factory=MonitorSpec)
    precompute: PrecomputeSpec | None = None
    timeout_s: float = Field(3600.0, gt=0)
    #: where its training runs execute: ``local`` (a process here) or ``ray`` (a cluster), and
    #: what one run needs there; ``retries``: runs again when its worker node dies (Ray)
    executor: str = Field("local", pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    retries: int = Field(0, ge=0, le=10)
    #: names of your own code the artifact may hold, trusted when it is registered and loaded:
    #: classes and functions of a scikit-learn model ("module.name"), operators of a torch
    #: program ("torch.ops.lib.op"), registered Keras objects. Everything else outside the
    #: frameworks' own types is refused (see "Safe loading" in docs/architecture.md).
    trusted_types: list[str] = Field(default_factory=list)
    #: folder relative paths in this spec are resolved against (the yaml file's folder).
    root: Path = Field(default_factory=Path.cwd)

    @model_validator(mode="before")
    @classmethod
    def _train_mapping(cls, data: Any) -> Any:
        return flatten_train(data)  # train: {entrypoint, executor, resources, retries}

    @model_validator(mode="after")
    def _trains_or_composes(self) -> Spec:
        if self.graph is not None:
            given = [k for k in ("train", "data") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"a graph spec trains nothing: remove {' and '.join(given)}, "
                                 "or the graph")
            return self
        missing = [k for k in ("train", "data") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"{' and '.join(missing)} required: a model declares its training "
                             "(train, data) or a graph of other models (graph)")
        return self

    @model_validator(mode="after")
    def _gate_metrics_declared(self) -> Spec:
        used = set(self.gate.min) | set(self.gate.max)
        if self.gate.champion is not None:
            used.add(self.gate.champion.metric)
        missing = sorted(used - set(self.metrics))
        if missing:
            raise ValueError(f"gate uses metrics not listed under metrics: {', '.join(missing)}")
        if self.rollout.metric is not None and self.rollout.metric not in self.metrics:
            raise ValueError(f"rollout.metric {self.rollout.metric} is not listed under metrics")
        # the largest metric gap of the fairness rules, measured from fed-back labels
        gaps = {FAIRNESS_GAP} if any(r.metric for r in self.gate.fairness) else set()
        watched = ({rule.on for rule in self.monitoring.alerts} - gaps) | set(
            self.retrain.metric_below)
        unknown = sorted(watched - set(self.metrics) - set(ALERT_SIGNALS))
        if unknown:
            raise ValueError(f"monitoring.alerts / retrain.metric_below watch {', '.join(unknown)}"
                             f": use a metric listed under metrics or one of "
                             f"{', '.join(ALERT_SIGNALS)}"
                             + ("" if gaps else f" ({FAIRNESS_GAP} needs a gate.fairness rule "
                                                "with a metric)"))
        if self.gate.fairness and self.task == "regression":
            raise ValueError("gate.fairness compares class predictions across groups; a "
                             "regression model has none")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any], *, where: str = "spec") -> Spec:
        """Validate a spec; raises :class:`ConfigError` naming each bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_describe(exc)}") from None


# -- declaring ----------------------------------------------------------------------------------
_declared: dict[str, Spec] = {}


def model(name: str | None = None, **fields: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare the decorated train function as a model (same fields as ``modelyard.yaml``).

    ``def train(X, y, params): return fitted_model``. The spec is attached as ``fn.spec`` and
    registered so ``modelyard train`` finds it in a module listed under ``include:``.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        source = inspect.getsourcefile(fn)
        root = Path(source).parent if source else Path.cwd()
        spec = Spec.parse(
            {"name": name or fn.__name__, "train": fn, "root": root, **fields},
            where=f"@model on {fn.__qualname__}",
        )
        fn.spec = spec  # type: ignore[attr-defined]
        _declared[spec.name] = spec
        return fn

    return decorate


def compose(name: str, graph: dict[str, Any], **fields: Any) -> Spec:
    """Declare a composed model in Python: the same fields as a ``graph`` spec in
    ``modelyard.yaml`` (``graph``, ``serving``, ``description``...); ``modelyard train NAME``
    registers it. Returns the :class:`Spec`."""
    caller = inspect.currentframe()
    source = caller.f_back.f_code.co_filename if caller and caller.f_back else None
    root = Path(source).parent if source and Path(source).is_file() else Path.cwd()
    spec = Spec.parse({"name": name, "graph": graph, "root": root, **fields},
                      where=f"compose({name!r})")
    _declared[spec.name] = spec
    return spec


def declared() -> dict[str, Spec]:
    """Specs declared with :func:`model` in modules imported so far."""
    return dict(_declared)


def load_project(path: str | Path = "modelyard.yaml") -> dict[str, Spec]:
    """Every spec in a ``modelyard.yaml`` (and the Python modules it ``include``s), by name."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"no {file} here; run 'modelyard init' to create one, or pass --project PATH"
        )
    doc = load_yaml(read_text(file), where=str(file)) or {}
    if not isinstance(doc, dict) or not set(doc) <= {"models", "include"}:
        raise ConfigError(f"{file}: the top level takes 'models' and 'include' only")
    root = file.parent.absolute()
    specs: dict[str, Spec] = {}
    for ref in doc.get("include") or []:
        specs.update(_import_declared(root / str(ref)))
    models = doc.get("models") or {}
    if not isinstance(models, dict):
        raise ConfigError(f"{file}: 'models' must map model names to their specs")
    for name, body in models.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{file}: models.{name} must be a mapping of spec fields")
        specs[str(name)] = Spec.parse({"name": str(name), "root": root, **body},
                                      where=f"{file}: models.{name}")
    return specs


def _import_declared(path: Path) -> dict[str, Spec]:
    from modelyard.entrypoints import import_file

    before = set(_declared)
    import_file(path)
    return {n: s for n, s in _declared.items() if n not in before or s.root == path.parent}


#: a graph's kind tags, left out of error locations (``graph.rule``, not ``graph.ensemble.rule``).
_GRAPH_KINDS = ("sequence", "ensemble", "switch")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p not in _GRAPH_KINDS) or "spec"
        parts.append(f"{loc.replace('members_', 'members')}: "
                     f"{err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


__all__ = [
    "ALERT_SIGNALS",
    "FAIRNESS_GAP",
    "AlertRule",
    "BatchingSpec",
    "ChampionRule",
    "DataSpec",
    "FairnessRule",
    "GateSpec",
    "MonitorSpec",
    "PrecomputeSpec",
    "RetrainSpec",
    "RolloutSpec",
    "ServingSpec",
    "Spec",
    "SpecLoader",
    "ValidationSpec",
    "compose",
    "declared",
    "load_project",
    "load_yaml",
    "model",
    "parse_duration",
]
