"""The serving sections of a spec: device and batching, rollouts, precomputed answers."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from modelyard.devices import default_pool, validate_device, validate_pool
from modelyard.spec.base import STRICT, parse_duration

_KEY_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


class BatchingSpec(BaseModel):
    """Dynamic batching: gather requests up to ``max_batch_size`` or ``max_delay_ms``."""

    model_config = STRICT

    #: None (auto) and True batch every flavor; False runs each request alone. A model waits
    #: for no more rows unless ``max_delay_ms`` is set (a batch forms from what queued while
    #: the previous one ran), except a deep-learning flavor on a GPU, which waits up to
    #: ``max_delay_ms`` (2 by default).
    enabled: bool | None = None
    max_batch_size: int = Field(32, ge=1, le=65536)
    max_delay_ms: float = Field(2.0, ge=0.0, le=10_000)
    max_queue: int = Field(1024, ge=1)


class ServingSpec(BaseModel):
    """Where and how the model answers live traffic."""

    model_config = STRICT

    device: str = "auto"
    #: the pool of servers that serves this model (``modelyard serve --pool NAME``; one
    #: deployment per pool from ``modelyard build``). None: ``gpu`` when ``device`` asks for a
    #: GPU (``cuda``, or ``auto`` for a deep-learning flavor), otherwise ``cpu``.
    pool: str | None = None
    #: where predict runs: "process" = a device worker that owns the device (restarted if it
    #: dies); "inline" = inside the server process; "auto" = process on a GPU, inline on CPU.
    isolation: Literal["auto", "process", "inline"] = "auto"
    #: what runs predict: "native" = the model's own framework; "onnx" = ONNX Runtime, on the
    #: version's ONNX derivative (``modelyard export MODEL:V --format onnx``; ``modelyard
    #: train`` makes it when the spec asks for onnx). Answers keep the version's own shape.
    runtime: Literal["native", "onnx"] = "native"
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

    model_config = STRICT

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


class PrecomputeSpec(BaseModel):
    """Score a known population ahead of time and serve its answers by key (live fallback).

    ``input`` takes what ``modelyard batch --input`` takes (files, globs, fsspec URLs, or
    ``sql:SELECT ...`` with ``url``); ``key`` is its id column; ``store`` is ``registry`` (the
    registry database) or a ``redis://`` URL; answers older than ``ttl`` are answered live.
    """

    model_config = STRICT

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



__all__ = ["BatchingSpec", "PrecomputeSpec", "RolloutSpec", "ServingSpec"]
