"""Features from a feature store: point-in-time-correct training rows and online lookups.

A spec's ``features`` section (:class:`~modelyard.spec.FeaturesSpec`) names a Feast repository,
a feature service and the entity key columns. Training asks the store for each ``data`` row's
feature values as they were at the row's timestamp (no value from its future), and the version
records the service's definition (:class:`FeatureDefinition`, in ``meta["features"]``). The
server then takes requests that carry only entity keys and fetches the online values for a whole
batch in one call (:mod:`modelyard.serving.features`).

Feast itself is imported only by :mod:`modelyard.features.feast_store`; what is decided without
it (the definition and its digest, request keys, unknown entities) lives in
:mod:`modelyard.features.definition`.
"""

from __future__ import annotations

from modelyard.features.definition import (
    EntityKeys,
    FeatureDefinition,
    FeatureView,
    unknown_rows,
)

__all__ = ["EntityKeys", "FeatureDefinition", "FeatureView", "unknown_rows"]
