"""KServe resources that run modelyard as an Open Inference Protocol runtime, one per pool.

A ``ServingRuntime`` names the pool's image and how to start ``modelyard serve``; an
``InferenceService`` asks KServe to run it. modelyard pulls its models from the registry and the
artifact store itself, so the InferenceService names no ``storageUri``: KServe supplies the
pods, the routing and the autoscaling, modelyard the models. Pure functions, like
:mod:`modelyard.deploy.kube_objects`.
"""

from __future__ import annotations

from modelyard.deploy.kube_objects import SERVER, object_name
from modelyard.deploy.kube_options import KubeOptions
from modelyard.deploy.kube_pods import (
    Obj,
    gpu_placement,
    labels,
    probes,
    server_container,
    volumes,
)
from modelyard.deploy.plan import Pool

#: the model format the runtimes declare and the InferenceServices ask for
MODEL_FORMAT = {"name": "modelyard", "version": "1"}


def serving_runtime(options: KubeOptions, pool: Pool, image: str) -> Obj:
    """The runtime for ``pool``: its image serving the Open Inference Protocol v2 over REST."""
    name = object_name(options, pool.name)
    container = server_container(options, image, pool.name,
                                 options.resources_for(pool.name, gpu=pool.gpu),
                                 gpus=options.gpus if pool.gpu else 0)
    # KServe's own name for the serving container; one port, as its serverless mode routes to
    container["name"] = "kserve-container"
    container["ports"] = [{"name": "http1", "containerPort": options.port, "protocol": "TCP"}]
    # by number: a serverless (Knative) deployment accepts only the routed port's number
    container.update(probes(port=options.port))
    spec: Obj = {
        # chosen by name from the InferenceService, never picked for other formats
        "supportedModelFormats": [{**MODEL_FORMAT, "autoSelect": False}],
        # REST only: KServe routes one port, and this one speaks HTTP/1 (OIP v2 REST)
        "protocolVersions": ["v2"],
        "annotations": {"prometheus.kserve.io/port": str(options.port),
                        "prometheus.kserve.io/path": "/metrics"},
        "containers": [container],
        "volumes": volumes(),
    }
    if pool.gpu:
        spec.update(gpu_placement(options))
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
            "metadata": {"name": name, "labels": labels(options, SERVER, name)}, "spec": spec}


def inference_service(options: KubeOptions, pool: Pool) -> Obj:
    """The InferenceService serving ``pool`` through its runtime, within the HPA's bounds."""
    name = object_name(options, pool.name)
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "labels": labels(options, SERVER, name)},
        "spec": {"predictor": {
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "model": {"modelFormat": dict(MODEL_FORMAT), "runtime": name,
                      "protocolVersion": "v2"},
        }},
    }


__all__ = ["MODEL_FORMAT", "inference_service", "serving_runtime"]
