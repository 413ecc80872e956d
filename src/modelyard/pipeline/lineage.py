"""Where a version came from: the code's git commit, the package versions, and the data's hash."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: package -> the distributions that provide it (CPU builds are published under other names).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "modelyard": ("modelyard",),
    "numpy": ("numpy",),
    "pandas": ("pandas",),
    "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "lightgbm": ("lightgbm",),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
    "keras": ("keras",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def code_ref(path: str | Path) -> dict[str, Any]:
    """The git commit of the repository holding ``path``, whether it has uncommitted changes,
    and the repository's folder; all ``None`` outside a git repository (or without git)."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    sha = _git(folder, "rev-parse", "HEAD") if top else None
    if not top or not sha:
        return {"git_sha": None, "dirty": None, "repo": top}
    # untracked files count: a train.py never committed is not the code at this commit
    status = _git(folder, "status", "--porcelain")
    return {"git_sha": sha, "dirty": bool(status) if status is not None else None, "repo": top}


def environment() -> dict[str, Any]:
    """The Python version, the platform and the versions of the ML packages installed here.

    Read from package metadata, so no framework is imported.
    """
    packages: dict[str, str] = {}
    for name, dists in _PACKAGES.items():
        for dist in dists:
            try:
                packages[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return {"python": platform.python_version(), "platform": platform.platform(),
            "implementation": sys.implementation.name, "packages": packages}


def fingerprint(X: Any, y: Any = None) -> str:
    """A sha256 of the training data's content, shape, dtypes and column names.

    The same rows in the same order give the same hash in any process; any changed value,
    column or dtype changes it.
    """
    digest = hashlib.sha256()
    for part in (X, y):
        if part is not None:
            _feed(digest, part)
    return digest.hexdigest()


def _feed(digest: Any, data: Any) -> None:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        digest.update(repr([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
        digest.update(repr(data.shape).encode())
        digest.update(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
        return
    arr = data.to_numpy() if hasattr(data, "to_numpy") else np.asarray(data)
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    if arr.dtype.kind == "O":  # Python objects (strings): hash their values, not pointers
        flat = pd.Series(arr.reshape(-1), dtype=object)
        digest.update(pd.util.hash_pandas_object(flat, index=False).to_numpy().tobytes())
    else:
        digest.update(np.ascontiguousarray(arr).tobytes())


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


__all__ = ["code_ref", "environment", "fingerprint"]
