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
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.deploy import wheelhouse
from modelyard.deploy.dockerfile import GPU_BASE, BakedVersion, ImagePlan, render_context
from modelyard.deploy.pins import Lookup, Pin, installed, pin_closure
from modelyard.deploy.plan import Pool, plan_pools
from modelyard.errors import ConfigError
from modelyard.spec import Spec, load_project
from modelyard.types import ArtifactStore

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
    #: copy the project file and its Python code into the images (:func:`project_files`).
    code: bool = True


@dataclass(frozen=True)
class Context:
    """One written build context."""

    pool: Pool
    folder: Path
    tag: str
    wheels: int
    #: whether ``docker build`` can run now; a GPU context first needs ``fetch-wheels.sh``.
    ready: bool
    baked: tuple[str, ...] = ()


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
    code = project_files(request.project, skip=(request.out, cache)) if request.code else []
    contexts = []
    with tempfile.TemporaryDirectory(prefix="modelyard-wheel-") as tmp:
        own = ModelyardWheel.read(modelyard_wheel(Path(tmp)))
        unknown = sorted(set(request.extras) - set(own.extras))
        if unknown:
            raise ConfigError(f"--extra {unknown[0]!r} is not an extra of modelyard; its "
                              f"extras: {', '.join(own.extras)}")
        for pool in pools:
            plan = image_plan(request, pool, own, baked.get(pool.name, ()))
            # a GPU pool's CUDA wheels cannot be fetched for this platform: fetch-wheels.sh does
            others = [] if pool.gpu else [pin for pin in plan.pins if pin.name != "modelyard"]
            wheels = [own.path, *wheelhouse.cached(others, cache).values()]
            folder = request.out / pool.name
            _write_context(folder, plan, wheels, registry.store if registry else None, code)
            contexts.append(Context(pool=pool, folder=folder, tag=plan.tag, wheels=len(wheels),
                                    ready=not pool.gpu,
                                    baked=tuple(f"{b.model}:{b.version}" for b in plan.baked)))
    return contexts


def image_plan(request: BuildRequest, pool: Pool, own: ModelyardWheel,
               baked: tuple[BakedVersion, ...] = (), lookup: Lookup = installed) -> ImagePlan:
    """What ``pool``'s image is made of: its pins (modelyard's requirements with the extras of
    the pool's flavors, as ``lookup`` finds them installed), base image and tag."""
    pins = pin_closure(own.requires, _extras(pool, request.extras), lookup)
    return ImagePlan(pool=pool, tag=f"{request.tag}-{pool.name}:{own.version}", baked=baked,
                     project_file=request.project.name if request.code else None,
                     pins=tuple(sorted([*pins, Pin("modelyard", own.version)])),
                     base_image=request.gpu_base_image if pool.gpu else
                     request.base_image or _default_base(),
                     python="python3.11" if pool.gpu else "python3")


@dataclass(frozen=True)
class ModelyardWheel:
    """modelyard's own wheel and what its METADATA says."""

    path: Path
    version: str
    requires: tuple[str, ...]
    extras: tuple[str, ...]

    @classmethod
    def read(cls, wheel: Path) -> ModelyardWheel:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            meta = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
        return cls(wheel, str(meta["Version"]), tuple(meta.get_all("Requires-Dist") or ()),
                   tuple(meta.get_all("Provides-Extra") or ()))


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
    # with the build backend installed here, build with it (no index needed); else pip
    # fetches it into an isolated environment
    isolation = ["--no-build-isolation"] if _backend_installed(root) else []
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
               "--disable-pip-version-check", "--quiet", "--wheel-dir", str(dest), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("modelyard-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ConfigError(f"modelyard's own wheel could not be built from {root}: {tail}")
    return wheels[0]


def _backend_installed(root: Path) -> bool:
    """Whether every ``[build-system] requires`` of the checkout is installed here."""
    with open(root / "pyproject.toml", "rb") as fh:
        needs = tomllib.load(fh).get("build-system", {}).get("requires", [])
    try:
        pin_closure(needs, [], installed, needed_by="the build backend")
    except ConfigError:
        return False
    return True


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


def project_files(project: Path, skip: Sequence[Path] = ()) -> list[tuple[Path, Path]]:
    """``(file, path in the image's project folder)`` for the project file and every Python
    file under its folder: the training code the scheduler runs and the classes a model's
    ``trusted_types`` name. Hidden folders (``.git``, ``.venv``, ``.modelyard``), virtual
    environments, ``__pycache__`` and the ``skip`` folders (the build's output) are left out,
    and so is data: a pod reads it from where the spec's ``data`` points."""
    root = project.parent.resolve()
    skipped = {folder.resolve() for folder in skip}
    found = [(project, Path(project.name))]
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        folders = [root.joinpath(*rel.parts[:i]) for i in range(1, len(rel.parts))]
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts[:-1]) or any(
                folder in skipped or (folder / "pyvenv.cfg").exists() for folder in folders):
            continue
        found.append((path, rel))
    return found


def _write_context(folder: Path, plan: ImagePlan, wheels: Sequence[Path],
                   store: ArtifactStore | None,
                   code: Sequence[tuple[Path, Path]] = ()) -> None:
    """Write ``plan``'s files, its wheels, its baked blobs and the project's ``code`` into
    ``folder`` (what an earlier build left in ``wheelhouse/``, ``baked/`` and ``project/`` is
    removed first)."""
    for stale in ("wheelhouse", "baked", "project"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    for source, inside in code:
        target = folder / "project" / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (folder / "wheelhouse").mkdir(parents=True)
    for rel, text in render_context(plan).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text, encoding="utf-8")
    if (folder / "fetch-wheels.sh").exists():
        (folder / "fetch-wheels.sh").chmod(0o755)
    for wheel in wheels:
        shutil.copy2(wheel, folder / "wheelhouse" / wheel.name)
    for item in plan.baked:  # in a LocalStore's layout; get_file verifies the digest
        if store is None:
            raise ConfigError("--bake needs the registry the versions are in")
        target = folder / "baked" / item.digest[:2] / item.digest
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(item.digest, target)


def _extras(pool: Pool, more: Sequence[str]) -> list[str]:
    flavored = [FLAVOR_EXTRAS[f] for f in pool.flavors if f in FLAVOR_EXTRAS]
    return list(dict.fromkeys([*flavored, *BASE_EXTRAS, *more]))


def _default_base() -> str:
    """The official slim image of the Python running this build: the wheels fit it."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim-bookworm"


__all__ = ["BASE_EXTRAS", "FLAVOR_EXTRAS", "BuildRequest", "Context", "ModelyardWheel",
           "build_contexts", "image_plan", "modelyard_wheel"]
