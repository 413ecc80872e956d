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
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.devices import default_pool, validate_device, validate_pool
from modelyard.errors import ConfigError
from modelyard.graph import Graph
from modelyard.resources import ResourcesSpec, flatten_train

_STRICT = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class DataSpec(BaseModel):
    """Where training data comes from, so a rerun picks up new data.

    Exactly one of ``path`` (CSV/Parquet file or glob), ``sql`` (a query, with ``url``) or
    ``function`` (``"file.py:fn"`` / ``"module:fn"`` or a callable returning ``(X, y)`` or a
    DataFrame) is given.
    """

    model_config = _STRICT

    path: str | None = None
    format: Literal["csv", "parquet"] | None = None
    sql: str | None = None
    url: str | None = None
    function: str | Callable[..., Any] | None = None
    target: str | None = None
    features: list[str] | None = None
    holdout: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    stratify: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("path", "sql", "function") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, sql or function")
        if self.sql is not None and not self.url:
            raise ValueError("a sql source needs url: the database URL to run it against")
        if self.path is not None and self.target is None:
            raise ValueError("a file source needs target: the label column")
        return self


class ValidationSpec(BaseModel):
    """Checks the training data must pass before anything is trained."""

    model_config = _STRICT

    min_rows: int = Field(10, ge=1)
    max_missing: float = Field(0.0, ge=0.0, le=1.0)  # per column, as a fraction of rows
    columns: dict[str, str] | None = None  # expected dtype per column: float64, int64, string, ...
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    allowed: dict[str, list[Any]] = Field(default_factory=dict)  # categorical values


class ChampionRule(BaseModel):
    """Compare the candidate with the current ``production`` version on the same holdout."""

    model_config = _STRICT

    metric: str
    max_drop: float = Field(0.0, ge=0.0)  # how much worse than the champion is still accepted


class GateSpec(BaseModel):
    """When a new version may be promoted: absolute thresholds and the champion comparison."""

    model_config = _STRICT

    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    champion: ChampionRule | None = None
    promote: bool = True  # move the production alias when the gate passes


class BatchingSpec(BaseModel):
    """Dynamic batching: gather requests up to ``max_batch_size`` or ``max_delay_ms``."""

    model_config = _STRICT

    #: None (auto) and True batch every flavor; False runs each request alone. Classic flavors
    #: wait for no more rows unless ``max_delay_ms`` is set (a batch forms from what queued
    #: while the previous one ran); deep-learning flavors wait up to ``max_delay_ms``.
    enabled: bool | None = None
    max_batch_size: int = Field(32, ge=1, le=65536)
    max_delay_ms: float = Field(2.0, ge=0.0, le=10_000)
    max_queue: int = Field(1024, ge=1)


class ServingSpec(BaseModel):
    """Where and how the model answers live traffic."""

    model_config = _STRICT

    device: str = "auto"
    #: the pool of servers that serves this model (``modelyard serve --pool NAME``; one
    #: deployment per pool from ``modelyard build``). None: ``gpu`` when ``device`` asks for a
    #: GPU (``cuda``, or ``auto`` for a deep-learning flavor), otherwise ``cpu``.
    pool: str | None = None
    #: where predict runs: "process" = a device worker that owns the device (restarted if it
    #: dies); "inline" = inside the server process; "auto" = process on a GPU, inline on CPU.
    isolation: Literal["auto", "process", "inline"] = "auto"
    #: copies of the version to run; not used yet (the server warns): each server process runs
    #: one, and ``modelyard serve --workers N`` runs N processes.
    replicas: int = Field(1, ge=1, le=64)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    preload: bool = True
    #: share of prediction requests written to the prediction log (0 turns the log off).
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    #: input fields kept out of the prediction log: ``[card]`` or ``{card: hash}`` replaces the
    #: value with a keyed hash (joins still work); ``{card: drop}`` leaves it out.
    sensitive: dict[str, Literal["hash", "drop"]] = Field(default_factory=dict)

    @field_validator("sensitive", mode="before")
    @classmethod
    def _sensitive(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {str(name): "hash" for name in value}
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return validate_device(value)

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        return None if value is None else validate_pool(value)

    def pool_for(self, *, accelerated: bool) -> str:
        """The pool serving this model (see ``pool``); ``accelerated``: a deep-learning flavor."""
        return self.pool or default_pool(self.device, accelerated=accelerated)


class RolloutSpec(BaseModel):
    """How a version that passed its gate reaches traffic, and how analysis judges it.

    ``direct`` (the default) moves ``production`` at once; any other strategy makes ``modelyard
    train`` (and the scheduler) start that rollout instead, which the servers' analysis then
    advances, promotes or rolls back. The same section, registered with each version, gives
    ``modelyard deploy`` and the admin API their defaults.
    """

    model_config = _STRICT

    strategy: Literal["direct", "blue-green", "canary", "shadow", "ab"] = "direct"
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    every_s: float = Field(60.0, gt=0)
    key: str | None = None  # A/B stickiness: a header or an input field
    max_error_rate: float = Field(0.01, ge=0, le=1)
    #: the candidate's typical latency may be this many times stable's (with confidence).
    max_latency_ratio: float = Field(1.2, ge=1)
    #: and its tail (p99, or the quantile a small window supports) this many times.
    max_p99_ratio: float = Field(1.5, ge=1)
    min_requests: int = Field(100, ge=1)
    #: labeled predictions each variant needs before the declared metric is compared.
    min_labels: int = Field(100, ge=1)
    #: the metric analysis compares on fed-back labels (default: the first under metrics).
    metric: str | None = None

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or any(not 0 < s <= 100 for s in value) or value != sorted(value):
            raise ValueError("steps must be increasing percentages between 1 and 100")
        return value

    @model_validator(mode="after")
    def _steps_fit_strategy(self) -> RolloutSpec:
        if "steps" not in self.model_fields_set:
            return self
        if self.strategy in ("ab", "shadow") and len(self.steps) != 1:
            raise ValueError(f"a {self.strategy} rollout takes one percentage, e.g. steps: [50]")
        if self.strategy == "ab" and self.steps == [100]:
            raise ValueError("an A/B rollout needs both groups: give the candidate 1 to 99 "
                             "percent")
        if self.strategy in ("direct", "blue-green") and self.steps != [100]:
            raise ValueError(f"a {self.strategy} rollout switches all traffic at once; steps "
                             "apply to canary, ab and shadow")
        return self

    @property
    def staged(self) -> bool:
        """Whether a new version goes through a rollout rather than straight to production."""
        return self.strategy != "direct"


class RetrainSpec(BaseModel):
    """When to retrain by itself: a cron schedule and trigger rules."""

    model_config = _STRICT

    schedule: str | None = None  # cron, e.g. "0 3 * * *"
    drift_share: float | None = Field(None, gt=0, le=1)
    metric_below: dict[str, float] = Field(default_factory=dict)
    new_labels: int | None = Field(None, ge=1)
    auto_rollout: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("schedule must be a 5-field cron expression, e.g. '0 3 * * *'")
        return value


#: seconds per unit of a duration such as ``"24h"`` (``precompute.ttl``).
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_KEY_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration such as ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``;
    :class:`ValueError` for anything else or a value not above 0."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration such as '24h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if found is None:
            raise ValueError(f"{value!r} is not a duration; use seconds or a number with s, m, "
                             "h or d, such as '24h'")
        seconds = float(found.group(1)) * _UNITS[found.group(2) or "s"]
    if not 0 < seconds < float("inf"):
        raise ValueError("must be above 0 seconds")
    return seconds


class PrecomputeSpec(BaseModel):
    """Score a known population ahead of time and serve its answers by key (live fallback).

    ``input`` takes what ``modelyard batch --input`` takes (files, globs, fsspec URLs, or
    ``sql:SELECT ...`` with ``url``); ``key`` is its id column; ``store`` is ``registry`` (the
    registry database) or a ``redis://`` URL; answers older than ``ttl`` are answered live.
    """

    model_config = _STRICT

    input: str | list[str]
    key: str
    url: str | None = None  # the database a sql: input runs against
    store: str = "registry"
    ttl: float = 86400.0
    schedule: str | None = None  # cron, e.g. "0 2 * * *"
    on_promotion: bool = True
    chunk_rows: int = Field(10_000, ge=1, le=10_000_000)

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY_COLUMN.match(value):
            raise ValueError("key must be a column name: letters, digits and _")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value != "registry" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("store must be 'registry' (the registry database) or a "
                             "redis:// URL")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("schedule must be a 5-field cron expression, e.g. '0 2 * * *'")
        return value

    @model_validator(mode="after")
    def _sql_needs_url(self) -> PrecomputeSpec:
        inputs = [self.input] if isinstance(self.input, str) else self.input
        if not inputs:
            raise ValueError("input names no files")
        if any(i.startswith("sql:") for i in inputs) and not self.url:
            raise ValueError("a sql: input needs url: the database URL to run it against")
        return self

    @property
    def inputs(self) -> str | tuple[str, ...]:
        """``input`` as a batch job takes it."""
        return self.input if isinstance(self.input, str) else tuple(self.input)

    @property
    def sql_query(self) -> str | None:
        """The query of a ``sql:`` input (None for files)."""
        if isinstance(self.input, str) and self.input.startswith("sql:"):
            return self.input[4:].strip()
        return None


#: what alert rules may watch besides the model's declared metrics.
ALERT_SIGNALS = ("drift_share", "p99_ms", "error_rate")


class AlertRule(BaseModel):
    """Fire an alert when a monitored value crosses a bound over the monitoring window.

    ``on`` is a declared metric (``f1``, ``iou``, ...), ``drift_share``, ``p99_ms`` or
    ``error_rate``; give ``above`` or ``below``.
    """

    model_config = _STRICT

    on: str
    above: float | None = None
    below: float | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    name: str | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> AlertRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("an alert rule takes exactly one of above or below")
        return self

    @property
    def title(self) -> str:
        """The rule's name, or one made from it (``f1 below 0.7``)."""
        if self.name:
            return self.name
        return f"{self.on} above {self.above}" if self.above is not None else (
            f"{self.on} below {self.below}")


class MonitorSpec(BaseModel):
    """How a model is watched in production: the window, drift verdicts and alert rules."""

    model_config = _STRICT

    window_s: float = Field(3600.0, gt=0)  # how far back metrics, drift and alerts look
    min_rows: int = Field(100, ge=1)  # fewest logged rows a drift check needs
    drift_share: float = Field(0.5, gt=0, le=1)  # share of drifted features = dataset drift
    alerts: list[AlertRule] = Field(default_factory=list)
    webhook: str | None = None  # alerts are POSTed here too (or MODELYARD_ALERT_WEBHOOK)
    #: logged predictions and labels older than this many days are deleted by the servers
    #: (None keeps them forever)
    retention_days: float | None = Field(30.0, gt=0)


class Spec(BaseModel):
    """Everything modelyard knows about one model, from one declaration."""

    model_config = _STRICT

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
        watched = {rule.on for rule in self.monitoring.alerts} | set(self.retrain.metric_below)
        unknown = sorted(watched - set(self.metrics) - set(ALERT_SIGNALS))
        if unknown:
            raise ValueError(f"monitoring.alerts / retrain.metric_below watch {', '.join(unknown)}"
                             f": use a metric listed under metrics or one of "
                             f"{', '.join(ALERT_SIGNALS)}")
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


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only ``true`` and ``false`` are booleans.

    YAML 1.1 (PyYAML's default) also reads ``on``, ``off``, ``yes``, ``no`` as booleans, so the
    alert rule ``{on: f1, below: 0.5}`` would arrive with the key ``True``.
    """


_BOOL = "tag:yaml.org,2002:bool"
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def load_yaml(text: str, *, where: str = "yaml") -> Any:
    """Parse ``text`` with :class:`SpecLoader`; :class:`ConfigError` names the line if invalid."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{file} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line "
                          f"{line}); save it as UTF-8") from None


def load_project(path: str | Path = "modelyard.yaml") -> dict[str, Spec]:
    """Every spec in a ``modelyard.yaml`` (and the Python modules it ``include``s), by name."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"no {file} here; run 'modelyard init' to create one, or pass --project PATH"
        )
    doc = load_yaml(_read_text(file), where=str(file)) or {}
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
    "AlertRule",
    "BatchingSpec",
    "ChampionRule",
    "DataSpec",
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
