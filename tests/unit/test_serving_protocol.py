"""Wire formats and pure decisions of the server: v1 and v2 codecs, routing, sizes, policies."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelyard.errors import BadJSONError, InputError, MethodNotAllowedError
from modelyard.predictor import Prediction
from modelyard.schema import FieldSpec, Signature
from modelyard.serving import protocol_v1, protocol_v2
from modelyard.serving.batching import BatchPolicy
from modelyard.serving.cache import choose_evictions
from modelyard.serving.http import compile_routes, match
from modelyard.serving.inputs import InputPath
from modelyard.serving.options import ServeOptions, parse_size
from modelyard.serving.runner import batch_policy, serving_spec
from modelyard.serving.watcher import alias_moves
from modelyard.spec import ServingSpec

TABLE = Signature(tuple(FieldSpec(f"f{i}", "float64") for i in range(3)), classes=(0, 1))
FRAME = Signature(tuple(FieldSpec(f"f{i}", "float64") for i in range(3)), frame=True)
TEXT = Signature((FieldSpec("text", "string"),), layout="tensor")
IMAGE = Signature((FieldSpec("image", "float32", (2, 2)),), layout="tensor")


# -- native protocol ----------------------------------------------------------------------------
def test_v1_decode_takes_each_payload_form_and_the_scores_flag() -> None:
    assert protocol_v1.decode(b'{"records": [{"a": 1}]}') == ([{"a": 1}], False)
    assert protocol_v1.decode(b'{"columns": {"a": [1]}, "scores": true}') == ({"a": [1]}, True)
    assert protocol_v1.decode(b'{"instances": [[1, 2]]}', query_scores=True)[1] is True
    assert protocol_v1.decode(b'{"inputs": {"image": [1]}}')[0] == {"image": [1]}


@pytest.mark.parametrize("body", [
    b'[1, 2]', b'{}', b'{"records": [1], "columns": {}}', b'{"records": []}',
    b'{"records": [{"a": 1}], "extra": 1}', b'{"columns": [1]}', b'{"inputs": 1, "scores": 3}',
])
def test_v1_decode_rejects_malformed_bodies_with_422_detail(body: bytes) -> None:
    with pytest.raises(InputError) as info:
        protocol_v1.decode(body)
    assert info.value.status_code == 422 and info.value.errors


def test_v1_unparseable_json_is_400() -> None:
    with pytest.raises(BadJSONError) as info:
        protocol_v1.decode(b'{"records": ')
    assert info.value.status_code == 400


def test_v1_encode_numbers_labels_and_scores() -> None:
    pred = Prediction(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), (0, 1))
    doc = orjson.loads(protocol_v1.encode("m", 3, pred, scores=True))
    assert doc == {"model": "m", "version": 3, "predictions": [0, 1],
                   "scores": [[0.9, 0.1], [0.2, 0.8]], "classes": [0, 1]}
    text = Prediction(np.array(["pos", "neg"], dtype=object))
    assert orjson.loads(protocol_v1.encode("m", 1, text, scores=True))["predictions"] == [
        "pos", "neg"]


# -- the fast input path ------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [
    [{"f0": 1, "f1": 2.5, "f2": -1}],
    [{"f2": 1, "f0": 2.5, "f1": -1}, {"f0": 0, "f1": 0, "f2": 0}],
    {"f0": 1, "f1": 2, "f2": 3},
    {"f0": [1, 2], "f1": [3, 4], "f2": [5, 6]},
    [[1, 2, 3], [4, 5, 6]],
    [1, 2, 3],
    np.arange(6.0).reshape(2, 3),
])
def test_the_fast_path_builds_exactly_what_prepare_builds(payload: object) -> None:
    for sig in (TABLE, FRAME):
        path = InputPath(sig)
        batch, n = path.prepare(payload)
        want, want_n = sig.prepare(payload)
        assert n == want_n
        np.testing.assert_array_equal(path.finalize(batch), want)
        if sig.frame:
            assert list(path.finalize(batch).columns) == ["f0", "f1", "f2"]


@pytest.mark.parametrize("payload", [
    [{"f0": 1, "f1": 2}], [{"f0": 1, "f1": 2, "f2": "x"}], [{"f0": 1, "f1": 2, "f9": 3}],
    [[1, 2]], {"f0": [1], "f1": [2, 3], "f2": [4]}, [{"f0": [1], "f1": 2, "f2": 3}],
    [{"f0": None, "f1": 2, "f2": 3}], [[True, 2, 3]], {"f0": ["NaN"], "f1": [2], "f2": [3]},
    {"f0": 1, "f1": False, "f2": 3}, [[10**400, 1, 2]],
])
def test_the_fast_path_reports_the_same_errors_as_prepare(payload: object) -> None:
    with pytest.raises(InputError) as ours:
        InputPath(TABLE).prepare(payload)
    with pytest.raises(InputError) as theirs:
        TABLE.prepare(payload)
    assert ours.value.errors == theirs.value.errors


F32_TABLE = Signature(tuple(FieldSpec(f"f{i}", "float32") for i in range(3)))


@pytest.mark.parametrize("payload", [
    np.arange(6.0).reshape(2, 3),
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
    np.arange(6, dtype=np.uint8).reshape(2, 3),
    np.array([[np.nan, np.inf, -1e30]]),
    np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    {f"f{i}": np.array([1.5, -2.0]) for i in range(3)},
    {"f0": np.array([1, 2]), "f1": np.array([3.0, 4.0], dtype=np.float32),
     "f2": np.array([5, 6], dtype=np.uint16)},
])
def test_oip_tensors_take_the_fast_path_to_exactly_what_prepare_builds(payload: object) -> None:
    for sig in (TABLE, FRAME, F32_TABLE):
        path = InputPath(sig)
        assert path._try_fast(payload) is not None  # the fast path takes it
        batch, n = path.prepare(payload)
        want, want_n = sig.prepare(payload)
        assert n == want_n
        got = path.finalize(batch)
        np.testing.assert_array_equal(got, want)
        assert np.asarray(got).dtype == np.asarray(want).dtype


@pytest.mark.parametrize("payload", [
    np.array([[1e39, 1.0, 2.0]]),                       # overflows float32
    np.array([[True, False, True]]),                     # booleans are not numbers
    np.array([["1", "2", "3"]]),                          # strings neither
    np.ones((2, 4)),                                      # the wrong width
    np.ones((0, 3)),                                      # no rows
    {"f0": np.array([1e39]), "f1": np.array([1.0]), "f2": np.array([2.0])},
    {"f0": np.array([1.0]), "f1": np.array([1.0, 2.0]), "f2": np.array([2.0])},
    {"f0": np.array([True]), "f1": np.array([1.0]), "f2": np.array([2.0])},
    {"f0": np.array([1.0]), "f1": np.array([1.0]), "f9": np.array([2.0])},
])
def test_oip_tensors_the_fast_path_refuses_get_prepares_errors(payload: object) -> None:
    with pytest.raises(InputError) as ours:
        InputPath(F32_TABLE).prepare(payload)
    with pytest.raises(InputError) as theirs:
        F32_TABLE.prepare(payload)
    assert ours.value.errors == theirs.value.errors
    assert str(ours.value) == str(theirs.value)


def test_an_oip_request_prepares_the_same_batch_through_either_path() -> None:
    matrix = orjson.dumps({"inputs": [{"name": "input__0", "shape": [2, 3], "datatype": "FP64",
                                       "data": [1, 2.5, -3, 4, 5, 6e300]}]})
    columns = orjson.dumps({"inputs": [{"name": f"f{i}", "shape": [2, 1], "datatype": "FP32",
                                        "data": [i, i + 0.5]} for i in range(3)]})
    for body in (matrix, columns):
        for sig in (TABLE, F32_TABLE):
            payload = protocol_v2.to_payload(sig, protocol_v2.decode_infer(body).inputs)
            try:
                want = sig.prepare(payload)[0]
            except InputError as exc:
                with pytest.raises(InputError) as ours:
                    InputPath(sig).prepare(payload)
                assert ours.value.errors == exc.errors  # 6e300 does not fit a float32
                continue
            np.testing.assert_array_equal(InputPath(sig).prepare(payload)[0], want)


def test_concat_and_warmup_payloads() -> None:
    path = InputPath(TABLE)
    a, _ = path.prepare([[1, 2, 3]])
    b, _ = path.prepare([[4, 5, 6], [7, 8, 9]])
    assert path.concat([a, b]).shape == (3, 3)
    for sig in (TABLE, TEXT, IMAGE, FRAME):
        _, n = InputPath(sig).prepare(InputPath(sig).warmup_payload())
        assert n == 1


# -- OIP v2 -------------------------------------------------------------------------------------
def test_v2_json_tensors_and_bytes_decode() -> None:
    body = orjson.dumps({"id": "r1", "inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
        {"name": "t", "shape": [2], "datatype": "BYTES", "data": ["héllo", "b"]},
    ], "outputs": [{"name": "predictions"}]})
    req = protocol_v2.decode_infer(body)
    assert req.id == "r1" and req.outputs == ["predictions"] and not req.binary_outputs
    assert req.inputs["x"].dtype == np.float32 and req.inputs["x"].shape == (2, 2)
    assert req.inputs["t"].tolist() == ["héllo", "b"]


def test_v2_binary_extension_round_trips_with_tritonclient_layout() -> None:
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    words = np.array(["a", "héllo", ""], dtype=object)
    raw_words = serialize_byte_tensor(words).item()
    assert protocol_v2.encode_bytes(words) == raw_words
    header = orjson.dumps({"inputs": [
        {"name": "x", "shape": [3, 2], "datatype": "FP32",
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "w", "shape": [3], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(raw_words)}},
    ], "outputs": [{"name": "predictions", "parameters": {"binary_data": True}}]})
    req = protocol_v2.decode_infer(header + x.tobytes() + raw_words, len(header))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["w"].tolist() == ["a", "héllo", ""]
    assert req.binary_outputs == {"predictions"}

    body, length = protocol_v2.encode_infer(
        "m", 2, {"predictions": np.array([1, 2, 3]), "labels": words}, {"predictions", "labels"})
    assert length is not None
    doc = orjson.loads(body[:length])
    assert doc["model_version"] == "2"
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    preds = np.frombuffer(body[length:length + sizes[0]], dtype=np.int64)
    assert preds.tolist() == [1, 2, 3]
    labels = deserialize_bytes_tensor(body[length + sizes[0]:])
    assert [v.decode() for v in labels] == ["a", "héllo", ""]


def test_v2_json_answers_hold_each_datatype_as_its_python_values() -> None:
    """Every output reads as the values its array holds: float32 as float64 numbers (the float
    the client gets is the one the model produced), NaN as null, big integers exact, in the
    tensor's row-major order whatever the array's memory layout."""
    outputs = {
        "fp64": np.array([[0.1, np.nan], [-0.0, 1e300]]),
        "fp32": np.array([0.1, 1 / 3], dtype=np.float32),
        "fp16": np.array([0.1], dtype=np.float16),
        "int64": np.array([2**63 - 1, -(2**63)], dtype=np.int64),
        "uint8": np.array([0, 255], dtype=np.uint8),
        "bool": np.array([True, False]),
        "columns": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "strided": np.arange(10.0)[::3],
        "big_endian": np.array([1.5, 2.5], dtype=">f8"),
    }
    body, length = protocol_v2.encode_infer("m", 1, outputs, set())
    assert length is None
    for entry in orjson.loads(body)["outputs"]:
        array = outputs[entry["name"]]
        assert entry["shape"] == list(array.shape)
        assert orjson.dumps(entry["data"]) == orjson.dumps(array.reshape(-1).tolist())
    assert b'"data":[0.10000000149011612,0.3333333432674408]' in body


@pytest.mark.parametrize("spec", [
    {"name": "x", "shape": [2], "datatype": "FP32", "data": [1]},
    {"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]},
    {"name": "x", "shape": [1], "datatype": "FP32"},
    {"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]},
    {"shape": [1], "datatype": "FP32", "data": [1]},
])
def test_v2_bad_inputs_are_422_naming_the_input(spec: dict[str, object]) -> None:
    with pytest.raises(InputError) as info:
        protocol_v2.decode_infer(orjson.dumps({"inputs": [spec]}))
    assert info.value.status_code == 422 and info.value.errors[0]["loc"][0] == "inputs"


def _v2_error(doc: object) -> dict[str, object]:
    """The one detail entry of the 422 that decoding ``doc`` gives."""
    with pytest.raises(InputError) as info:
        protocol_v2.decode_infer(orjson.dumps(doc))
    assert info.value.status_code == 422
    return info.value.errors[0]


X1 = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}


@pytest.mark.parametrize(("doc", "loc"), [
    ({"inputs": [X1], "parameters": [1]}, ["parameters"]),
    ({"inputs": [X1], "parameters": "binary"}, ["parameters"]),
    ({"inputs": [{**X1, "parameters": "x"}]}, ["inputs", 0, "parameters"]),
    ({"inputs": [{**X1, "parameters": 3}]}, ["inputs", 0, "parameters"]),
    ({"inputs": [X1], "outputs": [{"name": "predictions", "parameters": 5}]},
     ["outputs", 0, "parameters"]),
    ({"inputs": [X1], "outputs": {"name": "predictions"}}, ["outputs"]),
    ({"inputs": [X1], "outputs": 7}, ["outputs"]),
    ({"inputs": [X1], "parameters": {"binary_data_output": "yes"}},
     ["parameters", "binary_data_output"]),
    ({"inputs": [X1], "outputs": [{"name": "p", "parameters": {"binary_data": 1}}]},
     ["outputs", 0, "parameters", "binary_data"]),
    ({"inputs": [X1], "id": 5}, ["id"]),
])
def test_v2_parameters_outputs_and_id_of_the_wrong_type_are_422_naming_the_field(
        doc: dict[str, object], loc: list[object]) -> None:
    assert _v2_error(doc)["loc"] == loc


def test_v2_duplicate_input_and_output_names_are_an_error() -> None:
    assert _v2_error({"inputs": [X1, X1]})["loc"] == ["inputs", 1, "name"]
    twice = [{"name": "predictions"}, {"name": "predictions"}]
    assert _v2_error({"inputs": [X1], "outputs": twice})["loc"] == ["outputs", 1, "name"]


@pytest.mark.parametrize(("datatype", "data", "msg"), [
    ("INT64", [2**63], "9223372036854775808 is out of range for int64"),
    ("INT64", [1e30], "1e+30 is out of range for int64"),
    ("INT32", [2.5], "2.5 is not a whole number (int32)"),
    ("INT8", [1000], "1000 is out of range for int8"),
    ("UINT8", [-1], "-1 is out of range for uint8"),
    ("FP32", [1e300], "1e+300 is out of range for float32"),
    ("FP16", [1e6], "1000000.0 is out of range for float16"),
    ("FP32", ["NaN"], "expected float32, got the string 'NaN'"),
    ("FP64", [None], "expected float64, got null (not a number)"),
    ("FP64", [True], "expected float64, got the boolean true (not a number)"),
    ("INT64", [{"a": 1}], "expected int64, got an object (not a number)"),
])
def test_v2_tensor_data_must_be_numbers_the_datatype_holds(datatype: str, data: list[object],
                                                           msg: str) -> None:
    error = _v2_error({"inputs": [{"name": "x", "shape": [1], "datatype": datatype,
                                   "data": data}]})
    assert error == {"loc": ["inputs", 0, "data", 0], "msg": msg}


@pytest.mark.parametrize("spec", [
    {"name": "x", "shape": [True], "datatype": "FP32", "data": [1]},
    {"name": "x", "shape": [1], "datatype": ["FP32"], "data": [1]},
    {"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]},
    {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4.0}},
    {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -4}},
    {"name": "x", "shape": [2**62, 2**62], "datatype": "FP32", "data": [1]},
])
def test_v2_malformed_shapes_datatypes_and_sizes_are_422(spec: dict[str, object]) -> None:
    assert _v2_error({"inputs": [spec]})["loc"][:2] == ["inputs", 0]


def test_v2_numbers_within_range_decode_exactly() -> None:
    req = protocol_v2.decode_infer(orjson.dumps({"inputs": [
        {"name": "i", "shape": [2], "datatype": "INT64", "data": [2**63 - 1, -(2**63)]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        {"name": "h", "shape": [1, 2], "datatype": "FP16", "data": [[65504.0, 2]]},
    ]}))
    assert req.inputs["i"].tolist() == [2**63 - 1, -(2**63)]
    assert req.inputs["b"].dtype == np.bool_ and req.inputs["h"].dtype == np.float16


def test_v2_binary_sizes_must_add_up() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 4}}]})
    with pytest.raises(InputError):
        protocol_v2.decode_infer(header + b"\0" * 8, len(header))
    with pytest.raises(InputError):
        protocol_v2.decode_infer(header + b"\0" * 2, len(header))


def test_v2_tensors_map_onto_signatures() -> None:
    cols = {f"f{i}": np.array([1.0, 2.0]) for i in range(3)}
    assert TABLE.prepare(protocol_v2.to_payload(TABLE, cols))[1] == 2
    matrix = {"input__0": np.ones((4, 3))}
    assert TABLE.prepare(protocol_v2.to_payload(TABLE, matrix))[1] == 4
    with pytest.raises(InputError):
        protocol_v2.to_payload(TABLE, {"nope": np.ones(2)})
    with pytest.raises(InputError):
        protocol_v2.to_payload(IMAGE, {"other": np.ones((1, 2, 2))})
    text = protocol_v2.to_payload(TEXT, {"text": np.array(["a"], dtype=object)})
    assert TEXT.prepare(text)[1] == 1


def test_v2_metadata_states_the_outputs_the_version_answers() -> None:
    logits = (FieldSpec("predictions", "float32", (10,)),)
    meta = protocol_v2.model_metadata("mlp", [1], IMAGE, "torch", logits)
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, 10]}]
    classifier = (FieldSpec("predictions", "int64"), FieldSpec("scores", "float32", (3,)))
    meta = protocol_v2.model_metadata("c", [1], IMAGE, "torch", classifier)
    assert meta["outputs"][1] == {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}
    assert protocol_v2.output_types(IMAGE, classifier) == {"predictions": "INT64",
                                                           "scores": "FP32"}


def test_prediction_fields_are_what_the_model_answered() -> None:
    scores = np.zeros((4, 3), dtype=np.float32)
    fields = Prediction(np.array(["a", "b", "a", "c"], dtype=object), scores).fields()
    assert fields == (FieldSpec("predictions", "string"), FieldSpec("scores", "float32", (3,)))
    assert Prediction(np.zeros((4, 10), dtype=np.float32)).fields() == (
        FieldSpec("predictions", "float32", (10,)),)


def test_v2_metadata_uses_oip_datatypes() -> None:
    meta = protocol_v2.model_metadata("m", [1, 2], TABLE, "sklearn")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"][0] == {"name": "f0", "datatype": "FP64", "shape": [-1]}
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "scores"]
    assert protocol_v2.model_metadata("t", [1], TEXT, "sklearn")["inputs"][0]["datatype"] == "BYTES"
    assert protocol_v2.model_metadata("i", [1], IMAGE, "torch")["inputs"][0]["shape"] == [-1, 2, 2]


# -- routing, sizes, policies, decisions --------------------------------------------------------
def test_router_captures_segments_and_reports_405() -> None:
    routes = compile_routes([("POST", "/v1/models/{name}/predict", "p"),
                             ("GET", "/v2/models/{name}", "meta")])
    assert match(routes, "POST", "/v1/models/fraud/predict") == ("p", {"name": "fraud"})
    assert match(routes, "HEAD", "/v2/models/x") == ("meta", {"name": "x"})
    assert match(routes, "POST", "/v1/models/fraud/other") is None
    with pytest.raises(MethodNotAllowedError) as info:
        match(routes, "GET", "/v1/models/fraud/predict")
    assert info.value.status_code == 405 and info.value.allow == ["POST"]


def test_parse_size_and_options() -> None:
    assert parse_size("512MiB") == 512 * 1024**2
    assert parse_size("2GB") == 2 * 1000**3
    assert parse_size("1.5k") == 1500
    assert parse_size(None) is None
    with pytest.raises(Exception, match="not understood"):
        parse_size("lots")
    with pytest.raises(Exception, match="max_memory"):
        ServeOptions(max_memory=0)


def test_only_deep_learning_models_on_a_gpu_wait_for_fuller_batches() -> None:
    """On the CPU a wait only delays the answer: every model there batches from what queued
    while the previous batch ran; a DL model (or its ONNX conversion) on a GPU waits."""
    from types import SimpleNamespace

    from modelyard.adapters import get_adapter
    from modelyard.serving.onnx_runtime import batches_as_accelerated

    def record(flavor: str, source: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(flavor=flavor, meta={"source_flavor": source} if source else {})

    torch, onnx = get_adapter("torch"), get_adapter("onnx")
    assert batches_as_accelerated(record("torch"), torch, "cuda:0")
    assert not batches_as_accelerated(record("torch"), torch, "cpu")
    assert batches_as_accelerated(record("onnx", "torch"), onnx, "cuda:1")
    assert not batches_as_accelerated(record("onnx", "torch"), onnx, "cpu")
    assert not batches_as_accelerated(record("onnx", "sklearn"), onnx, "cuda:0")
    assert not batches_as_accelerated(record("sklearn"), get_adapter("sklearn"), "cpu")


def test_batch_policy_defaults_per_flavor_kind() -> None:
    auto = ServingSpec()
    assert batch_policy(auto, accelerated=True) == BatchPolicy(32, 0.002, 1024, 60.0, 0.001)
    assert batch_policy(auto, accelerated=False).max_delay_s == 0.0
    explicit = ServingSpec.model_validate({"batching": {"max_delay_ms": 5}})
    assert batch_policy(explicit, accelerated=False).max_delay_s == 0.005
    off = ServingSpec.model_validate({"batching": {"enabled": False}})
    assert batch_policy(off, accelerated=True).max_batch_size == 1
    assert serving_spec({"serving": {"batching": {"max_queue": 7}}}).batching.max_queue == 7
    assert serving_spec({"serving": {"nonsense": 1}}) == ServingSpec()


def test_choose_evictions_is_lru_and_keeps_the_new_version() -> None:
    entries = [(("a", 1), 50), (("b", 1), 30), (("c", 1), 40)]
    assert choose_evictions(entries, None) == []
    assert choose_evictions(entries, 120) == []
    assert choose_evictions(entries, 100, keep=("c", 1)) == [("a", 1)]
    assert choose_evictions(entries, 10, keep=("c", 1)) == [("a", 1), ("b", 1)]


def test_alias_moves() -> None:
    routes = {"a": 1, "b": 2, "gone": 1}
    models = {"a": {"production": 1}, "b": {"production": 3}, "c": {"production": 1},
              "d": {"staging": 1}}
    assert alias_moves(routes, models, "production") == {"b": 3, "c": 1, "gone": None}
