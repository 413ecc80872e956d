"""Training runs: load data, validate, train in a child process, evaluate, gate, register.

``run_pipeline(spec, registry)`` is the entry point; the modules under it are the stages
(``data``, ``validation``, ``child``, ``gate``, ``profile``, ``lineage``), each usable alone.
"""

from modelyard.pipeline.run import RunResult, run_pipeline

__all__ = ["RunResult", "run_pipeline"]
