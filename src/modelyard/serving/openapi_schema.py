"""The building blocks of the server's OpenAPI document: value schemas, what each status
means, and the shapes of an operation (:mod:`modelyard.serving.openapi` assembles them)."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
V2_ERROR = {"$ref": "#/components/schemas/V2Error"}
STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
OPT_INT = {"type": ["integer", "null"]}
OPT_NUM = {"type": ["number", "null"]}
OPT_STR = {"type": ["string", "null"]}
OBJ = {"type": "object"}
LIST = {"type": "array"}


def obj(required: list[str], **properties: Any) -> dict[str, Any]:
    """An object schema: these properties (more may come in later versions)."""
    return {"type": "object", "required": required, "properties": properties}


def answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: what each status means, on every route that can answer it.
MEANING = {
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


def errors(*codes: int, oip: bool = False) -> dict[str, Any]:
    return {str(c): answer(V2_ERROR if oip else ERROR, MEANING[c]) for c in codes}


#: what a route that reads a request body can also answer.
BODY = (400, 408, 413, 422)
#: what a route that predicts can also answer.
PREDICTING = (404, 500, 503, 504)
#: what a route that reads or writes the registry can also answer.
REGISTRY = (500, 503)

NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}}
LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}}

MODEL = obj(["name", "latest_version", "aliases"], name=STR, description=STR,
              latest_version=INT, created_at=STR, created_by=STR,
              aliases={"type": "object", "additionalProperties": INT})
VERSION_ROW = obj(["model", "version", "flavor", "artifact_digest", "aliases"], model=STR,
                    version=INT, flavor=STR, artifact_digest=STR, artifact_size=INT,
                    metrics=OBJ, aliases={"type": "array", "items": STR},
                    # migration 0010: the semantic version label, and the data it was trained
                    # on (files with sha256, a query with its database and tables, a function)
                    semver=OPT_STR,
                    data_sources={"type": "array", "items": {"type": "object"}})



def get_op(summary: str, params: list[dict[str, Any]] | None = None,
         ok: dict[str, Any] | None = None, *codes: int, oip: bool = False) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": answer(ok or OBJ), **errors(*codes, oip=oip)}}}


__all__ = [
    "BODY", "BOOL", "ERROR", "INT", "LIMIT", "LIST", "MEANING", "MODEL", "NAME", "NUM", "OBJ",
    "OPT_INT", "OPT_NUM", "OPT_STR", "PREDICTING", "REGISTRY", "STR", "V2_ERROR", "VERSION",
    "VERSION_ROW", "answer", "errors", "get_op", "obj",
]
