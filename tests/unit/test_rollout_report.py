"""Status in words: what each strategy does and how it ends, and the traffic servers report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modelyard.rollout.report import explain, traffic
from modelyard.rollout.stats import WindowStats


@dataclass(frozen=True)
class Dep:
    strategy: str = "canary"
    steps: tuple[int, ...] = (5, 25, 50, 100)
    step: int = 0
    state: str = "progressing"
    every_s: float = 60.0
    rules: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    id: int = 3
    model: str = "fraud"
    stable_version: int | None = 1
    candidate_version: int = 2
    step_started_at: Any = None

    @property
    def active(self) -> bool:
        return self.state in ("pending", "progressing", "paused")


@dataclass(frozen=True)
class Window:
    process: str
    stats: dict[str, Any]


def window(process: str, stable: int, candidate: int, **extra: Any) -> Window:
    def w(n: int) -> dict[str, Any]:
        stats = WindowStats()
        for _ in range(n):
            stats.observe(0.001)
        return stats.to_dict()

    return Window(process, {"stable": w(stable), "candidate": w(candidate), **extra})


def test_shadow_and_ab_say_what_they_do_and_that_a_person_ends_them():
    shadow = explain(Dep(strategy="shadow", steps=(100,)))
    assert "v1 answers every request; 100% of them are copied to v2" in shadow
    assert "never reach clients" in shadow and "shadow agreement" in shadow
    assert "never promotes by itself" in shadow
    assert "'modelyard rollout promote fraud'" in shadow and "rollout abort fraud" in shadow
    ab = explain(Dep(strategy="ab", steps=(30,), key="user_id"))
    assert "30% of users get v2, the rest v1" in ab and "'user_id'" in ab
    assert "never promotes by itself" in ab
    opted_in = explain(Dep(strategy="shadow", steps=(100,), rules={"auto_promote": True}))
    assert "promotes v2 to production" in opted_in and "never promotes" not in opted_in


def test_canary_blue_green_and_ended_rollouts():
    canary = explain(Dep(rules={"metric": "f1"}))
    assert canary.startswith("Canary: v2 answers 5% of requests, v1 the rest (step 1 of 4")
    assert "f1 on fed-back labels" in canary and "a failed check rolls back" in canary
    assert "Every 60 s" in canary and "last step promotes v2" in canary
    pending = explain(Dep(strategy="blue-green", steps=(100,), state="pending"))
    assert "v2 is loading and warming while v1 answers every request" in pending
    assert explain(Dep(state="rolled_back")) == "Ended: rolled back; v1 serves all traffic."
    assert explain(Dep(state="promoted")).startswith("Ended: v2 was promoted")
    assert explain(Dep(state="paused")).startswith("Paused:")


def test_no_traffic_is_claimed_until_a_server_routes_the_rollout():
    d = Dep(step=1)
    nobody = traffic(d, [])
    assert nobody["planned_candidate_percent"] == 25.0 and nobody["candidate_percent"] == 0.0
    assert "no server routes this rollout yet" in nobody["note"]
    routed = traffic(d, [window("server:a", 30, 10), window("server:b", 3, 1)])
    assert routed["candidate_percent"] == 25.0 and routed["note"] == ""
    assert routed["requests"] == {"stable": 33, "candidate": 11}
    assert routed["servers"] == ["server:a", "server:b"]
    unloaded = traffic(d, [window("server:a", 30, 0, candidate_serving=False,
                                  analysis="hold: candidate has 0 of the 100 requests")])
    assert unloaded["candidate_percent"] == 0.0 and "not loaded" in unloaded["note"]
    assert unloaded["analysis"].startswith("hold:")
    pending = replace(d, strategy="blue-green", steps=(100,), state="pending", step=0)
    assert traffic(pending, [window("server:a", 5, 0)])["candidate_percent"] == 0.0
