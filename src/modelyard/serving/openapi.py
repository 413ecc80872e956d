"""The server's OpenAPI document (written by hand: no framework generates it) and ``/docs``."""

from __future__ import annotations

import html
from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_V2_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "unparseable JSON", 404: "unknown model or version", 405: "wrong method",
            413: "body over the size limit", 422: "input does not match the signature",
            500: "the model failed on this request", 503: "queue full (see Retry-After)",
            504: "no result within the request timeout",
            401: "no bearer token (MODELYARD_TOKEN is set)", 403: "wrong bearer token",
            409: "clashes with the registry's state (e.g. a rollout is already active)"}
    return {str(c): _json(_ERROR, text[c]) for c in codes}


_PREDICT_BODY = {
    "type": "object",
    "description": "Exactly one of records, columns, instances or inputs.",
    "properties": {
        "records": {"type": "array", "items": {"type": "object"}},
        "columns": {"type": "object", "additionalProperties": {"type": "array"}},
        "instances": {"type": "array"},
        "inputs": {},
        "scores": {"type": "boolean", "default": False},
    },
}
_PREDICT_OK = {
    "type": "object",
    "properties": {
        "model": {"type": "string"}, "version": {"type": "integer"},
        "predictions": {"type": "array"}, "scores": {"type": "array"},
        "classes": {"type": "array"},
        "request_id": {"type": "string",
                       "description": "Names this answer in feedback (also X-Request-Id)"},
    },
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}
_SCORES = {"name": "scores", "in": "query", "required": False, "schema": {"type": "boolean"}}


def _predict(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _PREDICT_BODY}}},
        "responses": {"200": _json(_PREDICT_OK), **_errors(400, 404, 405, 413, 422, 500, 503, 504)},
    }}


def _get(summary: str, params: list[dict[str, Any]] | None = None,
         ok: dict[str, Any] | None = None, *codes: int) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": _json(ok or {"type": "object"}), **_errors(*codes)}}}


def _v2_post(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": params,
                     "requestBody": {"content": {"application/json": {"schema": {"type": "object"}},
                                                 "application/octet-stream": {}}},
                     "responses": {"200": _json({"type": "object"}),
                                   "400": _json(_V2_ERROR, "bad request"),
                                   "404": _json(_V2_ERROR, "unknown model"),
                                   "422": _json(_V2_ERROR, "input does not match")}}}


def _admin_post(summary: str, body: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": [_NAME], "security": [{"bearer": []}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": body}}}},
        "responses": {status: _json({"type": "object"}), **_errors(400, 401, 403, 404, 409, 422)},
    }}


_REASON = {"reason": {"type": "string", "default": ""}}
_ALIAS = {"alias": {"type": "string", "default": "production"}}
_ADMIN_PATHS: dict[str, Any] = {
    "/api/v1/models": _get("Admin: every registered model with its aliases"),
    "/api/v1/models/{name}/versions": _get("Admin: a model's versions, newest first", [_NAME],
                                           None, 404),
    "/api/v1/models/{name}/deployment": _get("Admin: the model's current rollout", [_NAME],
                                             None, 404),
    "/api/v1/models/{name}/deployment/history": _get(
        "Admin: the model's rollout transitions, newest first", [_NAME], None, 404),
    "/api/v1/models/{name}/promote": _admin_post(
        "Admin: point an alias (production) at a version; the server loads and warms it first "
        "and refuses (409, the alias untouched) a version that cannot load",
        {"version": {"type": "integer"}, **_ALIAS, **_REASON}),
    "/api/v1/models/{name}/rollback": _admin_post(
        "Admin: move an alias back (ends an active rollout of production first)",
        {"to": {"type": ["integer", "null"]}, **_ALIAS, **_REASON}),
    "/api/v1/models/{name}/deployments": _admin_post(
        "Admin: start a rollout of a version; unset settings come from the rollout section "
        "of the spec registered with it (else canary, 60 s)", {
            "version": {"type": "integer"},
            "strategy": {"type": ["string", "null"],
                         "enum": ["direct", "canary", "ab", "shadow", "blue-green", None]},
            "steps": {"type": ["array", "null"], "items": {"type": "integer"}},
            "every_s": {"type": ["number", "null"]},
            "key": {"type": ["string", "null"]},
            "rules": {"type": ["object", "null"]}, **_REASON}, "201"),
    "/api/v1/models/{name}/deployment/promote": _admin_post(
        "Admin: end the rollout with the candidate as production", _REASON),
    "/api/v1/models/{name}/deployment/abort": _admin_post(
        "Admin: cancel the rollout; traffic back to stable", _REASON),
    "/api/v1/models/{name}/deployment/rollback": _admin_post(
        "Admin: roll the rollout back (bad candidate); traffic back to stable", _REASON),
}

_SINCE = {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "Window start: a duration ago (30m, 1h, 2d) or an ISO time "
                         "(default: the model's monitoring.window_s)"}
_LABEL = {"type": "object", "required": ["request_id", "label"], "properties": {
    "request_id": {"type": "string", "maxLength": 100}, "label": {}}}
_MONITOR_PATHS: dict[str, Any] = {
    "/v1/models/{name}/feedback": {"post": {
        "summary": "Ground truth for earlier predictions, by the request_id each answer carries",
        "parameters": [_NAME], "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            _LABEL, {"type": "object", "properties": {"labels": {"oneOf": [
                {"type": "array", "items": _LABEL, "maxItems": 10_000},
                {"type": "object", "additionalProperties": {}}]}}}]}}}},
        "responses": {"200": _json({"type": "object", "properties": {
            "model": {"type": "string"}, "stored": {"type": "integer"},
            "matched": {"type": "integer"}, "unmatched": {"type": "array"}}}),
            **_errors(400, 401, 403, 404, 422)},
    }},
    "/api/v1/models/{name}/metrics": _get(
        "Monitor: declared metrics per version and variant from fed-back labels, and latency",
        [_NAME, _SINCE, {"name": "every", "in": "query", "required": False,
                         "schema": {"type": "string"},
                         "description": "Sub-window length (10m, 1h): a series per version"}],
        None, 400, 404),
    "/api/v1/models/{name}/drift": {
        **_get("Monitor: stored drift checks, newest first",
               [_NAME, {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}],
               None, 404),
        "post": {"summary": "Monitor: check drift of the logged inputs now and store it",
                 "parameters": [_NAME, _SINCE], "security": [{"bearer": []}],
                 "responses": {"200": _json({"type": "object"}),
                               **_errors(400, 401, 403, 404, 409)}},
    },
    "/api/v1/models/{name}/events": _get(
        "Monitor: alerts, retraining triggers and results, newest first",
        [_NAME, _SINCE, {"name": "kind", "in": "query", "required": False,
                         "schema": {"type": "string"}}], None, 400, 404),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "modelyard server", "version": "1",
             "description": "Native REST and Open Inference Protocol v2 for every registered "
                            "model. Binary tensors: send Inference-Header-Content-Length."},
    "paths": {
        "/v1/models": _get("Served models, aliases and loaded versions; not_served: the alias "
                           "points at a version this server cannot load (which, and why)"),
        "/v1/models/{name}/predict": _predict("Predict with the production version",
                                              [_NAME, _SCORES]),
        "/v1/models/{name}/versions/{version}/predict": _predict(
            "Predict with one version", [_NAME, _VERSION, _SCORES]),
        "/v2": _get("OIP server metadata"),
        "/v2/health/live": _get("Liveness"),
        "/v2/health/ready": _get("Readiness (503 while preloading)"),
        "/v2/models/{name}": _get("OIP model metadata", [_NAME], None, 404),
        "/v2/models/{name}/versions/{version}": _get("OIP model metadata", [_NAME, _VERSION],
                                                     None, 404),
        "/v2/models/{name}/ready": _get("Model readiness (503: not loaded)", [_NAME]),
        "/v2/models/{name}/versions/{version}/ready": _get("Version readiness",
                                                           [_NAME, _VERSION]),
        "/v2/models/{name}/infer": _v2_post("OIP inference", [_NAME]),
        "/v2/models/{name}/versions/{version}/infer": _v2_post("OIP inference",
                                                               [_NAME, _VERSION]),
        "/v2/repository/index": _v2_post("Model repository index", []),
        "/v2/repository/models/{name}/load": _v2_post("Load a model", [_NAME]),
        "/v2/repository/models/{name}/unload": _v2_post("Unload a model", [_NAME]),
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition"}}}},
        "/healthz": _get("Liveness"),
        "/readyz": _get("Readiness: 503 until production aliases are loaded; not_served names "
                        "aliases moved to a version that cannot load (the old one serves)"),
        "/openapi.json": _get("This document"),
        "/docs": {"get": {"summary": "API reference page",
                          "responses": {"200": {"description": "HTML"}}}},
        **_ADMIN_PATHS,
        **_MONITOR_PATHS,
    },
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "Needed by admin POSTs when the server's MODELYARD_TOKEN is set"}},
                   "schemas": {"Error": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                       "detail": {"type": "array", "items": {"type": "object", "properties": {
                           "loc": {"type": "array"}, "msg": {"type": "string"}}}}},
    }}},
}


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
