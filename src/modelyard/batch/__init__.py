"""Batch scoring: a registered version over files or a SQL query, into Parquet or a SQL table.

``modelyard.batch.score(BatchJob("fraud@production", "data/*.parquet", "out/"))`` streams the
input in chunks through the server's own input path and answer encoding, sets bad rows aside
with their reasons, commits each chunk atomically with a manifest (a rerun after a kill goes on
from the last finished chunk) and records the run in the registry. ``modelyard batch`` is the
command. The pure decisions are in :mod:`modelyard.batch.plan`.
"""

from __future__ import annotations

from modelyard.batch.job import (
    BATCH_VARIANT,
    ENGINES,
    BatchJob,
    BatchSummary,
    ChunkDone,
    register_engine,
    score,
)
from modelyard.batch.plan import Manifest

__all__ = ["BATCH_VARIANT", "ENGINES", "BatchJob", "BatchSummary", "ChunkDone", "Manifest",
           "register_engine", "score"]
