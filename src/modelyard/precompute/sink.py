"""The batch sink ``precomputed:STORE``: a batch job's answers into an online store.

``STORE`` is ``registry`` (the registry database) or a Redis URL. Each committed chunk is
upserted under (model, version, key) with the time it was written, then the chunk's manifest,
so a killed run resumes after its last chunk like any batch run. A fresh run over a version that
already has answers overwrites them key by key (none are removed first, so the server keeps
answering from the older ones until each is replaced or its TTL runs out). Bad rows are counted
in the run, not kept: score the input with ``modelyard batch -o DIR`` to see them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from modelyard.batch.plan import Manifest, Start
from modelyard.batch.sinks import Sink, SinkOwner, register_owned_sink
from modelyard.errors import ConfigError
from modelyard.precompute.freshness import encode_answer, key_of
from modelyard.precompute.stores import OnlineStore, open_store, store_url
from modelyard.spec import PrecomputeSpec

SCHEME = "precomputed"
DEFAULT_TTL_S = PrecomputeSpec.model_fields["ttl"].default


class PrecomputedSink:
    """Answers of one version into an online store (see the module docstring)."""

    def __init__(self, store: OnlineStore, model: str, version: int, ttl_s: float,
                 clock: Any = None) -> None:
        import time

        self.store = store
        self.model = model
        self.version = version
        self.ttl_s = ttl_s
        self._clock = clock or time.time
        self.description = f"precomputed:{store.description}"
        self.errors_location = ("not kept by precomputed answers; score the input with "
                                "'modelyard batch -o DIR' to see them")

    def read_manifest(self) -> Manifest | None:
        found = self.store.read_manifest(self.model, self.version)
        return None if found is None else Manifest.from_dict(orjson.loads(found))

    def begin(self, start: Start) -> None:
        if len(start.manifest.key) != 1:
            raise ConfigError("--output precomputed: needs exactly one --key column: the id "
                              "the server answers by")
        if start.clear:
            self.store.write_manifest(self.model, self.version, None)

    def commit(self, index: int, scored: pa.Table, errors: pa.Table, manifest: Manifest
               ) -> None:
        if scored.num_rows:
            self.store.write(self.model, self.version, rows_of(scored, manifest.key[0]),
                             self._clock(), self.ttl_s)
        self._put_manifest(manifest)

    def finish(self, manifest: Manifest) -> None:
        self._put_manifest(manifest)
        self.store.close()

    def _put_manifest(self, manifest: Manifest) -> None:
        self.store.write_manifest(self.model, self.version, orjson.dumps(manifest.to_dict()))


def rows_of(scored: pa.Table, key: str) -> list[tuple[str, bytes]]:
    """``(key, encoded answer)`` of each scored row (rows whose key is unusable are skipped)."""
    classes = None
    meta = scored.schema.metadata or {}
    if b"modelyard.classes" in meta:
        classes = orjson.loads(meta[b"modelyard.classes"])
    keys = scored.column(key).to_pylist()
    predictions = scored.column("predictions").to_pylist()
    scores = scored.column("scores").to_pylist() if "scores" in scored.column_names else None
    out = []
    for i, value in enumerate(keys):
        name = key_of(value)
        if name is not None:
            out.append((name, encode_answer(predictions[i],
                                            None if scores is None else scores[i], classes)))
    return out


def _precomputed_sink(target: str, *, sql_url: str | None, owner: SinkOwner) -> Sink:
    if not target:
        raise ConfigError("--output precomputed:STORE names a store: 'registry' or a redis:// "
                          "URL")
    from modelyard.version_settings import VersionSettings

    section = VersionSettings.of(owner.version, strict=False).precompute
    ttl = DEFAULT_TTL_S if section is None else section.ttl
    store = open_store(store_url(target, owner.registry_url))
    return PrecomputedSink(store, owner.version.model, owner.version.version, ttl)


register_owned_sink(SCHEME, _precomputed_sink)

__all__ = ["SCHEME", "PrecomputedSink", "rows_of"]
