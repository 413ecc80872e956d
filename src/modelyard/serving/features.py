"""Serving a model whose features come from a feature store: requests carry entity keys only.

A :class:`FeatureRunner` validates each request's entity keys on the event loop
(:class:`~modelyard.features.EntityKeys`) and queues them like any input. When the batcher has
formed a batch it runs :meth:`FeatureRunner._run` in the predict pool, never on the event loop
(the store is I/O): one ``fetch`` for every entity row of the batch, then each request's fetched
values are validated against the model's signature, the requests that passed are predicted in
one call, and each answer carries its request's fetched values as ``logged``, so the
prediction log (and drift) sees what the model saw. A request whose entity the store does not
know fails alone with a 404; one with a fetched value the signature refuses, with a 422.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.features.definition import EntityKeys, unknown_entity, unknown_rows
from modelyard.predictor import Prediction, Predictor
from modelyard.serving.batching import BatchPolicy, Item, Observe, split_rows
from modelyard.serving.runner import Runner

#: ``fetch(entity_rows) -> {feature: values}``: one call to the online store for a batch.
Fetch = Callable[[Sequence[dict[str, Any]]], dict[str, list[Any]]]


@dataclass
class EnrichedPrediction(Prediction):
    """An answer with ``logged``: the model input built from the fetched features (what the
    prediction log summarises instead of the request's entity keys)."""

    logged: Any = None


class FeatureRunner(Runner):
    """A runner that fetches its version's features online for each batch (see the module)."""

    def __init__(self, predictor: Predictor, policy: BatchPolicy, *, keys: Sequence[str],
                 service: str, fetch: Fetch, executor: Any = None,
                 observe: Observe | None = None) -> None:
        # the store is I/O: a batch never runs on the event loop, however cheap the model
        super().__init__(predictor, dataclasses.replace(policy, inline_s=0.0),
                         executor=executor, observe=observe)
        self.keys = EntityKeys(keys)
        #: what a request carries instead of the signature's fields (a rollout compares them)
        self.entity_keys = tuple(keys)
        self.service = service
        self.fetch = fetch
        #: online fetches made (one per formed batch)
        self.fetches = 0

    def prepare(self, payload: Any) -> tuple[Any, int]:
        """The request's entity rows; raises :class:`InputError` for missing or extra keys."""
        return self.keys.prepare(payload)

    def _run(self, items: Sequence[Item]) -> list[Any]:
        rows = [row for item in items for row in item.payload]
        values = self.fetch(rows)
        self.fetches += 1
        unknown = set(unknown_rows(values, self.inputs.names))
        results: list[Any] = [None] * len(items)
        ready: list[tuple[int, Any, int]] = []  # (item index, model input, rows)
        for index, part in enumerate(split_rows([i.n for i in items])):
            missing = [rows[r] for r in range(part.start, part.stop) if r in unknown]
            if missing:
                results[index] = unknown_entity(missing, self.service)
                continue
            columns = {name: values[name][part] for name in self.inputs.names}
            try:
                batch, n = self.inputs.prepare(columns)
            except Exception as exc:  # a fetched null or a value of the wrong type: this request
                results[index] = exc
                continue
            ready.append((index, batch, n))
        if ready:
            model_input = self.inputs.finalize(self.inputs.concat([b for _, b, _ in ready]))
            scores = any(items[i].options for i, _, _ in ready)
            answer = self.predictor.predict_batch(model_input, scores=scores)
            parts = self.split([items[i] for i, _, _ in ready], answer)
            for (index, batch, _), each in zip(ready, parts, strict=True):
                results[index] = EnrichedPrediction(each.predictions, each.scores, each.classes,
                                                    logged=batch)
        return results


__all__ = ["EnrichedPrediction", "FeatureRunner", "Fetch"]
