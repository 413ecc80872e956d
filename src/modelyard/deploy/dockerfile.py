"""A pool's container build context as file texts: Dockerfile, ``.dockerignore``, requirements.

:func:`render_context` is pure: an :class:`ImagePlan` in, ``{relative path: text}`` out.
:mod:`modelyard.deploy.image` decides the plan (pools, pins, baked versions) and writes the files
with the wheels beside them.

Every image has two stages. The builder installs the pinned requirements from the wheelhouse in
the context (``pip install --no-index``: a build needs no network); the runtime stage copies the
installed environment only, so neither the wheels nor pip's work end up in the image. The server
runs as an unprivileged user, as PID 1 in exec form (``docker stop`` sends its SIGTERM to the
server, which drains and exits), and reads the registry and artifact store from the environment
when it starts, so a new model version needs no new image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from modelyard.deploy.pins import Pin
from modelyard.deploy.plan import Pool

#: where the installed environment lives in the image.
VENV = "/opt/modelyard/venv"
#: the server's home (writable by its user): unpacked artifacts, the embedded registry if any.
HOME = "/var/lib/modelyard"
#: where ``--bake`` puts artifact blobs (read-only, root-owned), in a LocalStore's layout.
BAKED = "/opt/modelyard/baked"
#: the project file and its Python code (training code, the team's own classes), read-only:
#: the scheduler retrains from it, and ``trusted_types`` resolve against it.
PROJECT = "/opt/modelyard/project"
#: the unprivileged user and group the server runs as (numeric, so a cluster can check it).
UID = 10001
PORT = 8000
#: the CUDA runtime the GPU image's base is made from (see ``base.Dockerfile``).
CUDA_BASE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
#: the GPU image's default base: CUDA_BASE plus Python, made once by ``base.Dockerfile``.
GPU_BASE = "modelyard/cuda-python:12.4.1-py3.11"
#: PyTorch's index of CUDA 12.4 wheels, for the GPU wheelhouse.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu124"
#: CPU-only distributions a GPU image swaps for their CUDA builds.
_CUDA_BUILDS = {"tensorflow-cpu": "tensorflow[and-cuda]", "xgboost-cpu": "xgboost"}


@dataclass(frozen=True)
class BakedVersion:
    """A model version whose artifact blob is copied into the image."""

    model: str
    version: int
    digest: str
    size: int


@dataclass(frozen=True)
class ImagePlan:
    """What one pool's image is made of."""

    pool: Pool
    #: the image both stages start from: it must carry Python (with ``venv``) matching the
    #: wheels' Python version, and nothing else is needed.
    base_image: str
    #: the pinned requirements, this modelyard's own wheel among them.
    pins: tuple[Pin, ...]
    #: the image's name, as ``docker build -t`` gets it.
    tag: str
    #: the Python command in the base image (a CUDA base has ``python3.11`` beside its own).
    python: str = "python3"
    baked: tuple[BakedVersion, ...] = ()
    #: the project's file name (``modelyard.yaml``) when the context carries the project's
    #: code in ``project/``; None: an image without it.
    project_file: str | None = None


def render_context(plan: ImagePlan) -> dict[str, str]:
    """The build context's text files for ``plan``, by path relative to the context folder."""
    files = {"Dockerfile": render_dockerfile(plan), ".dockerignore": _DOCKERIGNORE,
             "requirements.txt": render_requirements(plan)}
    if plan.baked:
        files["baked/manifest.json"] = json.dumps(
            [{"model": b.model, "version": b.version, "digest": b.digest, "size": b.size}
             for b in plan.baked], indent=2) + "\n"
    if plan.pool.gpu:
        files["base.Dockerfile"] = _GPU_BASE_DOCKERFILE.format(cuda=CUDA_BASE, tag=GPU_BASE)
        files["fetch-wheels.sh"] = _FETCH_GPU_WHEELS.format(index=TORCH_CUDA_INDEX)
    return files


def render_requirements(plan: ImagePlan) -> str:
    """``requirements.txt``: one pin a line; a GPU image takes the CUDA builds of frameworks.

    A GPU image's framework pins drop the local version (``2.5.1+cpu`` -> ``2.5.1``): the CUDA
    wheels carry their own, and their CUDA libraries are resolved when the wheelhouse is fetched.
    """
    lines = []
    for pin in plan.pins:
        if plan.pool.gpu:
            name = _CUDA_BUILDS.get(pin.name, pin.name)
            lines.append(f"{name}=={pin.version.partition('+')[0]}")
        else:
            lines.append(str(pin))
    return "".join(f"{line}\n" for line in lines)


def server_command(pool: str) -> list[str]:
    """The image's ENTRYPOINT: the server for one pool, on every interface."""
    return ["modelyard", "serve", "--host", "0.0.0.0", "--pool", pool]


def render_dockerfile(plan: ImagePlan) -> str:
    """The pool's multi-stage Dockerfile."""
    pool = plan.pool
    labels = {"org.opencontainers.image.title": f"modelyard {pool.name} pool",
              "io.modelyard.pool": pool.name, "io.modelyard.models": ",".join(pool.models),
              "io.modelyard.flavors": ",".join(pool.flavors),
              "io.modelyard.gpu": str(pool.gpu).lower(),
              "io.modelyard.baked": ",".join(f"{b.model}:{b.version}" for b in plan.baked)}
    env = {"PATH": f"{VENV}/bin:$PATH",
           "MODELYARD_HOME": HOME, "MODELYARD_PORT": str(PORT),
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if plan.baked:
        env["MODELYARD_BAKED_ARTIFACTS"] = BAKED
    if plan.project_file is not None:
        env["PYTHONPATH"] = PROJECT  # the team's own classes import by name, as at training
    head = _HEAD.format(pool=pool.name, models=", ".join(pool.models), tag=plan.tag,
                        gpu_note=_GPU_NOTE if pool.gpu else "")
    body = _BODY.format(base=plan.base_image, python=plan.python, venv=VENV, home=HOME, uid=UID,
                        port=PORT,
                        labels=_continued("LABEL", labels), env=_continued("ENV", env),
                        baked=(f"COPY baked/ {BAKED}/\n" if plan.baked else "")
                        + (f"COPY project/ {PROJECT}/\n" if plan.project_file else ""),
                        entrypoint=json.dumps(server_command(pool.name)))
    return head + body


def _continued(instruction: str, pairs: dict[str, str]) -> str:
    """``INSTRUCTION k="v" \\`` over several lines, values JSON-quoted."""
    items = [f"{key}={json.dumps(value)}" for key, value in pairs.items()]
    return f"{instruction} " + " \\\n    ".join(items) + "\n"


_HEAD = """\
# modelyard image for the {pool!r} pool ({models}), written by 'modelyard build'.
# Build it with no network (the wheels it installs are in ./wheelhouse):
#   docker build --network none -t {tag} .
# Run it against the shared registry and artifact store (see deploy/docker.md):
#   docker run -e MODELYARD_DB=postgresql://... -e MODELYARD_ARTIFACTS=s3://... -p 8000:8000 {tag}
{gpu_note}"""

_GPU_NOTE = """\
# GPU pool: its base image is made once by base.Dockerfile, and its wheelhouse is filled by
# fetch-wheels.sh (CUDA wheels), both on a machine that reaches those registries.
"""

_BODY = """\
ARG BASE_IMAGE={base}

FROM ${{BASE_IMAGE}} AS builder
COPY requirements.txt /tmp/build/requirements.txt
COPY wheelhouse/ /tmp/build/wheelhouse/
RUN {python} -m venv {venv} \\
 && {venv}/bin/python -m pip install --no-index --find-links /tmp/build/wheelhouse \\
        --only-binary :all: --no-cache-dir --disable-pip-version-check \\
        -r /tmp/build/requirements.txt \\
 && {venv}/bin/python -m pip uninstall --yes --quiet pip

FROM ${{BASE_IMAGE}} AS runtime
# a passwd entry without useradd (a minimal base may not have it): the server's own user
RUN echo "modelyard:x:{uid}:{uid}:modelyard:{home}:/usr/sbin/nologin" >> /etc/passwd \\
 && echo "modelyard:x:{uid}:" >> /etc/group \\
 && mkdir -p {home} && chown {uid}:{uid} {home}
COPY --from=builder {venv} {venv}
{baked}{labels}{env}USER {uid}:{uid}
WORKDIR {home}
EXPOSE {port}
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \\
    CMD ["python", "-m", "modelyard.deploy.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT {entrypoint}
"""

_DOCKERIGNORE = """\
# Only what the Dockerfile copies is sent to the builder.
*
!Dockerfile
!requirements.txt
!wheelhouse/*.whl
!baked/
!project/
"""

_GPU_BASE_DOCKERFILE = """\
# The GPU image's base: the CUDA runtime plus the Python its wheels are built for. Made once,
# where Ubuntu's archive is reachable (the image build itself needs no network):
#   docker build -f base.Dockerfile -t {tag} .
FROM {cuda}
RUN apt-get update \\
 && apt-get install --yes --no-install-recommends python3.11 python3.11-venv \\
 && rm -rf /var/lib/apt/lists/*
"""

_FETCH_GPU_WHEELS = """\
#!/bin/sh
# Fill ./wheelhouse with the CUDA builds of this pool's pins, on a Linux x86_64 machine that
# reaches PyPI and PyTorch's CUDA index (modelyard's own wheel is already there). Dependencies
# are resolved here because the CUDA builds need libraries the CPU builds do not (nvidia-*).
set -eu
cd "$(dirname "$0")"
python3 -m pip download --dest wheelhouse --only-binary :all: \\
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \\
    --find-links wheelhouse --extra-index-url {index} \\
    --requirement requirements.txt
"""


__all__ = ["BAKED", "HOME", "PORT", "PROJECT", "UID", "VENV", "BakedVersion", "ImagePlan",
           "render_context", "render_dockerfile", "render_requirements", "server_command"]
