"""Run the precompute batch job of a version: its ``precompute`` section as a batch job.

:func:`precompute` scores the section's ``input`` with the version through
:func:`modelyard.batch.score` into ``precomputed:STORE`` (see :mod:`~modelyard.precompute.sink`),
so the run is a ``batch`` run in ``modelyard runs``, chunked and resumable. A run after a
finished one starts afresh (the answers are refreshed, their TTL restarts); a run after one
that was killed goes on after its last chunk, unless the input changed since.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from modelyard.batch import BatchJob, BatchSummary, ChunkDone, Manifest, score
from modelyard.errors import ConfigError, ConflictError
from modelyard.precompute.sink import SCHEME
from modelyard.precompute.stores import REGISTRY, open_store, store_url
from modelyard.version_settings import VersionSettings

if TYPE_CHECKING:
    from modelyard.registry import Registry
    from modelyard.registry.records import ModelVersion
    from modelyard.spec import PrecomputeSpec


#: the trigger of a run started by hand (``modelyard precompute``); the scheduler's say why
MANUAL = "precompute:manual"


def section_of(version: ModelVersion) -> PrecomputeSpec:
    """The version's registered ``precompute`` section, or :class:`ConfigError` saying how to
    get one."""
    section = VersionSettings.of(version).precompute
    if section is None:
        raise ConfigError(f"{version.ref} was registered without a precompute section; add "
                          "precompute: {input, key} to its spec and train a new version")
    return section


def should_restart(found: Manifest | None) -> bool:
    """Whether a run starts afresh (nothing yet, or the last run finished: refresh every
    answer) rather than resuming a run that stopped half-way."""
    return found is None or found.complete


def read_manifest(registry: Registry, version: ModelVersion, section: PrecomputeSpec
                  ) -> Manifest | None:
    """The manifest of the version's last precompute run, if any."""
    own = section.store == REGISTRY  # the registry's own engine, not one more
    store = open_store(store_url(section.store, registry.db.url),
                       engine=registry.db.engine if own else None)
    try:
        found = store.read_manifest(version.model, version.version)
    finally:
        store.close()
    return None if found is None else Manifest.from_dict(orjson.loads(found))


def precompute(registry: Registry, ref: str, *, trigger: str = MANUAL,
               on_chunk: Callable[[ChunkDone], None] | None = None) -> BatchSummary:
    """Score the precompute input of the version ``ref`` names into its online store."""
    version = registry.resolve(ref)
    section = section_of(version)
    restart = should_restart(read_manifest(registry, version, section))
    job = job_for(version, section, trigger=trigger, restart=restart)
    try:
        return score(job, registry, on_chunk=on_chunk)
    except ConflictError:
        if restart:
            raise
        # the half-done run was over another input: start afresh over this one
        return score(job_for(version, section, trigger=trigger, restart=True), registry,
                     on_chunk=on_chunk)


def job_for(version: ModelVersion, section: PrecomputeSpec, *, trigger: str,
            restart: bool) -> BatchJob:
    """The batch job that precomputes ``version``'s answers as ``section`` says."""
    return BatchJob(version.ref, section.inputs, f"{SCHEME}:{section.store}", (section.key,),
                    chunk_rows=section.chunk_rows, scores=True, restart=restart,
                    sql_url=section.url, trigger=trigger)


__all__ = ["MANUAL", "job_for", "precompute", "read_manifest", "section_of", "should_restart"]
