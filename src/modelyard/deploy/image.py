"""``modelyard build``'s work: a project's pools, each written out as a Docker build context.

The decisions are elsewhere and pure: which pools (:func:`~modelyard.deploy.plan.plan_pools`),
which pins (:func:`~modelyard.deploy.pins.pin_closure`), which file texts
(:func:`~modelyard.deploy.dockerfile.render_context`). This module does the I/O around them:
it reads the project and the registry, builds modelyard's own wheel, fills each context's
wheelhouse from a cache (downloading on the host only what is missing), copies baked artifacts
after verifying their digests, and writes the files.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.deploy import wheelhouse
from modelyard.deploy.dockerfile import GPU_BASE, BakedVersion, ImagePlan, render_context
from modelyard.deploy.pins import Pin, installed, pin_closure
from modelyard.deploy.plan import Pool, plan_pools
from modelyard.errors import ConfigError
from modelyard.spec import Spec, load_project

if TYPE_CHECKING:
    from modelyard.registry import Registry

#: the modelyard extra that installs each flavor's framework (flavors without one need none).
FLAVOR_EXTRAS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm",
                 "torch": "torch", "tensorflow": "tensorflow", "onnx": "onnx"}
#: extras every image carries: a container serves from a shared PostgreSQL registry.
BASE_EXTRAS = ("postgres",)


@dataclass(frozen=True)
class BuildRequest:
    """What ``modelyard build`` was asked for."""

    project: Path
    out: Path
    #: pools to write (empty: every pool of the project).
    pools: tuple[str, ...] = ()
    #: versions to copy into their pool's image (``fraud:3``, ``fraud@production``).
    bake: tuple[str, ...] = ()
    #: base image of the CPU pools (None: the official slim Python image of this Python).
    base_image: str | None = None
    #: base image of the GPU pools: a CUDA runtime with Python (see ``base.Dockerfile``).
    gpu_base_image: str = GPU_BASE
    #: image name prefix: a pool's image is ``<tag>-<pool>:<modelyard version>``.
    tag: str = "modelyard"
    #: more modelyard extras for every image (``s3``, ``grpc``).
    extras: tuple[str, ...] = ()
    #: wheels kept between builds (None: ``<out>/.wheels``).
    wheel_cache: Path | None = None


@dataclass(frozen=True)
class Context:
    """One written build context."""

    pool: Pool
    folder: Path
    tag: str
    wheels: int
    #: whether ``docker build`` can run now; a GPU context first needs ``fetch-wheels.sh``.
    ready: bool
    baked: tuple[str, ...] = field(default=())


def build_contexts(request: BuildRequest,
                   open_registry: Callable[[], Registry] | None = None) -> list[Context]:
    """Write a build context per chosen pool under ``request.out``.

    The registry is opened (``open_registry()``) only when it is needed: for the flavor of a
    model whose spec names none (its newest version's), and for the versions to bake.
    """
    specs = load_project(request.project)
    needed = request.bake or any(spec.flavor is None for spec in specs.values())
    registry = open_registry() if needed and open_registry is not None else None
    pools = _chosen(plan_pools(specs, _registered_flavors(specs, registry)), request.pools)
    baked = _baked_by_pool(request.bake, pools, registry)
    cache = request.wheel_cache or request.out / ".wheels"
    with tempfile.TemporaryDirectory(prefix="modelyard-wheel-") as tmp:
        own = modelyard_wheel(Path(tmp))
        requires, version, provided = _wheel_metadata(own)
        unknown = sorted(set(request.extras) - set(provided))
        if unknown:
            raise ConfigError(f"--extra {unknown[0]!r} is not an extra of modelyard; its "
                              f"extras: {', '.join(provided)}")
        return [_write_context(request, pool, own, requires, version, cache,
                               baked.get(pool.name, ()), registry) for pool in pools]


def modelyard_wheel(dest: Path) -> Path:
    """modelyard's own wheel, built from the source tree this code runs from when it is a
    checkout (so an image runs exactly this code), else downloaded at the installed version."""
    import modelyard

    root = Path(modelyard.__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "src" / "modelyard").is_dir():
        return _build_wheel(root, dest)
    pin = Pin("modelyard", _installed_version("modelyard"))
    return wheelhouse.cached([pin], dest)[pin]


def _build_wheel(root: Path, dest: Path) -> Path:
    # a copy of the sources, so the build's own files never land in the checkout
    source = dest / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy2(root / name, source / name)
    shutil.copytree(root / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(dest), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("modelyard-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ConfigError(f"modelyard's own wheel could not be built from {root}: {tail}")
    return wheels[0]


def _wheel_metadata(wheel: Path) -> tuple[list[str], str, list[str]]:
    """A wheel's ``Requires-Dist`` lines, version and extras, from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    return (list(meta.get_all("Requires-Dist") or []), str(meta["Version"]),
            list(meta.get_all("Provides-Extra") or []))


def _installed_version(name: str) -> str:
    dist = installed(name)
    if dist is None:
        raise ConfigError(f"{name} is not installed in this environment")
    return dist.version


def _registered_flavors(specs: Mapping[str, Spec], registry: Registry | None) -> dict[str, str]:
    """The newest registered version's flavor of each model whose spec names none."""
    unnamed = [name for name, spec in specs.items() if spec.flavor is None]
    if not unnamed or registry is None:
        return {}
    latest = {m.name: m.latest_version for m in registry.list_models()}
    return {name: registry.get_version(name, latest[name]).flavor
            for name in unnamed if latest.get(name)}


def _chosen(pools: list[Pool], names: Sequence[str]) -> list[Pool]:
    known = {pool.name: pool for pool in pools}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"--pool {unknown[0]!r} is not a pool of this project; its pools: "
                          f"{', '.join(known) or 'none'}")
    return [known[name] for name in dict.fromkeys(names)] if names else pools


def _baked_by_pool(refs: Sequence[str], pools: Sequence[Pool],
                   registry: Registry | None) -> dict[str, tuple[BakedVersion, ...]]:
    if not refs:
        return {}
    if registry is None:
        raise ConfigError("--bake needs the registry the versions are in (--db/--artifacts)")
    home = {model: pool.name for pool in pools for model in pool.models}
    baked: dict[str, list[BakedVersion]] = {}
    for ref in refs:
        version = registry.resolve(ref)
        if version.model not in home:
            raise ConfigError(f"--bake {ref}: model {version.model!r} is in none of the pools "
                              "being built; build its pool too, or bake another model")
        baked.setdefault(home[version.model], []).append(
            BakedVersion(version.model, version.version, version.artifact_digest,
                         version.artifact_size))
    return {pool: tuple(dict.fromkeys(items)) for pool, items in baked.items()}


def _write_context(request: BuildRequest, pool: Pool, own: Path, requires: list[str],
                   version: str, cache: Path, baked: tuple[BakedVersion, ...],
                   registry: Registry | None) -> Context:
    extras = _extras(pool, request.extras)
    pins = pin_closure(requires, extras, installed)
    tag = f"{request.tag}-{pool.name}:{version}"
    plan = ImagePlan(pool=pool, tag=tag, baked=baked,
                     pins=tuple(sorted([*pins, Pin("modelyard", version)])),
                     base_image=request.gpu_base_image if pool.gpu else
                     request.base_image or _default_base(),
                     python="python3.11" if pool.gpu else "python3")
    folder = request.out / pool.name
    for stale in ("wheelhouse", "baked"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    (folder / "wheelhouse").mkdir(parents=True)
    for rel, text in render_context(plan).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    if pool.gpu:  # CUDA wheels cannot be fetched for this platform here: fetch-wheels.sh does
        (folder / "fetch-wheels.sh").chmod(0o755)
    wheels = [own] if pool.gpu else [own, *wheelhouse.cached(pins, cache).values()]
    for wheel in wheels:
        shutil.copy2(wheel, folder / "wheelhouse" / wheel.name)
    if baked:
        assert registry is not None  # _baked_by_pool refused baking without one
        _copy_baked(registry, baked, folder / "baked")
    return Context(pool=pool, folder=folder, tag=tag, wheels=len(wheels), ready=not pool.gpu,
                   baked=tuple(f"{b.model}:{b.version}" for b in baked))


def _extras(pool: Pool, more: Sequence[str]) -> list[str]:
    flavored = [FLAVOR_EXTRAS[f] for f in pool.flavors if f in FLAVOR_EXTRAS]
    return list(dict.fromkeys([*flavored, *BASE_EXTRAS, *more]))


def _default_base() -> str:
    """The official slim image of the Python running this build: the wheels fit it."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim-bookworm"


def _copy_baked(registry: Registry, baked: Sequence[BakedVersion], dest: Path) -> None:
    """Copy each version's blob in a LocalStore's layout; ``get_file`` verifies its digest."""
    for item in baked:
        target = dest / item.digest[:2] / item.digest
        target.parent.mkdir(parents=True, exist_ok=True)
        registry.store.get_file(item.digest, target)


__all__ = ["BASE_EXTRAS", "FLAVOR_EXTRAS", "BuildRequest", "Context", "build_contexts",
           "modelyard_wheel"]
