"""``modelyard build`` writes complete contexts: every pin has its wheel, CPU and GPU alike."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from dockerfile_parse import DockerfileParser
from packaging.utils import canonicalize_name, parse_wheel_filename

from modelyard.cli import main

pytestmark = pytest.mark.integration

#: wheels kept between runs (pip download on the host fills it the first time)
CACHE = Path(os.environ.get("MODELYARD_TEST_CACHE", "/tmp/modelyard-test-cache"))
PROJECT = """\
models:
  fraud: {train: t.py:train, flavor: sklearn, data: {path: d.csv, target: y}}
  digits: {train: t.py:train, flavor: torch, data: {path: d.csv, target: y},
           serving: {device: cuda}}
"""


@pytest.mark.timeout(900)
def test_each_pool_gets_its_context_with_every_pinned_wheel(tmp_path: Path) -> None:
    (tmp_path / "modelyard.yaml").write_text(PROJECT)
    out = tmp_path / "build"
    result = CliRunner().invoke(main, [
        "--home", str(tmp_path / "home"), "build", "--project", str(tmp_path / "modelyard.yaml"),
        "--out", str(out), "--wheel-cache", str(CACHE / "wheels"), "--json"])
    assert result.exit_code == 0, result.output
    cpu, gpu = json.loads(result.output)
    assert (cpu["pool"], cpu["models"], cpu["ready"]) == ("cpu", ["fraud"], True)
    assert (gpu["pool"], gpu["models"], gpu["ready"]) == ("gpu", ["digits"], False)

    cpu_dir = Path(cpu["context"])
    pins = dict(line.split("==") for line in (cpu_dir / "requirements.txt").read_text().split())
    wheels = {parse_wheel_filename(p.name)[0]: p for p in (cpu_dir / "wheelhouse").iterdir()}
    assert set(wheels) == {canonicalize_name(name) for name in pins}
    assert not {"torch", "tensorflow-cpu", "xgboost-cpu"} & set(pins)
    with zipfile.ZipFile(wheels[canonicalize_name("modelyard")]) as own:
        # the wheel is this checkout's code: the health check the image runs is in it
        assert "modelyard/deploy/healthcheck.py" in own.namelist()
    assert sorted(p.name for p in cpu_dir.iterdir()) == [
        ".dockerignore", "Dockerfile", "project", "requirements.txt", "wheelhouse"]
    # the project file travels (the scheduler retrains from it); the build output does not
    assert sorted(p.name for p in (cpu_dir / "project").iterdir()) == ["modelyard.yaml"]

    gpu_dir = Path(gpu["context"])
    assert "torch==" in (gpu_dir / "requirements.txt").read_text()
    assert [p.name for p in (gpu_dir / "wheelhouse").iterdir()] == [
        wheels[canonicalize_name("modelyard")].name]  # the rest is fetch-wheels.sh's
    assert os.access(gpu_dir / "fetch-wheels.sh", os.X_OK)
    _check_dockerfile(cpu_dir / "Dockerfile", "cpu")
    _check_dockerfile(gpu_dir / "Dockerfile", "gpu")


def _check_dockerfile(path: Path, pool: str) -> None:
    """What every written Dockerfile must be, read back with a Dockerfile parser."""
    parsed = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    steps = [(i["instruction"], i["value"]) for i in parsed.structure]
    assert [v for k, v in steps if k == "FROM"] == ["${BASE_IMAGE} AS builder",
                                                     "${BASE_IMAGE} AS runtime"]
    assert [v for k, v in steps if k == "USER"] == ["10001:10001"]
    (entrypoint,) = [json.loads(v) for k, v in steps if k == "ENTRYPOINT"]
    assert entrypoint[:2] == ["modelyard", "serve"] and entrypoint[-2:] == ["--pool", pool]
    assert all("--no-index" in v for k, v in steps if k == "RUN" and "pip install" in v)


@pytest.mark.timeout(900)
def test_kubernetes_manifests_run_the_images_just_built(tmp_path: Path) -> None:
    from modelyard.deploy.kubernetes import documents

    (tmp_path / "modelyard.yaml").write_text(PROJECT)
    (tmp_path / "kube.yaml").write_text("namespace: shop\ndrain_s: 7\n")
    out = tmp_path / "build"
    result = CliRunner().invoke(main, [
        "--home", str(tmp_path / "home"), "build", "--project", str(tmp_path / "modelyard.yaml"),
        "--out", str(out), "--wheel-cache", str(CACHE / "wheels"), "--pool", "cpu",
        "--tag", "registry.example/shop", "--kubernetes", "--kube-options",
        str(tmp_path / "kube.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    built = json.loads(result.output)
    (cpu,) = built["contexts"]
    manifests = Path(built["kubernetes"])
    assert manifests == out / "kubernetes" and (manifests / "overlays" / "cpu").is_dir()
    (deployment,) = [doc for doc in documents(
        (manifests / "pools" / "cpu" / "server.yaml").read_text())
        if doc["kind"] == "Deployment"]
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == cpu["image"] and cpu["image"].startswith("registry.example/shop-cpu:")
    (overlay,) = documents((manifests / "overlays" / "cpu" / "kustomization.yaml").read_text())
    assert overlay["namespace"] == "shop"
    assert server["args"][server["args"].index("--drain") + 1] == "7"
    assert not (manifests / "pools" / "gpu").exists()  # only the pools built
