"""One request's identity: its id, the call record that answers it, and the one log line (and
HTTP answer) of a failure.

Every answer names its request id (``X-Request-Id``; gRPC: the request's ``id``): the client's
own (``X-Request-Id`` or the OIP ``id``), else one made here (a UUIDv7, see
:mod:`modelyard.monitoring.requestid`). Every 5xx on any route -- native,
OIP REST, admin, monitoring, gRPC -- writes exactly one log line with that id
(:func:`log_failure`), so an operator can find the cause from what the client saw.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from modelyard.errors import ModelyardError, NotFoundError
from modelyard.monitoring.requestid import RequestIds
from modelyard.serving.http import (
    ClientDisconnectedError,
    Scope,
    Send,
    error_body,
    header,
    respond,
)

if TYPE_CHECKING:
    from modelyard.predictor import Prediction
    from modelyard.serving.runner import Runner

log = logging.getLogger(__name__)


#: ids for requests that came without one (UUIDv7: the prediction log finds them by time).
_request_ids = RequestIds()


class Call:
    """One prediction request's record, from the codec that received it through the data plane.

    The codec builds it when the request arrives: the protocol, the model named in the path and
    the client's request id (else a new one), and the start time. Only the data plane
    (:class:`~modelyard.serving.dataplane.DataPlane`) writes the rest: what answered
    (``runner``, and ``variant``: ``production`` for the served alias, ``stable`` or
    ``candidate`` while a rollout routes the model), the prepared input and the result. The
    codec reads them to encode its answer; :meth:`DataPlane.record` counts and logs them.
    """

    __slots__ = ("batch", "model", "protocol", "request_id", "result", "rows", "runner", "start",
                 "variant")

    def __init__(self, protocol: str = "", model: str = "",
                 request_id: str | None = None) -> None:
        self.start = time.perf_counter()
        self.protocol = protocol
        self.model = model
        #: the id feedback refers to: the client's X-Request-Id (or OIP ``id``), else generated.
        self.request_id = request_id or _request_ids.new()
        self.runner: Runner | None = None
        self.variant = "production"
        #: the prepared input batch, its rows and the answer, for the prediction log.
        self.batch: Any = None
        self.rows = 0
        self.result: Prediction | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers naming the version and variant that answered, and the request."""
        runner = self.runner
        assert runner is not None
        out = [(b"x-model-version", runner.version_str.encode()),
               (b"x-model-variant", self.variant.encode()),
               (b"x-request-id", self.request_id.encode())]
        steps = getattr(self.result, "steps", None)  # a graph's answer names its members
        if steps:
            out.append((b"x-model-steps", ",".join(steps).encode()))
        return out


def request_id_of(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` (see :func:`usable_id`), if it sent one."""
    value = header(scope, b"x-request-id")
    return None if value is None else usable_id(value.decode("latin-1"))


def usable_id(text: str) -> str | None:
    """``text`` as a request id: 1 to 100 printable ASCII characters, else ``None`` (it goes
    back in a header and into logs, where a newline or a control character must not)."""
    if 0 < len(text) <= 100 and text.isascii() and text.isprintable():
        return text
    return None


#: versions are stored as 64-bit integers: a larger number names no version.
MAX_VERSION = 2**63 - 1


def parse_version(name: str, version: str | None) -> int | None:
    """The version number in a path, or :class:`NotFoundError` for one that is not a number.

    Only ASCII digits count (``str.isdigit`` also takes ``'²'`` and Arabic-Indic digits), and
    only numbers a version can have (1 to 2**63 - 1).
    """
    if version is None:
        return None
    if not (version.isascii() and version.isdigit() and len(version) <= 19) or not (
            1 <= int(version) <= MAX_VERSION):
        raise NotFoundError(f"model '{name}' has no version {version[:40]!r}; versions are "
                            "1, 2, ...")
    return int(version)


def log_failure(where: str, status: int, request_id: str, exc: BaseException) -> None:
    """The one log line of a request answered with a 5xx: route, status, request id, cause.

    Errors of our own say what happened in their message; anything else is a bug, logged with
    its traceback.
    """
    known = isinstance(exc, ModelyardError)
    log.log(logging.ERROR if status == 500 else logging.WARNING,
            "%s answered %d, request_id=%s: %s", where, status, request_id,
            exc if known else f"{type(exc).__name__}: {exc}", exc_info=None if known else exc)


async def fail_http(send: Send, where: str, call: Call, exc: BaseException, *,
                    oip: bool = False) -> int:
    """Answer a prediction request that failed, over HTTP; returns the status it answered.

    A client that went away gets nothing (499 in the metrics). Otherwise the error's status and
    body (OIP routes: the protocol's ``{"error": ...}``), with the request id; a 5xx is logged
    once (:func:`log_failure`) under ``where``.
    """
    if isinstance(exc, ClientDisconnectedError):
        return 499
    status, body, headers = error_body(exc, oip=oip)
    headers.append((b"x-request-id", call.request_id.encode()))
    if status >= 500:
        log_failure(where, status, call.request_id, exc)
    await respond(send, status, body, headers)
    return status


def new_request_id() -> str:
    """A fresh request id (for answers to clients that sent none)."""
    return _request_ids.new()


__all__ = ["MAX_VERSION", "Call", "fail_http", "log_failure", "new_request_id", "parse_version",
           "request_id_of", "usable_id"]
