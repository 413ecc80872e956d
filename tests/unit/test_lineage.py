"""Lineage: the git commit of the code, the installed packages, and a stable data hash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.pipeline.lineage import code_ref, environment, fingerprint


def test_code_ref_inside_and_outside_a_repository(tmp_path: Path):
    assert code_ref(tmp_path) == {"git_sha": None, "dirty": None, "repo": None}
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    clean = code_ref(repo / "train.py")
    assert len(clean["git_sha"]) == 40 and clean["dirty"] is False
    assert Path(clean["repo"]).resolve() == repo.resolve()
    (repo / "train.py").write_text("x = 2\n")
    assert code_ref(repo)["dirty"] is True


def test_environment_lists_installed_packages_without_importing_them():
    env = environment()
    assert env["python"].count(".") == 2
    assert {"modelyard", "numpy", "pandas"} <= set(env["packages"])
    assert all(isinstance(v, str) for v in env["packages"].values())


def test_fingerprint_is_stable_and_sensitive():
    df = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    y = np.array([0, 1])
    base = fingerprint(df, y)
    assert base == fingerprint(df.copy(), y.copy()) and len(base) == 64
    assert base != fingerprint(df.assign(a=[1.0, 2.5]), y)
    assert base != fingerprint(df.rename(columns={"a": "c"}), y)
    assert base != fingerprint(df.astype({"a": "float32"}), y)
    assert base != fingerprint(df, np.array([1, 0]))
    texts = np.array(["good", "bad"], dtype=object)
    assert fingerprint(texts, y) == fingerprint(texts.copy(), y)
    assert fingerprint(np.zeros((2, 3))) != fingerprint(np.zeros((3, 2)))
