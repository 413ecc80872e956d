"""Training data whose features come from a feature store, looked up as of each row's time.

``data`` gives the entity rows: the entity keys, the time each row's label was known and the
label. The store adds each row's feature values as they were at that time
(:func:`modelyard.features.feast_store.historical`); rows the store knew nothing about yet are
left out, and the training table is the service's features and the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, DataValidationError
from modelyard.pipeline.data import Dataset, read_frame, table_dataset
from modelyard.registry.provenance import feature_service_source
from modelyard.spec import DataSpec, FeaturesSpec


@dataclass
class FeatureData:
    """The training set, the service's definition (for the version's meta) and how many entity
    rows had no feature value at their time (left out)."""

    dataset: Dataset
    definition: dict[str, Any]
    unknown: int


def load_feature_dataset(data: DataSpec, features: FeaturesSpec, root: Path,
                         groups: Sequence[str] = ()) -> FeatureData:
    """Read ``data``'s entity rows and complete them from the store (see the module).

    ``groups``: columns kept for the gate's fairness rules (from the entity rows or the
    features); the model is trained on the service's features only (or ``data.features``)."""
    from modelyard.features.feast_store import describe, historical

    if data.target is None:
        raise ConfigError("data.target must name the label column of the entity rows")
    rows, sources = read_frame(data, root)
    if data.target not in rows.columns:
        raise DataValidationError(f"target column {data.target!r} is not in the entity rows")
    store, definition = describe(features, root)
    joined = historical(store, definition, rows)
    names = definition.feature_names
    known = ~joined[names].isna().all(axis=1)
    unknown = int((~known).sum())
    if not known.any():
        raise DataValidationError(
            f"none of the {len(rows)} entity rows has a value of service {features.service}'s "
            "features at its timestamp; materialize or ingest the features' history first")
    kept = [g for g in dict.fromkeys(groups) if g not in names and g in joined.columns]
    table = joined.loc[known, [*names, *kept, data.target]].reset_index(drop=True)
    # the server fetches only the service's features: nothing else may become one
    only = data.model_copy(update={"features": data.features or names})
    dataset = table_dataset(table, only, f"feature service {features.service}'s rows", groups)
    dataset.sources = [*sources, feature_service_source(definition.repo, definition.service,
                                                        definition.digest)]
    return FeatureData(dataset, definition.to_meta(), unknown)


__all__ = ["FeatureData", "load_feature_dataset"]
