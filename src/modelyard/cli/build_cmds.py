"""``modelyard build``: a Docker build context per pool (Dockerfile, pinned wheels, bakes), and
with ``--kubernetes`` the kustomize tree that runs those images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelyard.cli.output import console, print_json, print_table
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.deploy.kube_options import KubeOptions


@click.command("build")
@click.option("--project", "-p", default="modelyard.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The project file declaring the models.")
@click.option("--out", default="build", show_default=True, type=click.Path(file_okay=False),
              help="Folder the build contexts are written into, one per pool.")
@click.option("--pool", "pools", multiple=True, metavar="NAME",
              help="Write only this pool's context; repeat for more (default: every pool).")
@click.option("--bake", multiple=True, metavar="MODEL:V",
              help="Copy this version's artifact into its pool's image (verified by digest), "
                   "for targets that cannot reach the artifact store; repeat for more.")
@click.option("--base-image", default=None, metavar="IMAGE",
              help="Base of the CPU images: Python with venv, the version of this Python "
                   "(default: python:X.Y-slim-bookworm).")
@click.option("--gpu-base-image", default=None, metavar="IMAGE",
              help="Base of the GPU images: a CUDA runtime with python3.11 (default: the one "
                   "base.Dockerfile makes).")
@click.option("--tag", default="modelyard", show_default=True, metavar="NAME",
              help="Image name prefix: each pool's image is NAME-POOL:VERSION.")
@click.option("--extra", "extras", multiple=True, metavar="EXTRA",
              help="Another modelyard extra every image installs (e.g. grpc); repeat for more.")
@click.option("--wheel-cache", default=None, type=click.Path(file_okay=False),
              help="Wheels kept between builds (default: OUT/.wheels).")
@click.option("--code/--no-code", default=True, show_default=True,
              help="Copy the project file and its Python code into the images, at "
                   "/opt/modelyard/project (the scheduler retrains from it; a model's "
                   "trusted_types import from it). Data is not copied.")
@click.option("--kubernetes", is_flag=True,
              help="Also write Kubernetes manifests for these images into OUT/kubernetes: a "
                   "kustomize base and overlays cpu, gpu, dev, knative, prometheus-operator, "
                   "kserve (deploy/kubernetes.md).")
@click.option("--kube-options", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, exists=True),
              help="YAML of the manifests' options: namespace, replicas, resources per pool, "
                   "drain_s, grace_s, artifacts... (deploy/kubernetes.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the contexts as JSON.")
@pass_state
def build(state: State, project: str, out: str, pools: tuple[str, ...], bake: tuple[str, ...],
          base_image: str | None, gpu_base_image: str | None, tag: str,
          extras: tuple[str, ...], wheel_cache: str | None, code: bool, kubernetes: bool,
          kube_options: str | None, as_json: bool) -> None:
    """Write a Docker build context per pool: build each with no network, run anywhere.

    Each context holds a multi-stage Dockerfile, the pinned requirements of the pool's
    frameworks (the versions installed here) and their wheels, so 'docker build --network
    none' works. The images read the registry and artifact store from MODELYARD_DB and
    MODELYARD_ARTIFACTS when they start: a new model version needs no new image. See
    deploy/docker.md.
    """
    from modelyard.deploy.dockerfile import GPU_BASE
    from modelyard.deploy.image import BuildRequest, build_contexts

    request = BuildRequest(project=Path(project), out=Path(out), pools=pools, bake=bake,
                           base_image=base_image, gpu_base_image=gpu_base_image or GPU_BASE,
                           tag=tag, extras=extras,
                           wheel_cache=Path(wheel_cache) if wheel_cache else None, code=code)
    options = _kube_options(kubernetes, kube_options)
    contexts = build_contexts(request, state.local_registry)
    manifests = None
    if options is not None:
        from modelyard.deploy.kubernetes import write_kubernetes

        manifests = Path(out) / "kubernetes"
        write_kubernetes([c.pool for c in contexts], manifests,
                         images={c.pool.name: c.tag for c in contexts}, options=options)
    rows = [{"pool": c.pool.name, "gpu": c.pool.gpu, "models": list(c.pool.models),
             "flavors": list(c.pool.flavors), "context": str(c.folder), "image": c.tag,
             "wheels": c.wheels, "baked": list(c.baked), "ready": c.ready} for c in contexts]
    if as_json:
        print_json(rows if manifests is None else {"contexts": rows,
                                                    "kubernetes": str(manifests)})
        return
    print_table(["pool", "models", "context", "image", "wheels", "baked"],
                [[c.pool.name, ", ".join(c.pool.models), str(c.folder), c.tag, c.wheels,
                  ", ".join(c.baked)] for c in contexts])
    out_console = console()
    for c in contexts:
        if not c.ready:
            out_console.print(f"{c.pool.name}: first run {c.folder}/fetch-wheels.sh and build "
                              f"its base from {c.folder}/base.Dockerfile (see deploy/docker.md)")
        out_console.print(f"docker build --network none -t {c.tag} {c.folder}")
    if manifests is not None:
        out_console.print(f"kubectl apply -k {manifests}/overlays/gpu   (or cpu, dev, knative, "
                          f"...; create the Secret first: {manifests}/README.md)")


def _kube_options(kubernetes: bool, path: str | None) -> KubeOptions | None:
    """The manifests' options when ``--kubernetes`` asks for them; checked before any build
    work, so a bad options file fails at once."""
    if path is not None and not kubernetes:
        raise ConfigError("--kube-options needs --kubernetes")
    if not kubernetes:
        return None
    from modelyard.deploy.kube_options import KubeOptions

    return KubeOptions() if path is None else KubeOptions.load(path)


__all__ = ["build"]
