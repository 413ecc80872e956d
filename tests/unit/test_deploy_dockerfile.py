"""Build contexts as text: every Dockerfile read back with a Dockerfile parser and checked."""

from __future__ import annotations

import io
import json
import re
import shlex

import pytest
from dockerfile_parse import DockerfileParser

from modelyard.deploy.dockerfile import (
    BAKED,
    PROJECT,
    UID,
    BakedVersion,
    ImagePlan,
    render_context,
    server_command,
)
from modelyard.deploy.pins import Pin
from modelyard.deploy.plan import Pool

CPU = Pool("cpu", gpu=False, models=("churn", "fraud"), flavors=("sklearn", "xgboost"))
GPU = Pool("gpu", gpu=True, models=("digits", "tickets"), flavors=("tensorflow", "torch"))
PINS = (Pin("modelyard", "0.1.0"), Pin("numpy", "2.1.0"), Pin("tensorflow-cpu", "2.18.0"),
        Pin("torch", "2.5.1+cpu"), Pin("xgboost-cpu", "2.1.3"))
BAKE = (BakedVersion("fraud", 3, "ab" * 32, 1234),)

PLANS = {
    "cpu": ImagePlan(pool=CPU, base_image="python:3.11-slim-bookworm", pins=PINS[:2],
                     tag="modelyard-cpu:0.1.0"),
    "cpu-baked": ImagePlan(pool=CPU, base_image="debian-python:bookworm", pins=PINS[:2],
                           tag="modelyard-cpu:0.1.0", baked=BAKE),
    "gpu": ImagePlan(pool=GPU, base_image="modelyard/cuda-python:12.4.1-py3.11", pins=PINS,
                     tag="modelyard-gpu:0.1.0", python="python3.11"),
}
#: what a RUN may not do: reach a network (the build runs with --network none)
NETWORK = re.compile(r"\b(apt-get|apt|apk|yum|dnf|curl|wget|git)\b")


def parsed(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def instructions(text: str, name: str) -> list[str]:
    return [i["value"] for i in parsed(text).structure if i["instruction"] == name]


def stages(text: str) -> list[list[dict[str, str]]]:
    """The instructions of each stage, in order."""
    out: list[list[dict[str, str]]] = []
    for item in parsed(text).structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out and item["instruction"] != "COMMENT":
            out[-1].append(item)
    return out


@pytest.fixture(params=sorted(PLANS))
def dockerfile(request: pytest.FixtureRequest) -> tuple[ImagePlan, str]:
    plan = PLANS[request.param]
    return plan, render_context(plan)["Dockerfile"]


def test_two_stages_from_the_base_and_the_runtime_copies_only_the_environment(dockerfile):
    plan, text = dockerfile
    builder, runtime = stages(text)
    assert builder[0]["value"] == "${BASE_IMAGE} AS builder"
    assert runtime[0]["value"] == "${BASE_IMAGE} AS runtime"
    assert instructions(text, "ARG") == [f"BASE_IMAGE={plan.base_image}"]
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert copies[0] == "--from=builder /opt/modelyard/venv /opt/modelyard/venv"
    assert not any("wheelhouse" in c for c in copies)


def test_the_builder_installs_only_from_the_wheelhouse_and_no_run_needs_a_network(dockerfile):
    _, text = dockerfile
    runs = instructions(text, "RUN")
    assert runs and not any(NETWORK.search(run) for run in runs)
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    words = shlex.split(installs[0])
    assert "--no-index" in words and "--find-links" in words and "--only-binary" in words


def test_the_server_runs_as_a_non_root_user_in_exec_form_as_pid_1(dockerfile):
    plan, text = dockerfile
    _, runtime = stages(text)
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users == [f"{UID}:{UID}"] and UID != 0
    entrypoint = json.loads(instructions(text, "ENTRYPOINT")[0])  # JSON: exec form, no shell
    assert entrypoint == server_command(plan.pool.name)
    assert entrypoint[-2:] == ["--pool", plan.pool.name] and "0.0.0.0" in entrypoint
    assert instructions(text, "CMD") == []
    assert instructions(text, "STOPSIGNAL") == ["SIGTERM"]


def test_the_healthcheck_asks_healthz_with_python_in_exec_form(dockerfile):
    _, text = dockerfile
    (check,) = instructions(text, "HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert json.loads(command) == ["python", "-m", "modelyard.deploy.healthcheck"]
    assert "--interval=" in options and "--start-period=" in options


def test_the_image_reads_registry_and_store_from_the_environment_at_start(dockerfile):
    plan, text = dockerfile
    env = parsed(text).envs
    assert env["MODELYARD_HOME"] == "/var/lib/modelyard" and env["MODELYARD_PORT"] == "8000"
    assert "MODELYARD_DB" not in env and "MODELYARD_ARTIFACTS" not in env
    assert ("MODELYARD_BAKED_ARTIFACTS" in env) == bool(plan.baked)


def test_labels_name_the_pool_its_models_and_what_is_baked(dockerfile):
    plan, text = dockerfile
    labels = parsed(text).labels
    assert labels["io.modelyard.pool"] == plan.pool.name
    assert labels["io.modelyard.models"] == ",".join(plan.pool.models)
    assert labels["io.modelyard.baked"] == ("fraud:3" if plan.baked else "")


def test_baked_blobs_are_copied_read_only_with_their_manifest():
    files = render_context(PLANS["cpu-baked"])
    assert f"baked/ {BAKED}/" in instructions(files["Dockerfile"], "COPY")
    assert json.loads(files["baked/manifest.json"]) == [
        {"model": "fraud", "version": 3, "digest": "ab" * 32, "size": 1234}]
    assert "baked/manifest.json" not in render_context(PLANS["cpu"])


def test_the_context_sends_only_what_the_dockerfile_copies():
    lines = render_context(PLANS["cpu"])[".dockerignore"].splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules == ["*", "!Dockerfile", "!requirements.txt", "!wheelhouse/*.whl", "!baked/",
                     "!project/"]


def test_the_project_code_is_copied_read_only_and_importable():
    with_code = ImagePlan(pool=CPU, base_image="python:3.11-slim-bookworm", pins=PINS[:2],
                          tag="modelyard-cpu:0.1.0", project_file="modelyard.yaml")
    text = render_context(with_code)["Dockerfile"]
    assert f"project/ {PROJECT}/" in instructions(text, "COPY")
    assert f'PYTHONPATH="{PROJECT}"' in instructions(text, "ENV")[0]
    assert not any("project/" in copy for copy in instructions(
        render_context(PLANS["cpu"])["Dockerfile"], "COPY"))


def test_cpu_requirements_are_the_pins_as_installed():
    assert render_context(PLANS["cpu"])["requirements.txt"] == "modelyard==0.1.0\nnumpy==2.1.0\n"


def test_gpu_requirements_take_the_cuda_builds_of_the_frameworks():
    lines = render_context(PLANS["gpu"])["requirements.txt"].splitlines()
    assert lines == ["modelyard==0.1.0", "numpy==2.1.0", "tensorflow[and-cuda]==2.18.0",
                     "torch==2.5.1", "xgboost==2.1.3"]


def test_the_gpu_context_documents_its_cuda_base_and_wheel_steps():
    files = render_context(PLANS["gpu"])
    base = parsed(files["base.Dockerfile"])
    assert base.baseimage.startswith("nvidia/cuda:") and "runtime" in base.baseimage
    assert "python3.11-venv" in instructions(files["base.Dockerfile"], "RUN")[0]
    assert "python3.11 -m venv" in instructions(files["Dockerfile"], "RUN")[0]
    fetch = files["fetch-wheels.sh"]
    assert fetch.startswith("#!/bin/sh") and "download.pytorch.org/whl/cu" in fetch
    assert "requirements.txt" in fetch and "--only-binary" in fetch
    assert "base.Dockerfile" not in render_context(PLANS["cpu"])
