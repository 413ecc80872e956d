"""The catalog: which models the server answers for, and the runner behind each request.

It keeps a snapshot of the registry (models and their aliases, refreshed by the watcher) so the
request path never touches the database: ``runner_now`` is two dict lookups. Versions not yet
loaded are loaded through the :class:`~modelyard.serving.cache.ModelCache`, on the load threads:
in this process (``isolation: inline``) or in a device worker (``isolation: process``, see
:mod:`modelyard.serving.supervisor`), as :func:`~modelyard.serving.runner.choose_isolation` says.
What each loaded version costs is measured as it loads (:mod:`~modelyard.serving.footprint`).

A server may serve some pools or models only (``--pool``, ``--models``): the snapshot's
``models`` then holds those alone and ``elsewhere`` the pool of each other model, so every
reader of the snapshot (preloading, the alias watcher, rollouts, monitoring) passes the others
by, a request for one gets a 404 naming its pool (:meth:`Catalog.key_for`) and nothing loads a
version of one (:meth:`Catalog._load`). :mod:`~modelyard.serving.pools` decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from modelyard.cputime import accounting_enabled, gpu_timer
from modelyard.errors import ConfigError, ConflictError, NotFoundError, UnavailableError
from modelyard.schema import FieldSpec
from modelyard.serving.cache import Key, ModelCache
from modelyard.serving.cost_metrics import LoadedCost
from modelyard.serving.footprint import Footprint
from modelyard.serving.metrics import ServerMetrics, VersionMetrics
from modelyard.serving.onnx_runtime import as_source, batches_as_accelerated, served_record
from modelyard.serving.options import ServeOptions
from modelyard.serving.overrides import tuned
from modelyard.serving.pools import Placement, placement
from modelyard.serving.runner import Runner, batch_policy, choose_isolation, estimate_memory
from modelyard.spec import ServingSpec
from modelyard.version_settings import VersionSettings

log = logging.getLogger(__name__)

def log_policy(record: Any, spec: ServingSpec) -> Any:
    """How a version's answers are logged: its serving section's sample rate and sensitive
    fields."""
    from modelyard.monitoring.predlog import LogPolicy

    return LogPolicy(record.model, record.version, spec.sample_rate, dict(spec.sensitive),
                     record.get_signature(), record.reference_stats)


def _feature_definition(record: Any) -> Any:
    """The feature service a version was trained on (None: it takes its features in the
    request); a malformed record is a :class:`ConfigError` (the version cannot be served)."""
    from modelyard.features.definition import FeatureDefinition

    try:
        return FeatureDefinition.from_meta(record.meta)
    except ValueError as exc:
        raise ConfigError(f"{record.ref}: {exc}") from None


def _feature_runner(predictor: Any, policy: Any, features: Any, pool: Any,
                    observe: Any) -> Runner:
    """A runner that fetches ``features`` online per batch (opens the store: blocking)."""
    from modelyard.features.feast_store import OnlineFeatures
    from modelyard.serving.features import FeatureRunner

    online = OnlineFeatures(features)
    online.warm()
    log.info("%s fetches its features online from Feast service %s (%s)", predictor.ref,
             features.service, features.repo)
    return FeatureRunner(predictor, policy, keys=features.entities, service=features.service,
                         fetch=online.fetch, executor=pool, observe=observe)


class Catalog:
    """Models and aliases as last read from the registry, and their loaded runners."""

    def __init__(self, registry: Any, options: ServeOptions, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.options = options
        self.metrics = metrics
        #: model name -> {alias: version}, from the last registry read.
        self.models: dict[str, dict[str, int]] = {}
        #: model name -> newest version number.
        self.latest: dict[str, int] = {}
        #: the models this server serves (``--pool``, ``--models``; default: every one).
        self.selection = options.selection
        #: model name -> where its served (else newest) version serves, for every model.
        self.placed: dict[str, Placement] = {}
        #: model name -> its pool, for the models another server serves.
        self.elsewhere: dict[str, str] = {}
        #: whether the registry has been read once (the snapshot is complete).
        self.has_read = False
        self._placements: dict[Key, Placement] = {}  # versions are immutable: read once each
        #: model name -> the version its ``options.alias`` serves now (moved by the watcher).
        self.routes: dict[str, int] = {}
        #: model name -> why its alias's version is not the one served (it failed to load):
        #: ``{"version", "serving", "reason", "since"}``, set and cleared by the watcher.
        self.not_served: dict[str, dict[str, Any]] = {}
        #: measures what each inline load costs (one at a time) and each framework's import.
        self.footprint = Footprint()
        self.cache = ModelCache(self._load, max_memory=options.max_memory,
                                on_change=self._report_loaded, on_load=self._report_load,
                                release=self._release_memory)
        self.predict_pool = ThreadPoolExecutor(options.predict_threads, "modelyard-predict")
        self.load_pool = ThreadPoolExecutor(options.load_threads, "modelyard-load")
        self.io_pool = ThreadPoolExecutor(1, "modelyard-registry")
        metrics.set_budget(options.max_memory)
        # a device worker's resident memory changes while it serves: read it at every scrape
        metrics.refresh_on_scrape(self._report_loaded)
        #: the app's PredictionLog when it is on (loaded runners then get a log policy).
        self.predlog: Any = None
        self._warned_log_key = False
        self._release_queued = False
        #: how a graph version calls a member (the data plane's ``step``; None: no graphs).
        self.dispatch: Any = None

    # -- the request path -----------------------------------------------------------------------
    def runner_now(self, name: str, version: int | None = None) -> Runner | None:
        """The loaded runner for ``name`` (its served alias) or ``name:version``; never awaits."""
        if version is None:
            version = self.routes.get(name)
            if version is None:
                return None
        return self.cache.peek((name, version))  # type: ignore[no-any-return]

    async def runner(self, name: str, version: int | None = None) -> Runner:
        """The runner for a request, loading the version if needed; 404 names what exists."""
        runner = self.runner_now(name, version)
        if runner is not None and not runner.closed:
            return runner
        key = self.key_for(name, version)
        return await self.cache.get(key)  # type: ignore[no-any-return]

    def key_for(self, name: str, version: int | None = None) -> Key:
        """``(name, version)`` for a request, or :class:`NotFoundError` naming what exists."""
        if name not in self.models:
            if not self.has_read:
                raise UnavailableError("the server has not read the registry yet (it is "
                                       "starting, or the registry is unreachable); retry")
            pool = self.elsewhere.get(name)
            if pool is not None:
                raise NotFoundError(self.selection.refusal(name, pool))
            known = ", ".join(sorted(self.models)) or "none yet"
            raise NotFoundError(f"model '{name}' is not in the registry; models: {known}")
        if version is None:
            served = self.routes.get(name)
            if served is None:
                raise NotFoundError(
                    f"model '{name}' has no '{self.options.alias}' alias; promote a version or "
                    f"ask for one: /v1/models/{name}/versions/N/predict "
                    f"(versions 1..{self.latest.get(name, 0)})"
                )
            return (name, served)
        if not 1 <= version <= self.latest.get(name, 0):
            raise NotFoundError(
                f"model '{name}' has no version {version}; "
                f"versions: 1..{self.latest.get(name, 0)}"
            )
        return (name, version)

    async def check_loads(self, name: str, version: int) -> None:
        """Load and warm ``name:version`` now, before an alias is moved to it through this server.

        :class:`ConflictError` with the reason when it cannot load (the caller then leaves the
        alias where it is); :class:`NotFoundError` for an unknown version.
        """
        if not self.selection.everything:
            record = await self.get_version_record(name, version)
            if not self._serves_version(record):
                return  # the pool that serves it checks it as it swaps to it
        try:
            await self.cache.get((name, version))
        except NotFoundError:
            raise
        except Exception as exc:
            raise ConflictError(f"{name}:{version} cannot be loaded, so the alias stays where it "
                                f"is: {exc}") from None

    def not_served_detail(self) -> list[dict[str, Any]]:
        """Models whose alias points at a version this server could not load, and what it
        serves instead (for ``/readyz``)."""
        alias = self.options.alias
        return [{"model": name, "alias": alias, **info}
                for name, info in sorted(self.not_served.items())]

    def unhealthy(self) -> list[Key]:
        """Loaded versions that cannot answer now (a device worker is down or restarting)."""
        return [key for key, runner in self.cache.loaded() if not runner.healthy]

    def idle_unloaded(self) -> list[Key]:
        """Served versions unloaded after ``--idle-unload``: they answer after a load, so they
        are no readiness failure (``/readyz`` lists them)."""
        return [(name, version) for name, version in sorted(self.routes.items())
                if self.cache.unloaded_because((name, version)) == "idle"]

    def memory_of(self, name: str) -> dict[str, int]:
        """``{version: bytes charged}`` for each loaded version of ``name``."""
        return {str(v): int(r.memory) for (n, v), r in self.cache.loaded() if n == name}

    def placement_of(self, name: str) -> dict[str, Any]:
        """Where ``name`` serves: its ``pool``, the ``device`` its serving section asks for
        and, under ``devices``, the device each loaded version runs on."""
        placed = self.placed.get(name)
        return {"pool": None if placed is None else placed.pool,
                "device": None if placed is None else placed.device,
                "devices": {str(v): str(r.predictor.device) for (n, v), r in self.cache.loaded()
                            if n == name}}

    def versions(self, name: str) -> list[int]:
        """Version numbers of ``name`` (from the snapshot)."""
        return list(range(1, self.latest.get(name, 0) + 1))

    # -- registry reads -------------------------------------------------------------------------
    async def read_registry(self) -> dict[str, dict[str, int]]:
        """Read every model's aliases and pool (on the registry thread) and update the
        snapshot: ``models`` keeps the models this server serves, ``elsewhere`` the others."""
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(self.io_pool, self.registry.list_models)
        aliases = {m.name: dict(m.aliases) for m in models}
        latest = {m.name: int(m.latest_version) for m in models}
        placed = await loop.run_in_executor(self.io_pool, self._place, aliases, latest)
        selection = self.selection
        served = {n for n in aliases
                  if selection.serves(n, placed[n].pool if n in placed else None)}
        self.models = {n: a for n, a in aliases.items() if n in served}
        self.elsewhere = {n: p.pool for n, p in placed.items() if n not in served}
        self.placed, self.latest, self.has_read = placed, latest, True
        return self.models

    def _place(self, aliases: dict[str, dict[str, int]],
               latest: dict[str, int]) -> dict[str, Placement]:
        """Each model's placement: its served alias's version's, else its newest's (blocking:
        the registry thread, which alone reads and fills the per-version memo)."""
        alias, placed = self.options.alias, {}
        for name, versions in aliases.items():
            version = versions.get(alias) or latest.get(name, 0)
            if not version:  # registered without a version: nothing to serve
                continue
            found = self._placements.get((name, version))
            if found is None:
                record = self.registry.get_version(name, version)
                found = self._placements[(name, version)] = placement(
                    record, self.options.serving_overrides)
            placed[name] = found
        return placed

    async def io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a blocking registry call on the registry thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_pool, partial(fn, *args, **kw))

    async def get_version_record(self, name: str, version: int) -> Any:
        """The registry's ``ModelVersion`` (read on the registry thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io_pool, self.registry.get_version, name, version)

    # -- loading --------------------------------------------------------------------------------
    async def _load(self, key: Key) -> Runner:
        record = await self.get_version_record(*key)
        if not self._serves_version(record):
            pool = self.elsewhere.get(record.model) or self._placement(record).pool
            raise NotFoundError(self.selection.refusal(record.model, pool))
        loop = asyncio.get_running_loop()
        runner = await loop.run_in_executor(self.load_pool, self._open, record)
        if self.predlog is not None:
            self._check_log_key(runner.log_policy)
        runner.start()
        return runner

    def _serves_version(self, record: Any) -> bool:
        """Whether this server may load ``record``: every version of a model it serves, and a
        version of another whose own placement is served here (a promotion moving it in)."""
        return (self.selection.everything or record.model in self.models
                or self.selection.serves(record.model, self._placement(record).pool))

    def _placement(self, record: Any) -> Placement:
        return placement(record, self.options.serving_overrides)

    def _check_log_key(self, policy: Any) -> None:
        """Warn once when a version hashes sensitive fields with the public built-in key."""
        hashed = sorted(f for f, action in policy.sensitive.items() if action == "hash")
        if hashed and not self._warned_log_key and self.predlog.uses_builtin_key:
            self._warned_log_key = True
            log.warning("SECURITY: %s:%s logs its sensitive field(s) %s as keyed hashes, but "
                        "MODELYARD_LOG_KEY is not set: the built-in key is public, so anyone "
                        "who reads the prediction log can confirm guessed values. Set "
                        "MODELYARD_LOG_KEY to a secret (the same on every server).",
                        policy.model, policy.version, ", ".join(hashed))

    def _open(self, record: Any) -> Runner:
        """Load, wrap and warm one version with how its answers are logged (blocking: runs on a
        load thread). Its registered settings are read once, here, with the server's serve-time
        tuning on top (``--model-config``); a malformed section is logged and its defaults
        serve (a bad hint must not take a version off the air)."""
        settings = VersionSettings.of(record, strict=False)
        serving = tuned(settings.serving, self.options.serving_overrides, record.model)
        if serving is not settings.serving:
            log.info("%s: serving settings tuned by the serve config: %s", record.ref,
                     serving.model_dump(exclude_unset=True))
        runner = self._open_version(self._runtime_record(record, serving), serving)
        runner.precompute = settings.precompute
        if self.predlog is not None:
            runner.log_policy = log_policy(record, serving)
        return runner

    def served_flavor(self, record: Any) -> str:
        """The flavor that answers for ``record`` here: ``onnx`` when its serving section (with
        this server's tuning) says ``runtime: onnx``, else its own (OIP metadata of a version
        not loaded yet)."""
        serving = tuned(VersionSettings.of(record, strict=False).serving,
                        self.options.serving_overrides, record.model)
        return "onnx" if serving.runtime == "onnx" else str(record.flavor)

    def _runtime_record(self, record: Any, spec: ServingSpec) -> Any:
        """What loads for ``record``: itself, or under ``runtime: onnx`` its ONNX derivative
        wearing its name and version (:func:`~modelyard.serving.onnx_runtime.served_record`)."""
        if spec.runtime != "onnx":
            return record
        return served_record(self.registry, record)

    def _open_version(self, record: Any, spec: ServingSpec) -> Runner:
        """Load, wrap and warm one version as its serving section says."""
        from modelyard.adapters import get_adapter
        from modelyard.adapters.base import cuda_device_count

        if spec.replicas > 1:
            log.warning("%s: serving.replicas=%d is not used yet; each server process runs one "
                        "copy of a version (modelyard serve --workers %d runs more)", record.ref,
                        spec.replicas, spec.replicas)
        # the adapter module is light (frameworks import lazily); NVML counts GPUs without
        # initialising CUDA in the server, whose workers own the devices
        adapter = get_adapter(record.flavor)
        if getattr(adapter, "composed", False):
            return self._open_graph(record, spec)
        accelerated = adapter.accelerated
        if choose_isolation(spec, accelerated=accelerated,
                            gpu_count=cuda_device_count) == "process":
            return self._open_worker(record, spec)
        size = int(record.artifact_size)
        # one measured load at a time: that also keeps a framework's first import (not safe in
        # two threads at once: partially initialised modules) to one thread
        runner, cost = self.footprint.measure(
            record.flavor, lambda: self._open_inline(record, spec),
            lambda r: estimate_memory(r.predictor.model, size))
        runner.memory = cost.bytes
        if cost.framework:
            self.metrics.set_framework(record.flavor, cost.framework)
        policy = runner.batcher.policy
        log.info("serving %s (%s on %s, batch %d rows, delay %.1f ms, %.1f MB: grew %.1f MB, "
                 "estimated %.1f MB)", record.ref, record.flavor, runner.predictor.device,
                 policy.max_batch_size, policy.max_delay_s * 1e3, cost.bytes / 1e6,
                 cost.grown / 1e6, cost.estimate / 1e6)
        return runner

    def _open_inline(self, record: Any, spec: Any) -> Runner:
        """Load and warm one version in this process (blocking; measured by the caller)."""
        from modelyard.adapters import get_adapter
        from modelyard.predictor import open_version

        adapter = get_adapter(record.flavor)
        predictor = open_version(record, self.registry, device=spec.device)
        if spec.runtime == "onnx":
            predictor = as_source(predictor)
        policy = batch_policy(
            spec, accelerated=batches_as_accelerated(record, adapter, predictor.device),
            timeout_s=self.options.request_timeout_s)
        vm = self.metrics.for_version(record.model, str(record.version))
        observe = self._observer(vm, (record.model, int(record.version)))
        features = _feature_definition(record)
        if features is None:
            runner = Runner(predictor, policy, executor=self.predict_pool, observe=observe)
        else:
            runner = _feature_runner(predictor, policy, features, self.predict_pool, observe)
        runner.metrics = vm
        if accounting_enabled():
            runner.account = vm.charge
            runner.gpu = gpu_timer(record.flavor, predictor.device)
            if runner.gpu is not None:
                vm.on_gpu()
        runner.warm()
        return runner

    def _open_graph(self, record: Any, spec: Any) -> Runner:
        """A graph version's runner, which answers by calling its members through the data
        plane (blocking: reads the declaration; refuses a graph that contains itself)."""
        from modelyard.graph import refuse_cycle
        from modelyard.pipeline.compose import graph_children
        from modelyard.predictor import open_version
        from modelyard.serving.graphs import GraphRunner

        if self.dispatch is None:
            raise ConflictError(f"{record.ref} is a graph: it is served by a data plane")
        predictor = open_version(record, self.registry, device="cpu")
        refuse_cycle(record.model, graph_children(self.registry, record.model, predictor.model))
        policy = batch_policy(spec, accelerated=False, timeout_s=self.options.request_timeout_s)
        runner = GraphRunner(predictor, policy, dispatch=self.dispatch,
                             aliases=self.alias_version, memory=int(record.artifact_size),
                             touch=partial(self.cache.touch, (record.model, int(record.version))))
        runner.metrics = self.metrics.for_version(record.model, str(record.version))
        log.info("serving %s (graph: %s of %s)", record.ref, predictor.model.kind,
                 ", ".join(predictor.model.members()))
        return runner

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version ``name@alias`` points at in the last registry read (None: no such)."""
        return self.models.get(name, {}).get(alias)

    def _observer(self, vm: VersionMetrics, key: Key) -> Callable[[int, list[float]], None]:
        """The per-batch callback: the batch's metrics, and a use stamp for idle unloading."""
        touch, observe = self.cache.touch, vm.observe_batch

        def observe_batch(rows: int, queue_s: list[float]) -> None:
            touch(key)
            observe(rows, queue_s)

        return observe_batch

    def _open_worker(self, record: Any, spec: Any) -> Runner:
        """Start a device worker for one version and wrap it (blocking: runs on a load thread)."""
        from modelyard.adapters import get_adapter
        from modelyard.serving.supervisor import ProcessRunner, metadata_predictor
        from modelyard.serving.worker import Worker, WorkerSpec

        def spawn() -> Worker:
            # resolved on each (re)start: the digest is checked here, and a cleared cache refills
            path = self.registry.artifact_path(record)
            worker = Worker(WorkerSpec.from_record(
                record, path, spec.device, start_timeout_s=self.options.worker_start_timeout_s,
                runtime=spec.runtime))
            worker.start()
            return worker

        if _feature_definition(record) is not None:
            raise ConfigError(f"{record.ref} takes its features from a feature store, which is "
                              "fetched in the server process: serve it with serving.isolation: "
                              "inline")
        adapter = get_adapter(record.flavor)
        worker = spawn()
        device = str(worker.info.get("device", spec.device))
        policy = batch_policy(spec, accelerated=batches_as_accelerated(record, adapter, device),
                              timeout_s=self.options.request_timeout_s)
        vm = self.metrics.for_version(record.model, str(record.version))
        runner = ProcessRunner(
            metadata_predictor(record, adapter, device),
            policy, worker, spawn=spawn, pool=self.load_pool,
            observe=self._observer(vm, (record.model, int(record.version))),
            # the worker's resident memory, read live; this is the fallback while it is down
            memory=int(worker.info.get("memory") or record.artifact_size),
            max_restarts=self.options.worker_max_restarts, on_give_up=self._give_up,
        )
        runner.metrics = vm
        if accounting_enabled():  # the worker measures its batches and reports with each answer
            runner.account = vm.charge
            if runner.predictor.device.startswith("cuda") and record.flavor == "torch":
                vm.on_gpu()
        if worker.info.get("outputs"):
            runner.outputs = tuple(FieldSpec.from_dict(f) for f in worker.info["outputs"])
        log.info("serving %s (%s on %s in worker pid %s, batch %d rows, delay %.1f ms, "
                 "%.1f MB resident)", record.ref, record.flavor, runner.predictor.device,
                 worker.pid, policy.max_batch_size, policy.max_delay_s * 1e3,
                 runner.memory / 1e6)
        return runner

    def _give_up(self, runner: Runner) -> None:
        """Unload a version whose worker cannot be restarted; its next request loads it anew."""
        key = (runner.name, runner.version)
        if self.cache.peek(key) is runner:
            self.cache.evict(key)

    async def preload(self) -> None:
        """Load every served alias's version; a version that fails to load is logged, not fatal."""
        await self.read_registry()
        alias = self.options.alias
        self.routes = {n: a[alias] for n, a in self.models.items() if alias in a}
        keys = list(self.routes.items())
        results = await asyncio.gather(*(self.cache.get(k, "preload") for k in keys),
                                       return_exceptions=True)
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not preload %s:%s: %s", *key, result)

    async def close(self) -> None:
        """Drain every runner and stop the threads."""
        await self.cache.close()
        for pool in (self.predict_pool, self.load_pool, self.io_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def _report_loaded(self) -> None:
        loaded = [(k[0], str(k[1]), int(r.memory), r) for k, r in self.cache.loaded()]
        for _, _, _, runner in loaded:
            runner.flush_charges()
        self.metrics.set_loaded((name, version, size) for name, version, size, _ in loaded)
        self.metrics.cost.report(
            LoadedCost(name, version, size, float(getattr(r, "loaded_at", 0.0)),
                       r.batcher.policy.max_batch_size,
                       getattr(r.metrics, "last_request", None))
            for name, version, size, r in loaded)

    def _report_load(self, key: Key, seconds: float, reason: str) -> None:
        self.metrics.observe_load(key[0], str(key[1]), reason, seconds)

    async def _release_memory(self) -> None:
        """Hand an unloaded version's memory back to the system (on a load thread); versions
        unloaded together share one release (a full collection costs about 0.2 s)."""
        if self._release_queued:
            return
        self._release_queued = True
        await asyncio.get_running_loop().run_in_executor(self.load_pool, self._release_now)

    def _release_now(self) -> None:
        self._release_queued = False  # what drains from now on needs another release
        self.footprint.release()


__all__ = ["Catalog"]
