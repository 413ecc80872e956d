"""The server's OpenAPI document (written by hand: no framework generates it) and ``/docs``."""

from __future__ import annotations

import html
from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_V2_ERROR = {"$ref": "#/components/schemas/V2Error"}
_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_OPT_INT = {"type": ["integer", "null"]}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_STR = {"type": ["string", "null"]}
_OBJ = {"type": "object"}
_LIST = {"type": "array"}


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    """An object schema: these properties (more may come in later versions)."""
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: what each status means, on every route that can answer it.
_MEANING = {
    400: "malformed JSON, a bad query parameter or invalid settings",
    401: "no bearer credential (auth is enforced, or MODELYARD_TOKEN guards this mutation)",
    403: "a credential not valid here, or whose role or model scope does not allow this call; "
         "or a cross-site request (a foreign Origin)",
    429: "too many failed attempts from this client (see Retry-After)",
    404: "unknown model, version or route", 405: "wrong method",
    408: "the body stopped arriving (--body-timeout); the connection is closed",
    409: "clashes with the registry's state (e.g. a rollout is already active)",
    413: "body over the size limit",
    415: "a mutation's body is not declared Content-Type: application/json",
    422: "a field of the request is invalid (detail names it)",
    500: "the model or the server failed on this request (logged with its request id)",
    503: "not ready, queue full, a device worker down or the registry unreachable "
         "(see Retry-After)",
    504: "no result within the request timeout"}


def _errors(*codes: int, oip: bool = False) -> dict[str, Any]:
    return {str(c): _json(_V2_ERROR if oip else _ERROR, _MEANING[c]) for c in codes}


#: what a route that reads a request body can also answer.
_BODY = (400, 408, 413, 422)
#: what a route that predicts can also answer.
_PREDICTING = (404, 500, 503, 504)
#: what a route that reads or writes the registry can also answer.
_REGISTRY = (500, 503)

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
_PREDICT_OK = _obj(
    ["model", "version", "predictions", "request_id"],
    model=_STR, version=_INT, predictions=_LIST, scores=_LIST, classes=_LIST,
    request_id={"type": "string",
                "description": "Names this answer in feedback (also X-Request-Id)"})
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "A value of the precompute section's key column"}
_PRECOMPUTED_OK = {**_PREDICT_OK, "required": [*_PREDICT_OK["required"], "key"],
                   "properties": {**_PREDICT_OK["properties"], "key": _STR}}
_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}}
_SCORES = {"name": "scores", "in": "query", "required": False, "schema": {"type": "boolean"}}


def _predict(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _PREDICT_BODY}}},
        "responses": {"200": _json(_PREDICT_OK), **_errors(*_BODY, *_PREDICTING)},
    }}


def _get(summary: str, params: list[dict[str, Any]] | None = None,
         ok: dict[str, Any] | None = None, *codes: int, oip: bool = False) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": _json(ok or _OBJ), **_errors(*codes, oip=oip)}}}


_TENSOR = _obj(["name", "datatype", "shape"], name=_STR, datatype=_STR,
               shape={"type": "array", "items": _INT}, data=_LIST, parameters=_OBJ)
_V2_INFER_OK = _obj(["model_name", "model_version", "outputs"], model_name=_STR,
                    model_version=_STR, id=_STR, outputs={"type": "array", "items": _TENSOR})
_V2_INFER_BODY = _obj(["inputs"], id=_STR, parameters=_OBJ,
                      inputs={"type": "array", "minItems": 1, "items": _TENSOR},
                      outputs={"type": "array", "items": _obj(["name"], name=_STR,
                                                              parameters=_OBJ)})
_V2_METADATA = _obj(
    ["name", "versions", "platform", "inputs", "outputs"], name=_STR,
    versions={"type": "array", "items": _STR}, platform=_STR,
    inputs={"type": "array", "items": _TENSOR}, outputs={"type": "array", "items": _TENSOR},
    parameters=_obj(["pool", "device"], pool=_OPT_STR, device=_OPT_STR,
                    devices={"type": "object", "additionalProperties": _STR}))
_V2_READY = _obj(["name", "ready"], name=_STR, ready=_BOOL)
_V2_INDEX = {"type": "array", "items": _obj(["name", "version", "state", "reason"], name=_STR,
                                            version=_STR, state=_STR, reason=_STR)}


def _v2_infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    ok = {"description": "OK: JSON tensors, or with binary outputs a JSON header of "
                         "Inference-Header-Content-Length bytes and the raw tensors",
          "content": {"application/json": {"schema": _V2_INFER_OK},
                      "application/octet-stream": {}}}
    return {"post": {"summary": "OIP inference", "parameters": params,
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _V2_INFER_BODY},
                         "application/octet-stream": {}}},
                     "responses": {"200": ok, **_errors(*_BODY, *_PREDICTING, oip=True)}}}


def _v2_post(summary: str, params: list[dict[str, Any]], body: dict[str, Any],
             ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": params,
                     "requestBody": {"required": False,
                                     "content": {"application/json": {"schema": body}}},
                     "responses": {"200": _json(ok), **_errors(*codes, oip=True)}}}


def _v2_repository(summary: str, body: dict[str, Any], *codes: int) -> dict[str, Any]:
    """Repository load/unload: mutations (the token, the cross-site rules), a JSON body or none
    (tritonclient sends none)."""
    post = _v2_post(summary, [_NAME], body, _OBJ, 401, 403, 415, *codes)
    post["post"]["security"] = [{"bearer": []}]
    return post


def _v2_ready(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params,
                    "responses": {"200": _json(_V2_READY),
                                  "400": _json(_V2_READY, "not loaded (or its worker is down)"),
                                  **_errors(404, oip=True)}}}


_DEPLOYMENT = _obj(
    ["id", "model", "stable_version", "candidate_version", "strategy", "steps", "step",
     "state", "revision", "active", "candidate_percent"],
    id=_INT, model=_STR, stable_version=_OPT_INT, candidate_version=_INT, strategy=_STR,
    steps={"type": "array", "items": _INT}, step=_INT, every_s=_NUM, rules=_OBJ, key=_OPT_STR,
    state=_STR, revision=_INT, step_started_at=_OPT_STR, created_at=_STR, created_by=_STR,
    updated_at=_STR, active=_BOOL, candidate_percent=_NUM)
_ALIAS_EVENT = _obj(["model", "alias", "version", "previous_version", "action", "actor", "at"],
                    model=_STR, alias=_STR, version=_OPT_INT, previous_version=_OPT_INT,
                    action=_STR, actor=_STR, reason=_STR, at=_STR)
_MODEL = _obj(["name", "latest_version", "aliases"], name=_STR, description=_STR,
              latest_version=_INT, created_at=_STR, created_by=_STR,
              aliases={"type": "object", "additionalProperties": _INT})
_VERSION_ROW = _obj(["model", "version", "flavor", "artifact_digest", "aliases"], model=_STR,
                    version=_INT, flavor=_STR, artifact_digest=_STR, artifact_size=_INT,
                    metrics=_OBJ, aliases={"type": "array", "items": _STR})


def _admin_post(summary: str, body: dict[str, Any], ok: dict[str, Any],
                status: str = "200") -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": [_NAME], "security": [{"bearer": []}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": body}}}},
        "responses": {status: _json(ok),
                      **_errors(*_BODY, 401, 403, 404, 409, 415, *_REGISTRY)},
    }}


_REASON = {"reason": {"type": "string", "default": ""}}
_ALIAS = {"alias": {"type": "string", "default": "production"}}
_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_ALIAS_MOVED = _obj(["event"], event=_ALIAS_EVENT)
_ADMIN_PATHS: dict[str, Any] = {
    "/api/v1/models": _get("Admin: every registered model with its aliases", None,
                           _obj(["models"], models={"type": "array", "items": _MODEL}),
                           *_REGISTRY),
    "/api/v1/models/{name}/versions": _get(
        "Admin: a model's versions, newest first", [_NAME],
        _obj(["model", "versions"], model=_STR, versions={"type": "array", "items": _VERSION_ROW}),
        404, *_REGISTRY),
    "/api/v1/models/{name}/deployment": _get("Admin: the model's current rollout", [_NAME],
                                             _DEPLOYMENT, 404, *_REGISTRY),
    "/api/v1/models/{name}/deployment/history": _get(
        "Admin: the model's rollout transitions, newest first", [_NAME],
        _obj(["model", "events"], model=_STR, events={"type": "array", "items": _OBJ}),
        404, *_REGISTRY),
    "/api/v1/models/{name}/promote": _admin_post(
        "Admin: point an alias (production) at a version; the server loads and warms it first "
        "and refuses (409, the alias untouched) a version that cannot load",
        {"version": _INT64, **_ALIAS, **_REASON}, _ALIAS_MOVED),
    "/api/v1/models/{name}/rollback": _admin_post(
        "Admin: move an alias back (ends an active rollout of production first)",
        {"to": {**_INT64, "type": ["integer", "null"]}, **_ALIAS, **_REASON},
        _obj(["event"], event={"oneOf": [_ALIAS_EVENT, {"type": "null"}]},
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
_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}
_LABEL = {"type": "object", "required": ["request_id", "label"], "properties": {
    "request_id": {"type": "string", "maxLength": 100}, "label": {}}}
_WINDOW = _obj(["model", "version", "variant", "requests", "labeled", "values"], model=_STR,
               version=_INT, variant=_STR, start=_OPT_STR, end=_OPT_STR, requests=_INT,
               labeled=_INT, values={"type": "object", "additionalProperties": _OPT_NUM},
               mismatched=_INT, errors=_OBJ)
_LATENCY = _obj(["model", "requests", "p50_ms", "p99_ms"], model=_STR, requests=_INT,
                p50_ms=_OPT_NUM, p99_ms=_OPT_NUM, error_rate=_OPT_NUM)
_DRIFT = _obj(["id", "model", "version", "at", "rows", "share", "drifted", "report"], id=_INT,
              model=_STR, version=_INT, at=_STR, window_start=_OPT_STR, window_end=_OPT_STR,
              rows=_INT, share=_NUM, drifted=_BOOL, report=_OBJ)
_EVENT = _obj(["id", "at", "model", "kind", "name", "severity", "message"], id=_INT, at=_STR,
              model=_STR, kind=_STR, name=_STR, severity=_STR, message=_STR, details=_OBJ)
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
        "parameters": [_NAME], "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            _LABEL, {"type": "object", "properties": {"labels": {"oneOf": [
                {"type": "array", "items": _LABEL, "maxItems": 10_000},
                {"type": "object", "additionalProperties": {}}]}}}]}}}},
        "responses": {"200": _json(_obj(
            ["model", "stored", "matched", "pending", "unmatched", "message"], model=_STR,
            stored=_INT,
            matched={**_OPT_INT, "description": "labels whose prediction is logged (null: a "
                                                "Parquet log, not searched at feedback time)"},
            pending={**_OPT_INT, "description": "labels whose prediction is not logged yet: "
                                                "kept, and joined when it is"},
            unmatched={"type": "array", "items": _STR,
                       "description": "the first 20 request ids not logged yet"},
            message=_STR)),
                      **_errors(*_BODY, 401, 403, 404, 415, *_REGISTRY)},
    }},
    "/api/v1/models/{name}/metrics": _get(
        "Monitor: declared metrics per version and variant from fed-back labels, and latency",
        [_NAME, _SINCE, {"name": "every", "in": "query", "required": False,
                         "schema": {"type": "string"},
                         "description": "Sub-window length (10m, 1h): a series per version"}],
        _obj(["model", "windows", "latency"], model=_STR,
             windows={"type": "array", "items": _WINDOW}, latency=_LATENCY),
        400, 404, *_REGISTRY),
    "/api/v1/models/{name}/drift": {
        **_get("Monitor: stored drift checks, newest first", [_NAME, _LIMIT],
               _obj(["model", "checks"], model=_STR, checks={"type": "array", "items": _DRIFT}),
               404, 422, *_REGISTRY),
        "post": {"summary": "Monitor: check drift of the logged inputs now and store it",
                 "parameters": [_NAME, _SINCE, {**_LIMIT, "name": "version"}],
                 "security": [{"bearer": []}],
                 "responses": {"200": _json(_DRIFT),
                               **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422,
                                         *_REGISTRY)}},
    },
    "/api/v1/models/{name}/events": _get(
        "Monitor: alerts, retraining triggers and results, newest first",
        [_NAME, _SINCE, _LIMIT, {"name": "kind", "in": "query", "required": False,
                                 "schema": {"type": "string"}}],
        _obj(["model", "events"], model=_STR, events={"type": "array", "items": _EVENT}),
        400, 404, 422, *_REGISTRY),
    "/api/v1/models/{name}/predictions/{request_id}": {"get": {
        "summary": "Monitor: what the prediction log holds of one request, and its label",
        "parameters": [_NAME, {"name": "request_id", "in": "path", "required": True,
                               "schema": {"type": "string"},
                               "description": "The request_id the answer carried"}],
        "security": [{"bearer": []}],
        "responses": {"200": _json(_LOOKUP),
                      **_errors(401, 403, *_REGISTRY),
                      "404": _json(_ERROR, "unknown model, or no logged prediction with this id "
                                           "(not sampled, not written yet, past retention)")},
    }},
    "/api/v1/events": _get(
        "Monitor: every model's events (those the key covers), newest first",
        [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
         _SINCE, _LIMIT, {"name": "kind", "in": "query", "required": False,
                          "schema": {"type": "string"}}],
        _obj(["events"], events={"type": "array", "items": _EVENT}), 400, 422, *_REGISTRY),
    "/api/v1/predictions/{request_id}": {"get": {
        "summary": "Monitor: one request in every model's prediction log (those the key covers)",
        "parameters": [{"name": "request_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "security": [{"bearer": []}],
        "responses": {"200": _json(_obj(["lookups"], lookups={"type": "array",
                                                              "items": _LOOKUP})),
                      **_errors(404, *_REGISTRY)}}},
}

_STATUS = _obj(["status"], status=_STR)
#: an alias moved to a version this server cannot load: which, what serves instead, and why.
_NOT_SERVED = _obj(["version", "serving", "reason"], version=_INT, serving=_OPT_INT,
                   reason=_STR, since=_STR, retry_in_s=_NUM)
#: the pools and models a server serves (null: every one; ``--pool``, ``--models``).
_SERVES = _obj(["pools", "models"], pools={"type": ["array", "null"], "items": _STR},
               models={"type": ["array", "null"], "items": _STR})
_READYZ = _obj(["status"], status={"type": "string",
                                   "enum": ["ready", "loading", "degraded", "draining"]},
               serves=_SERVES,
               down={"type": "array", "items": _STR},
               degraded={"type": "array", "items": _STR}, prediction_log=_OBJ,
               idle={"type": "array", "items": _STR,
                     "description": "served versions unloaded after --idle-unload "
                                    "(name:version); each loads again on its next request"},
               not_served={"type": "array", "items": {**_NOT_SERVED, "required": [
                   "model", "alias", *_NOT_SERVED["required"]]}})
_V1_MODELS = _obj(["models", "serves", "elsewhere"], serves=_SERVES, elsewhere={
    "type": "object", "additionalProperties": _STR,
    "description": "the pool of each model another server serves"},
    models={"type": "array", "items": _obj(
    ["name", "pool", "device", "aliases", "served_version", "loaded_versions", "not_served"],
    name=_STR, pool=_OPT_STR, device={**_OPT_STR, "description": "as its serving section asks"},
    devices={"type": "object", "additionalProperties": _STR,
             "description": "the device each loaded version (by number) runs on"},
    aliases={"type": "object", "additionalProperties": _INT}, served_version=_OPT_INT,
    loaded_versions={"type": "array", "items": _INT},
    memory_bytes={"type": "object", "additionalProperties": _INT,
                  "description": "bytes each loaded version (by number) is charged against "
                                 "--max-memory: what its load measured"},
    not_served={"oneOf": [_NOT_SERVED, {"type": "null"}]})})
_RUN = _obj(["id", "model", "status", "kind"], id=_STR, model=_STR, status=_STR, kind=_STR,
            trigger=_STR, version=_OPT_INT, metrics=_OBJ, started_at=_STR)
_KEY_FIELDS: dict[str, Any] = {
    "id": _STR, "principal": _STR, "kind": _STR, "role": _STR, "models": _STR, "state": _STR,
    "expires_at": _OPT_STR, "revoked_at": _OPT_STR, "last_used_at": _OPT_STR, "note": _STR}
_KEY = _obj(["id", "principal", "role", "models", "state"], **_KEY_FIELDS)
_NEW_KEY = _obj(["id", "principal", "role", "models", "state", "key"], **_KEY_FIELDS, key=_STR)
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_QUERY = [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
          for n in ("alias", "at", "model", "target", "principal")]


def _key_post(summary: str, body: dict[str, Any], ok: dict[str, Any], status: str,
              params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": body}}}},
        "responses": {status: _json(ok), **_errors(*_BODY, 404, 409, 415, *_REGISTRY)}}}


#: the registry reads and key management the remote CLI uses (serving.registry_api).
_REGISTRY_PATHS: dict[str, Any] = {
    "/api/v1/models/{name}": _get("Registry: one model with its aliases", [_NAME], _MODEL,
                                  404, *_REGISTRY),
    "/api/v1/models/{name}/versions/{version}": _get(
        "Registry: one version in full (lineage, signature, metrics), by number or alias",
        [_NAME, {**_VERSION, "schema": {"type": "string"}}],
        _VERSION_ROW, 400, 404, *_REGISTRY),
    "/api/v1/models/{name}/history": _get(
        "Registry: every alias move, newest first; with at, the version then", [
            _NAME, *_QUERY[:2]], _OBJ, 404, 422, *_REGISTRY),
    "/api/v1/runs": _get("Registry: recent runs, newest first", [_QUERY[2], _LIMIT],
                         _obj(["runs"], runs={"type": "array", "items": _RUN}), 422,
                         *_REGISTRY),
    "/api/v1/runs/{run_id}": _get(
        "Registry: one run with its logs", [{"name": "run_id", "in": "path", "required": True,
                                             "schema": {"type": "string"}}],
        _RUN, 404, 409, *_REGISTRY),
    "/api/v1/audit": _get("Registry: who changed what, newest first", [_QUERY[3], _LIMIT],
                          _obj(["events"], events={"type": "array", "items": _OBJ}), 422,
                          *_REGISTRY),
    "/api/v1/audit/verify": _get(
        "Audit (admin): walk the hash chain; intact, events, head, the first bad event",
        [{"name": "head", "in": "query", "required": False, "schema": {"type": "string"}}],
        _obj(["intact", "events", "head"], intact=_BOOL, events=_INT, head=_STR,
             bad_id=_OPT_INT, reason=_STR, anchor_found={"type": ["boolean", "null"]}),
        *_REGISTRY),
    "/api/v1/audit/export": {"get": {
        "summary": "Audit (admin): events above ?after in chain order as JSON lines, with both "
                   "hashes (?limit per page, default 10000)",
        "parameters": [{"name": "after", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 0}}, _LIMIT],
        "responses": {"200": {"description": "JSON lines",
                              "content": {"application/x-ndjson": {}}},
                      **_errors(422, *_REGISTRY)}}},
    "/api/v1/auth/keys": {
        **_get("Keys (admin): every API key, never a secret", [_QUERY[4]],
               _obj(["keys"], keys={"type": "array", "items": _KEY}), *_REGISTRY),
        **_key_post("Keys (admin): make a key; its secret is in key, shown this once", {
            "principal": _STR, "role": _STR, "models": _STR, "kind": _STR,
            "expires_s": {"type": ["number", "null"]}, "note": _STR}, _NEW_KEY, "201", []),
    },
    "/api/v1/auth/keys/{key_id}/revoke": _key_post("Keys (admin): end a key now", {}, _KEY,
                                                   "200", [_KEY_ID]),
    "/api/v1/auth/keys/{key_id}/rotate": _key_post(
        "Keys (admin): a new key like this one; the old works for grace_s more",
        {"grace_s": _NUM}, _NEW_KEY, "201", [_KEY_ID]),
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "modelyard server", "version": "1",
             "description": "Native REST and Open Inference Protocol v2 for every registered "
                            "model. Binary tensors: send Inference-Header-Content-Length. "
                            "Every answer carries X-Request-Id; every 5xx is logged with it."},
    "paths": {
        "/v1/models": _get("Served models, aliases and loaded versions; not_served: the alias "
                           "points at a version this server cannot load (which, and why)", None,
                           _V1_MODELS),
        "/v1/models/{name}/predict": _predict("Predict with the production version",
                                              [_NAME, _SCORES]),
        "/v1/models/{name}/versions/{version}/predict": _predict(
            "Predict with one version", [_NAME, _VERSION, _SCORES]),
        "/v1/models/{name}/precomputed/{key}": {"get": {
            "summary": "The served version's precomputed answer for one key (X-Prediction-"
                       "Source: precomputed), or live from its input row when that is missing "
                       "or older than the TTL and the precompute input is SQL (live)",
            "parameters": [_NAME, _KEY, _SCORES],
            "responses": {"200": _json(_PRECOMPUTED_OK), **_errors(500, 503, 504),
                          "404": _json(_ERROR, "unknown model, a version without precomputed "
                                               "answers, or no fresh answer for the key and "
                                               "no input row to answer it live from: POST "
                                               "its inputs to /v1/models/{name}/predict")},
        }},
        "/v2": _get("OIP server metadata", None, _obj(
            ["name", "version", "extensions"], name=_STR, version=_STR,
            extensions={"type": "array", "items": _STR}, parameters=_SERVES)),
        "/v2/health/live": _get("Liveness", None, _obj(["live"], live=_BOOL)),
        "/v2/health/ready": {"get": {"summary": "Readiness (503 while preloading)",
                                     "responses": {"200": _json(_obj(["ready"], ready=_BOOL)),
                                                   "503": _json(_obj(["ready"], ready=_BOOL),
                                                                "not ready yet")}}},
        "/v2/models/{name}": _get("OIP model metadata", [_NAME], _V2_METADATA, 404, *_REGISTRY,
                                  oip=True),
        "/v2/models/{name}/versions/{version}": _get(
            "OIP model metadata", [_NAME, _VERSION], _V2_METADATA, 404, *_REGISTRY, oip=True),
        "/v2/models/{name}/ready": _v2_ready("Model readiness (400: not loaded)", [_NAME]),
        "/v2/models/{name}/versions/{version}/ready": _v2_ready("Version readiness",
                                                                [_NAME, _VERSION]),
        "/v2/models/{name}/infer": _v2_infer([_NAME]),
        "/v2/models/{name}/versions/{version}/infer": _v2_infer([_NAME, _VERSION]),
        "/v2/repository/index": _v2_post(
            "Model repository index", [], _obj([], ready={"type": "boolean", "default": False}),
            _V2_INDEX, 400, 408, 413, 422),
        "/v2/repository/models/{name}/load": _v2_repository(
            "Load a model (parameters.version: a version, else the served or newest one)",
            _obj([], parameters=_obj([], version={"type": ["integer", "string"]})),
            *_BODY, 404, 500, 503),
        "/v2/repository/models/{name}/unload": _v2_repository(
            "Unload every loaded version of a model", _OBJ, 404, 408, 413),
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition",
                                                   "content": {"text/plain": {}}}}}},
        "/healthz": _get("Liveness", None, _STATUS),
        "/readyz": {"get": {
            "summary": "Readiness: 503 until production aliases are loaded, while a device "
                       "worker is down or, after SIGTERM, while draining; a prediction log "
                       "that drops what it is given stays 200 and is listed under degraded; "
                       "not_served names aliases moved to a version that cannot load (the old "
                       "one serves)",
            "responses": {code: _json(_READYZ, what) for code, what in (
                ("200", "ready"),
                ("503", "loading, a device worker is down or draining (the body says "
                        "which)"))}}},
        "/openapi.json": _get("This document"),
        "/docs": {"get": {"summary": "API reference page",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {}}}}}},
        **_ADMIN_PATHS,
        **_REGISTRY_PATHS,
        **_MONITOR_PATHS,
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
                op["responses"].setdefault(str(code), _errors(code, oip=oip)[str(code)])
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
