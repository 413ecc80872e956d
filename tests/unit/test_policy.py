"""Roles, scopes and the one decision, without a server: what each role may do, on which
models, and that everything else is denied."""

from __future__ import annotations

import itertools

import pytest

from modelyard.errors import ConfigError
from modelyard.registry.policy import (
    ACTIONS,
    ROLES,
    Grant,
    check_pattern,
    check_role,
    decide,
    roles_allowing,
    visible,
)

#: the issue's table, written out independently of ROLES: role -> what it may do.
EXPECTED = {
    "viewer": {"describe", "read"},
    "predictor": {"describe", "predict", "feedback"},
    "deployer": {"describe", "read", "deploy"},
    "trainer": {"describe", "read", "train"},
    "admin": set(ACTIONS),
}


@pytest.mark.parametrize(("role", "action"), itertools.product(EXPECTED, ACTIONS))
def test_each_role_allows_exactly_its_actions(role: str, action: str) -> None:
    allowed = decide([Grant(role)], action, "fraud").allowed
    assert allowed == (action == "public" or action in EXPECTED[role])


@pytest.mark.parametrize("action", ACTIONS)
def test_no_grant_allows_only_public(action: str) -> None:
    assert decide([], action, "fraud").allowed == (action == "public")


def test_scope_limits_every_action_to_its_models() -> None:
    grant = Grant("predictor", "fraud-*")
    assert decide([grant], "predict", "fraud-eu").allowed
    refused = decide([grant], "predict", "churn")
    assert not refused.allowed and "outside this credential's scope" in refused.reason
    assert "fraud-*" in refused.reason
    # a route that names no model (a list) needs the action, whatever the scope
    assert decide([grant], "describe", None).allowed
    assert not decide([grant], "read", None).allowed


def test_a_pattern_matches_whole_names_and_is_case_sensitive() -> None:
    assert Grant("viewer", "fraud").covers("fraud")
    assert not Grant("viewer", "fraud").covers("fraud-eu")
    assert not Grant("viewer", "fraud-*").covers("Fraud-eu")
    assert Grant("viewer", "m?").covers("m1") and not Grant("viewer", "m?").covers("m10")


def test_grants_add_up_and_the_refusal_names_the_roles_needed() -> None:
    grants = [Grant("viewer"), Grant("predictor", "a")]
    assert decide(grants, "predict", "a").allowed and decide(grants, "read", "b").allowed
    refused = decide([Grant("viewer")], "deploy", "a")
    assert not refused.allowed
    assert "admin, deployer" in refused.reason and "viewer" in refused.reason


def test_unknown_roles_and_actions_grant_nothing() -> None:
    assert not decide([Grant("root")], "read", "a").allowed
    assert not decide([Grant("admin")], "launch", "a").allowed


def test_visible_filters_names_by_scope() -> None:
    grants = [Grant("viewer", "fraud-*")]
    assert visible(grants, "read", ["churn", "fraud-eu", "fraud-us"]) == ["fraud-eu", "fraud-us"]


def test_roles_allowing_and_validation() -> None:
    assert roles_allowing("deploy") == ["admin", "deployer"]
    assert set(ROLES) == set(EXPECTED)
    assert check_role("viewer") == "viewer" and check_pattern("fraud-[ab]*") == "fraud-[ab]*"
    with pytest.raises(ConfigError, match="role 'root'"):
        check_role("root")
    for bad in ("", "a b", "x" * 201, "a/b"):
        with pytest.raises(ConfigError, match="models pattern"):
            check_pattern(bad)
