"""Which version answers a request: a pure function of (deployment, request key, a random draw).

The server calls :func:`choose_variant` once per request with ``rand = random.random()`` and sends
the request to the version the route names (``primary``: ``"stable"`` is the deployment's
``stable_version``, ``"candidate"`` its ``candidate_version``); when ``route.shadow`` is set it
also sends a copy to the candidate in the background and never returns that answer.

======================  ===========================================================
state / strategy        route
======================  ===========================================================
pending                 stable (a blue-green candidate is warming up)
progressing, paused     direct, blue-green: candidate; canary: candidate with the
                        current step's share, by ``rand``; A/B: candidate with the
                        weight, sticky by a hash of the key (no key: by ``rand``);
                        shadow: stable, plus a copy to the candidate with the step's
                        share (100: every request)
promoted                candidate (now production)
rolled_back, aborted    stable
======================  ===========================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

from modelyard.rollout.machine import DeploymentView

Variant = Literal["stable", "candidate"]
_SERVING_STATES = ("progressing", "paused")
_TWO_64 = float(2**64)


class RoutedDeployment(DeploymentView, Protocol):
    """What routing reads of a deployment: the machine's view plus its identity."""

    @property
    def id(self) -> int: ...
    @property
    def model(self) -> str: ...


@dataclass(frozen=True)
class Route:
    """Where one request goes: the version that answers, and whether a shadow copy is sent."""

    primary: Variant
    shadow: bool = False


STABLE = Route("stable")
CANDIDATE = Route("candidate")
_SHADOWED = Route("stable", shadow=True)


def candidate_share(deployment: RoutedDeployment) -> float:
    """The share (0..1) of requests the candidate answers now; for shadow, the share copied."""
    if deployment.state == "promoted":
        return 1.0
    if deployment.state not in _SERVING_STATES:
        return 0.0
    if deployment.strategy in ("direct", "blue-green"):
        return 1.0
    steps = deployment.steps
    index = min(max(deployment.step, 0), len(steps) - 1)
    return steps[index] / 100.0 if steps else 1.0


def choose_variant(deployment: RoutedDeployment, request_key: str | None, rand: float) -> Route:
    """The route of one request; ``rand`` is a uniform draw in [0, 1) (``random.random()``)."""
    share = candidate_share(deployment)
    if deployment.strategy == "shadow" and deployment.state in _SERVING_STATES:
        return _SHADOWED if rand < share else STABLE
    if share >= 1.0:
        return CANDIDATE
    if share <= 0.0:
        return STABLE
    if deployment.strategy == "ab" and request_key is not None:
        rand = key_point(deployment, request_key)
    return CANDIDATE if rand < share else STABLE


def key_point(deployment: RoutedDeployment, request_key: str) -> float:
    """A request key's fixed point in [0, 1) for this deployment (BLAKE2b of model, id, key).

    The deployment id is part of the hash so each experiment splits users afresh instead of
    putting the same users in the candidate group every time.
    """
    data = f"{deployment.model}\x00{deployment.id}\x00{request_key}".encode()
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


__all__ = ["CANDIDATE", "STABLE", "Route", "RoutedDeployment", "Variant", "candidate_share",
           "choose_variant", "key_point"]
