"""CPU quotas: the frameworks' thread pools are sized to what a container may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.devices import compute_threads, cpu_quota
from modelyard.serving.command import THREAD_VARIABLES, _fit_threads_to_quota


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1),
    ("max 100000", None), ("", None), (None, None), ("garbage", None), ("100 0", None)])
def test_cpu_quota_reads_cgroup_v2_cpu_max(cpu_max: str | None, cpus: int | None) -> None:
    assert cpu_quota(cpu_max) == cpus


def test_threads_follow_the_quota_only_when_it_is_below_the_cpus_the_process_sees() -> None:
    assert compute_threads(64, "400000 100000") == 4   # a Kubernetes limit of 4 on a big node
    assert compute_threads(2, "400000 100000") is None  # the affinity is the tighter bound
    assert compute_threads(8, "max 100000") is None


def test_serve_sets_the_thread_variables_unless_the_user_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # a quota of one CPU of the four it may run on
    env = {"OMP_NUM_THREADS": "3"}
    _fit_threads_to_quota(env, cpu_max)
    assert env == {"OMP_NUM_THREADS": "3", "TF_NUM_INTRAOP_THREADS": "1"}
    unlimited: dict[str, str] = {}
    cpu_max.write_text("max 100000\n")
    _fit_threads_to_quota(unlimited, cpu_max)
    _fit_threads_to_quota(unlimited, tmp_path / "absent")
    assert unlimited == {} and len(THREAD_VARIABLES) == 2
