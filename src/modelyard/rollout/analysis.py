"""Decide promote, advance, hold or roll back from two windows of counts: pure, no I/O.

:func:`analyze` compares the candidate's window with the stable version's window on four checks:

- **error rate** — the candidate fails when we are confident (one-sided, ``confidence``, default
  95 %) that its error rate is above ``max_error_rate`` (the lower bound of its Wilson score
  interval is above the budget) *and*, where the stable version has enough traffic to compare
  with, confident that it is worse than stable's (one-sided two-proportion z-test). So a
  candidate is not blamed for errors the stable version makes just as often (bad input), and a
  few unlucky errors in a small window do not roll it back.
- **latency** — decided on evidence, never on one noisy ratio: both versions answer the same
  traffic side by side (requests are assigned at random), so on a busy machine both slow down
  alike, and only a difference that chance cannot explain counts. Two one-sided tests at
  ``confidence``, each with a tolerance and an absolute floor (``latency_floor_s``: a slowdown
  smaller than that never fails, however certain):

  * *typical latency*: the Hodges-Lehmann estimate of the candidate/stable latency ratio (the
    median of every pairwise ratio) and its lower confidence bound from the Mann-Whitney rank
    distribution (:func:`latency_ratio`); fails when even the bound is above
    ``max_latency_ratio``;
  * *tail*: at the tail quantile the windows can estimate (p99 from 500 requests on, lower
    before: :func:`tail_quantile`), fails when confidently more of the candidate's requests lie
    above the pooled quantile than of stable's latencies stretched by ``max_p99_ratio``
    (:func:`tail_excess_p`, a two-proportion test): a heavier tail, not one slow request.

  ``max_p99_s``, when set, fails a candidate whose share of requests above it is confidently over
  1 % (the only latency check without stable traffic, as after a blue-green switch). Every test
  runs on the windows' histograms (10 % buckets), which merge exactly across processes; bounds
  are rounded by a bucket against rolling back.
- **declared metric** — where labels have arrived for at least ``min_labels`` predictions of both
  variants, fails when the candidate is worse than stable by more than ``max_metric_regression``
  (relative to stable's value), in the direction :func:`modelyard.metrics.greater_is_better`
  gives, *and* we are ``confidence`` sure it is worse at all: F1 on a few dozen labels moves by
  more than any sensible limit by chance alone. The evidence is the candidate's ``metric_p``
  (a permutation test over both sides' labeled rows, which holds on a handful of positives),
  else a one-sided z on the difference from both windows' bootstrap standard errors
  (``metric_se``). Missing labels skip the check, or hold when ``require_labels`` is set.
- **shadow agreement** — fails when we are confident the candidate agrees with the primary answer
  less often than ``min_agreement`` (the upper Wilson bound is below it).

Fewer than ``min_requests`` candidate requests (or stable requests, where stable answers a share
of the traffic to compare with): ``hold``. Any failed check: ``rollback``, with every failure in
``reasons``. Otherwise ``advance``, or ``promote`` at the last step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError
from modelyard.rollout.decision import Decision
from modelyard.rollout.stats import GROWTH, WindowStats, bucket_of

if TYPE_CHECKING:
    from modelyard.spec import RolloutSpec


#: requests a latency tail estimate needs above it (see :func:`tail_quantile`).
TAIL_SAMPLES = 5


@dataclass(frozen=True)
class Rules:
    """Thresholds of a rollout's analysis; stored as JSON in the deployment record.

    The model's ``rollout:`` spec gives the thresholds it declares (:meth:`from_spec`); the rest
    are extra knobs with defaults. ``auto_promote`` None means the strategy decides: canary, direct
    and blue-green promote by themselves, A/B and shadow wait for a person.
    """

    max_error_rate: float = 0.01
    #: the candidate's latency tail may be this many times heavier than stable's (confidently).
    max_p99_ratio: float = 1.5
    #: the candidate's typical latency may be this many times stable's (confidently).
    max_latency_ratio: float = 1.2
    min_requests: int = 100
    confidence: float = 0.95
    #: a slowdown smaller than this never fails, however certain.
    latency_floor_s: float = 0.002
    max_p99_s: float | None = None
    metric: str | None = None
    max_metric_regression: float = 0.02
    min_labels: int = 100
    require_labels: bool = False
    min_agreement: float | None = 0.9
    auto_promote: bool | None = None

    def __post_init__(self) -> None:
        _check_range("max_error_rate", self.max_error_rate, 0.0, 1.0)
        _check_range("confidence", self.confidence, 0.5, 0.9999)
        _check_range("max_metric_regression", self.max_metric_regression, 0.0, math.inf)
        _check_range("latency_floor_s", self.latency_floor_s, 0.0, math.inf)
        if self.min_agreement is not None:
            _check_range("min_agreement", self.min_agreement, 0.0, 1.0)
        _check_range("max_p99_ratio", self.max_p99_ratio, 1.0, math.inf)
        _check_range("max_latency_ratio", self.max_latency_ratio, 1.0, math.inf)
        if self.max_p99_s is not None and not self.max_p99_s > 0:
            raise ConfigError("rollout rules: max_p99_s must be above 0")
        if self.min_requests < 1 or self.min_labels < 1:
            raise ConfigError("rollout rules: min_requests and min_labels must be at least 1")
        if self.metric is not None:
            from modelyard.metrics import get_metric  # numpy: only when a metric is named

            get_metric(self.metric)  # unknown: ConfigError listing the known metrics

    @classmethod
    def from_spec(cls, spec: RolloutSpec, **extra: Any) -> Rules:
        """Rules from a model's ``rollout:`` spec, plus any extra knobs (``metric="f1"``); the
        spec's own ``metric`` wins over an extra one."""
        declared = {"metric": spec.metric} if spec.metric is not None else {}
        return cls.from_dict({"max_error_rate": spec.max_error_rate,
                              "max_latency_ratio": spec.max_latency_ratio,
                              "max_p99_ratio": spec.max_p99_ratio,
                              "min_requests": spec.min_requests,
                              "min_labels": spec.min_labels, **extra, **declared})

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Rules:
        """Validate stored or user-given rules; :class:`ConfigError` names an unknown key."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown rollout rule(s) {', '.join(unknown)}; "
                              f"known rules: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:  # a string where a number belongs, compared in __post_init__
            raise ConfigError(f"rollout rules: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the deployment record."""
        return asdict(self)


def analyze(stable: WindowStats, candidate: WindowStats, rules: Rules, step: int = 0,
            n_steps: int = 1, *, baseline: bool | None = None) -> Decision:
    """Decide what the rollout at ``step`` (0-based, of ``n_steps``) should do next.

    ``baseline``: whether stable answers a share of the traffic at this step (a canary below
    100 %, A/B, shadow), so that the candidate's latency must be compared with it: then the
    decision holds until stable has ``min_requests`` too, rather than judging the candidate on
    the absolute limit alone, which is all a step without stable traffic (direct, blue-green, a
    canary's 100 % step) can do. None: whether stable has any requests in its window.

    Pure: the same windows and rules always give the same decision.
    """
    if candidate.requests < rules.min_requests:
        return Decision("hold", (f"candidate has {candidate.requests} of the "
                                 f"{rules.min_requests} requests analysis needs",),
                        details={"candidate_requests": candidate.requests})
    if baseline is None:
        baseline = stable.requests > 0
    checks = [_error_rate(stable, candidate, rules),
              _latency(stable, candidate, rules, baseline),
              _metric(stable, candidate, rules), _agreement(candidate, rules)]
    details: dict[str, Any] = {}
    for check in checks:
        details.update(check.details)
    failed = tuple(c.failure for c in checks if c.failure)
    if failed:
        return Decision("rollback", failed, details=details)
    waiting = tuple(c.wait for c in checks if c.wait)
    if waiting:
        return Decision("hold", waiting, details=details)
    notes = tuple(c.note for c in checks if c.note)
    if step >= n_steps - 1:
        return Decision("promote", notes, details=details)
    return Decision("advance", notes, details=details)


@dataclass(frozen=True)
class _Check:
    failure: str = ""
    wait: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _error_rate(stable: WindowStats, candidate: WindowStats, rules: Rules) -> _Check:
    z = NormalDist().inv_cdf(rules.confidence)
    low, _ = wilson_interval(candidate.errors, candidate.requests, z)
    details: dict[str, Any] = {"candidate_error_rate": candidate.error_rate,
                               "candidate_error_rate_low": low}
    over_budget = low > rules.max_error_rate
    worse = True
    if stable.requests >= rules.min_requests:
        p_value = worse_proportion_p(candidate.errors, candidate.requests,
                                     stable.errors, stable.requests)
        details.update(stable_error_rate=stable.error_rate, error_rate_p_value=p_value)
        worse = p_value < 1 - rules.confidence
    summary = f"error rate {candidate.error_rate:.2%} (stable {stable.error_rate:.2%})"
    if over_budget and worse:
        return _Check(failure=f"{summary}: confidently above the {rules.max_error_rate:.2%} "
                              "budget and above stable's", details=details)
    return _Check(note=f"{summary} ok", details=details)


def tail_quantile(requests: int) -> float:
    """The latency quantile a window of ``requests`` can estimate: 0.99, or lower on small
    windows so that at least :data:`TAIL_SAMPLES` requests lie above it (the p99 of 40
    requests is their maximum: one GC pause, not a slow model)."""
    if requests <= 0:
        return 0.99
    return max(0.5, min(0.99, 1.0 - TAIL_SAMPLES / requests))


def latency_ratio(stable: WindowStats, candidate: WindowStats,
                  confidence: float) -> tuple[float, float | None] | None:
    """How many times slower the candidate typically is than stable: the Hodges-Lehmann
    estimate (the median ratio over every candidate/stable pair of requests) and its one-sided
    lower bound at ``confidence`` (the Mann-Whitney rank that chance reaches that seldom).

    None when either window has no timed request; the bound is None when the windows are too
    small to give one. Computed on the histograms: a pair's ratio is known to one bucket either
    way, so the bound is taken a bucket lower (conservative), the estimate as it falls.
    """
    cand, stab = _buckets(candidate), _buckets(stable)
    n, m = sum(c for _, c in cand), sum(c for _, c in stab)
    if n == 0 or m == 0:
        return None
    pairs: dict[int, int] = {}
    for i, ci in cand:
        for j, sj in stab:
            pairs[i - j] = pairs.get(i - j, 0) + ci * sj
    total = n * m
    z = NormalDist().inv_cdf(confidence)
    low_rank = math.floor(total / 2 - z * math.sqrt(total * (n + m + 1) / 12))
    median = _at_rank(pairs, (total + 1) // 2)
    estimate = GROWTH ** median
    if low_rank < 1:
        return estimate, None
    return estimate, GROWTH ** (_at_rank(pairs, low_rank) - 1)


def tail_excess_p(stable: WindowStats, candidate: WindowStats, ratio: float,
                  q: float) -> tuple[float, float, float]:
    """Whether the candidate's latency tail is more than ``ratio`` times heavier than stable's.

    Stable's latencies are stretched ``ratio`` times (rounded up to whole buckets) and pooled
    with the candidate's; the slowest ``1 - q`` of the pool is the tail (requests in the bucket
    where it starts count by the share of that bucket the tail takes, so ties favour neither
    side). The candidate fails only if its share of the tail is confidently above ``ratio``
    times stretched stable's: slower by more than ``ratio`` in time, *and* slow more than
    ``ratio`` times as often. The second half matters where slow requests are rare events (a
    busy machine's pauses) whose frequency, not length, makes the tail: stretching them barely
    moves a share of requests, and two equal versions would then sit on the test's edge.
    Returns ``(one-sided p-value, candidate share in the tail, stretched stable's share)``.
    """
    shift = math.ceil(math.log(ratio) / math.log(GROWTH) - 1e-9)
    stretched = {i + shift: c for i, c in stable.latency_buckets.items() if c > 0}
    cand = {i: c for i, c in candidate.latency_buckets.items() if c > 0}
    n, m = sum(cand.values()), sum(stretched.values())
    if n == 0 or m == 0:
        return 1.0, 0.0, 0.0
    pool = dict(stretched)
    for i, c in cand.items():
        pool[i] = pool.get(i, 0) + c
    needed = (1 - q) * (n + m)
    x = y = 0.0
    for index in sorted(pool, reverse=True):
        share = min(1.0, (needed - x - y) / pool[index])
        x += share * cand.get(index, 0)
        y += share * stretched.get(index, 0)
        if share < 1.0:
            break
    # a difference of shares with a margin: Wald, each share nudged off 0 and 1 (one success
    # and one failure added) so that a handful of requests cannot give a zero spread
    p1, p2 = (x + 1) / (n + 2), (y + 1) / (m + 2)
    spread = math.sqrt(p1 * (1 - p1) / n + ratio * ratio * p2 * (1 - p2) / m)
    z = (x / n - ratio * y / m) / spread
    return 1.0 - NormalDist().cdf(z), x / n, y / m


def _buckets(window: WindowStats) -> list[tuple[int, int]]:
    return sorted((i, c) for i, c in window.latency_buckets.items() if c > 0)


def _at_rank(counts: dict[int, int], rank: int) -> int:
    """The key holding the ``rank``-th smallest item (1-based) of ``{key: count}``."""
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        if seen >= rank:
            return key
    return max(counts)


def _latency(stable: WindowStats, candidate: WindowStats, rules: Rules,
             baseline: bool) -> _Check:
    enough = stable.requests >= rules.min_requests
    q = tail_quantile(min(candidate.requests, stable.requests) if enough else candidate.requests)
    label = "p99" if q >= 0.99 else f"p{q * 100:.3g}"
    cq, sq = candidate.quantile_s(q), stable.quantile_s(q)
    details: dict[str, Any] = {"candidate_p99_s": cq, "stable_p99_s": sq, "quantile": q}
    if cq is None:
        return _Check(details=details)
    failures = [_over_limit(candidate, rules, details)]
    if sq is not None and enough:
        failures += [_typical(stable, candidate, rules, details),
                     _tail(stable, candidate, rules, q, label, details)]
    failed = "; ".join(f for f in failures if f)
    if failed:
        return _Check(failure=failed, details=details)
    if baseline and not enough:
        return _Check(wait=f"stable has {stable.requests} of the {rules.min_requests} requests "
                           "a latency comparison needs", details=details)
    ratio = details.get("latency_ratio")
    than = f", typically {ratio:.2f}x stable's" if ratio is not None else ""
    return _Check(note=f"{label} latency {cq * 1000:.1f} ms{than} ok", details=details)


def _over_limit(candidate: WindowStats, rules: Rules, details: dict[str, Any]) -> str:
    """Fails when confidently more than 1 % of the candidate's requests exceed ``max_p99_s``."""
    if rules.max_p99_s is None:
        return ""
    # requests in the bucket holding the limit may lie either side of it: count them as under
    above, timed = candidate.count_from(bucket_of(rules.max_p99_s) + 1)
    z = NormalDist().inv_cdf(rules.confidence)
    low, _ = wilson_interval(above, timed, z)
    details["share_above_max_p99_s"] = above / timed if timed else 0.0
    if low <= 0.01:
        return ""
    return (f"p99 latency is above the {rules.max_p99_s * 1000:.1f} ms limit: "
            f"{above / timed:.1%} of requests are slower")


def _typical(stable: WindowStats, candidate: WindowStats, rules: Rules,
             details: dict[str, Any]) -> str:
    found = latency_ratio(stable, candidate, rules.confidence)
    if found is None:
        return ""
    estimate, low = found
    details.update(latency_ratio=estimate, latency_ratio_low=low)
    s50, c50 = stable.quantile_s(0.5), candidate.quantile_s(0.5)
    if low is None or low <= rules.max_latency_ratio or s50 is None or c50 is None:
        return ""
    if s50 * (low - 1) <= rules.latency_floor_s:  # certain, but too small to matter
        return ""
    return (f"typical latency {c50 * 1000:.1f} ms is {estimate:.2f}x stable's "
            f"{s50 * 1000:.1f} ms, confidently above the {rules.max_latency_ratio}x limit "
            f"(at least {low:.2f}x)")


def _tail(stable: WindowStats, candidate: WindowStats, rules: Rules, q: float, label: str,
          details: dict[str, Any]) -> str:
    cq, sq = candidate.quantile_s(q), stable.quantile_s(q)
    if cq is None or sq is None:
        return ""
    details["p99_ratio"] = cq / sq
    if cq - sq <= rules.latency_floor_s:
        return ""
    p_value, share_c, share_s = tail_excess_p(stable, candidate, rules.max_p99_ratio, q)
    details["tail_p_value"] = p_value
    if p_value >= 1 - rules.confidence:
        return ""
    return (f"{label} latency {cq * 1000:.1f} ms is {cq / sq:.2f}x stable's "
            f"{sq * 1000:.1f} ms (limit {rules.max_p99_ratio}x): {share_c:.1%} of its "
            f"requests reach the tail of stable's latencies stretched {rules.max_p99_ratio}x, "
            f"confidently more than {rules.max_p99_ratio}x stable's {share_s:.1%} "
            f"(p {p_value:.2g})")


def _metric(stable: WindowStats, candidate: WindowStats, rules: Rules) -> _Check:
    name = rules.metric
    if name is None:
        return _Check()
    c, s = candidate.metric_value, stable.metric_value
    enough = min(candidate.labeled, stable.labeled) >= rules.min_labels
    if c is None or s is None or not enough:
        message = (f"{name}: {min(candidate.labeled, stable.labeled)} of {rules.min_labels} "
                   "labels needed have arrived")
        return _Check(wait=message) if rules.require_labels else _Check(note=message)
    from modelyard.metrics import greater_is_better  # numpy: only when a metric is checked

    worse_by = (s - c) if greater_is_better(name) else (c - s)
    relative = worse_by / abs(s) if s else worse_by
    details: dict[str, Any] = {"candidate_metric": c, "stable_metric": s,
                               "metric_regression": relative}
    if relative <= rules.max_metric_regression:
        return _Check(note=f"{name} {c:.4g} (stable {s:.4g}) ok", details=details)
    worse = f"{name} {c:.4g} is {relative:.1%} worse than stable's {s:.4g}"
    labels = min(candidate.labeled, stable.labeled)
    if candidate.metric_p is not None:  # a permutation test: holds on a handful of labels too
        details["metric_p"] = candidate.metric_p
        if candidate.metric_p >= 1 - rules.confidence:
            return _Check(note=f"{worse}, within chance on {labels} labels (p "
                               f"{candidate.metric_p:.2g}) ok", details=details)
        return _Check(failure=f"{worse} (limit {rules.max_metric_regression:.1%}; p "
                              f"{candidate.metric_p:.2g})", details=details)
    if candidate.metric_se is not None and stable.metric_se is not None:
        spread = math.hypot(candidate.metric_se, stable.metric_se)
        z = worse_by / spread if spread > 0 else math.inf
        details["metric_z"] = z if math.isfinite(z) else None
        needed = NormalDist().inv_cdf(rules.confidence)
        if z < needed:
            return _Check(note=f"{worse}, within chance on {labels} labels (z {z:.2f} < "
                               f"{needed:.2f}) ok", details=details)
    return _Check(failure=f"{worse} (limit {rules.max_metric_regression:.1%})", details=details)


def _agreement(candidate: WindowStats, rules: Rules) -> _Check:
    if rules.min_agreement is None or candidate.compared < rules.min_requests:
        return _Check()
    z = NormalDist().inv_cdf(rules.confidence)
    _, high = wilson_interval(candidate.agreed, candidate.compared, z)
    share = candidate.agreed / candidate.compared
    details = {"agreement": share, "agreement_high": high}
    if high < rules.min_agreement:
        return _Check(failure=f"shadow agreement {share:.1%} is confidently below "
                              f"{rules.min_agreement:.1%}", details=details)
    return _Check(note=f"shadow agreement {share:.1%} ok", details=details)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``z``: the normal quantile), as (low, high)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def worse_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """One-sided p-value that proportion 1 (``x1/n1``) is above proportion 2 (pooled z-test)."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both all-errors or both error-free: no evidence either way
        return 1.0
    return 1.0 - NormalDist().cdf((x1 / n1 - x2 / n2) / se)


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"rollout rules: {name} must be a number from {low} to {high}, "
                          f"not {value!r}")


__all__ = [
    "Rules",
    "analyze",
    "latency_ratio",
    "tail_excess_p",
    "tail_quantile",
    "wilson_interval",
    "worse_proportion_p",
]
