"""The server's OpenAPI document (written by hand: no framework generates it) and ``/docs``."""

from __future__ import annotations

import html
from typing import Any

from modelyard.serving.openapi_registry import REGISTRY_PATHS, TRAINING_PATHS
from modelyard.serving.openapi_schema import (
    BODY,
    BOOL,
    ERROR,
    INT,
    LIMIT,
    LIST,
    MODEL,
    NAME,
    NUM,
    OBJ,
    OPT_INT,
    OPT_NUM,
    OPT_STR,
    PREDICTING,
    REGISTRY,
    STR,
    VERSION,
    VERSION_ROW,
    answer,
    errors,
    get_op,
    obj,
)

_PREDICT_BODY = {
    "type": "object",
    "description": "Exactly one of records, columns, instances or inputs. For a version "
                   "with precomputed answers, records (or columns) carrying the key field "
                   "are answered from the store where fresh and live for the rest "
                   "(X-Prediction-Source: precomputed, live or mixed).",
    "properties": {
        "records": {"type": "array", "items": {"type": "object"}},
        "columns": {"type": "object", "additionalProperties": {"type": "array"}},
        "instances": {"type": "array"},
        "inputs": {},
        "scores": {"type": "boolean", "default": False},
        "id": {"type": "string"},
    },
}
_PREDICT_OK = obj(
    ["model", "version", "predictions", "request_id"],
    model=STR, version=INT, predictions=LIST, scores=LIST, classes=LIST,
    request_id={"type": "string",
                "description": "Names this answer in feedback (also X-Request-Id)"})
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "A value of the precompute section's key column"}
_PRECOMPUTED_OK = {**_PREDICT_OK, "required": [*_PREDICT_OK["required"], "key"],
                   "properties": {**_PREDICT_OK["properties"], "key": STR}}
_SCORES = {"name": "scores", "in": "query", "required": False, "schema": {"type": "boolean"}}


def _predict(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _PREDICT_BODY}}},
        "responses": {"200": answer(_PREDICT_OK), **errors(*BODY, *PREDICTING)},
    }}




_TENSOR = obj(["name", "datatype", "shape"], name=STR, datatype=STR,
               shape={"type": "array", "items": INT}, data=LIST, parameters=OBJ)
_V2_INFER_OK = obj(["model_name", "model_version", "outputs"], model_name=STR,
                    model_version=STR, id=STR, outputs={"type": "array", "items": _TENSOR})
_V2_INFER_BODY = obj(["inputs"], id=STR, parameters=OBJ,
                      inputs={"type": "array", "minItems": 1, "items": _TENSOR},
                      outputs={"type": "array", "items": obj(["name"], name=STR,
                                                              parameters=OBJ)})
_V2_METADATA = obj(
    ["name", "versions", "platform", "inputs", "outputs"], name=STR,
    versions={"type": "array", "items": STR}, platform=STR,
    inputs={"type": "array", "items": _TENSOR}, outputs={"type": "array", "items": _TENSOR},
    parameters=obj(["pool", "device"], pool=OPT_STR, device=OPT_STR,
                    devices={"type": "object", "additionalProperties": STR}))
_V2_READY = obj(["name", "ready"], name=STR, ready=BOOL)
_V2_INDEX = {"type": "array", "items": obj(["name", "version", "state", "reason"], name=STR,
                                            version=STR, state=STR, reason=STR)}


def _v2_infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    ok = {"description": "OK: JSON tensors, or with binary outputs a JSON header of "
                         "Inference-Header-Content-Length bytes and the raw tensors",
          "content": {"application/json": {"schema": _V2_INFER_OK},
                      "application/octet-stream": {}}}
    return {"post": {"summary": "OIP inference", "parameters": params,
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _V2_INFER_BODY},
                         "application/octet-stream": {}}},
                     "responses": {"200": ok, **errors(*BODY, *PREDICTING, oip=True)}}}


def _v2_post(summary: str, params: list[dict[str, Any]], body: dict[str, Any],
             ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": params,
                     "requestBody": {"required": False,
                                     "content": {"application/json": {"schema": body}}},
                     "responses": {"200": answer(ok), **errors(*codes, oip=True)}}}


def _v2_repository(summary: str, body: dict[str, Any], *codes: int) -> dict[str, Any]:
    """Repository load/unload: mutations (the token, the cross-site rules), a JSON body or none
    (tritonclient sends none)."""
    post = _v2_post(summary, [NAME], body, OBJ, 401, 403, 415, *codes)
    post["post"]["security"] = [{"bearer": []}]
    return post


def _v2_ready(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params,
                    "responses": {"200": answer(_V2_READY),
                                  "400": answer(_V2_READY, "not loaded (or its worker is down)"),
                                  **errors(404, oip=True)}}}


_DEPLOYMENT = obj(
    ["id", "model", "stable_version", "candidate_version", "strategy", "steps", "step",
     "state", "revision", "active", "candidate_percent"],
    id=INT, model=STR, stable_version=OPT_INT, candidate_version=INT, strategy=STR,
    steps={"type": "array", "items": INT}, step=INT, every_s=NUM, rules=OBJ, key=OPT_STR,
    state=STR, revision=INT, step_started_at=OPT_STR, created_at=STR, created_by=STR,
    updated_at=STR, active=BOOL, candidate_percent=NUM)
_ALIAS_EVENT = obj(["model", "alias", "version", "previous_version", "action", "actor", "at"],
                    model=STR, alias=STR, version=OPT_INT, previous_version=OPT_INT,
                    action=STR, actor=STR, reason=STR, at=STR)

def _admin_post(summary: str, body: dict[str, Any], ok: dict[str, Any],
                status: str = "200") -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": [NAME], "security": [{"bearer": []}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": body}}}},
        "responses": {status: answer(ok),
                      **errors(*BODY, 401, 403, 404, 409, 415, *REGISTRY)},
    }}


_REASON = {"reason": {"type": "string", "default": ""}}
_ALIAS = {"alias": {"type": "string", "default": "production"}}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_ALIAS_MOVED = obj(["event"], event=_ALIAS_EVENT)
_ADMIN_PATHS: dict[str, Any] = {
    "/api/v1/models": get_op("Admin: every registered model with its aliases", None,
                           obj(["models"], models={"type": "array", "items": MODEL}),
                           *REGISTRY),
    "/api/v1/models/{name}/versions": get_op(
        "Admin: a model's versions, newest first", [NAME],
        obj(["model", "versions"], model=STR, versions={"type": "array", "items": VERSION_ROW}),
        404, *REGISTRY),
    "/api/v1/models/{name}/deployment": get_op("Admin: the model's current rollout", [NAME],
                                             _DEPLOYMENT, 404, *REGISTRY),
    "/api/v1/models/{name}/deployment/history": get_op(
        "Admin: the model's rollout transitions, newest first", [NAME],
        obj(["model", "events"], model=STR, events={"type": "array", "items": OBJ}),
        404, *REGISTRY),
    "/api/v1/models/{name}/promote": _admin_post(
        "Admin: point an alias (production) at a version; the server loads and warms it first "
        "and refuses (409, the alias untouched) a version that cannot load",
        {"version": _INT64, **_ALIAS, **_REASON}, _ALIAS_MOVED),
    "/api/v1/models/{name}/rollback": _admin_post(
        "Admin: move an alias back (ends an active rollout of production first)",
        {"to": {**_INT64, "type": ["integer", "null"]}, **_ALIAS, **_REASON},
        obj(["event"], event={"oneOf": [_ALIAS_EVENT, {"type": "null"}]},
             deployment={"oneOf": [_DEPLOYMENT, {"type": "null"}]})),
    "/api/v1/models/{name}/deployments": _admin_post(
        "Admin: start a rollout of a version; unset settings come from the rollout section "
        "of the spec registered with it (else canary, 60 s)", {
            "version": _INT64,
            "strategy": {"type": ["string", "null"],
                         "enum": ["direct", "canary", "ab", "shadow", "blue-green", None]},
            "steps": {"type": ["array", "null"], "items": {"type": "integer"}},
            "every_s": {"type": ["number", "null"]},
            "key": {"type": ["string", "null"]},
            "rules": {"type": ["object", "null"]}, **_REASON}, _DEPLOYMENT, "201"),
    "/api/v1/models/{name}/deployment/promote": _admin_post(
        "Admin: end the rollout with the candidate as production", _REASON, _DEPLOYMENT),
    "/api/v1/models/{name}/deployment/abort": _admin_post(
        "Admin: cancel the rollout; traffic back to stable", _REASON, _DEPLOYMENT),
    "/api/v1/models/{name}/deployment/rollback": _admin_post(
        "Admin: roll the rollout back (bad candidate); traffic back to stable", _REASON,
        _DEPLOYMENT),
    "/api/v1/models/{name}/deployment/pause": _admin_post(
        "Admin: freeze the rollout's traffic split", _REASON, _DEPLOYMENT),
    "/api/v1/models/{name}/deployment/resume": _admin_post(
        "Admin: resume a paused rollout", _REASON, _DEPLOYMENT),
}

_SINCE = {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "Window start: a duration ago (30m, 1h, 2d; at most 36500d) or an "
                         "ISO time (default: the model's monitoring.window_s)"}
_LABEL = {"type": "object", "required": ["request_id", "label"], "properties": {
    "request_id": {"type": "string", "maxLength": 100}, "label": {}}}
_WINDOW = obj(["model", "version", "variant", "requests", "labeled", "values"], model=STR,
               version=INT, variant=STR, start=OPT_STR, end=OPT_STR, requests=INT,
               labeled=INT, values={"type": "object", "additionalProperties": OPT_NUM},
               mismatched=INT, errors=OBJ,
               # one record per gate.fairness rule: per group n and figures, gap, differences
               fairness={"type": "array", "items": OBJ})
_LATENCY = obj(["model", "requests", "p50_ms", "p99_ms"], model=STR, requests=INT,
                p50_ms=OPT_NUM, p99_ms=OPT_NUM, error_rate=OPT_NUM)
_DRIFT = obj(["id", "model", "version", "at", "rows", "share", "drifted", "report"], id=INT,
              model=STR, version=INT, at=STR, window_start=OPT_STR, window_end=OPT_STR,
              rows=INT, share=NUM, drifted=BOOL, report=OBJ)
_EVENT = obj(["id", "at", "model", "kind", "name", "severity", "message"], id=INT, at=STR,
              model=STR, kind=STR, name=STR, severity=STR, message=STR, details=OBJ)
_LOGGED = {"type": "object",
           "required": ["at", "version", "variant", "latency_ms", "rows", "inputs", "outputs"],
           "properties": {
               "at": {"type": "string", "format": "date-time"},
               "version": {"type": "integer"},
               "variant": {"type": "string",
                           "description": "production, stable, candidate, shadow, or "
                                          "precomputed (rows answered from a store)"},
               "latency_ms": {"type": "number"}, "rows": {"type": "integer"},
               "inputs": {"type": "object",
                          "description": "What the log keeps of the inputs: columns for tables "
                                         "(sensitive fields hashed or left out), statistics and "
                                         "an embedding for text and tensors"},
               "outputs": {"type": "object",
                           "description": "predictions (and scores, classes); {error: status} "
                                          "for a failed request"}}}
_LOOKUP = {"type": "object",
           "required": ["model", "request_id", "predictions", "labeled", "label"],
           "properties": {
               "model": {"type": "string"}, "request_id": {"type": "string"},
               "predictions": {"type": "array", "items": _LOGGED, "minItems": 1,
                               "description": "Oldest first; a shadow copy shares the id"},
               "labeled": {"type": "boolean"},
               "label": {"description": "The label fed back for it (null when none)"}}}
_MONITOR_PATHS: dict[str, Any] = {
    "/v1/models/{name}/feedback": {"post": {
        "summary": "Ground truth for earlier predictions, by the request_id each answer carries",
        "parameters": [NAME], "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            _LABEL, {"type": "object", "properties": {"labels": {"oneOf": [
                {"type": "array", "items": _LABEL, "maxItems": 10_000},
                {"type": "object", "additionalProperties": {}}]}}}]}}}},
        "responses": {"200": answer(obj(
            ["model", "stored", "matched", "pending", "unmatched", "message"], model=STR,
            stored=INT,
            matched={**OPT_INT, "description": "labels whose prediction is logged (null: a "
                                                "Parquet log, not searched at feedback time)"},
            pending={**OPT_INT, "description": "labels whose prediction is not logged yet: "
                                                "kept, and joined when it is"},
            unmatched={"type": "array", "items": STR,
                       "description": "the first 20 request ids not logged yet"},
            message=STR)),
                      **errors(*BODY, 401, 403, 404, 415, *REGISTRY)},
    }},
    "/api/v1/models/{name}/metrics": get_op(
        "Monitor: declared metrics per version and variant from fed-back labels, and latency",
        [NAME, _SINCE, {"name": "every", "in": "query", "required": False,
                         "schema": {"type": "string"},
                         "description": "Sub-window length (10m, 1h): a series per version"}],
        obj(["model", "windows", "latency"], model=STR,
             windows={"type": "array", "items": _WINDOW}, latency=_LATENCY),
        400, 404, *REGISTRY),
    "/api/v1/models/{name}/drift": {
        **get_op("Monitor: stored drift checks, newest first", [NAME, LIMIT],
               obj(["model", "checks"], model=STR, checks={"type": "array", "items": _DRIFT}),
               404, 422, *REGISTRY),
        "post": {"summary": "Monitor: check drift of the logged inputs now and store it",
                 "parameters": [NAME, _SINCE, {**LIMIT, "name": "version"}],
                 "security": [{"bearer": []}],
                 "responses": {"200": answer(_DRIFT),
                               **errors(400, 401, 403, 404, 408, 409, 413, 415, 422,
                                         *REGISTRY)}},
    },
    "/api/v1/models/{name}/events": get_op(
        "Monitor: alerts, retraining triggers and results, newest first",
        [NAME, _SINCE, LIMIT, {"name": "kind", "in": "query", "required": False,
                                 "schema": {"type": "string"}}],
        obj(["model", "events"], model=STR, events={"type": "array", "items": _EVENT}),
        400, 404, 422, *REGISTRY),
    "/api/v1/models/{name}/predictions/{request_id}": {"get": {
        "summary": "Monitor: what the prediction log holds of one request, and its label",
        "parameters": [NAME, {"name": "request_id", "in": "path", "required": True,
                               "schema": {"type": "string"},
                               "description": "The request_id the answer carried"}],
        "security": [{"bearer": []}],
        "responses": {"200": answer(_LOOKUP),
                      **errors(401, 403, *REGISTRY),
                      "404": answer(ERROR, "unknown model, or no logged prediction with this id "
                                           "(not sampled, not written yet, past retention)")},
    }},
    "/api/v1/events": get_op(
        "Monitor: every model's events (those the key covers), newest first",
        [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
         _SINCE, LIMIT, {"name": "kind", "in": "query", "required": False,
                          "schema": {"type": "string"}}],
        obj(["events"], events={"type": "array", "items": _EVENT}), 400, 422, *REGISTRY),
    "/api/v1/predictions/{request_id}": {"get": {
        "summary": "Monitor: one request in every model's prediction log (those the key covers)",
        "parameters": [{"name": "request_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "security": [{"bearer": []}],
        "responses": {"200": answer(obj(["lookups"], lookups={"type": "array",
                                                              "items": _LOOKUP})),
                      **errors(404, *REGISTRY)}}},
}

_STATUS = obj(["status"], status=STR)
#: an alias moved to a version this server cannot load: which, what serves instead, and why.
_NOT_SERVED = obj(["version", "serving", "reason"], version=INT, serving=OPT_INT,
                   reason=STR, since=STR, retry_in_s=NUM)
#: the pools and models a server serves (null: every one; ``--pool``, ``--models``).
_SERVES = obj(["pools", "models"], pools={"type": ["array", "null"], "items": STR},
               models={"type": ["array", "null"], "items": STR})
_READYZ = obj(["status"], status={"type": "string",
                                   "enum": ["ready", "loading", "degraded", "draining"]},
               serves=_SERVES,
               down={"type": "array", "items": STR},
               degraded={"type": "array", "items": STR}, prediction_log=OBJ,
               idle={"type": "array", "items": STR,
                     "description": "served versions unloaded after --idle-unload "
                                    "(name:version); each loads again on its next request"},
               not_served={"type": "array", "items": {**_NOT_SERVED, "required": [
                   "model", "alias", *_NOT_SERVED["required"]]}})
_V1_MODELS = obj(["models", "serves", "elsewhere"], serves=_SERVES, elsewhere={
    "type": "object", "additionalProperties": STR,
    "description": "the pool of each model another server serves"},
    models={"type": "array", "items": obj(
    ["name", "pool", "device", "aliases", "served_version", "loaded_versions", "not_served"],
    name=STR, pool=OPT_STR, device={**OPT_STR, "description": "as its serving section asks"},
    devices={"type": "object", "additionalProperties": STR,
             "description": "the device each loaded version (by number) runs on"},
    aliases={"type": "object", "additionalProperties": INT}, served_version=OPT_INT,
    loaded_versions={"type": "array", "items": INT},
    memory_bytes={"type": "object", "additionalProperties": INT,
                  "description": "bytes each loaded version (by number) is charged against "
                                 "--max-memory: what its load measured"},
    not_served={"oneOf": [_NOT_SERVED, {"type": "null"}]})})
def _merged(*tables: dict[str, Any]) -> dict[str, Any]:
    """The paths of ``tables`` with the operations of a path in several of them together."""
    out: dict[str, Any] = {}
    for table in tables:
        for path, item in table.items():
            out[path] = {**out.get(path, {}), **item}
    return out


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "modelyard server", "version": "1",
             "description": "Native REST and Open Inference Protocol v2 for every registered "
                            "model. Binary tensors: send Inference-Header-Content-Length. "
                            "Every answer carries X-Request-Id; every 5xx is logged with it."},
    "paths": {
        "/v1/models": get_op("Served models, aliases and loaded versions; not_served: the alias "
                           "points at a version this server cannot load (which, and why)", None,
                           _V1_MODELS),
        "/v1/models/{name}/predict": _predict("Predict with the production version",
                                              [NAME, _SCORES]),
        "/v1/models/{name}/versions/{version}/predict": _predict(
            "Predict with one version", [NAME, VERSION, _SCORES]),
        "/v1/models/{name}/precomputed/{key}": {"get": {
            "summary": "The served version's precomputed answer for one key (X-Prediction-"
                       "Source: precomputed), or live from its input row when that is missing "
                       "or older than the TTL and the precompute input is SQL (live)",
            "parameters": [NAME, _KEY, _SCORES],
            "responses": {"200": answer(_PRECOMPUTED_OK), **errors(500, 503, 504),
                          "404": answer(ERROR, "unknown model, a version without precomputed "
                                               "answers, or no fresh answer for the key and "
                                               "no input row to answer it live from: POST "
                                               "its inputs to /v1/models/{name}/predict")},
        }},
        "/v2": get_op("OIP server metadata", None, obj(
            ["name", "version", "extensions"], name=STR, version=STR,
            extensions={"type": "array", "items": STR}, parameters=_SERVES)),
        "/v2/health/live": get_op("Liveness", None, obj(["live"], live=BOOL)),
        "/v2/health/ready": {"get": {"summary": "Readiness (503 while preloading)",
                                     "responses": {"200": answer(obj(["ready"], ready=BOOL)),
                                                   "503": answer(obj(["ready"], ready=BOOL),
                                                                "not ready yet")}}},
        "/v2/models/{name}": get_op("OIP model metadata", [NAME], _V2_METADATA, 404, *REGISTRY,
                                  oip=True),
        "/v2/models/{name}/versions/{version}": get_op(
            "OIP model metadata", [NAME, VERSION], _V2_METADATA, 404, *REGISTRY, oip=True),
        "/v2/models/{name}/ready": _v2_ready("Model readiness (400: not loaded)", [NAME]),
        "/v2/models/{name}/versions/{version}/ready": _v2_ready("Version readiness",
                                                                [NAME, VERSION]),
        "/v2/models/{name}/infer": _v2_infer([NAME]),
        "/v2/models/{name}/versions/{version}/infer": _v2_infer([NAME, VERSION]),
        "/v2/repository/index": _v2_post(
            "Model repository index", [], obj([], ready={"type": "boolean", "default": False}),
            _V2_INDEX, 400, 408, 413, 422),
        "/v2/repository/models/{name}/load": _v2_repository(
            "Load a model (parameters.version: a version, else the served or newest one)",
            obj([], parameters=obj([], version={"type": ["integer", "string"]})),
            *BODY, 404, 500, 503),
        "/v2/repository/models/{name}/unload": _v2_repository(
            "Unload every loaded version of a model", OBJ, 404, 408, 413),
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition",
                                                   "content": {"text/plain": {}}}}}},
        "/healthz": get_op("Liveness", None, _STATUS),
        "/readyz": {"get": {
            "summary": "Readiness: 503 until production aliases are loaded, while a device "
                       "worker is down or, after SIGTERM, while draining; a prediction log "
                       "that drops what it is given stays 200 and is listed under degraded; "
                       "not_served names aliases moved to a version that cannot load (the old "
                       "one serves)",
            "responses": {code: answer(_READYZ, what) for code, what in (
                ("200", "ready"),
                ("503", "loading, a device worker is down or draining (the body says "
                        "which)"))}}},
        "/openapi.json": get_op("This document"),
        "/docs": {"get": {"summary": "API reference page",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {}}}}}},
        **_merged(_ADMIN_PATHS, REGISTRY_PATHS, TRAINING_PATHS, _MONITOR_PATHS),
    },
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An API key (myk_...) or, with --oidc, a JWT of the trusted issuer. "
                       "Needed by every route but health, readiness and the documents once "
                       "auth is enforced (keys exist, or the server listens beyond "
                       "loopback); before that, by mutations and the lookup of one logged "
                       "request when the server's MODELYARD_TOKEN is set"}},
                   "schemas": {"Error": {
        "type": "object", "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                       "detail": {"type": "array", "items": {"type": "object", "properties": {
                           "loc": {"type": "array"}, "msg": {"type": "string"}}}}},
    }, "V2Error": {
        "type": "object", "required": ["error"],
        "description": "OIP errors: the message, and the field-level detail where there is one",
        "properties": {"error": {"type": "string"}, "detail": {"type": "array"}},
    }}},
}


#: the routes every caller may use: health, readiness and the documents (see
#: :mod:`modelyard.registry.policy`; a test keeps this list equal to the routes' declarations).
PUBLIC = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/v2", "/v2/health/live",
                    "/v2/health/ready"})


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation but :data:`PUBLIC`'s needs a bearer credential when auth is enforced:
    it says so and lists 401, 403 and 429."""
    for path, item in paths.items():
        if path in PUBLIC:
            continue
        for op in item.values():
            op.setdefault("security", [{"bearer": []}])
            oip = path.startswith("/v2")
            for code in (401, 403, 429):
                op["responses"].setdefault(str(code), errors(code, oip=oip)[str(code)])
    return paths


_secured(OPENAPI["paths"])


def docs_html() -> str:
    """A self-contained reference page (works offline), linking the OpenAPI document."""
    rows = []
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            codes = ", ".join(op.get("responses", {}))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>"
                        f"{html.escape(path)}</code></td><td>{html.escape(op['summary'])}</td>"
                        f"<td>{codes}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>modelyard API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em}</style></head>"
            "<body><h1>modelyard API</h1><p>Machine-readable: <a href='/openapi.json'>"
            "/openapi.json</a> (OpenAPI 3.1).</p><table><tr><th>method</th><th>path</th>"
            "<th>what</th><th>status codes</th></tr>" + "".join(rows) + "</table></body></html>")


__all__ = ["OPENAPI", "docs_html"]
