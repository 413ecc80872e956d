"""Composed models, the pure part: declarations, their validation, cycles, ensemble rules and the
switch's choice (no registry, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.errors import ConfigError, ConflictError, InputError
from modelyard.graph import (
    Answer,
    EnsembleGraph,
    MemberRef,
    SequenceGraph,
    SwitchGraph,
    check_classes,
    check_feeds,
    choose_routes,
    combine,
    find_cycle,
    groups,
    parse_graph,
    parse_ref,
    refuse_cycle,
    to_data,
)
from modelyard.spec import Spec, compose, declared


def test_member_references() -> None:
    assert parse_ref("clf") == MemberRef("clf")
    assert parse_ref("clf:3") == MemberRef("clf", 3)
    assert parse_ref("clf@staging") == MemberRef("clf", alias="staging")
    assert str(parse_ref("clf:3")) == "clf:3" and str(parse_ref("clf@x")) == "clf@x"
    for bad in ("", "clf:", "clf:0", "clf:x", "a b", "clf@"):
        with pytest.raises(ConfigError, match="name, name:N or name@alias"):
            parse_ref(bad)


def test_a_sequence_takes_short_steps_and_round_trips_as_plain_data() -> None:
    graph = parse_graph({"kind": "sequence", "steps": ["embed:2", {"model": "clf",
                                                                    "output": "predictions"}]})
    assert isinstance(graph, SequenceGraph)
    assert graph.members() == ["embed:2", "clf"]
    assert parse_graph(to_data(graph)) == graph


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "ensemble", "members": ["a", "b"], "rule": "median"},
     "graph.rule: unknown rule 'median'; rules: mean, vote, weighted"),
    ({"kind": "ensemble", "members": ["a", "b"], "rule": "weighted"},
     "weights go with rule: weighted"),
    ({"kind": "ensemble", "members": ["a", "b"], "rule": "weighted", "weights": [1.0]},
     "weights: give 2 numbers"),
    ({"kind": "ensemble", "members": ["a"]}, "members: List should have at least 2"),
    ({"kind": "sequence", "steps": ["a"]}, "steps: List should have at least 2"),
    ({"kind": "sequence", "steps": ["a", {"model": "b", "pass_through": ["x"]}]},
     "pass_through needs input_field or columns"),
    ({"kind": "switch", "routes": {"x": "a"}}, "exactly one of field"),
    ({"kind": "switch", "field": "f", "router": "r", "routes": {"x": "a"}}, "exactly one of"),
    ({"kind": "switch", "field": "f", "routes": {"x": "a b"}}, "not a model reference"),
    ({"kind": "loop", "steps": ["a", "b"]}, "kind"),
])
def test_bad_declarations_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^graph[.:]") as err:
        parse_graph(data)
    assert message in str(err.value)


def test_a_spec_trains_or_composes() -> None:
    graph = {"kind": "ensemble", "members": ["a", "b"], "rule": "vote"}
    spec = Spec.parse({"name": "g", "graph": graph})
    assert spec.train is None and spec.data is None and isinstance(spec.graph, EnsembleGraph)
    with pytest.raises(ConfigError, match="train and data required"):
        Spec.parse({"name": "m"})
    with pytest.raises(ConfigError, match="a graph spec trains nothing: remove train"):
        Spec.parse({"name": "g", "graph": graph, "train": "x.py:train"})
    with pytest.raises(ConfigError, match=r"spec: graph\.rule: unknown rule 'max'"):
        Spec.parse({"name": "g", "graph": {**graph, "rule": "max"}})


def test_the_python_declaration_is_the_yaml_one() -> None:
    graph = {"kind": "sequence", "steps": ["embed", "clf"]}
    spec = compose("pipeline_graph", graph=graph, description="embed then classify")
    assert declared()["pipeline_graph"] is spec
    assert spec.graph == Spec.parse({"name": "x", "graph": graph}).graph


def test_cycles_are_found_through_nested_graphs() -> None:
    members = {"outer": ["inner", "c"], "inner": ["a", "outer"], "a": [], "c": []}
    assert find_cycle("outer", lambda n: members.get(n, [])) == ["outer", "inner", "outer"]
    assert find_cycle("inner", lambda n: members.get(n, [])) == ["inner", "outer", "inner"]
    members["inner"] = ["a", "c"]
    assert find_cycle("outer", lambda n: members.get(n, [])) is None
    members["c"] = ["c"]
    with pytest.raises(ConfigError, match="graph outer contains itself: c -> c"):
        refuse_cycle("outer", lambda n: members.get(n, []))


def ensemble(rule: str, weights: list[float] | None = None) -> EnsembleGraph:
    data = {"kind": "ensemble", "members": ["a", "b", "c"], "rule": rule}
    graph = parse_graph({**data, **({"weights": weights} if weights else {})})
    assert isinstance(graph, EnsembleGraph)
    return graph


def classifier(*rows: list[float]) -> Answer:
    scores = np.asarray(rows)
    classes = ("neg", "pos")
    return Answer(np.asarray([classes[i] for i in scores.argmax(1)]), scores, classes)


def test_mean_averages_class_scores_and_takes_their_argmax() -> None:
    answers = [classifier([0.9, 0.1], [0.4, 0.6]), classifier([0.2, 0.8], [0.3, 0.7]),
               classifier([0.1, 0.9], [0.5, 0.5])]
    out = combine(ensemble("mean"), answers)
    assert out.predictions.tolist() == ["pos", "pos"]
    np.testing.assert_allclose(out.scores, [[0.4, 0.6], [0.4, 0.6]])
    assert out.classes == ("neg", "pos")


def test_weighted_counts_each_member_by_its_weight() -> None:
    answers = [classifier([0.9, 0.1]), classifier([0.2, 0.8]), classifier([0.1, 0.9])]
    out = combine(ensemble("weighted", [8, 1, 1]), answers)
    assert out.predictions.tolist() == ["neg"]
    np.testing.assert_allclose(out.scores, [[0.75, 0.25]])


def test_mean_of_regressors_averages_values() -> None:
    out = combine(ensemble("mean"), [Answer(np.array([1.0, 2.0])), Answer(np.array([3.0, 4.0])),
                                     Answer(np.array([5.0, 0.0]))])
    np.testing.assert_allclose(out.predictions, [3.0, 2.0])
    assert out.scores is None


def test_mean_refuses_members_with_other_classes() -> None:
    other = Answer(np.array([1]), np.array([[1.0]]), (1,))
    with pytest.raises(ConflictError, match="different classes"):
        combine(ensemble("mean"), [classifier([0.5, 0.5]), classifier([0.5, 0.5]), other])


def test_vote_takes_the_majority_and_the_first_member_breaks_ties() -> None:
    answers = [Answer(np.array(["x", "y", "z"])), Answer(np.array(["y", "y", "w"])),
               Answer(np.array(["x", "q", "v"]))]
    assert combine(ensemble("vote"), answers).predictions.tolist() == ["x", "y", "z"]


def test_registered_classes_must_suit_the_rule() -> None:
    graph = ensemble("mean")
    with pytest.raises(ConfigError, match=r"graph\.rule: mean needs members with the same classes"):
        check_classes(graph, {"a": (0, 1), "b": (0, 1), "c": (1,)})
    check_classes(graph, {"a": (0, 1), "b": (0, 1), "c": (0, 1)})
    check_classes(ensemble("vote"), {"a": (0, 1), "b": (2,), "c": None})


def test_the_switch_routes_each_row_and_falls_back_to_its_default() -> None:
    graph = parse_graph({"kind": "switch", "field": "region",
                         "routes": {"eu": "clf_eu", "us": "clf_us:2", "1": "one"},
                         "default": "clf_eu"})
    assert isinstance(graph, SwitchGraph)
    chosen = choose_routes(graph, ["us", "eu", "apac", np.int64(1), 1.0], source="field")
    assert chosen == ["clf_us:2", "clf_eu", "clf_eu", "one", "one"]
    assert groups(chosen) == {"clf_us:2": [0], "clf_eu": [1, 2], "one": [3, 4]}
    assert graph.members() == ["clf_eu", "clf_us:2", "one"]


def test_a_switch_without_default_refuses_an_unknown_value_naming_it() -> None:
    graph = parse_graph({"kind": "switch", "router": "lang", "routes": {"en": "a", "de": "b"}})
    assert isinstance(graph, SwitchGraph) and graph.members() == ["lang", "a", "b"]
    with pytest.raises(InputError, match="router's label is 'fr' in row 1: no route") as err:
        choose_routes(graph, ["en", "fr"], source="router's label")
    assert err.value.errors[0]["loc"] == ["router", 1]


def test_a_sequence_step_must_take_what_the_step_before_answers() -> None:
    table3 = {"layout": "table", "inputs": [{"name": f"f{i}"} for i in range(3)],
              "outputs": [{"name": "predictions", "shape": []},
                          {"name": "scores", "shape": [2]}]}
    embed = {"layout": "tensor", "inputs": [{"name": "input", "shape": [3]}],
             "outputs": [{"name": "predictions", "shape": [2]}]}
    clf2 = {"layout": "table", "inputs": [{"name": "a"}, {"name": "b"}],
            "outputs": [{"name": "predictions", "shape": []}]}
    sigs = {"embed": embed, "clf2": clf2, "t3": table3, "old": {"inputs": [], "outputs": []}}

    def check(*steps: object) -> None:
        check_feeds(parse_graph({"kind": "sequence", "steps": list(steps)}), sigs)

    check("embed", "clf2")
    check("t3", {"model": "clf2", "output": "scores"})  # two class scores, two inputs
    check("old", "t3")  # nothing recorded: the server checks each call
    check("embed", {"model": "t3", "input_field": "x"})
    with pytest.raises(ConfigError, match=r"graph\.steps\.1: t3 takes 3 values a row, but "
                       r"embed answers 2 predictions a row"):
        check("embed", "t3")
    with pytest.raises(ConfigError, match=r"graph\.steps\.2: embed takes 3 values a row, but "
                       r"clf2 answers 1"):
        check("embed", "clf2", "embed")
