"""Signatures: inference from training data, and the one input path every caller goes through."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import InputError
from modelyard.schema import FieldSpec, Signature

COLUMNS = ["sepal", "petal", "count", "flag"]


@pytest.fixture()
def frame_sig() -> Signature:
    df = pd.DataFrame(
        {"sepal": [5.1, 4.9], "petal": np.array([1.4, 1.3], dtype=np.float32), "count": [3, 4],
         "flag": [True, False]}
    )
    return Signature.infer(df, np.array([0, 1]))


@pytest.fixture()
def table_sig() -> Signature:
    return Signature.infer(np.random.default_rng(0).random((10, 3)))


@pytest.fixture()
def image_sig() -> Signature:
    return Signature.infer(np.zeros((4, 1, 8, 8), dtype=np.float32))


@pytest.fixture()
def text_sig() -> Signature:
    return Signature.infer(["good film", "bad film"], ["pos", "neg"])


def _errors(sig: Signature, payload: object) -> list[dict]:
    with pytest.raises(InputError) as err:
        sig.prepare(payload)
    assert err.value.errors, "an InputError must say what is wrong, field by field"
    assert all({"loc", "msg"} <= set(e) for e in err.value.errors)
    assert err.value.to_dict()["detail"] == err.value.errors
    return err.value.errors


# -- inference --------------------------------------------------------------------------------
def test_infer_from_a_dataframe(frame_sig):
    assert (frame_sig.layout, frame_sig.frame) == ("table", True)
    assert [(f.name, f.dtype, f.shape) for f in frame_sig.inputs] == [
        ("sepal", "float64", ()), ("petal", "float32", ()), ("count", "int64", ()),
        ("flag", "bool", ()),
    ]
    assert frame_sig.names == COLUMNS
    assert frame_sig.outputs == (FieldSpec("output", "int64"),)


def test_infer_string_columns_of_a_dataframe():
    sig = Signature.infer(pd.DataFrame({"city": ["Oslo", "Rome"], "n": [1, 2]}))
    assert [(f.name, f.dtype) for f in sig.inputs] == [("city", "string"), ("n", "int64")]


def test_infer_from_a_2d_array_as_table_or_tensor():
    X = np.zeros((5, 3), dtype=np.float32)
    table = Signature.infer(X)
    assert (table.layout, table.frame, table.names) == ("table", False, ["f0", "f1", "f2"])
    assert {f.dtype for f in table.inputs} == {"float32"}
    tensor = Signature.infer(X, layout="tensor")
    assert tensor.layout == "tensor"
    assert tensor.inputs == (FieldSpec("input", "float32", (3,)),)


def test_infer_images_and_strings(image_sig, text_sig):
    assert image_sig.layout == "tensor"
    assert image_sig.inputs == (FieldSpec("input", "float32", (1, 8, 8)),)
    assert text_sig.layout == "tensor"
    assert text_sig.inputs == (FieldSpec("text", "string", ()),)


def test_classes_are_captured_for_classification_targets(text_sig):
    assert text_sig.classes == ("neg", "pos")
    ints = Signature.infer(np.zeros((4, 2)), np.array([2, 0, 1, 2]))
    assert ints.classes == (0, 1, 2)
    assert all(type(c) is int for c in ints.classes)  # plain Python, so JSON can hold them
    assert Signature.infer(np.zeros((3, 2)), np.array([0.5, 1.5, 2.5])).classes is None
    multi = Signature.infer(np.zeros((3, 2)), np.zeros((3, 4)))
    assert multi.outputs == (FieldSpec("output", "float64", (4,)),) and multi.classes is None


def test_to_dict_from_dict_round_trip(frame_sig, image_sig, text_sig, table_sig):
    for sig in (frame_sig, image_sig, text_sig, table_sig):
        stored = json.loads(json.dumps(sig.to_dict()))  # what the registry keeps
        back = Signature.from_dict(stored)
        assert back == sig
        assert back.names == sig.names
    assert "classes" not in table_sig.to_dict()


# -- prepare: accepted forms ------------------------------------------------------------------
def test_frame_signature_returns_a_dataframe_in_training_column_order(frame_sig):
    record = {"flag": True, "count": 2, "petal": 1.5, "sepal": 5.0}  # keys in another order
    batch, n = frame_sig.prepare([record, record])
    assert isinstance(batch, pd.DataFrame) and n == 2
    assert list(batch.columns) == COLUMNS
    assert batch["petal"].dtype == np.float32 and batch["count"].dtype == np.int64
    assert batch["flag"].dtype == bool
    assert batch.iloc[0].to_dict() == {"sepal": 5.0, "petal": 1.5, "count": 2, "flag": True}


@pytest.mark.parametrize(
    "payload",
    [
        [{"sepal": 5.0, "petal": 1.5, "count": 2, "flag": True},
         {"sepal": 6.0, "petal": 2.5, "count": 3, "flag": False}],
        {"sepal": [5.0, 6.0], "petal": [1.5, 2.5], "count": [2, 3], "flag": [True, False]},
        [[5.0, 1.5, 2, True], [6.0, 2.5, 3, False]],
        pd.DataFrame({"flag": [True, False], "sepal": [5.0, 6.0], "petal": [1.5, 2.5],
                      "count": [2, 3]}),
    ],
    ids=["records", "columns", "rows", "dataframe"],
)
def test_table_forms_give_the_same_batch(frame_sig, payload):
    batch, n = frame_sig.prepare(payload)
    expected = pd.DataFrame({"sepal": [5.0, 6.0], "petal": np.array([1.5, 2.5], np.float32),
                             "count": [2, 3], "flag": [True, False]})
    assert n == 2
    pd.testing.assert_frame_equal(batch, expected)


@pytest.mark.parametrize(
    "payload",
    [{"sepal": 5.0, "petal": 1.5, "count": 2, "flag": True}, [5.0, 1.5, 2, True]],
    ids=["single-record", "flat-row"],
)
def test_a_single_row_is_a_batch_of_one(frame_sig, payload):
    batch, n = frame_sig.prepare(payload)
    assert n == 1 and list(batch.columns) == COLUMNS
    assert batch.iloc[0].to_dict() == {"sepal": 5.0, "petal": 1.5, "count": 2, "flag": True}


@pytest.mark.parametrize(
    "payload",
    [
        np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        [[1, 2, 3], [4, 5, 6]],
        [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])],
        {"f0": [1, 4], "f1": [2, 5], "f2": [3, 6]},
        [{"f0": 1, "f1": 2, "f2": 3}, {"f2": 6, "f1": 5, "f0": 4}],
        pd.DataFrame({"f0": [1.0, 4.0], "f1": [2.0, 5.0], "f2": [3.0, 6.0]}),
    ],
    ids=["array", "rows", "array-rows", "columns", "records", "dataframe"],
)
def test_array_table_forms_give_a_float_matrix(table_sig, payload):
    batch, n = table_sig.prepare(payload)
    assert n == 2 and isinstance(batch, np.ndarray) and batch.dtype == np.float64
    np.testing.assert_array_equal(batch, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(
    "row", [[1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0]), [np.float32(1), np.int64(2), 3]],
    ids=["list", "1d-array", "numpy-scalars"],
)
def test_one_flat_row_for_an_array_table(table_sig, row):
    batch, n = table_sig.prepare(row)
    assert n == 1
    np.testing.assert_array_equal(batch, [[1, 2, 3]])


def test_tensor_forms(image_sig):
    batch, n = image_sig.prepare(np.zeros((3, 1, 8, 8)))
    assert (n, batch.shape, batch.dtype) == (3, (3, 1, 8, 8), np.float32)
    batch, n = image_sig.prepare(np.ones((1, 8, 8)).tolist())  # one image, no batch axis
    assert (n, batch.shape) == (1, (1, 1, 8, 8))
    batch, n = image_sig.prepare({"input": np.zeros((2, 1, 8, 8)).tolist()})
    assert (n, batch.shape) == (2, (2, 1, 8, 8))


def test_text_forms(text_sig):
    batch, n = text_sig.prepare(["great", "awful", "fine"])
    assert n == 3 and batch.dtype == object and list(batch) == ["great", "awful", "fine"]
    assert text_sig.prepare("just one")[1] == 1
    assert list(text_sig.prepare({"text": ["a", "b"]})[0]) == ["a", "b"]


# -- prepare: errors --------------------------------------------------------------------------
def test_missing_and_unknown_fields_are_each_reported(frame_sig):
    errors = _errors(frame_sig, [{"sepal": 5.0, "petal": 1.5, "colour": "red"}])
    assert {"loc": ["count"], "msg": "field required"} in errors
    assert {"loc": ["flag"], "msg": "field required"} in errors
    assert {"loc": ["colour"], "msg": "unknown field"} in errors


def test_a_record_missing_a_key_names_the_record(frame_sig):
    full = {"sepal": 5.0, "petal": 1.5, "count": 2, "flag": True}
    partial = {k: v for k, v in full.items() if k != "count"}
    assert _errors(frame_sig, [full, partial]) == [{"loc": [1, "count"], "msg": "field required"}]


def test_a_string_in_a_float_column_is_located(frame_sig):
    payload = {"sepal": [5.0, 2.0, "tall"], "petal": [1, 2, 3], "count": [1, 2, 3],
               "flag": [True, True, False]}
    errors = _errors(frame_sig, payload)
    assert errors == [{"loc": ["sepal", 2], "msg": "expected float64, got the string 'tall'"}]


@pytest.mark.parametrize(("value", "msg"), [
    ("NaN", "expected float64, got the string 'NaN'"),
    ("1.5", "expected float64, got the string '1.5'"),
    (None, "expected float64, got null (not a number)"),
    (True, "expected float64, got the boolean true (not a number)"),
])
def test_strings_nulls_and_booleans_are_not_numbers(frame_sig, value, msg):
    payload = {"sepal": [5.0, value], "petal": [1, 2], "count": [1, 2], "flag": [True, False]}
    assert _errors(frame_sig, payload) == [{"loc": ["sepal", 1], "msg": msg}]


def test_a_number_beyond_the_dtype_is_refused_not_wrapped_or_infinite():
    sig = Signature((FieldSpec("small", "float32"), FieldSpec("count", "int64")))
    assert _errors(sig, {"small": [1e300], "count": [1]}) == [
        {"loc": ["small", 0], "msg": "1e+300 is out of range for float32"}]
    assert _errors(sig, {"small": [1.0], "count": [2**63]}) == [
        {"loc": ["count", 0], "msg": "9223372036854775808 is out of range for int64"}]
    assert _errors(sig, {"small": [1.0], "count": [1e30]}) == [
        {"loc": ["count", 0], "msg": "1e+30 is out of range for int64"}]


def test_a_tensor_refuses_non_numbers_and_overflow():
    sig = Signature((FieldSpec("image", "float32", (2,)),), layout="tensor")
    for row, msg in [([1.0, None], "expected float32, got null (not a number)"),
                     ([1.0, "NaN"], "expected float32, got the string 'NaN'"),
                     ([True, 1.0], "expected float32, got the boolean true (not a number)"),
                     ([1.0, 1e39], "1e+39 is out of range for float32")]:
        with pytest.raises(InputError) as caught:
            sig.prepare([row])
        assert caught.value.errors[0]["msg"] == msg, row
    assert sig.prepare([[1.0, 2]])[0].dtype == np.float32


def test_a_fraction_in_an_int_column_is_refused_not_truncated(frame_sig):
    payload = {"sepal": [5.0], "petal": [1.0], "count": [2.5], "flag": [True]}
    errors = _errors(frame_sig, payload)
    assert errors == [{"loc": ["count", 0], "msg": "2.5 is not a whole number (int64)"}]
    whole = dict(payload, count=[2.0])  # a whole number sent as 2.0 is fine
    assert frame_sig.prepare(whole)[0]["count"].tolist() == [2]


def test_a_non_boolean_flag_is_refused(frame_sig):
    payload = {"sepal": [5.0], "petal": [1.0], "count": [2], "flag": ["yes"]}
    assert _errors(frame_sig, payload) == [{"loc": ["flag"], "msg": "expected true or false"}]


def test_columns_of_different_lengths_are_refused(table_sig):
    errors = _errors(table_sig, {"f0": [1, 2], "f1": [1, 2], "f2": [1]})
    assert errors == [{"loc": ["f2"], "msg": "has 1 values, other columns 2"}]


@pytest.mark.parametrize(
    ("payload", "loc", "message"),
    [
        ([[1, 2, 3], [4, 5]], [1], "row 1 has 2 values; the model takes 3 (f0, f1, f2)"),
        ([1, 2], [0], "row 0 has 2 values"),
        (np.zeros((2, 4)), [], "expected rows of 3 features, got shape (2, 4)"),
    ],
    ids=["ragged-rows", "short-flat-row", "wide-array"],
)
def test_wrong_row_width(table_sig, payload, loc, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        table_sig.prepare(payload)
    assert err.value.errors[0]["loc"] == loc


@pytest.mark.parametrize(
    "payload", [np.zeros((2, 1, 8, 7)), np.zeros((2, 8, 8)), [[1.0, 2.0]], "not numbers",
                [[[[1.0]]], [[[1.0, 2.0]]]]],
    ids=["wrong-width", "missing-channel", "too-small", "string", "ragged"],
)
def test_wrong_tensor_shape_or_type(image_sig, payload):
    errors = _errors(image_sig, payload)
    assert errors[0]["loc"] == ["input"]


def test_a_missing_tensor_input_is_named(image_sig):
    assert _errors(image_sig, {"pixels": []}) == [{"loc": ["input"], "msg": "field required"}]


@pytest.mark.parametrize("payload", [["fine", 3, None], 5, None, b"bytes"],
                         ids=["mixed", "number", "none", "bytes"])
def test_text_must_be_strings(text_sig, payload):
    errors = _errors(text_sig, payload)
    assert errors[0]["loc"][0] == "text"


def test_mixed_text_names_every_bad_item(text_sig):
    assert [e["loc"] for e in _errors(text_sig, ["ok", 1, "ok", 2.5])] == [["text", 1],
                                                                           ["text", 3]]


@pytest.mark.parametrize(
    "payload",
    [[], {"sepal": [], "petal": [], "count": [], "flag": []}, np.zeros((0, 4)),
     pd.DataFrame({c: [] for c in COLUMNS})],
    ids=["empty-list", "empty-columns", "empty-array", "empty-dataframe"],
)
def test_empty_table_input_is_refused(frame_sig, payload):
    _errors(frame_sig, payload)


def test_empty_text_input_is_refused(text_sig):
    assert _errors(text_sig, []) == [{"loc": ["text"], "msg": "empty"}]


def test_nonsense_payloads_are_input_errors(frame_sig):
    for payload in (42, "a string", None):
        _errors(frame_sig, payload)


def test_error_message_summarises_the_problems(frame_sig):
    with pytest.raises(InputError) as err:
        frame_sig.prepare({"sepal": ["x"], "petal": [1.0], "count": [1]})
    message = str(err.value)
    assert message.startswith("input does not match the model's signature")
    assert "sepal.0: expected float64, got the string 'x'" in message
    assert "flag: field required" in message


@pytest.mark.parametrize("rows", [[[1.0, 2.0], [3.0]], [[10**30], [1.0, 2.0]],
                                  [[[[[[[[1.0]]]]]]]] * 1])
def test_ragged_or_oddly_nested_rows_are_an_input_error(rows):
    sig = Signature((FieldSpec("v", "float64", (2,)),), layout="tensor")
    with pytest.raises(InputError):
        sig.prepare(rows)
