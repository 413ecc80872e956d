"""Where a version came from: the code's git commit, the package versions, and the data's hash.

And whether a new run would make the same thing again: :func:`same_code` and :func:`spec_hash`
let the pipeline see that data, code, params, spec and packages equal the latest version's,
and register nothing ("unchanged") instead of a duplicate.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from modelyard.spec import Spec

#: package -> the distributions that provide it (CPU builds are published under other names).
#: the most a code content hash reads; a bigger tree has no content hash (counts as changed).
_MAX_CODE_BYTES = 64 * 2**20
_MAX_CODE_DIRS = 2000
#: folders that hold no project code (environments, caches, the registry itself).
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", "env"}
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
    the repository's folder, and ``content``: a hash of the code where the commit alone does not
    name it (a dirty tree: the commit, its diff and untracked files; outside git: the ``.py``
    files under the folder). ``None`` where unknown, or the tree is too big to read."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    top = _git(folder, "rev-parse", "--show-toplevel")
    sha = _git(folder, "rev-parse", "HEAD") if top else None
    if not top or not sha:
        return {"git_sha": None, "dirty": None, "repo": top, "content": _folder_hash(folder)}
    # untracked files count: a train.py never committed is not the code at this commit
    status = _git(folder, "status", "--porcelain")
    dirty = bool(status) if status is not None else None
    content = _worktree_hash(Path(top), sha) if dirty else None
    return {"git_sha": sha, "dirty": dirty, "repo": top, "content": content}


def same_code(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether two :func:`code_ref` results name the same code: one clean commit, or one
    content hash. Anything unknown counts as different."""
    if now.get("content") is not None and now.get("content") == before.get("content"):
        return True
    return (now.get("git_sha") is not None and now.get("git_sha") == before.get("git_sha")
            and now.get("dirty") is False and before.get("dirty") is False)


def spec_hash(spec: Spec) -> str:
    """A sha256 of everything a spec declares but its folder: the same declaration, the same
    hash, in any process (callables count by their import path). Where runs execute
    (``executor``, ``resources``, ``retries``) does not change the model, so it is left out."""
    body = spec.model_dump(exclude={"root", "executor", "resources", "retries"})
    text = json.dumps(body, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', value)}"
    return str(value)


def _worktree_hash(top: Path, sha: str) -> str | None:
    """The commit, the diff from it (staged or not) and the untracked files' names and bytes."""
    diff = _git_bytes(top, "diff", "HEAD", "--binary")
    listed = _git_bytes(top, "ls-files", "--others", "--exclude-standard", "-z")
    if diff is None or listed is None:
        return None
    names = sorted(n for n in listed.decode(errors="surrogateescape").split("\0") if n)
    return _hash_files(top, names, prefix=sha.encode() + diff)


def _folder_hash(folder: Path) -> str | None:
    """The names and bytes of the ``.py`` files under ``folder`` (hidden folders, caches and
    environments left out); None when there are none, or too many folders to walk."""
    names: list[str] = []
    for walked, found in enumerate(_python_files(folder)):
        if walked >= _MAX_CODE_DIRS:  # a home folder, not a project: no content hash
            return None
        names.extend(str(p.relative_to(folder)) for p in found)
    return _hash_files(folder, sorted(names)) if names else None


def _python_files(folder: Path) -> Iterator[list[Path]]:
    """The ``.py`` files of each folder walked, one list per folder."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS]
        yield [Path(root) / f for f in files if f.endswith(".py")]


def _hash_files(top: Path, names: list[str], prefix: bytes = b"") -> str | None:
    digest = hashlib.sha256(prefix)
    read = len(prefix)
    for name in names:
        try:
            data = (top / name).read_bytes()
        except OSError:  # vanished or unreadable: not a content we can vouch for
            return None
        read += len(data)
        if read > _MAX_CODE_BYTES:
            return None
        digest.update(f"\0{name}\0{len(data)}\0".encode(errors="surrogateescape"))
        digest.update(data)
    return digest.hexdigest()


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
    out = _git_bytes(folder, *args)
    return None if out is None else out.decode(errors="replace").strip()


def _git_bytes(folder: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


__all__ = ["code_ref", "environment", "fingerprint", "same_code", "spec_hash"]
