"""Kubernetes objects for one project: per pool a Deployment, Service, HPA and PDB; the scheduler,
the migration Job, a dev server, and the custom resources (ServiceMonitor, Knative Service).

Every function is pure: options and a pool in, the object as a plain dict out.
"""

from __future__ import annotations

from modelyard.deploy.kube_options import CONTROL_RESOURCES, DEV_RESOURCES, KubeOptions
from modelyard.deploy.kube_pods import (
    GRPC_PORT_NAME,
    HTTP_PORT_NAME,
    Obj,
    base_container,
    labels,
    pod_spec,
    probes,
    scrape_annotations,
    selector,
    server_container,
    volumes,
)
from modelyard.deploy.plan import Pool
from modelyard.errors import ConfigError

SERVER = "server"
SCHEDULER = "scheduler"
MIGRATION = "migration"
_MAX_NAME = 63


def object_name(options: KubeOptions, suffix: str) -> str:
    """``<app>-<suffix>``, checked against the 63 characters a Service name may have."""
    name = f"{options.app}-{suffix}"
    if len(name) > _MAX_NAME:
        raise ConfigError(f"object name {name!r} is longer than {_MAX_NAME} characters; "
                          "use a shorter app name or pool name")
    return name


def _metadata(options: KubeOptions, name: str, component: str) -> Obj:
    return {"name": name, "labels": labels(options, component, name)}


def _deployment(options: KubeOptions, name: str, component: str, pod: Obj, *,
                replicas: int | None, annotations: dict[str, str] | None = None,
                rolling: bool = True) -> Obj:
    template_meta: Obj = {"labels": labels(options, component, name)}
    if annotations:
        template_meta["annotations"] = annotations
    # never a pod down before its replacement is ready; a singleton is replaced, not doubled
    strategy: Obj = ({"type": "RollingUpdate",
                      "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
                     if rolling else {"type": "Recreate"})
    spec: Obj = {"selector": {"matchLabels": selector(options, name)}, "strategy": strategy,
                 "template": {"metadata": template_meta, "spec": pod}}
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(options, name, component), "spec": spec}


def _server_pod(options: KubeOptions, container: Obj, *, gpu: bool) -> Obj:
    pod = pod_spec(options, container, gpu=gpu)
    pod["terminationGracePeriodSeconds"] = options.termination_grace_s
    return pod


def server_deployment(options: KubeOptions, pool: Pool, image: str) -> Obj:
    """The Deployment serving ``pool``; its replica count is the HPA's to set."""
    name = object_name(options, pool.name)
    wanted = options.resources_for(pool.name, gpu=pool.gpu)
    container = server_container(options, image, pool.name, wanted,
                                 gpus=options.gpus if pool.gpu else 0)
    # no replicas: each apply would otherwise reset what the autoscaler chose
    return _deployment(options, name, SERVER, _server_pod(options, container, gpu=pool.gpu),
                       replicas=None, annotations=scrape_annotations(options))


def dev_deployment(options: KubeOptions, image: str) -> Obj:
    """One small server for every pool, one replica: a laptop cluster's whole serving tier."""
    name = object_name(options, "dev")
    container = server_container(options, image, None, DEV_RESOURCES)
    return _deployment(options, name, SERVER, _server_pod(options, container, gpu=False),
                       replicas=1, annotations=scrape_annotations(options))


def service(options: KubeOptions, name: str) -> Obj:
    """The ClusterIP Service in front of the server Deployment ``name``."""
    ports: list[Obj] = [{"name": HTTP_PORT_NAME, "port": options.port,
                         "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}]
    if options.grpc_port is not None:
        ports.append({"name": GRPC_PORT_NAME, "port": options.grpc_port,
                      "targetPort": GRPC_PORT_NAME, "protocol": "TCP"})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(options, name, SERVER),
            "spec": {"type": "ClusterIP", "selector": selector(options, name), "ports": ports}}


def autoscaler(options: KubeOptions, name: str) -> Obj:
    """A HorizontalPodAutoscaler keeping the Deployment ``name`` near its CPU target."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options, name, SERVER),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu",
                "target": {"type": "Utilization",
                           "averageUtilization": options.target_cpu_percent}}}],
        },
    }


def disruption_budget(options: KubeOptions, name: str) -> Obj:
    """At most one pod of ``name`` evicted at a time (node drains, cluster upgrades)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _metadata(options, name, SERVER),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(options, name)}}}


def pool_objects(options: KubeOptions, pool: Pool, image: str) -> list[Obj]:
    """Everything one pool runs as: Deployment, Service, HPA and PDB."""
    name = object_name(options, pool.name)
    return [server_deployment(options, pool, image), service(options, name),
            autoscaler(options, name), disruption_budget(options, name)]


def migration_job(options: KubeOptions, image: str) -> Obj:
    """A Job running ``modelyard db upgrade`` once: the schema ready before servers roll."""
    name = object_name(options, "migrate")
    container = base_container(options, image, ["db", "upgrade"], CONTROL_RESOURCES)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _metadata(options, name, MIGRATION),
        "spec": {
            "backoffLimit": 4,
            # a finished Job is removed, so the next apply (a new image) runs it again
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels(options, MIGRATION, name)},
                         "spec": pod_spec(options, container, restart_policy="Never")},
        },
    }


def scheduler_deployment(options: KubeOptions, image: str) -> Obj:
    """``modelyard scheduler`` as one replica: alerts, retraining and automatic rollouts."""
    name = object_name(options, SCHEDULER)
    args = ["scheduler", "--project", options.project_file,
            "--interval", options.scheduler_interval]
    container = base_container(options, image, args, CONTROL_RESOURCES)
    return _deployment(options, name, SCHEDULER, pod_spec(options, container), replicas=1,
                       rolling=False)


def service_monitor(options: KubeOptions) -> Obj:
    """A Prometheus Operator ServiceMonitor scraping /metrics of every server Service."""
    name = object_name(options, "servers")
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _metadata(options, name, SERVER),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": options.app,
                                         "app.kubernetes.io/component": SERVER}},
            "endpoints": [{"port": HTTP_PORT_NAME, "path": "/metrics", "interval": "30s"}],
        },
    }


def knative_service(options: KubeOptions, pool: Pool, image: str) -> Obj:
    """A Knative Service for a CPU pool that scales to zero when idle.

    Knative routes to one port (named ``http1``), probes it without a port number, and takes
    care of draining itself, so the container keeps the same command, environment and probes
    as the Deployment's but none of its placement.
    """
    if pool.gpu:
        raise ConfigError(f"pool {pool.name!r} needs a GPU: the Knative overlay serves CPU "
                          "pools only")
    name = object_name(options, pool.name)
    container = server_container(options, image, pool.name,
                                 options.resources_for(pool.name, gpu=False))
    container["ports"] = [{"name": "http1", "containerPort": options.port, "protocol": "TCP"}]
    container.update(probes(port=None))
    annotations = {
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": str(options.max_replicas),
        "autoscaling.knative.dev/target": str(options.knative_target),
        **scrape_annotations(options),
    }
    return {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": _metadata(options, name, SERVER),
        "spec": {"template": {
            "metadata": {"labels": labels(options, SERVER, name), "annotations": annotations},
            "spec": {"automountServiceAccountToken": False, "containers": [container],
                     "volumes": volumes()},
        }},
    }


__all__ = ["MIGRATION", "SCHEDULER", "SERVER", "autoscaler", "dev_deployment",
           "disruption_budget", "knative_service", "migration_job", "object_name",
           "pool_objects", "scheduler_deployment", "server_deployment", "service",
           "service_monitor"]
