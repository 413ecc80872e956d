"""Feast behind modelyard's feature interface: the one module that imports ``feast``.

Training: :func:`historical` asks the offline store for each entity row's features as of the
row's timestamp (``FeatureStore.get_historical_features`` with the feature service), so a value
written after a row's label was known never reaches that row. Serving: :class:`OnlineFeatures`
fetches the online values for a batch of entity rows in one ``get_online_features`` call.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, DataValidationError, FrameworkMissingError, StorageError
from modelyard.features.definition import FeatureDefinition, FeatureView
from modelyard.spec import FeaturesSpec

#: the column that carries each entity row's position through the store's join.
_ROW = "__modelyard_row"


def open_store(repo: str | Path) -> Any:
    """The Feast ``FeatureStore`` of the repository at ``repo`` (its ``feature_store.yaml``)."""
    folder = Path(repo)
    if not (folder / "feature_store.yaml").is_file():
        raise ConfigError(f"features.repo {folder} holds no feature_store.yaml; point it at a "
                          "Feast repository")
    feast = import_feast()
    try:
        return feast.FeatureStore(repo_path=str(folder))
    except Exception as exc:
        raise ConfigError(f"cannot open the Feast repository {folder}: {_line(exc)}") from None


#: the environment variables Feast's metrics module sets for itself on import, which would put
#: every later use of prometheus_client in this process (the server's own /metrics) and every
#: process it starts into multi-process mode.
_FEAST_SETS = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def import_feast() -> Any:
    """The ``feast`` module, imported (with ``feast.metrics``, which Feast imports lazily) so
    that the environment is left as it was: prometheus_client is imported first, in its usual
    mode, and the variables Feast sets for itself are restored. Import Feast only through this."""
    import prometheus_client.values  # noqa: F401  (decides its mode from the environment now)

    before = {name: os.environ.get(name) for name in _FEAST_SETS}
    try:
        import feast
        import feast.metrics  # imported lazily by Feast otherwise, later
    except ImportError as exc:
        raise FrameworkMissingError(f"features from Feast need feast ({exc}): "
                                    "pip install 'modelyard[feast]'") from None
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return feast


def describe(spec: FeaturesSpec, root: Path) -> tuple[Any, FeatureDefinition]:
    """``(store, definition)`` of the spec's feature service, the repo resolved against
    ``root``; :class:`ConfigError` when the service is not in the registry (``feast apply``)."""
    repo = Path(spec.repo) if Path(spec.repo).is_absolute() else root / spec.repo
    store = open_store(repo)
    service = _service(store, spec.service)
    views = tuple(
        FeatureView(p.name_to_use(), tuple((f.name, str(f.dtype)) for f in p.features))
        for p in service.feature_view_projections)
    definition = FeatureDefinition(spec.store, str(repo.absolute()), spec.service,
                                   tuple(spec.entities), spec.timestamp, views)
    return store, definition


def _service(store: Any, name: str) -> Any:
    try:
        return store.get_feature_service(name)
    except Exception as exc:
        raise ConfigError(f"feature service {name!r} is not in the Feast registry of "
                          f"{store.repo_path}: {_line(exc)}; run 'feast apply' there") from None


def historical(store: Any, definition: FeatureDefinition, rows: Any) -> Any:
    """``rows`` (a DataFrame with the entity keys and the timestamp column, and anything else,
    such as the label) with each row's feature values as of its timestamp, in ``rows``' order.

    A row for which no feature has a value at its time (the store knew nothing of the entity
    yet) comes back with nulls, never with a later value."""
    import pandas as pd

    needed = [*definition.entities, definition.timestamp]
    missing = [c for c in needed if c not in rows.columns]
    if missing:
        raise DataValidationError(f"the training rows lack {', '.join(missing)}: features are "
                                  "looked up by the entity keys as of the timestamp column")
    clash = sorted(set(definition.feature_names) & set(rows.columns))
    if clash:
        raise DataValidationError(f"the training rows already have column(s) "
                                  f"{', '.join(clash)} that the feature service provides; "
                                  "drop them from data, the store gives their values")
    entity_df = rows.reset_index(drop=True).copy()
    entity_df[_ROW] = range(len(entity_df))
    ts = definition.timestamp
    try:
        entity_df[ts] = pd.to_datetime(entity_df[ts], utc=True)
    except (ValueError, TypeError) as exc:
        raise DataValidationError(f"column {ts} is not a timestamp: {_line(exc)}") from None
    if ts != "event_timestamp":  # Feast's point-in-time join reads the timestamp by this name
        entity_df = entity_df.rename(columns={ts: "event_timestamp"})
    try:
        job = store.get_historical_features(entity_df=entity_df,
                                            features=_service(store, definition.service))
        found = job.to_df()
    except Exception as exc:
        raise StorageError(f"the Feast historical retrieval failed: {_line(exc)}") from None
    # the store may reorder rows and leave out those with nothing to join: back to one row per
    # entity row, in order, with nulls where nothing was known at its time
    absent = [c for c in [_ROW, *definition.feature_names] if c not in found.columns]
    if absent:
        raise StorageError(f"the Feast historical retrieval returned no column(s) "
                           f"{', '.join(absent)}")
    found = found.set_index(_ROW)[definition.feature_names]
    out = rows.reset_index(drop=True).join(found.reindex(range(len(rows))).reset_index(drop=True))
    return out


class OnlineFeatures:
    """The online values of one feature service, fetched for a batch of entity rows at once."""

    def __init__(self, definition: FeatureDefinition) -> None:
        self.definition = definition
        self.store = open_store(definition.repo)
        self.service = _service(self.store, definition.service)
        # one FeatureStore answers one call at a time: batches of one version are sequential
        # already, this guards a version swap overlapping its predecessor's last batch
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Fetch one made-up entity row, so the first request does not pay for the store's
        first call (its online store's modules load then: about 3 s measured with SQLite).
        Best effort: a failure here is the first real request's to report."""
        sample: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            for projection in self.service.feature_view_projections:
                view = self.store.get_feature_view(projection.name)
                for column in view.entity_columns:
                    sample[column.name] = "" if "String" in str(column.dtype) else 0
        if set(sample) >= set(self.definition.entities):
            with contextlib.suppress(Exception):
                self.fetch([{k: sample[k] for k in self.definition.entities}])

    def fetch(self, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Each feature's values for ``rows`` (``None`` where the store has none): one call."""
        try:
            with self._lock:
                answer = self.store.get_online_features(features=self.service,
                                                        entity_rows=list(rows))
                values: dict[str, list[Any]] = answer.to_dict()
        except Exception as exc:
            raise StorageError(f"the Feast online store failed: {_line(exc)}") from None
        return values


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["OnlineFeatures", "describe", "historical", "import_feast", "open_store"]
