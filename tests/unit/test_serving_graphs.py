"""How a graph's runner moves data between members (pure helpers) and answers with a fake
data plane: a sequence's feeds, a switch's rows split and put back, errors naming the step, a
graph that loops back refused."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelyard.adapters import get_adapter
from modelyard.errors import ConflictError, InputError, NotFoundError
from modelyard.graph import Step, parse_graph
from modelyard.predictor import Prediction, Predictor
from modelyard.schema import Signature
from modelyard.serving.batching import BatchPolicy
from modelyard.serving.graphs import (
    GraphRunner,
    count_rows,
    feed,
    field_values,
    in_step,
    reassemble,
    take,
)

RECORDS = [{"a": 1.0, "region": "eu"}, {"a": 2.0, "region": "us"}, {"a": 3.0, "region": "eu"}]


def test_rows_and_fields_of_each_payload_form() -> None:
    assert count_rows(RECORDS) == 3 and count_rows({"a": [1, 2]}) == 2
    assert count_rows({"a": 1.0}) == 1 and count_rows(np.zeros((4, 2))) == 4
    assert field_values(RECORDS, "region", 3) == ["eu", "us", "eu"]
    assert field_values({"region": ["x", "y"]}, "region", 2) == ["x", "y"]
    assert field_values({"region": "x", "a": 1}, "region", 1) == ["x"]
    with pytest.raises(InputError, match="field 'region' is missing"):
        field_values([[1.0, 2.0]], "region", 1)


def test_take_keeps_the_form_and_drops_the_routing_field() -> None:
    assert take(RECORDS, [0, 2], 3, "region") == [{"a": 1.0}, {"a": 3.0}]
    assert take({"a": [1, 2, 3], "region": ["x", "y", "z"]}, [1], 3, "region") == {"a": [2]}
    np.testing.assert_array_equal(take({"a": np.arange(3)}, [2, 0], 3)["a"], [2, 0])
    assert take({"a": 1.0, "region": "eu"}, [0], 1, "region") == {"a": 1.0}
    np.testing.assert_array_equal(take(np.arange(6).reshape(3, 2), [1], 3), [[2, 3]])


def test_feed_turns_an_answer_into_the_next_input() -> None:
    previous = Prediction(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.2, 0.8], [0.6, 0.4]]),
                          ("n", "p"))
    np.testing.assert_array_equal(feed(Step(model="b"), previous, None, 2, "b"),
                                  previous.predictions)
    named = feed(Step(model="b", input_field="emb"), previous, None, 2, "b")
    assert set(named) == {"emb"}
    cols = feed(Step(model="b", output="scores", columns=["p_n", "p_y"],
                     pass_through=["region"]), previous, RECORDS[:2], 2, "b")
    np.testing.assert_array_equal(cols["p_y"], [0.8, 0.4])
    assert cols["region"] == ["eu", "us"]
    labels = Prediction(np.array(["x", "y"]))
    assert feed(Step(model="b"), labels, None, 2, "b").shape == (2, 1)
    with pytest.raises(ConflictError, match="step b takes the previous step's scores"):
        feed(Step(model="b", output="scores"), labels, None, 2, "b")
    with pytest.raises(ConflictError, match="answers 2 values a row, columns names 3"):
        feed(Step(model="b", columns=["x", "y", "z"]), previous, None, 2, "b")


def test_reassemble_puts_rows_back_in_request_order() -> None:
    a = Prediction(np.array([1, 3]), np.array([[0.9, 0.1], [0.2, 0.8]]), (0, 1))
    b = Prediction(np.array([2]), np.array([[0.5, 0.5]]), (0, 1))
    out = reassemble([([0, 2], a), ([1], b)], 3)
    assert out.predictions.tolist() == [1, 2, 3] and out.classes == (0, 1)
    np.testing.assert_allclose(out.scores, [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    other = Prediction(np.array([2]), np.array([[1.0]]), (2,))
    assert reassemble([([0, 2], a), ([1], other)], 3).scores is None  # classes differ


def test_a_step_error_keeps_its_status_and_names_the_step() -> None:
    err = in_step(InputError("bad f0", [{"loc": ["f0"], "msg": "expected a number"}]), "clf")
    assert isinstance(err, InputError) and err.status_code == 422
    assert str(err) == "step clf: bad f0" and err.errors[0]["loc"] == ["step", "clf", "f0"]
    assert in_step(NotFoundError("no clf"), "clf").status_code == 404
    assert in_step(ValueError("boom"), "clf").status_code == 500


class FakePlane:
    """Members answer ``10 * first column + member number``; ``loop`` calls the graph again."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, Any]] = []
        self.graphs: dict[str, GraphRunner] = {}

    async def dispatch(self, name: str, version: int | None, payload: Any, scores: bool,
                       request_id: str | None) -> tuple[Prediction, str, Any]:
        self.calls.append((name, version, payload))
        if name in self.graphs:
            runner = self.graphs[name]
            return (await runner.answer(payload, count_rows(payload), scores), f"{name}:1",
                    None)
        if name == "bad":
            raise InputError("no", [{"loc": ["x"], "msg": "wrong"}])
        rows = np.asarray([r["a"] for r in payload] if isinstance(payload, list) else payload,
                          dtype=float).reshape(-1)
        return Prediction(rows * 10 + len(name)), f"{name}:{version or 1}", rows


def graph_runner(plane: FakePlane, name: str, graph: dict[str, Any]) -> GraphRunner:
    decl = parse_graph(graph)
    predictor = Predictor(name, 1, "graph", decl, get_adapter("graph"),
                          Signature.from_dict({"inputs": [{"name": "a", "dtype": "float64"}]}))
    runner = GraphRunner(predictor, BatchPolicy(), dispatch=plane.dispatch,
                         aliases=lambda m, a: {"staging": 7}.get(a))
    plane.graphs[name] = runner
    return runner


def test_a_switch_splits_rows_by_field_and_puts_them_back() -> None:
    plane = FakePlane()
    runner = graph_runner(plane, "g", {"kind": "switch", "field": "region",
                                       "routes": {"eu": "e", "us": "usa@staging"}})
    out = asyncio.run(runner.answer(RECORDS, 3))
    assert out.predictions.tolist() == [11.0, 23.0, 31.0]
    assert out.steps == ("e:1", "usa:7")
    assert plane.calls[1] == ("usa", 7, [{"a": 2.0}])  # the alias, resolved; the field, dropped


def test_an_error_in_a_step_names_it_and_a_loop_is_refused() -> None:
    plane = FakePlane()
    runner = graph_runner(plane, "g", {"kind": "sequence", "steps": ["e", "bad"]})
    with pytest.raises(InputError, match=r"^step bad: no") as err:
        asyncio.run(runner.answer(RECORDS, 3))
    assert err.value.errors[0]["loc"] == ["step", "bad", "x"]
    looping = graph_runner(plane, "loop", {"kind": "ensemble", "members": ["e", "loop"],
                                           "rule": "vote"})
    with pytest.raises(ConflictError, match=r"step loop: graph loop reaches itself"):
        asyncio.run(looping.answer(RECORDS, 3))


def test_each_request_marks_the_graph_used_for_idle_unloading() -> None:
    plane = FakePlane()
    runner = graph_runner(plane, "g", {"kind": "ensemble", "members": ["e", "f"],
                                       "rule": "mean"})
    used: list[int] = []
    runner.touch = lambda: used.append(1)

    async def twice() -> list[Any]:
        runner.start()
        try:
            return [await runner.submit(RECORDS, 3) for _ in range(2)]
        finally:
            await runner.close()

    first, _ = asyncio.run(twice())
    assert used == [1, 1] and first.steps == ("e:1", "f:1")
    np.testing.assert_allclose(first.predictions, [11.0, 21.0, 31.0])
