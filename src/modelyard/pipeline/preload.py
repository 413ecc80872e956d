"""Imported once by the training fork server, so that each training process starts warm.

Every training run forks from a server process that has already imported what most training
needs (numpy, pandas, Parquet, scikit-learn and skops, modelyard's own modules): importing these
takes seconds, forking milliseconds. A framework that is missing or fails to import is skipped;
the child imports whatever else the train function needs on its own. Importing this module is
its whole purpose, which is why it imports at import time.
"""

from __future__ import annotations

import contextlib
import importlib

#: imported in this order by the fork server. TensorFlow stays out: its import starts thread
#: pools, and forking a process whose threads may hold locks is unsafe. (skops.io imports torch
#: through scikit-learn's array-API shim; importing torch starts no threads, so it is fine.)
MODULES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "sklearn.base",
    "skops.io",
    "modelyard.adapters.sklearn",
    "modelyard.pipeline.child",
    "modelyard.pipeline.data",
    "modelyard.pipeline.evaluate",
)

for _name in MODULES:
    with contextlib.suppress(Exception):
        importlib.import_module(_name)
