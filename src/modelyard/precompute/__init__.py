"""Precomputed predictions: a batch job scores a known population into an online store, and the
server answers by key from it, live when the key is missing or older than the TTL.

- :mod:`~modelyard.precompute.freshness` decides (pure): which stored answers are fresh, which
  rows go live, how a mixed answer is put back together, what the answer says about its source.
- :mod:`~modelyard.precompute.stores` is the online store contract (:class:`OnlineStore`) and
  its registered implementations: the registry database and Redis.
- :mod:`~modelyard.precompute.sink` is the batch sink ``precomputed:STORE`` that writes into a
  store, so precompute is a batch run (recorded, chunked, resumable).
- :mod:`~modelyard.precompute.job` runs it for a version (the CLI, the scheduler).

The server side (lookup by the served version, live fallback) is
:mod:`modelyard.serving.precomputed`. Nothing here is imported by ``import modelyard``.
"""
