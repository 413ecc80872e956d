"""The pieces every modelyard pod shares: labels, environment, probes, security and volumes.

Pure functions returning the plain dicts Kubernetes reads; :mod:`modelyard.deploy.kube_objects`
puts them into Deployments, Jobs and Knative Services.
"""

from __future__ import annotations

from typing import Any

from modelyard.deploy.kube_options import CONFIG_NAME, SECRET_NAME, KubeOptions, Resources

Obj = dict[str, Any]

#: where a pod keeps what it writes: the read-only root file system leaves only these writable
HOME_DIR = "/var/lib/modelyard"
TMP_DIR = "/tmp"
#: the variables read from the Secret: (name, required). Only the database URL is required; a
#: store reached through a cloud identity (IRSA, workload identity) needs no keys, and servers
#: without a token accept every caller that can reach them.
SECRET_KEYS: tuple[tuple[str, bool], ...] = (
    ("MODELYARD_DB", True),
    ("MODELYARD_TOKEN", False),
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    # artifacts encrypted at rest (docs/security.md): the key, and older ones during a rotation
    ("MODELYARD_ARTIFACT_KEY", False),
    ("MODELYARD_ARTIFACT_KEY_PREVIOUS", False),
)
GPU_RESOURCE = "nvidia.com/gpu"
HTTP_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
#: where a server mounts its ``tls_secret`` (read-only)
TLS_DIR = "/etc/modelyard/tls"


def labels(options: KubeOptions, component: str, instance: str) -> dict[str, str]:
    """The ``app.kubernetes.io`` labels of one object (``component``: server, scheduler, ...)."""
    return {
        "app.kubernetes.io/name": options.app,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": options.project,
        "app.kubernetes.io/managed-by": "modelyard",
    }


def selector(options: KubeOptions, instance: str) -> dict[str, str]:
    """The labels that pick one workload's pods: the stable subset of :func:`labels`."""
    return {"app.kubernetes.io/name": options.app, "app.kubernetes.io/instance": instance}


def server_args(options: KubeOptions, pool: str | None) -> list[str]:
    """``modelyard serve``'s arguments; ``pool=None`` serves every pool (the dev overlay)."""
    args = ["serve", "--host", "0.0.0.0", "--port", str(options.port)]
    if pool is not None:
        args += ["--pool", pool]
    args += ["--drain", str(options.drain_s), "--grace", str(options.grace_s)]
    if options.public_metrics:
        args.append("--public-metrics")
    if options.grpc_port is not None:
        args += ["--grpc-port", str(options.grpc_port)]
    if options.idle_unload is not None:
        args += ["--idle-unload", options.idle_unload]
    if options.tls_secret is not None:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        if options.tls_client_ca:
            args += ["--tls-client-ca", f"{TLS_DIR}/ca.crt"]
    return args


def environment(options: KubeOptions) -> list[Obj]:
    """Secret references (never values) and where the pod writes its cache."""
    env: list[Obj] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key,
                                                     **({} if required else {"optional": True})}}}
        for key, required in SECRET_KEYS
    ]
    env += [{"name": "MODELYARD_HOME", "value": HOME_DIR},
            # libraries that cache under ~ find a writable home on a read-only root
            {"name": "HOME", "value": TMP_DIR}]
    return env


def env_from() -> list[Obj]:
    """The settings that are not secret (``MODELYARD_ARTIFACTS`` and what the team adds)."""
    return [{"configMapRef": {"name": CONFIG_NAME}}]


def probes(*, port: int | str | None = HTTP_PORT_NAME, startup: bool = True,
           scheme: str = "HTTP") -> Obj:
    """Liveness on /healthz, readiness on /readyz, and a start-up allowance for loading models.

    ``port=None`` leaves the port out, as Knative wants (it probes the one port it routes to).
    Readiness is checked often and fails fast, so a draining server leaves the Service within a
    few seconds of SIGTERM, well inside the drain delay. ``scheme="HTTPS"`` for a TLS server
    (the kubelet does not check its certificate); ``"TCP"`` for one that requires client
    certificates, which the kubelet cannot present: then only the port is checked.
    """
    at: Obj = {} if port is None else {"port": port}

    def check(path: str) -> Obj:
        if scheme == "TCP":
            return {"tcpSocket": {"port": port if port is not None else HTTP_PORT_NAME}}
        return {"httpGet": {"path": path, **at, **({"scheme": scheme} if scheme != "HTTP"
                                                   else {})}}

    found: Obj = {
        "livenessProbe": {**check("/healthz"), "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        # a draining server says so on /readyz at once: two failed checks 2 s apart take it
        # out of any balancer that probes it well inside the drain
        "readinessProbe": {**check("/readyz"), "periodSeconds": 2,
                           "timeoutSeconds": 2, "failureThreshold": 2},
    }
    if startup:
        # preloading every production version can take minutes; liveness waits for it
        found["startupProbe"] = {**check("/healthz"), "periodSeconds": 5,
                                 "timeoutSeconds": 3, "failureThreshold": 60}
    return found


def probe_scheme(options: KubeOptions) -> str:
    """How a server's probes reach it: HTTP, HTTPS (``tls_secret``) or TCP (mutual TLS)."""
    if options.tls_secret is None:
        return "HTTP"
    return "TCP" if options.tls_client_ca else "HTTPS"


def security_context(options: KubeOptions) -> Obj:
    """A container that could pass the ``restricted`` Pod Security Standard on its own."""
    return {
        "runAsNonRoot": True,
        "runAsUser": options.uid,
        "runAsGroup": options.uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def volumes() -> list[Obj]:
    """The two writable folders: the artifact cache (the home) and /tmp."""
    return [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]


def volume_mounts() -> list[Obj]:
    """Where :func:`volumes` appear in the container."""
    return [{"name": "home", "mountPath": HOME_DIR}, {"name": "tmp", "mountPath": TMP_DIR}]


def resource_block(wanted: Resources, *, gpus: int = 0) -> Obj:
    """``resources``: requests, the memory limit, the CPU limit if any, and GPUs as limits."""
    limits: Obj = {"memory": wanted.memory}
    if wanted.cpu_limit is not None:
        limits["cpu"] = wanted.cpu_limit
    if gpus:
        # an extended resource is requested through its limit alone
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": {"cpu": wanted.cpu, "memory": wanted.memory}, "limits": limits}


def container_ports(options: KubeOptions) -> list[Obj]:
    """The HTTP port (REST, OIP v2, /metrics) and the gRPC one when configured."""
    ports: list[Obj] = [{"name": HTTP_PORT_NAME, "containerPort": options.port,
                         "protocol": "TCP"}]
    if options.grpc_port is not None:
        ports.append({"name": GRPC_PORT_NAME, "containerPort": options.grpc_port,
                      "protocol": "TCP"})
    return ports


def base_container(options: KubeOptions, image: str, args: list[str],
                   wanted: Resources, *, gpus: int = 0) -> Obj:
    """A modelyard container without ports or probes: what the scheduler and the Job run."""
    return {
        "name": "modelyard",
        "image": image,
        # the command is named so the manifests do not depend on the image's ENTRYPOINT
        "command": ["modelyard"],
        "args": args,
        "env": environment(options),
        "envFrom": env_from(),
        "resources": resource_block(wanted, gpus=gpus),
        "securityContext": security_context(options),
        "volumeMounts": volume_mounts(),
    }


def server_container(options: KubeOptions, image: str, pool: str | None, wanted: Resources,
                     *, gpus: int = 0) -> Obj:
    """``modelyard serve`` with its ports and probes."""
    container = base_container(options, image, server_args(options, pool), wanted, gpus=gpus)
    container["ports"] = container_ports(options)
    container.update(probes(scheme=probe_scheme(options)))
    if options.tls_secret is not None:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR,
                                          "readOnly": True})
    return container


def scrape_annotations(options: KubeOptions) -> dict[str, str]:
    """The ``prometheus.io/*`` pod annotations a plain Prometheus discovers scrape targets by."""
    found = {"prometheus.io/scrape": "true", "prometheus.io/port": str(options.port),
             "prometheus.io/path": "/metrics"}
    if options.tls_secret is not None:
        found["prometheus.io/scheme"] = "https"
    return found


def gpu_placement(options: KubeOptions) -> Obj:
    """``nodeSelector`` and ``tolerations`` that put a pod on a GPU node, despite its taint."""
    return {
        "nodeSelector": dict(options.gpu_node_selector),
        "tolerations": [{"key": options.gpu_taint, "operator": "Exists",
                         "effect": "NoSchedule"}],
    }


def pod_spec(options: KubeOptions, container: Obj, *, gpu: bool = False,
             restart_policy: str | None = None) -> Obj:
    """A pod around one modelyard container: no API token, its volumes, GPU placement."""
    spec: Obj = {
        # modelyard never calls the Kubernetes API
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": volumes(),
    }
    if any(m["name"] == "tls" for m in container.get("volumeMounts", [])):
        spec["volumes"].append({"name": "tls", "secret": {"secretName": options.tls_secret}})
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    if gpu:
        spec.update(gpu_placement(options))
    return spec


__all__ = ["GPU_RESOURCE", "GRPC_PORT_NAME", "HOME_DIR", "HTTP_PORT_NAME", "SECRET_KEYS",
           "TMP_DIR", "Obj", "base_container", "container_ports", "env_from", "environment",
           "gpu_placement", "labels", "pod_spec", "probes", "resource_block", "scrape_annotations",
           "security_context", "selector", "server_args", "server_container", "volume_mounts",
           "volumes"]
