"""What a training run asks of the registry: the registry itself, or a server's API.

:func:`~modelyard.pipeline.run_pipeline` records, gates, registers and promotes through these
calls only, so the same pipeline runs beside the database (:class:`~modelyard.registry.Registry`)
and on a machine that holds only a trainer's key
(:class:`~modelyard.cli.remote.RemoteRegistry`, ``modelyard train --server URL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from modelyard.registry.owners import Owner
from modelyard.registry.records import AliasEvent, Model, ModelVersion, Run


class RunRegistry(Protocol):
    """The registry calls a training run makes (see the module docstring)."""

    def get_model(self, name: str) -> Model:
        """One model; :class:`~modelyard.errors.NotFoundError` if there is none."""
        ...

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version of ``name``."""
        ...

    def resolve(self, ref: str) -> ModelVersion:
        """The version ``name``, ``name:3`` or ``name@alias`` names."""
        ...

    def artifact_path(self, version: ModelVersion) -> Path:
        """A local folder holding ``version``'s artifact, verified against its digest."""
        ...

    def register(self, name: str, artifact_dir: Path, *, flavor: str,
                 meta: dict[str, Any] | None = ..., signature: dict[str, Any] | None = ...,
                 metrics: dict[str, Any] | None = ..., params: dict[str, Any] | None = ...,
                 data_fingerprint: str | None = ..., code_ref: dict[str, Any] | None = ...,
                 environment: dict[str, Any] | None = ...,
                 reference_stats: dict[str, Any] | None = ..., run_id: str | None = ...,
                 description: str = ..., actor: str | None = ..., semver: str | None = ...,
                 data_sources: list[dict[str, Any]] | None = ...) -> ModelVersion:
        """Store the artifact folder and record a new version of ``name`` (labelled
        ``semver``, trained on ``data_sources``)."""
        ...

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = ...,
                  reason: str = ...) -> AliasEvent:
        """Point ``name@alias`` at ``version``."""
        ...

    def start_run(self, model: str, *, trigger: str = ..., actor: str | None = ...,
                  owner: Owner | None = ..., kind: str = ...,
                  details: dict[str, Any] | None = ...) -> Run:
        """Record a run as started."""
        ...

    def beat_run(self, run_id: str, *, logs: str | None = ...) -> bool:
        """The run is still at work (its log so far, given ``logs``); False once it has
        ended."""
        ...

    def finish_run(self, run_id: str, *, status: str, version: int | None = ...,
                   promoted: bool = ..., metrics: dict[str, Any] | None = ...,
                   gate: dict[str, Any] | None = ..., logs: str = ...,
                   failure_reason: str | None = ...,
                   details: dict[str, Any] | None = ...) -> Run:
        """Record how the run ended."""
        ...

    def get_run(self, run_id: str) -> Run:
        """One run by id."""
        ...

    def list_runs(self, model: str | None = None, *, limit: int = ...) -> list[Run]:
        """Recent runs, newest first (the data checks read the accepted batches' profiles)."""
        ...


__all__ = ["RunRegistry"]
