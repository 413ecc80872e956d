"""Who may do what: roles as data, scopes by model-name pattern, and one pure decision.

Every route (HTTP and gRPC) declares the one :data:`ACTIONS` entry it needs; a caller holds
grants (a role, over the models a pattern names); :func:`decide` says yes or no and why.
Deny by default: an unknown role grants nothing, a route that names a model is allowed only
when a grant's pattern matches that model, and an action no role lists is allowed to nobody.

==============  =================================================================================
action          what it covers
==============  =================================================================================
``public``      health, readiness and the API's documents: answered without a credential
``describe``    the served models and a model's metadata and readiness (what a client reads to
                call it)
``read``        the registry, metrics, drift, events, logged predictions and quality
``predict``     inference over every protocol
``feedback``    labels for logged predictions
``deploy``      promote, roll back, aliases, rollouts, load and unload
``train``       register versions, start runs
``admin``       principals, keys, deletion
==============  =================================================================================
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelyard.errors import ConfigError

ACTIONS = ("public", "describe", "read", "predict", "feedback", "deploy", "train", "admin")

#: the actions each role allows; ``public`` needs no role at all.
ROLES: Mapping[str, frozenset[str]] = {
    "viewer": frozenset({"describe", "read"}),
    "predictor": frozenset({"describe", "predict", "feedback"}),
    "deployer": frozenset({"describe", "read", "deploy"}),
    "trainer": frozenset({"describe", "read", "train"}),
    "admin": frozenset(ACTIONS),
}

#: a model-name pattern: the names a model may have, plus ``*``, ``?`` and ``[...]`` wildcards.
_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]._!-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Grant:
    """A role over the models ``models`` (a glob: ``*``, ``fraud-*``) names."""

    role: str
    models: str = "*"

    def allows(self, action: str, model: str | None) -> bool:
        """Whether this grant lets its holder do ``action`` (on ``model``, when one is named)."""
        if action not in ROLES.get(self.role, ()):
            return False
        return model is None or self.covers(model)

    def covers(self, model: str) -> bool:
        """Whether ``model`` is in this grant's scope."""
        return self.models == "*" or fnmatch.fnmatchcase(model, self.models)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide`; ``reason`` says why not (for the 403's message)."""

    allowed: bool
    reason: str = ""


def decide(grants: Iterable[Grant], action: str, model: str | None = None) -> Decision:
    """Whether a caller holding ``grants`` may do ``action`` (on ``model``); deny by default.

    A route that names no model (a list, ``/metrics``) needs the action in some grant whatever
    its scope; what such a route shows is the caller's business to filter (:func:`visible`).
    """
    if action == "public":
        return Decision(True)
    if action not in ACTIONS:
        return Decision(False, f"unknown action {action!r}")
    held = list(grants)
    if any(g.allows(action, model) for g in held):
        return Decision(True)
    roles = sorted({g.role for g in held}) or ["none"]
    if model is not None and any(g.allows(action, None) for g in held):
        return Decision(False, f"model {model!r} is outside this credential's scope "
                               f"({', '.join(sorted({g.models for g in held}))})")
    return Decision(False, f"{action!r} needs one of the roles "
                           f"{', '.join(roles_allowing(action))}; this credential has "
                           f"{', '.join(roles)}")


def roles_allowing(action: str) -> list[str]:
    """The roles that allow ``action``, for messages and documents."""
    return sorted(role for role, actions in ROLES.items() if action in actions)


def visible(grants: Iterable[Grant], action: str, names: Iterable[str]) -> list[str]:
    """The names among ``names`` that some grant lets its holder ``action`` on."""
    held = list(grants)
    return [n for n in names if any(g.allows(action, n) for g in held)]


def check_role(role: str) -> str:
    """``role`` when it is one of :data:`ROLES`, else a :class:`ConfigError` naming them."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def check_roles(roles: str) -> str:
    """``roles`` (one role, or several joined by commas: ``trainer,deployer``) in
    :data:`ROLES`' order without repeats, else a :class:`ConfigError` naming the roles."""
    given = {check_role(r.strip()) for r in roles.split(",")}
    return ",".join(r for r in ROLES if r in given)


def grants(roles: str, models: str = "*") -> tuple[Grant, ...]:
    """The grants a key holding ``roles`` (comma-separated) over ``models`` stands for."""
    return tuple(Grant(role, models) for role in roles.split(","))


def check_pattern(pattern: str) -> str:
    """``pattern`` when it is a usable model-name glob, else a :class:`ConfigError`."""
    if not _PATTERN.match(pattern):
        raise ConfigError(f"models pattern {pattern!r} is not a model name glob "
                          "(letters, digits, . _ - and the wildcards * ? [...])")
    return pattern


__all__ = ["ACTIONS", "ROLES", "Decision", "Grant", "check_pattern", "check_role", "check_roles",
           "decide", "grants", "roles_allowing", "visible"]
