"""The settings a rollout of a version starts with: its declared policy, a person's overrides. Pure.

Every version the pipeline registers carries its spec's ``rollout:`` section and metric names in
its ``meta``. ``modelyard train``, the scheduler, ``modelyard deploy`` and the admin API all turn
that into a rollout the same way, :func:`plan_rollout`:

- **strategy**: the one asked for, else the one the spec declares, else ``default_strategy``
  (canary for ``deploy``); a model without a production version goes ``direct`` unless a
  strategy was asked for explicitly (then starting refuses, naming the problem);
- **steps**: the ones asked for, else the declared ones when they belong to the chosen strategy,
  else the strategy's defaults;
- **every_s** and **key** (A/B only): asked for, else declared;
- **rules**: the declared thresholds and metric (``rollout.metric``, else the first metric the
  model declares that this process knows), each overridden by a rule asked for by name.

The registered sections are read through :class:`~modelyard.version_settings.VersionSettings`
(strictly: a malformed one is a :class:`~modelyard.errors.ConfigError` naming the field), so a
version registered without them (by hand, or before they were stored) gets the defaults of
:class:`~modelyard.spec.RolloutSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.rollout.analysis import Rules
from modelyard.version_settings import VersionSettings

#: strategies whose steps are percentages a spec may declare.
_STEPPED = ("canary", "ab", "shadow")


@dataclass(frozen=True)
class RolloutPlan:
    """What :meth:`Deployments.start` is called with (see :func:`plan_rollout`)."""

    strategy: str
    steps: tuple[int, ...] | None
    every_s: float
    rules: dict[str, Any]
    key: str | None

    def start_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployments.start`` (strategy included)."""
        return {"strategy": self.strategy,
                "steps": None if self.steps is None else list(self.steps),
                "every_s": self.every_s, "rules": dict(self.rules), "key": self.key}


def plan_rollout(meta: Mapping[str, Any], *, strategy: str | None = None,
                 steps: Sequence[int] | None = None, every_s: float | None = None,
                 rules: Mapping[str, Any] | None = None, key: str | None = None,
                 has_production: bool = True, default_strategy: str = "canary") -> RolloutPlan:
    """The rollout of a version whose registry ``meta`` is given, with explicit overrides.

    ``None`` means "not asked for": the declared value (or a default) applies. Values are checked
    when the rollout starts (:func:`~modelyard.rollout.machine.plan_steps`,
    :meth:`Rules.from_dict`); this only decides where each comes from.
    """
    settings = VersionSettings.from_meta(meta)
    policy = settings.rollout
    declared = policy.strategy if "strategy" in policy.model_fields_set else None
    chosen = strategy or declared or default_strategy
    if strategy is None and not has_production:
        chosen = "direct"  # nothing to compare with: the first version goes live
    if steps is None and chosen in _STEPPED and "steps" in policy.model_fields_set and \
            chosen == (declared or "canary"):
        steps = policy.steps
    metrics = _known_metrics(settings.metrics or ())
    base = Rules.from_spec(policy, **({"metric": metrics[0]} if metrics else {})).to_dict()
    return RolloutPlan(
        strategy=chosen,
        steps=None if steps is None else tuple(steps),
        every_s=policy.every_s if every_s is None else float(every_s),
        rules={**base, **(rules or {})},
        key=(key if key is not None else policy.key) if chosen == "ab" else key,
    )


def _known_metrics(names: Sequence[Any]) -> list[str]:
    """The declared metric names this process can compute (a metric the user registers in
    their own code is unknown to ``modelyard deploy``: it is no default, only named here)."""
    from modelyard.metrics import metric_names  # numpy: only when a rollout is planned

    known = set(metric_names())
    return [str(name) for name in names if str(name) in known]


__all__ = ["RolloutPlan", "plan_rollout"]
