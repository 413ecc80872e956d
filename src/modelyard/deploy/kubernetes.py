"""Kubernetes manifests for a project's pools: a kustomize base, one folder per pool, overlays.

``modelyard build --kubernetes`` calls :func:`write_kubernetes`; :func:`render` is the pure part
(pools, images and options in, file texts out), tested without a cluster. The layout::

    base/                     ConfigMap (generated), migration Job, scheduler Deployment
    pools/<pool>/             the pool's Deployment, Service, HPA and PodDisruptionBudget
    components/servicemonitor a kustomize Component: a Prometheus Operator ServiceMonitor
    overlays/cpu              base + every CPU pool (a cluster without GPUs)
    overlays/gpu              base + every pool, GPU pools on GPU nodes (production)
    overlays/dev              base + one small server for every pool, one replica
    overlays/knative          base + a Knative Service per CPU pool, scaling to zero
    overlays/prometheus-operator   overlays/gpu + the ServiceMonitor component
    overlays/kserve           base + a KServe ServingRuntime and InferenceService per pool
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from modelyard.deploy.kube_kserve import inference_service, serving_runtime
from modelyard.deploy.kube_objects import (
    dev_deployment,
    knative_service,
    migration_job,
    object_name,
    pool_objects,
    scheduler_deployment,
    service,
    service_monitor,
)
from modelyard.deploy.kube_options import CONFIG_NAME, SECRET_NAME, KubeOptions
from modelyard.deploy.kube_pods import Obj
from modelyard.deploy.plan import Pool
from modelyard.errors import ConfigError

_HEADER = ("# Written by `modelyard build --kubernetes`; edit the options and build again "
           "rather than this file.\n")
_KUSTOMIZE = "kustomize.config.k8s.io/v1beta1"
#: the overlays every build writes, in the order the docs present them
OVERLAYS = ("cpu", "gpu", "dev", "knative", "prometheus-operator", "kserve")
#: the options a build uses when the team gives none
DEFAULTS = KubeOptions()


def _yaml(*docs: Any) -> str:
    return _HEADER + yaml.safe_dump_all(list(docs), sort_keys=False, width=100)


def _kustomization(resources: Sequence[str], **extra: Any) -> str:
    return _yaml({"apiVersion": _KUSTOMIZE, "kind": "Kustomization",
                  **extra, "resources": list(resources)})


def _images(pools: Sequence[Pool], images: Mapping[str, str]) -> dict[str, str]:
    missing = [pool.name for pool in pools if not images.get(pool.name)]
    if missing:
        raise ConfigError(f"no image for pool {', '.join(missing)}: build the images first "
                          "(modelyard build) or name one per pool")
    return {pool.name: images[pool.name] for pool in pools}


def _control_image(pools: Sequence[Pool], images: Mapping[str, str],
                   options: KubeOptions) -> str:
    """The image the scheduler, the migration Job and the dev server run: the team's choice,
    else the first CPU pool's (the smallest), else the first pool's."""
    if options.control_image:
        return options.control_image
    cpu = [pool for pool in pools if not pool.gpu]
    return images[(cpu or list(pools))[0].name]


def _base(options: KubeOptions, control: str) -> dict[str, str]:
    files = {"base/migrate-job.yaml": _yaml(migration_job(options, control))}
    if options.scheduler:
        files["base/scheduler.yaml"] = _yaml(scheduler_deployment(options, control))
    generator = {"name": CONFIG_NAME,
                 "literals": [f"MODELYARD_ARTIFACTS={options.artifacts}"]}
    files["base/kustomization.yaml"] = _kustomization(
        sorted(path.removeprefix("base/") for path in files),
        configMapGenerator=[generator])
    return files


def _pools(options: KubeOptions, pools: Sequence[Pool], images: Mapping[str, str]
           ) -> dict[str, str]:
    files: dict[str, str] = {}
    for pool in pools:
        files[f"pools/{pool.name}/server.yaml"] = _yaml(
            *pool_objects(options, pool, images[pool.name]))
        files[f"pools/{pool.name}/kustomization.yaml"] = _kustomization(["server.yaml"])
    return files


def _overlay(options: KubeOptions, resources: Sequence[str], **extra: Any) -> str:
    return _kustomization(resources, namespace=options.namespace, **extra)


def _overlays(options: KubeOptions, pools: Sequence[Pool], images: Mapping[str, str],
              control: str) -> dict[str, str]:
    cpu = [pool for pool in pools if not pool.gpu]
    dev = object_name(options, "dev")
    files = {
        "overlays/cpu/kustomization.yaml": _overlay(
            options, ["../../base", *(f"../../pools/{p.name}" for p in cpu)]),
        "overlays/gpu/kustomization.yaml": _overlay(
            options, ["../../base", *(f"../../pools/{p.name}" for p in pools)]),
        "overlays/dev/server.yaml": _yaml(dev_deployment(options, control),
                                          service(options, dev)),
        "overlays/dev/kustomization.yaml": _overlay(options, ["../../base", "server.yaml"]),
        "components/servicemonitor/servicemonitor.yaml": _yaml(service_monitor(options)),
        "components/servicemonitor/kustomization.yaml": _yaml({
            "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "resources": ["servicemonitor.yaml"]}),
        "overlays/prometheus-operator/kustomization.yaml": _overlay(
            options, ["../gpu"], components=["../../components/servicemonitor"]),
    }
    knative = ["../../base"]
    if cpu:
        files["overlays/knative/services.yaml"] = _yaml(
            *(knative_service(options, pool, images[pool.name]) for pool in cpu))
        knative.append("services.yaml")
    files["overlays/knative/names.yaml"] = _config_names(
        "serving.knative.dev", "v1", "Service", "spec/template/spec/containers")
    files["overlays/knative/kustomization.yaml"] = _overlay(
        options, knative, configurations=["names.yaml"])
    files.update(_kserve(options, pools, images))
    return files


def _kserve(options: KubeOptions, pools: Sequence[Pool], images: Mapping[str, str]
            ) -> dict[str, str]:
    runtimes = [doc for pool in pools for doc in (
        serving_runtime(options, pool, images[pool.name]), inference_service(options, pool))]
    return {
        "overlays/kserve/services.yaml": _yaml(*runtimes),
        "overlays/kserve/names.yaml": _config_names(
            "serving.kserve.io", "v1alpha1", "ServingRuntime", "spec/containers"),
        "overlays/kserve/kustomization.yaml": _overlay(
            options, ["../../base", "services.yaml"], configurations=["names.yaml"]),
    }


def _config_names(group: str, version: str, kind: str, containers: str) -> str:
    """A kustomize configuration: where a custom resource names the ConfigMap.

    kustomize knows where built-in kinds refer to a ConfigMap, not where a custom resource
    does; without this the generated ConfigMap's hashed name would not reach it.
    """
    return _yaml({"nameReference": [{"kind": "ConfigMap", "version": "v1", "fieldSpecs": [
        {"group": group, "version": version, "kind": kind,
         "path": f"{containers}/envFrom/configMapRef/name"}]}]})


def render(pools: Sequence[Pool], images: Mapping[str, str],
           options: KubeOptions = DEFAULTS) -> dict[str, str]:
    """Every file of the kustomize tree, by path relative to its root, as YAML text."""
    if not pools:
        raise ConfigError("the project has no models, so no pools to deploy: declare a model "
                          "in modelyard.yaml first")
    chosen = _images(pools, images)
    control = _control_image(pools, chosen, options)
    files = {**_base(options, control), **_pools(options, pools, chosen),
             **_overlays(options, pools, chosen, control)}
    files["README.md"] = _readme(options, pools)
    return files


def _readme(options: KubeOptions, pools: Sequence[Pool]) -> str:
    listed = "\n".join(f"- `{pool.name}` ({'GPU' if pool.gpu else 'CPU'}): "
                       f"{', '.join(pool.models)}" for pool in pools)
    return (
        "# Kubernetes manifests\n\n"
        "Written by `modelyard build --kubernetes`. Pools:\n\n"
        f"{listed}\n\n"
        "Before applying an overlay, create the namespace and the Secret it reads "
        "(`MODELYARD_DB` is required; the others are optional):\n\n"
        "```\n"
        f"kubectl create namespace {options.namespace}\n"
        f"kubectl -n {options.namespace} create secret generic {SECRET_NAME} \\\n"
        "  --from-literal=MODELYARD_DB='postgresql://USER:PASSWORD@HOST/DB' \\\n"
        "  --from-literal=MODELYARD_TOKEN=\"$(openssl rand -hex 32)\"\n"
        "kubectl apply -k overlays/gpu    # or cpu, dev, knative, prometheus-operator\n"
        "```\n\n"
        "See deploy/kubernetes.md in the modelyard repository for each overlay.\n"
    )


def write_kubernetes(pools: Sequence[Pool], out: Path, *, images: Mapping[str, str],
                     options: KubeOptions = DEFAULTS) -> list[Path]:
    """Write the kustomize tree for ``pools`` under ``out``; returns the files written, sorted.

    ``images`` maps each pool's name to the image reference its servers run.
    """
    written = []
    for relative, text in sorted(render(pools, images, options).items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def documents(text: str) -> list[Obj]:
    """The objects in one written YAML file (for tests and tools that read the tree back)."""
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


__all__ = ["DEFAULTS", "OVERLAYS", "KubeOptions", "documents", "render", "write_kubernetes"]
