"""The OpenAPI paths of the registry, key and training routes the remote CLI calls
(:mod:`modelyard.serving.registry_api`, :mod:`modelyard.serving.training_api`)."""

from __future__ import annotations

from typing import Any

from modelyard.serving.openapi_schema import (
    BODY,
    BOOL,
    INT,
    LIMIT,
    MODEL,
    NAME,
    NUM,
    OBJ,
    OPT_INT,
    OPT_STR,
    REGISTRY,
    STR,
    VERSION,
    VERSION_ROW,
    answer,
    errors,
    get_op,
    obj,
)

_RUN = obj(["id", "model", "status", "kind"], id=STR, model=STR, status=STR, kind=STR,
            trigger=STR, version=OPT_INT, metrics=OBJ, started_at=STR)
_KEY_FIELDS: dict[str, Any] = {
    "id": STR, "principal": STR, "kind": STR, "role": STR, "models": STR, "state": STR,
    "expires_at": OPT_STR, "revoked_at": OPT_STR, "last_used_at": OPT_STR, "note": STR}
_KEY = obj(["id", "principal", "role", "models", "state"], **_KEY_FIELDS)
_NEW_KEY = obj(["id", "principal", "role", "models", "state", "key"], **_KEY_FIELDS, key=STR)
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_QUERY = [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
          for n in ("alias", "at", "model", "target", "principal")]


def _key_post(summary: str, body: dict[str, Any], ok: dict[str, Any], status: str,
              params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": body}}}},
        "responses": {status: answer(ok), **errors(*BODY, 404, 409, 415, *REGISTRY)}}}


#: the registry reads and key management the remote CLI uses (serving.registry_api).
REGISTRY_PATHS: dict[str, Any] = {
    "/api/v1/models/{name}": get_op("Registry: one model with its aliases", [NAME], MODEL,
                                  404, *REGISTRY),
    "/api/v1/models/{name}/versions/{version}": get_op(
        "Registry: one version in full (lineage with its data sources, signature, metrics), "
        "by number (3), alias (production) or semantic version label (1.4.0)",
        [NAME, {**VERSION, "schema": {"type": "string"}}],
        VERSION_ROW, 400, 404, *REGISTRY),
    "/api/v1/models/{name}/versions/{version}/card": {"get": {
        "summary": "Registry: the version's model card, Markdown or (?format=html) one HTML page",
        "parameters": [NAME, {**VERSION, "schema": {"type": "string"}},
                       {"name": "format", "in": "query", "required": False,
                        "schema": {"type": "string", "enum": ["markdown", "html"]}}],
        "responses": {"200": {"description": "the model card",
                              "content": {"text/markdown": {}, "text/html": {}}},
                      **errors(400, 404, 422, *REGISTRY)}}},
    "/api/v1/models/{name}/history": get_op(
        "Registry: every alias move, newest first; with at, the version then", [
            NAME, *_QUERY[:2]], OBJ, 404, 422, *REGISTRY),
    "/api/v1/runs": get_op("Registry: recent runs, newest first", [_QUERY[2], LIMIT],
                         obj(["runs"], runs={"type": "array", "items": _RUN}), 422,
                         *REGISTRY),
    "/api/v1/runs/{run_id}": get_op(
        "Registry: one run with its logs", [{"name": "run_id", "in": "path", "required": True,
                                             "schema": {"type": "string"}}],
        _RUN, 404, 409, *REGISTRY),
    "/api/v1/audit": get_op("Registry: who changed what, newest first", [_QUERY[3], LIMIT],
                          obj(["events"], events={"type": "array", "items": OBJ}), 422,
                          *REGISTRY),
    "/api/v1/audit/verify": get_op(
        "Audit (admin): walk the hash chain; intact, events, head, the first bad event",
        [{"name": "head", "in": "query", "required": False, "schema": {"type": "string"}}],
        obj(["intact", "events", "head"], intact=BOOL, events=INT, head=STR,
             bad_id=OPT_INT, reason=STR, anchor_found={"type": ["boolean", "null"]}),
        *REGISTRY),
    "/api/v1/audit/export": {"get": {
        "summary": "Audit (admin): events above ?after in chain order as JSON lines, with both "
                   "hashes (?limit per page, default 10000)",
        "parameters": [{"name": "after", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 0}}, LIMIT],
        "responses": {"200": {"description": "JSON lines",
                              "content": {"application/x-ndjson": {}}},
                      **errors(422, *REGISTRY)}}},
    "/api/v1/auth/keys": {
        **get_op("Keys (admin): every API key, never a secret", [_QUERY[4]],
               obj(["keys"], keys={"type": "array", "items": _KEY}), *REGISTRY),
        **_key_post("Keys (admin): make a key; its secret is in key, shown this once", {
            "principal": STR, "role": STR, "models": STR, "kind": STR,
            "expires_s": {"type": ["number", "null"]}, "note": STR}, _NEW_KEY, "201", []),
    },
    "/api/v1/auth/keys/{key_id}/revoke": _key_post("Keys (admin): end a key now", {}, _KEY,
                                                   "200", [_KEY_ID]),
    "/api/v1/auth/keys/{key_id}/rotate": _key_post(
        "Keys (admin): a new key like this one; the old works for grace_s more",
        {"grace_s": NUM}, _NEW_KEY, "201", [_KEY_ID]),
}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_OPT_OBJ = {"type": ["object", "null"]}
_RUN_FULL = {**_RUN, "properties": {**_RUN["properties"], "logs": STR, "host": OPT_STR,
                                    "created_by": STR, "details": _OPT_OBJ}}


def _train_post(summary: str, params: list[dict[str, Any]], body: dict[str, Any],
                required: list[str], ok: dict[str, Any], status: str,
                *codes: int) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params,
        "requestBody": {"required": bool(required), "content": {"application/json": {
            "schema": {**obj(required, **body), "additionalProperties": False}}}},
        "responses": {status: answer(ok), **errors(*BODY, 415, *codes, *REGISTRY)}}}


#: training through the server (serving.training_api): runs, version uploads, artifacts.
TRAINING_PATHS: dict[str, Any] = {
    "/api/v1/auth/whoami": get_op(
        "The caller's principal, key and grants",
        [], obj(["principal", "grants"], principal=STR, key=OPT_STR, expires_at=OPT_STR,
                grants={"type": "array", "items": obj(["role", "models"], role=STR,
                                                      models=STR)})),
    "/api/v1/models/{name}/runs": _train_post(
        "Training (trainer): record a run started by the caller", [NAME],
        {"trigger": STR, "kind": {"enum": ["train", "batch"]}, "details": _OPT_OBJ,
         "host": STR, "pid": INT}, [], _RUN_FULL, "201"),
    "/api/v1/runs/{run_id}/beat": _train_post(
        "Training (trainer): the caller's run is still at work (running: false once ended), "
        "with its log so far", [_RUN_ID], {"logs": OPT_STR}, [], obj(["running"], running=BOOL),
        "200", 403, 404),
    "/api/v1/runs/{run_id}/cancel": _train_post(
        "Training (trainer): ask the process running a run to stop it (it records the run "
        "failed, cancelled)", [_RUN_ID], {}, [], _RUN_FULL, "200", 404, 409),
    "/api/v1/runs/{run_id}/finish": _train_post(
        "Training (trainer): how the caller's run ended; promoted is read off the alias",
        [_RUN_ID], {"status": {"enum": ["succeeded", "failed", "rejected", "unchanged"]},
                    "version": OPT_INT, "metrics": _OPT_OBJ, "gate": _OPT_OBJ, "logs": STR,
                    "failure_reason": OPT_STR, "details": _OPT_OBJ},
        ["status"], _RUN_FULL, "200", 403, 404, 409),
    "/api/v1/models/{name}/versions": {"post": {
        "summary": "Training (trainer): register a version from a tar of version.json (its "
                   "record and the artifact's digest) and artifact/ (the saved folder), "
                   "streamed up to --max-upload",
        "parameters": [NAME],
        "requestBody": {"required": True, "content": {"application/x-tar": {
            "schema": {"type": "string", "format": "binary"}}}},
        "responses": {"201": answer(VERSION_ROW), **errors(*BODY, 403, 409, 415, *REGISTRY)}}},
    "/api/v1/models/{name}/versions/{version}/artifact": {"get": {
        "summary": "Training (trainer): a version's packed artifact, verified "
                   "(X-Artifact-Digest names its sha256)",
        "parameters": [NAME, VERSION],
        "responses": {"200": {"description": "the artifact as a tar", "content": {
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
                      **errors(404, *REGISTRY)}}},
}

__all__ = ["REGISTRY_PATHS", "TRAINING_PATHS"]
