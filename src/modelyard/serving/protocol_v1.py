"""The native REST protocol: ``POST /v1/models/{name}[/versions/{v}]/predict``.

Request body, one of::

    {"records": [{"amount": 12.5, "hour": 3}, ...]}     rows as objects
    {"columns": {"amount": [12.5, 80.0], "hour": [3, 4]}}
    {"instances": [[12.5, 3], ...]}                      rows as lists, tensors or strings
    {"inputs": [[...], ...]}  or  {"inputs": {"image": [...]}}

plus ``"scores": true`` (or ``?scores=true``) for class scores. Response::

    {"model": "fraud", "version": 3, "predictions": [...], "scores": [[...]], "classes": [...]}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from modelyard.errors import BadJSONError, InputError
from modelyard.predictor import Prediction

PAYLOAD_KEYS = ("records", "columns", "instances", "inputs")
_ALLOWED = frozenset((*PAYLOAD_KEYS, "scores", "id"))
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def decode(body: bytes, query_scores: bool = False) -> tuple[Any, bool]:
    """``(payload, scores)`` from a request body; :class:`InputError` (422) names what is wrong.

    Unparseable JSON raises :class:`BadJSONError` (400).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJSONError(f"the body is not valid JSON: {exc}") from None
    return decode_doc(doc, query_scores)


def decode_doc(doc: Any, query_scores: bool = False) -> tuple[Any, bool]:
    """:func:`decode` for a body already parsed (a queue message whose envelope was read)."""
    if not isinstance(doc, dict):
        raise InputError(
            "the body must be a JSON object with one of: records, columns, instances, inputs",
            [{"loc": ["body"], "msg": "expected an object"}],
        )
    keys = [k for k in PAYLOAD_KEYS if k in doc]
    unknown = [k for k in doc if k not in _ALLOWED]
    if len(keys) != 1 or unknown:
        detail = [{"loc": ["body", k], "msg": "unknown field"} for k in unknown]
        if len(keys) != 1:
            detail.append({"loc": ["body"], "msg": "give exactly one of: " + ", ".join(PAYLOAD_KEYS)
                           + (f" (got {', '.join(keys)})" if keys else "")})
        raise InputError("the body does not follow the predict request format", detail)
    key = keys[0]
    payload = doc[key]
    _check_shape(key, payload)
    scores = doc.get("scores", query_scores)
    if not isinstance(scores, bool):
        raise InputError("'scores' must be true or false",
                         [{"loc": ["body", "scores"], "msg": "expected a boolean"}])
    return payload, scores


def _check_shape(key: str, payload: Any) -> None:
    if key == "records" and not (isinstance(payload, list) and payload
                                 and all(isinstance(r, dict) for r in payload)):
        if isinstance(payload, dict):
            return  # one record
        raise InputError("'records' must be a non-empty list of objects",
                         [{"loc": ["body", "records"], "msg": "expected a list of objects"}])
    if key == "columns" and not isinstance(payload, dict):
        raise InputError("'columns' must be an object of column name -> values",
                         [{"loc": ["body", "columns"], "msg": "expected an object"}])
    if key == "instances" and not isinstance(payload, list):
        raise InputError("'instances' must be a list of rows",
                         [{"loc": ["body", "instances"], "msg": "expected a list"}])


def encode(name: str, version: int, result: Prediction, scores: bool,
           request_id: str | None = None) -> bytes:
    """The JSON response body for one request (``request_id`` is what feedback refers to)."""
    out: dict[str, Any] = {"model": name, "version": version,
                           "predictions": _jsonable(result.predictions)}
    if request_id is not None:
        out["request_id"] = request_id
    if scores and result.scores is not None:
        out["scores"] = _jsonable(result.scores)
        if result.classes is not None:
            out["classes"] = list(result.classes)
    return orjson.dumps(out, option=_JSON_OPTS)


def _jsonable(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub" and values.flags.c_contiguous:
        return values  # orjson writes numeric arrays natively
    return np.asarray(values).tolist()


__all__ = ["PAYLOAD_KEYS", "decode", "decode_doc", "encode"]
