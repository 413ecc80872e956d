"""Precomputed answers on the request path: by key from the online store, live for the rest.

A version registered with a ``precompute`` section (its runner's ``precompute``) has answers a
batch job wrote into an online store under (model, version, key). For such a version:

- ``POST /v1/models/{name}/predict`` whose records (or columns) carry the key field: the rows
  whose key has a fresh answer (younger than the TTL, with scores when asked) are answered from
  the store; the others are predicted live, together, by the same version, the key field left
  out of their input; the answers are put back in request order, so the body has the shape of
  a live answer. ``X-Prediction-Source`` says ``precomputed``, ``live`` or ``mixed``.
- ``GET /v1/models/{name}/precomputed/{key}``: the served version's answer for one key; when it
  is missing or stale, its input row is read again from a ``sql:`` input (the key bound as a
  parameter) and predicted live; otherwise 404 naming the key.

Lookups are always by the version that answers (the served alias's version, or the one in the
path), so after a promotion the old version's answers are never served as the new one's. Not
while a rollout routes the model (its variants answer live). Store reads run on the catalog's
I/O thread, never on the event loop; a store that fails answers nothing, so every row goes
live (logged at most once a minute), never a 500, and it is not asked again for 5 s, so a
store that hangs until its timeouts does not hold every request (and the I/O thread) that long.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import InputError, NotFoundError
from modelyard.precompute.freshness import (
    LIVE,
    PRECOMPUTED,
    Source,
    Split,
    Stored,
    key_of,
    merge,
    split_rows,
)
from modelyard.precompute.lookup import RowReader
from modelyard.precompute.stores import REGISTRY, OnlineStore, open_store, store_url
from modelyard.predictor import Prediction
from modelyard.serving.dataplane import DataPlane, InferenceRequest

if TYPE_CHECKING:
    from modelyard.serving.calls import Call
    from modelyard.serving.runner import Runner

log = logging.getLogger(__name__)

HEADER = b"x-prediction-source"
_QUIET_S = 60.0  # one log line per minute while a store is down
_RETRY_S = 5.0  # after a failed read, rows go live without asking the store for this long


class Precomputed:
    """The server's precomputed answers over one data plane (see the module docstring)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.catalog = plane.catalog
        self._stores: dict[str, OnlineStore] = {}
        self._rows = RowReader()
        self._complained = 0.0
        #: store -> until when it is not asked (monotonic seconds), after a failed read
        self._down_until: dict[str, float] = {}
        plane.closers.append(self.close)

    # -- POST predict ---------------------------------------------------------------------------
    def runner_for(self, request: InferenceRequest) -> Runner | None:
        """The loaded runner whose precomputed answers may answer ``request``, or None (answer
        it live, as usual): the version has a precompute section and no rollout routes the
        model."""
        if request.version is None and request.model in self.plane.rollouts.active:
            return None
        runner = self.catalog.runner_now(request.model, request.version)
        if runner is None or runner.closed or runner.precompute is None:
            return None
        return runner

    async def infer(self, call: Call, request: InferenceRequest, runner: Runner
                    ) -> tuple[Prediction, Source]:
        """Answer ``request`` from the store where fresh, live for the rest (same version)."""
        section = runner.precompute
        if not has_keys(request.payload, section.key):  # nothing to look up: live as usual
            result = await self.plane.infer(call, request)
            self.plane.metrics.count_source(runner.name, runner.version_str, LIVE)
            return result, LIVE
        keys = keys_of(request.payload, section.key)
        found = await self.read(runner, [k for k in keys if k is not None])
        split = split_rows(keys, found, time.time(), section.ttl, scores=request.scores)
        call.runner = runner
        drop = section.key not in runner.predictor.signature.names
        live: Prediction | None = None
        if split.live:
            rest = rows_of(request.payload, split.live, section.key, drop=drop)
            try:
                live = await self.plane.infer(call, InferenceRequest(
                    request.model, runner.version, rest, request.scores))
            except InputError as exc:  # its row numbers are the live rows': the request's
                if not split.hits:
                    raise
                raise renumbered(exc, split.live, section.key) from None
        result = _merged(len(keys), split, live, request.scores)
        self.plane.metrics.count_source(runner.name, runner.version_str, split.source)
        if split.hits:
            self._log_hits(call, runner, request, split, drop)
        return result, split.source

    # -- GET by key -----------------------------------------------------------------------------
    async def by_key(self, call: Call, name: str, key: str, scores: bool
                     ) -> tuple[Prediction, Source]:
        """The served version's answer for ``key``: stored, else live from its SQL input row,
        else :class:`NotFoundError` naming the key."""
        self.plane.version(name, None)  # 404 for an unknown model
        runner = self.catalog.runner_now(name)
        if runner is None or runner.closed:
            runner = await self.catalog.runner(name)
        call.runner = runner
        section = runner.precompute
        if section is None:
            raise NotFoundError(f"{runner.name}:{runner.version} has no precomputed answers (it "
                                "was registered without a precompute section); POST its inputs "
                                f"to /v1/models/{name}/predict")
        wanted = key_of(key)
        found = {} if wanted is None else await self.read(runner, [wanted])
        split = split_rows([wanted], found, time.time(), section.ttl, scores=scores)
        if split.hits:
            self.plane.metrics.count_source(runner.name, runner.version_str, PRECOMPUTED)
            return _merged(1, split, None, scores), PRECOMPUTED
        row = await self._input_row(section, wanted) if wanted is not None else None
        if row is None:
            raise NotFoundError(
                f"no fresh precomputed answer for key {key[:100]!r} of {runner.name}:"
                f"{runner.version} (missing or older than {section.ttl:g} s)"
                + ("" if self._rows.readable(section) else " and its precompute input cannot "
                   "be read by key") + f"; POST its inputs to /v1/models/{name}/predict")
        record = {k: v for k, v in row.items() if k in runner.predictor.signature.names}
        result = await self.plane.infer(call, InferenceRequest(name, runner.version, [record],
                                                               scores))
        self.plane.metrics.count_source(runner.name, runner.version_str, LIVE)
        return result, LIVE

    # -- I/O ------------------------------------------------------------------------------------
    async def read(self, runner: Runner, keys: list[str]) -> dict[str, Stored]:
        """The stored answers of ``keys`` for the runner's version; nothing when the store
        fails (the rows then go live)."""
        section = runner.precompute
        if not keys or time.monotonic() < self._down_until.get(section.store, 0.0):
            return {}
        try:
            found: dict[str, Stored] = await self.catalog.io(
                self._read, section.store, runner.name, runner.version, keys)
        except Exception as exc:  # an outage degrades to live answers, never to a 500
            # and for a while no request waits on the store's timeouts (nor the I/O thread)
            self._down_until[section.store] = time.monotonic() + _RETRY_S
            self._complain(f"precomputed answers of {runner.name}:{runner.version} unreadable, "
                           f"answering live for {_RETRY_S:g} s: {exc}")
            return {}
        return found

    def _read(self, store: str, name: str, version: int, keys: list[str]) -> dict[str, Stored]:
        return self._store(store).read(name, version, keys)

    def _store(self, store: str) -> OnlineStore:
        """The open store a section names (on the I/O thread; opened once)."""
        found = self._stores.get(store)
        if found is None:
            db = self.catalog.registry.db
            engine = db.engine if store == REGISTRY else None
            found = self._stores[store] = open_store(store_url(store, db.url), engine=engine)
        return found

    async def _input_row(self, section: Any, key: str) -> dict[str, Any] | None:
        if not self._rows.readable(section):
            return None
        try:
            row: dict[str, Any] | None = await self.catalog.io(self._rows.row, section, key)
        except Exception as exc:
            self._complain(f"precompute input unreadable by key: {exc}")
            return None
        return row

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._complained >= _QUIET_S:
            self._complained = now
            log.warning("%s", message)

    def _log_hits(self, call: Call, runner: Runner, request: InferenceRequest, split: Split,
                  drop: bool) -> None:
        """Log the rows the store answered as variant ``precomputed`` (when sampled)."""
        policy, predlog = runner.log_policy, self.plane.predlog
        if policy is None or predlog is None or not policy.sampled():
            return
        rows = sorted(split.hits)
        inputs = rows_of(request.payload, rows, runner.precompute.key, drop=drop)
        if not has_inputs(inputs, runner.predictor.signature.names):
            return  # keys sent without their inputs: nothing to log them by
        try:
            batch, n = runner.prepare(inputs)
        except Exception:  # inputs the model would refuse: logged by no one
            return
        answer = _merged(len(rows), Split({j: split.hits[i] for j, i in enumerate(rows)}, []),
                         None, request.scores)
        predlog.record(policy, call.request_id, PRECOMPUTED,
                       time.perf_counter() - call.start, batch, n, answer)

    def close(self) -> None:
        """Release the stores' and the row reader's connections."""
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        self._rows.close()


# -- payloads (pure) ----------------------------------------------------------------------------
def has_keys(payload: Any, key: str) -> bool:
    """Whether a records or columns payload carries the key field."""
    if isinstance(payload, dict):
        return key in payload  # one record, or columns
    return isinstance(payload, list) and any(isinstance(r, dict) and key in r for r in payload)


def has_inputs(payload: Any, names: Any) -> bool:
    """Whether every row of a records or columns payload has every input ``names`` lists."""
    if isinstance(payload, dict):
        return all(name in payload for name in names)
    return all(isinstance(r, dict) and all(name in r for name in names) for r in payload)


def keys_of(payload: Any, key: str) -> list[str | None]:
    """The key of each row (None where a row has none)."""
    if isinstance(payload, dict) and isinstance(payload.get(key), list):
        return [key_of(v) for v in payload[key]]  # columns
    records = [payload] if isinstance(payload, dict) else payload
    return [key_of(r.get(key)) if isinstance(r, dict) else None for r in records]


def rows_of(payload: Any, rows: list[int], key: str, *, drop: bool) -> Any:
    """The payload of the given rows (records or columns), without the key field if ``drop``."""
    if isinstance(payload, dict) and isinstance(payload.get(key), list):
        return {k: [v[i] for i in rows] for k, v in payload.items()
                if not (drop and k == key) and isinstance(v, list)}
    records = [payload] if isinstance(payload, dict) else payload
    return [{k: v for k, v in records[i].items() if not (drop and k == key)} for i in rows]


def renumbered(exc: InputError, rows: list[int], key: str) -> InputError:
    """``exc`` of a request made of the request's ``rows`` (those without a fresh answer), with
    its row numbers turned back into the request's."""
    errors = []
    for error in exc.errors:
        loc = list(error.get("loc", ()))
        for i, part in enumerate(loc[:2]):  # records: [row, field]; columns: [field, row]
            if isinstance(part, int) and 0 <= part < len(rows):
                loc[i] = rows[part]
                break
        else:
            if len(rows) == 1:  # a one-row input's errors name no row
                loc.insert(0, rows[0])
        errors.append({**error, "loc": loc})
    shown = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
    return InputError(f"the rows without a fresh precomputed answer for their {key} must carry "
                      f"the model's inputs: {shown or exc}", errors)


def _merged(n: int, split: Split, live: Prediction | None, scores: bool) -> Prediction:
    predictions, merged_scores = merge(
        n, split, [] if live is None else np.asarray(live.predictions).tolist(),
        None if live is None or live.scores is None else np.asarray(live.scores).tolist(),
        scores_wanted=scores)
    classes = live.classes if live is not None else None
    if classes is None:
        classes = next((tuple(a["classes"]) for a in split.hits.values() if "classes" in a),
                       None)
    return Prediction(np.asarray(predictions),
                      None if merged_scores is None else np.asarray(merged_scores), classes)


__all__ = ["HEADER", "Precomputed", "has_inputs", "has_keys", "keys_of", "renumbered",
           "rows_of"]
