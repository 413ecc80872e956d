"""Lineage: the git commit of the code, the installed packages, and a stable data hash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from modelyard.pipeline.lineage import code_ref, environment, fingerprint, same_code, spec_hash
from modelyard.spec import Spec


def _repo(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    return repo, git


def test_code_ref_inside_and_outside_a_repository(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert code_ref(empty) == {"git_sha": None, "dirty": None, "repo": None, "content": None}
    repo, _ = _repo(tmp_path)
    clean = code_ref(repo / "train.py")
    assert len(clean["git_sha"]) == 40 and clean["dirty"] is False and clean["content"] is None
    assert Path(clean["repo"]).resolve() == repo.resolve()
    (repo / "train.py").write_text("x = 2\n")
    assert code_ref(repo)["dirty"] is True


def test_same_code_is_one_clean_commit_or_one_content(tmp_path: Path):
    repo, git = _repo(tmp_path)
    clean = code_ref(repo)
    assert same_code(clean, code_ref(repo))
    (repo / "train.py").write_text("x = 2\n")  # uncommitted: not the commit's code
    dirty = code_ref(repo)
    assert not same_code(clean, dirty) and len(dirty["content"]) == 64
    assert same_code(dirty, code_ref(repo))  # the same uncommitted change
    (repo / "helper.py").write_text("y = 1\n")  # an untracked file is code too
    with_helper = code_ref(repo)
    assert not same_code(dirty, with_helper) and same_code(with_helper, code_ref(repo))
    (repo / "train.py").write_text("x = 1\n")
    (repo / "helper.py").unlink()
    assert same_code(clean, code_ref(repo))  # back to the commit
    subprocess.run([*git, "commit", "-qam", "second", "--allow-empty"], check=True)
    assert not same_code(clean, code_ref(repo))  # another commit, even with the same files

    plain = tmp_path / "plain"
    (plain / "pkg").mkdir(parents=True)
    (plain / "train.py").write_text("x = 1\n")
    (plain / "data.csv").write_text("a\n1\n")
    before = code_ref(plain)
    assert before["git_sha"] is None and same_code(before, code_ref(plain))
    (plain / "data.csv").write_text("a\n2\n")  # data is not code
    assert same_code(before, code_ref(plain))
    (plain / "pkg" / "util.py").write_text("z = 0\n")
    assert not same_code(before, code_ref(plain))
    unknown = {"git_sha": None, "dirty": None, "repo": None, "content": None}
    assert not same_code(unknown, unknown)


def test_spec_hash_covers_the_declaration_but_not_the_folder(tmp_path: Path):
    base = {"name": "m", "train": "train.py:train", "data": {"path": "d.csv", "target": "y"},
            "metrics": ["f1"], "root": tmp_path}
    first = spec_hash(Spec.parse(base))
    assert first == spec_hash(Spec.parse(base)) and len(first) == 64
    assert first == spec_hash(Spec.parse({**base, "root": tmp_path / "moved"}))
    assert first != spec_hash(Spec.parse({**base, "gate": {"min": {"f1": 0.5}}}))
    assert first != spec_hash(Spec.parse({**base, "serving": {"device": "cpu"}}))
    decorated = Spec.parse({**base, "train": test_code_ref_inside_and_outside_a_repository})
    assert spec_hash(decorated) == spec_hash(decorated.model_copy()) != first


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
