"""A queue message's decoding and the consumer's pure decisions: where the answer goes, retry
or dead-letter, what a dead letter says, and the dedupe window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.errors import BadJSONError, InputError
from modelyard.serving.queue.envelope import (
    DedupeWindow,
    Delivery,
    Settle,
    dead_letter,
    decode,
    destination,
    settle_failure,
)


def msg(body: object, **headers: object) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(raw, headers)


def test_the_model_comes_from_a_header_or_the_body() -> None:
    by_header = decode(msg({"instances": [[1, 2]]}, Model="fraud", version="3"))
    assert (by_header.model, by_header.version, by_header.alias) == ("fraud", 3, None)
    assert by_header.protocol == "v1" and by_header.payload == [[1, 2]]
    by_body = decode(msg({"model": "fraud", "alias": "staging", "records": [{"a": 1}],
                          "scores": True}))
    assert (by_body.model, by_body.alias, by_body.scores) == ("fraud", "staging", True)
    assert by_body.payload == [{"a": 1}]
    # a header wins over the body's field
    assert decode(msg({"model": "a", "instances": [[1]]}, model=b"b")).model == "b"


def test_oip_v2_tensors_are_recognised_or_named() -> None:
    body = {"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                    "data": [1, 2]}], "outputs": [{"name": "predictions"}]}
    request = decode(msg(body, model="m"))
    assert request.protocol == "v2" and request.payload.id == "r1"
    assert request.payload.outputs == ["predictions"]
    np.testing.assert_array_equal(request.payload.inputs["x"], [[1, 2]])
    assert decode(msg({"inputs": [[1, 2]]}, model="m")).protocol == "v1"
    assert decode(msg({"inputs": [[1, 2]]}, model="m", protocol="native")).protocol == "v1"


@pytest.mark.parametrize(("body", "headers", "field"), [
    ({"instances": [[1]]}, {}, "model"),
    ({"model": "", "instances": [[1]]}, {}, "model"),
    ({"model": "m", "version": "x1", "instances": [[1]]}, {}, "version"),
    ({"model": "m", "version": 0, "instances": [[1]]}, {}, "version"),
    ({"model": "m", "version": True, "instances": [[1]]}, {}, "version"),
    ({"instances": [[1]]}, {"model": "m", "version": "2", "alias": "a"}, "alias"),
    ({"instances": [[1]]}, {"model": "m", "protocol": "v9"}, "protocol"),
])
def test_a_bad_envelope_names_its_field(body: object, headers: dict[str, str],
                                        field: str) -> None:
    with pytest.raises(InputError) as caught:
        decode(msg(body, **headers))
    assert caught.value.errors[0]["loc"] == ["message", field]
    assert caught.value.status_code == 422


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(BadJSONError):
        decode(msg(b"{nope", model="m"))
    with pytest.raises(InputError, match="JSON object"):
        decode(msg([1, 2], model="m"))
    with pytest.raises(InputError, match="predict request format"):  # the native checks
        decode(msg({"rows": [[1]]}, model="m"))


def test_the_answer_goes_to_reply_to_else_to_the_output() -> None:
    assert destination(Delivery(b"", reply_to="rpc-1"), "answers") == "rpc-1"
    assert destination(Delivery(b""), "answers") == "answers"
    with pytest.raises(InputError) as caught:
        destination(Delivery(b""), None)
    assert caught.value.errors[0]["loc"] == ["message", "reply_to"]


def test_only_a_server_busy_now_gets_the_message_back() -> None:
    assert settle_failure(503, 1, 5) is Settle.REQUEUE
    assert settle_failure(504, 4, 5) is Settle.REQUEUE
    assert settle_failure(503, 5, 5) is Settle.ACK  # attempts spent: dead-lettered
    for status in (400, 404, 422, 500):
        assert settle_failure(status, 1, 5) is Settle.ACK


def test_a_dead_letter_carries_the_error_and_the_message() -> None:
    d = Delivery(b'{"x": 1}', {"model": "m"}, "id-1", "c-1", "rpc", 2)
    letter = json.loads(dead_letter(d, 404, {"error": "NotFoundError", "message": "no"}))
    assert letter == {"status": 404, "error": "NotFoundError", "message": "no",
                      "message_id": "id-1", "correlation_id": "c-1", "reply_to": "rpc",
                      "attempt": 2, "headers": {"model": "m"}, "body": '{"x": 1}'}
    binary = json.loads(dead_letter(Delivery(b"\xff\x00"), 400, {"error": "BadJSONError"}))
    assert binary["body"] == repr(b"\xff\x00")


def test_the_dedupe_window_answers_a_message_id_once() -> None:
    window = DedupeWindow(10.0)
    assert window.begin("a", 0.0)
    assert not window.begin("a", 1.0)  # in flight
    window.done("a", 2.0)
    assert not window.begin("a", 11.0)  # answered 9 s ago
    assert window.begin("a", 12.5)  # the window has passed
    assert window.begin("b", 13.0)
    window.forget("b")  # given back to the broker: its redelivery is answered
    assert window.begin("b", 13.5)


def test_the_dedupe_window_is_bounded_and_can_be_off() -> None:
    window = DedupeWindow(60.0, max_ids=3)
    for i, key in enumerate("abcd"):
        assert window.begin(key, float(i))
        window.done(key, float(i))
    assert len(window) == 3 and window.begin("a", 5.0)  # the oldest went first
    off = DedupeWindow(0.0)
    assert off.begin("x", 0.0) and off.begin("x", 0.0)
