"""``modelyard build`` refuses what it cannot build with one line, before any wheel is fetched."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from modelyard.cli import main
from modelyard.registry import Registry

PROJECT = """\
models:
  fraud: {train: t.py:train, flavor: sklearn, data: {path: d.csv, target: y}}
  digits: {train: t.py:train, flavor: torch, data: {path: d.csv, target: y},
           serving: {device: cuda}}
  fresh: {train: t.py:train, data: {path: d.csv, target: y}}
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    path = tmp_path / "modelyard.yaml"
    path.write_text(PROJECT)
    return path


def build(tmp_path: Path, project: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "build", "--project",
                                     str(project), "--out", str(tmp_path / "out"), *args])


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_model_with_no_flavor_yet_is_named(tmp_path: Path, project: Path) -> None:
    assert "model 'fresh' has no flavor yet" in one_error(build(tmp_path, project), 2)


def test_an_unknown_pool_lists_the_projects_pools(tmp_path: Path, project: Path) -> None:
    project.write_text(PROJECT.split("  fresh:")[0])
    line = one_error(build(tmp_path, project, "--pool", "nlp"), 2)
    assert "--pool 'nlp' is not a pool of this project; its pools: cpu, gpu" in line


def test_bake_names_a_version_in_a_pool_being_built(tmp_path: Path, project: Path,
                                                    artifact_dir) -> None:
    project.write_text(PROJECT.split("  fresh:")[0])
    assert "digits" in one_error(build(tmp_path, project, "--bake", "digits:1"), 3)
    with Registry.open(home=tmp_path / "home") as registry:
        registry.register("digits", artifact_dir(), flavor="python")
    line = one_error(build(tmp_path, project, "--pool", "cpu", "--bake", "digits:1"), 2)
    assert "--bake digits:1: model 'digits' is in none of the pools being built" in line


def test_the_flavor_of_an_unnamed_model_comes_from_its_newest_version(
        tmp_path: Path, project: Path, artifact_dir) -> None:
    with Registry.open(home=tmp_path / "home") as registry:
        registry.register("fresh", artifact_dir(), flavor="python")
    # the pools are planned (fresh lands in cpu); the unknown pool is refused after that
    line = one_error(build(tmp_path, project, "--pool", "edge"), 2)
    assert "its pools: cpu, gpu" in line


def test_kubernetes_options_are_checked_before_any_build_work(tmp_path: Path,
                                                              project: Path) -> None:
    options = tmp_path / "kube.yaml"
    options.write_text("namespace: shop\ndrain_s: soon\n")
    line = one_error(build(tmp_path, project, "--kube-options", str(options)), 2)
    assert "--kube-options needs --kubernetes" in line
    line = one_error(build(tmp_path, project, "--kubernetes", "--kube-options", str(options)), 2)
    assert "drain_s" in line and "integer" in line
    options.write_text("namespace: shop\nreplicas: 3\n")
    line = one_error(build(tmp_path, project, "--kubernetes", "--kube-options", str(options)), 2)
    assert "replicas" in line
    assert not (tmp_path / "out").exists()  # nothing was written


def test_the_project_code_is_its_file_and_python_beside_it_without_envs_or_output(
        tmp_path: Path) -> None:
    from modelyard.deploy.image import project_files

    root = tmp_path / "shop"
    for rel in ("modelyard.yaml", "train.py", "features/encode.py", "data/train.csv",
                ".venv/lib/site.py", "env/lib/x.py", "env/pyvenv.cfg", ".modelyard/x.py",
                "features/__pycache__/encode.py", "build/cpu/project/train.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    found = project_files(root / "modelyard.yaml", skip=[root / "build"])
    assert [str(inside) for _, inside in found] == [
        "modelyard.yaml", "features/encode.py", "train.py"]
