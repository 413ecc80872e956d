"""The Kubernetes manifests as a user relies on them, read back from the rendered files: GPU
pools on GPU nodes and CPU pools off them, a grace period covering drain and grace, probes on
the right paths, secrets referenced and never written, every pool complete, names valid.
(tests/integration/test_kubernetes_manifests.py renders them with kustomize and validates
them against the Kubernetes and custom-resource schemas.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelyard.deploy.kube_options import SECRET_NAME, KubeOptions, Resources
from modelyard.deploy.kubernetes import OVERLAYS, documents, render, write_kubernetes
from modelyard.deploy.plan import Pool, plan_pools
from modelyard.errors import ConfigError
from modelyard.spec import Spec

IMAGES = {"cpu": "registry.example/shop-cpu:1.0", "gpu": "registry.example/shop-gpu:1.0",
          "nlp": "registry.example/shop-nlp:1.0"}
DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def spec(name: str, flavor: str, **serving: str) -> Spec:
    return Spec(name=name, train="train.py:train", data={"path": "x.csv", "target": "y"},
                flavor=flavor, serving=serving)


@pytest.fixture()
def pools() -> list[Pool]:
    """A mixed project: two CPU models, a GPU model, a named CPU pool for an NLP model."""
    specs = {s.name: s for s in (spec("fraud", "sklearn"), spec("churn", "xgboost"),
                                 spec("digits", "torch"),
                                 spec("tickets", "tensorflow", device="cpu", pool="nlp"))}
    return plan_pools(specs, {})


def objects(files: dict[str, str], prefix: str = "") -> list[dict]:
    """The Kubernetes objects in the files under ``prefix``: not kustomize's own files."""
    return [doc for path, text in sorted(files.items())
            if path.startswith(prefix) and path.endswith(".yaml")
            for doc in documents(text)
            if doc.get("kind") not in (None, "Kustomization", "Component")]


def find(files: dict[str, str], kind: str, name: str, api: str | None = None) -> dict:
    found = [o for o in objects(files) if o.get("kind") == kind
             and o.get("metadata", {}).get("name") == name
             and api in (None, o.get("apiVersion"))]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def container(workload: dict) -> dict:
    pod = workload["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def test_every_pool_has_a_deployment_service_autoscaler_and_budget(pools):
    files = render(pools, IMAGES)
    assert [p.name for p in pools] == ["cpu", "gpu", "nlp"]
    for pool in pools:
        kinds = sorted(o["kind"] for o in objects(files, f"pools/{pool.name}/"))
        assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                         "Service"], pool.name
        hpa = find(files, "HorizontalPodAutoscaler", f"modelyard-{pool.name}")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": f"modelyard-{pool.name}"}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
        deployment = find(files, "Deployment", f"modelyard-{pool.name}")
        # the autoscaler owns the replica count; the manifest must not reset it on each apply
        assert "replicas" not in deployment["spec"]
        assert container(deployment)["image"] == IMAGES[pool.name]
        assert container(deployment)["args"][:7] == ["serve", "--host", "0.0.0.0", "--port",
                                                     "8000", "--pool", pool.name]


def test_the_gpu_pool_asks_for_a_gpu_and_tolerates_the_gpu_taint(pools):
    files = render(pools, IMAGES, KubeOptions(gpus=2))
    gpu = find(files, "Deployment", "modelyard-gpu")
    pod = gpu["spec"]["template"]["spec"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists",
            "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize("name", ["modelyard-cpu", "modelyard-nlp", "modelyard-dev",
                                  "modelyard-scheduler"])
def test_cpu_workloads_neither_ask_for_a_gpu_nor_tolerate_its_taint(pools, name):
    workload = find(render(pools, IMAGES), "Deployment", name)
    pod = workload["spec"]["template"]["spec"]
    resources = container(workload)["resources"]
    assert "nvidia.com/gpu" not in {**resources.get("limits", {}),
                                    **resources.get("requests", {})}
    assert "tolerations" not in pod and "nodeSelector" not in pod


@pytest.mark.parametrize(("drain", "grace"), [(10, 20), (0, 5), (45, 120)])
def test_the_grace_period_covers_the_drain_and_the_grace(pools, drain, grace):
    files = render(pools, IMAGES, KubeOptions(drain_s=drain, grace_s=grace))
    for name in ("modelyard-cpu", "modelyard-gpu", "modelyard-nlp", "modelyard-dev"):
        server = find(files, "Deployment", name)
        period = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > drain + grace
        args = container(server)["args"]
        assert args[args.index("--drain") + 1] == str(drain)
        assert args[args.index("--grace") + 1] == str(grace)


def test_probes_point_at_health_and_readiness_on_the_served_port(pools):
    files = render(pools, IMAGES, KubeOptions(port=9000))
    server = container(find(files, "Deployment", "modelyard-cpu"))
    assert server["ports"][0] == {"name": "http", "containerPort": 9000, "protocol": "TCP"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert server["startupProbe"]["httpGet"]["path"] == "/healthz"
    svc = find(files, "Service", "modelyard-cpu", api="v1")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http",
                                     "protocol": "TCP"}]


def test_the_knative_services_keep_probes_and_environment_and_scale_to_zero(pools):
    files = render(pools, IMAGES)
    services = objects(files, "overlays/knative/services.yaml")
    # the GPU pool stays out of Knative: scale to zero is for CPU pools
    assert sorted(s["metadata"]["name"] for s in services) == ["modelyard-cpu", "modelyard-nlp"]
    deployed = container(find(files, "Deployment", "modelyard-cpu"))
    for ksvc in services:
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "0"
        served = container(ksvc)
        assert served["livenessProbe"]["httpGet"] == {"path": "/healthz"}
        assert served["readinessProbe"]["httpGet"] == {"path": "/readyz"}
        assert served["env"] == deployed["env"] and served["envFrom"] == deployed["envFrom"]
        assert served["ports"] == [{"name": "http1", "containerPort": 8000, "protocol": "TCP"}]


def test_secrets_are_referenced_never_written(pools):
    files = render(pools, IMAGES)
    assert not [o for o in objects(files) if o["kind"] == "Secret"]
    for workload in [o for o in objects(files) if o["kind"] in ("Deployment", "Job")]:
        env = {e["name"]: e for e in container(workload)["env"]}
        for key in ("MODELYARD_DB", "MODELYARD_TOKEN", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME
        # the database URL is required: a pod without it must not start on SQLite
        assert "optional" not in env["MODELYARD_DB"]["valueFrom"]["secretKeyRef"]
    assert f"create secret generic {SECRET_NAME}" in files["README.md"]


def test_every_container_runs_restricted(pools):
    files = render(pools, IMAGES, KubeOptions(uid=4242))
    workloads = [o for o in objects(files) if o["kind"] in ("Deployment", "Job")]
    assert len(workloads) == 6  # three pools, dev, the scheduler and the migration Job
    for workload in workloads + objects(files, "overlays/knative/services.yaml"):
        security = container(workload)["securityContext"]
        assert security == {"runAsNonRoot": True, "runAsUser": 4242, "runAsGroup": 4242,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}}
        mounts = {m["mountPath"] for m in container(workload)["volumeMounts"]}
        assert {"/tmp", "/var/lib/modelyard"} <= mounts
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_scheduler_and_the_migration_job(pools):
    files = render(pools, IMAGES, KubeOptions(project_file="/app/modelyard.yaml"))
    scheduler = find(files, "Deployment", "modelyard-scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    assert container(scheduler)["args"] == ["scheduler", "--project", "/app/modelyard.yaml",
                                            "--interval", "30s"]
    job = find(files, "Job", "modelyard-migrate")
    assert container(job)["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # the control workloads run the CPU pool's image unless another is named
    assert container(job)["image"] == IMAGES["cpu"]
    named = render(pools, IMAGES, KubeOptions(control_image="registry.example/all:1",
                                              scheduler=False))
    assert container(find(named, "Job", "modelyard-migrate"))["image"] == "registry.example/all:1"
    assert "base/scheduler.yaml" not in named


def test_the_dev_overlay_is_one_small_server_for_every_pool(pools):
    files = render(pools, IMAGES)
    dev = find(files, "Deployment", "modelyard-dev")
    assert dev["spec"]["replicas"] == 1
    assert "--pool" not in container(dev)["args"]
    assert container(dev)["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
    kinds = sorted(o["kind"] for o in objects(files, "overlays/dev/"))
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds


def test_overlays_pick_the_pools_they_name(pools):
    files = render(pools, IMAGES)

    def resources(overlay: str) -> list[str]:
        return documents(files[f"overlays/{overlay}/kustomization.yaml"])[0]["resources"]

    assert resources("cpu") == ["../../base", "../../pools/cpu", "../../pools/nlp"]
    assert resources("gpu") == ["../../base", "../../pools/cpu", "../../pools/gpu",
                                "../../pools/nlp"]
    for overlay in OVERLAYS:
        kustomization = documents(files[f"overlays/{overlay}/kustomization.yaml"])[0]
        assert kustomization["namespace"] == "modelyard"


def test_resources_per_pool_and_their_defaults(pools):
    options = KubeOptions(resources={"nlp": Resources(cpu="2", memory="8Gi", cpu_limit="4")})
    files = render(pools, IMAGES, options)
    assert container(find(files, "Deployment", "modelyard-nlp"))["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi", "cpu": "4"}}
    assert container(find(files, "Deployment", "modelyard-cpu"))["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert container(find(files, "Deployment", "modelyard-gpu"))["resources"]["requests"] == {
        "cpu": "4", "memory": "16Gi"}


def test_names_and_labels_are_valid_and_consistent(pools):
    files = render(pools, IMAGES, KubeOptions(app="shop", project="webshop"))
    for obj in objects(files):
        meta = obj["metadata"]
        assert DNS_LABEL.match(meta["name"]), meta["name"]
        assert meta["labels"]["app.kubernetes.io/name"] == "shop"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "webshop"
        assert meta["labels"]["app.kubernetes.io/instance"] == meta["name"]
        template = obj.get("spec", {}).get("template")
        if template is not None:
            assert template["metadata"]["labels"] == meta["labels"]


def test_write_kubernetes_writes_what_render_returns(pools, tmp_path: Path):
    written = write_kubernetes(pools, tmp_path / "k8s", images=IMAGES)
    files = render(pools, IMAGES)
    assert written == sorted(tmp_path / "k8s" / p for p in files)
    for path in written:
        assert path.read_text() == files[str(path.relative_to(tmp_path / "k8s"))]


@pytest.mark.parametrize(("options", "field"), [
    (dict(namespace="Prod"), "namespace"),
    (dict(app="9lives"), "app"),
    (dict(drain_s=-1), "drain_s"),
    (dict(min_replicas=3, max_replicas=2), "max_replicas"),
    (dict(port=70000), "port"),
    (dict(grpc_port=8000), "grpc_port"),
    (dict(resources={"cpu": Resources(memory="2 GB")}), "resources['cpu'].memory"),
    (dict(gpu_node_selector={"gpu": "a b"}), "gpu_node_selector"),
])
def test_bad_options_are_a_config_error_naming_the_field(options, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        KubeOptions(**options)


def test_a_pool_without_an_image_or_a_name_too_long_is_refused(pools):
    with pytest.raises(ConfigError, match="no image for pool nlp"):
        render(pools, {"cpu": "a", "gpu": "b"})
    long_pool = [Pool("p" * 60, gpu=False, models=("m",), flavors=("sklearn",))]
    with pytest.raises(ConfigError, match="longer than 63"):
        render(long_pool, {"p" * 60: "img"})
    with pytest.raises(ConfigError, match="no models"):
        render([], IMAGES)


def test_kserve_runs_each_pool_as_an_open_inference_protocol_runtime(pools):
    files = render(pools, IMAGES, KubeOptions(grpc_port=8001))
    docs = objects(files, "overlays/kserve/")
    runtimes = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "ServingRuntime"}
    assert sorted(runtimes) == ["modelyard-cpu", "modelyard-gpu", "modelyard-nlp"]
    for name, runtime in runtimes.items():
        assert runtime["protocolVersions"] == ["v2"]
        (served,) = runtime["containers"]
        assert served["name"] == "kserve-container"
        assert served["args"][:7] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--pool",
                                      name.removeprefix("modelyard-")]
        assert served["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
        assert served["securityContext"]["readOnlyRootFilesystem"] is True
        assert ("tolerations" in runtime) == (name == "modelyard-gpu")
    services = [d for d in docs if d["kind"] == "InferenceService"]
    assert sorted(s["spec"]["predictor"]["model"]["runtime"] for s in services) == sorted(runtimes)
    # modelyard pulls its models from the registry: KServe is given no storage URI
    assert all("storageUri" not in s["spec"]["predictor"]["model"] for s in services)


def _parses(command: object, args: list[str]) -> None:
    import click

    assert isinstance(command, click.Command)
    with command.make_context(command.name, list(args)) as ctx:
        assert ctx.params  # click accepted every option and value


def test_the_control_commands_are_ones_the_cli_accepts(pools):
    from modelyard.cli import main

    files = render(pools, IMAGES)
    scheduler = container(find(files, "Deployment", "modelyard-scheduler"))
    _parses(main.commands["scheduler"], scheduler["args"][1:])
    job = container(find(files, "Job", "modelyard-migrate"))
    assert job["args"][0] in main.commands
    assert job["args"][1] in main.commands[job["args"][0]].commands  # type: ignore[attr-defined]


def test_the_server_command_is_one_modelyard_serve_accepts(pools):
    from modelyard.serving.command import serve

    files = render(pools, IMAGES, KubeOptions(grpc_port=8001, idle_unload="10m"))
    for name in ("modelyard-cpu", "modelyard-gpu", "modelyard-dev"):
        _parses(serve, container(find(files, "Deployment", name))["args"][1:])


def test_prometheus_scrapes_without_a_key_unless_told_otherwise(pools):
    """Pods listen beyond loopback, so auth is enforced: /metrics is opened for the scraper
    (the annotations and the ServiceMonitor carry no credential) unless public_metrics=False."""
    for options, opened in ((KubeOptions(), True), (KubeOptions(public_metrics=False), False)):
        files = render(pools, IMAGES, options)
        args = container(find(files, "Deployment", "modelyard-cpu"))["args"]
        assert ("--public-metrics" in args) == opened
