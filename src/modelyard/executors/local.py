"""The local executor: a run's work in this process, its training in a child process here."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from modelyard.pipeline.job import Executed, RunHooks, RunJob, execute


class LocalExecutor:
    """Runs :func:`~modelyard.pipeline.job.execute` here: the data loads in this process and the
    training runs in a child (:mod:`modelyard.pipeline.child`). ``resources`` are not enforced."""

    name: ClassVar[str] = "local"

    def run(self, job: RunJob, work: Path, hooks: RunHooks) -> Executed:
        """Execute ``job`` on this machine with ``work`` as its folder."""
        return execute(job, work, hooks)


__all__ = ["LocalExecutor"]
