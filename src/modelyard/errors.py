"""The exception tree. Every error modelyard raises on purpose is a ``ModelyardError``.

::

    ModelyardError                  root: catch this to catch everything we raise
    ├── ConfigError                 a spec, modelyard.yaml or setting is malformed
    ├── NotFoundError               an unknown model, version, alias or run
    ├── ConflictError               the request clashes with the registry's state
    ├── InputError                  prediction input does not match the signature
    │   ├── BadJSONError            a request body is not JSON at all (400)
    │   └── RowRejectedError        a batch row failed validation under --on-error fail
    ├── DataValidationError         training data failed its checks (carries a report)
    ├── FrameworkMissingError       an optional framework is not installed
    ├── UnsafeArtifactError         a load would have to run untrusted code
    ├── DeviceError                 a requested device is not available
    ├── IntegrityError              an artifact's digest does not match the registry
    │   └── ArtifactDecryptError    an encrypted artifact fails to decrypt (key or tamper)
    ├── AuditChainError             the audit chain is broken: an event was altered
    ├── StorageError                the registry database or artifact store is unreachable
    ├── TrainingError               the user's train function (or its process) failed
    │   └── RunCancelled            the run was cancelled (Ctrl-C, or 'modelyard runs cancel')
    ├── EnvironmentMismatchError    a Ray worker's Python or framework versions differ from ours
    ├── GateFailed                  a candidate did not pass its promotion gate
    ├── MonitoringError             monitoring has too little data to answer (yet)
    ├── AdapterError                a framework raised while saving, loading or predicting
    ├── ExportError                 an export was refused: unsupported, or outside parity tolerance
    ├── ImportSourceError           an MLflow registry is unreachable, or a model or version refused
    ├── FederationError             federated training failed: Flower, too few sites, a site
    ├── RequestError                the server refuses an HTTP request before any model sees it
    │   ├── BodyTooLargeError       413: the body is over the server's --max-body
    │   ├── BodyTimeoutError        408: the body stalled past the server's --body-timeout
    │   ├── MethodNotAllowedError   405: the path exists for other methods (``allow``)
    │   ├── UnsupportedMediaTypeError  415: a mutation's body is not declared JSON
    │   ├── UnauthorizedError       401: a call that needs a credential came without one
    │   ├── ForbiddenError          403: a credential not valid here, or without the role
    │   ├── CrossSiteError          403: a mutation from another site's web page
    │   └── TooManyAttemptsError    429: too many failed attempts from one client
    ├── UnavailableError            the server cannot answer now; retry (503, ``retry_after``)
    │   ├── QueueFullError          the model's request queue is full
    │   ├── RunnerClosedError       the version was swapped out or unloaded mid-request
    │   ├── RequestTimeoutError     504: no answer within the server's request timeout
    │   ├── PublishError            a broker did not take a queue answer (the message goes back)
    │   └── WorkerUnavailableError  the model's device worker is restarting
    │       └── WorkerDiedError     it exited while the request was in flight
    └── ServerStartError            a server child process exited or was not ready in time

Each message says what happened and what to do about it. Framework exceptions are translated into
this tree once, at the adapter boundary. For the CLI, a refused request is bad usage (exit 2, as
for ``InputError``) and an unavailable server its own code (15: retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose."""

    #: HTTP status a server maps this error to.
    status_code: int = 500
    #: CLI exit status.
    exit_code: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: the error's kind and its message."""
        return {"error": type(self).__name__, "message": str(self)}


class ConfigError(ModelyardError):
    """A spec, ``modelyard.yaml`` or setting is malformed; the message names the field."""

    status_code = 400
    exit_code = 2


class NotFoundError(ModelyardError):
    """An unknown model, version, alias or run."""

    status_code = 404
    exit_code = 3


class ConflictError(ModelyardError):
    """The request clashes with the registry's state (for example, nothing to roll back to)."""

    status_code = 409
    exit_code = 4


class InputError(ModelyardError):
    """Prediction input does not match the model's signature.

    ``errors`` lists one entry per problem: ``{"loc": [...], "msg": "..."}``.
    """

    status_code = 422
    exit_code = 2

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "detail": self.errors}


class BadJSONError(InputError):
    """The body is not JSON at all (400); send ``Content-Type: application/json`` JSON."""

    status_code = 400


class RowRejectedError(InputError):
    """A batch job met a row that fails validation and was told to stop (``--on-error fail``);
    the message names the row and why. Its own exit code tells a script that the data, not the
    command, needs fixing."""

    exit_code = 16


class DataValidationError(ModelyardError):
    """Training data failed its checks; ``report`` holds every failed check."""

    status_code = 422
    exit_code = 5

    def __init__(self, message: str, report: list[str] | None = None) -> None:
        super().__init__(message)
        self.report = report or []


class FrameworkMissingError(ModelyardError):
    """An optional framework is not installed; the message gives the pip command."""

    exit_code = 6


class UnsafeArtifactError(ModelyardError):
    """Loading the artifact would need to trust code or types that are not trusted.

    A server answers 500: the refusal is the server's, about what the registry holds, not about
    anything in the client's request; the message names the types and how to trust them.
    """

    status_code = 500
    exit_code = 7


class DeviceError(ModelyardError):
    """A requested device (``cuda:1``, say) is not available on this machine."""

    exit_code = 8


class IntegrityError(ModelyardError):
    """An artifact's content does not match the digest the registry recorded."""

    exit_code = 9


class ArtifactDecryptError(IntegrityError):
    """An encrypted artifact did not decrypt: it was written under a key this process does not
    hold (set ``MODELYARD_ARTIFACT_KEY_PREVIOUS``), or it was altered, truncated or reordered."""

    exit_code = 18


class AuditChainError(ModelyardError):
    """The audit chain is broken (``modelyard audit verify``): the message names the first
    event that does not follow from the one before it, and why."""

    exit_code = 17


class StorageError(ModelyardError):
    """The registry database or the artifact store cannot be reached or written."""

    status_code = 503
    exit_code = 10


class TrainingError(ModelyardError):
    """The user's train function raised, or its process died."""

    exit_code = 11


class RunCancelled(TrainingError):
    """The run was cancelled before it finished (Ctrl-C, or ``modelyard runs cancel RUN``); its
    training was stopped and nothing was registered."""

    exit_code = 19


class EnvironmentMismatchError(ModelyardError):
    """The Ray worker that would train has other Python or framework versions than the client,
    so the version it makes would not load or score the same here; nothing was trained."""

    status_code = 409
    exit_code = 20


class GateFailed(ModelyardError):
    """A candidate did not pass its promotion gate; ``reasons`` lists each failed rule."""

    exit_code = 12

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class MonitoringError(ModelyardError):
    """Monitoring cannot answer yet: too few logged predictions or labels in the window."""

    status_code = 409
    exit_code = 14


class AdapterError(ModelyardError):
    """A framework raised while saving, loading or predicting; the message names the model."""

    exit_code = 13


class ExportError(ModelyardError):
    """An export (ONNX) was refused: its converter does not support a part of the model (named),
    or the converted model disagrees with the original beyond the parity tolerance."""

    status_code = 422
    exit_code = 21


class ImportSourceError(ModelyardError):
    """An import (``modelyard import mlflow``) cannot read what it was asked to: the tracking or
    registry URI is unreachable, the model is unknown there, or a version was refused (its flavor
    cannot be brought in, or it does not answer like the original on its input example)."""

    status_code = 502
    exit_code = 22


class FederationError(ModelyardError):
    """Federated training failed: the Flower SuperLink or a SuperNode did not start, too few
    sites joined, a site's data or parameters did not fit the model, or a round timed out."""

    status_code = 502
    exit_code = 23


class RequestError(ModelyardError):
    """The server refuses an HTTP request before any model sees it (its size, method, media type
    or credentials); the message says what to send instead."""

    status_code = 400
    exit_code = 2


class BodyTooLargeError(RequestError):
    """The request body is over the server's limit; send smaller batches or raise --max-body."""

    status_code = 413


class BodyTimeoutError(RequestError):
    """The request body stopped arriving for longer than the server's ``--body-timeout``; the
    answer is 408 and the connection is closed."""

    status_code = 408


class MethodNotAllowedError(RequestError):
    """The path exists but not for this HTTP method; the ``Allow`` header lists the methods."""

    status_code = 405

    def __init__(self, message: str, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = list(allow)


class UnsupportedMediaTypeError(RequestError):
    """A mutating request's body is not declared ``application/json``."""

    status_code = 415
    response_headers = ((b"accept-post", b"application/json"),)


class UnauthorizedError(RequestError):
    """A call that needs a credential came without ``Authorization: Bearer <key>``."""

    status_code = 401
    #: sent with the 401, as RFC 9110 asks.
    response_headers = ((b"www-authenticate", b"Bearer"),)


class ForbiddenError(RequestError):
    """A credential that is not valid here (unknown, expired, revoked), or whose role or scope
    does not allow the call."""

    status_code = 403


class CrossSiteError(RequestError):
    """A mutating request came from a web page on another site (a foreign ``Origin``)."""

    status_code = 403


class TooManyAttemptsError(RequestError):
    """A client failed to authenticate too often; retry after ``retry_after`` seconds (429)."""

    status_code = 429

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnavailableError(ModelyardError):
    """The server cannot answer this request now (a full queue, a model being swapped, a device
    worker restarting); retry after ``retry_after`` seconds (the ``Retry-After`` header)."""

    status_code = 503
    exit_code = 15
    #: seconds a client should wait before retrying; None sends no ``Retry-After``.
    retry_after: int | None = 1

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # a device worker's errors cross a process boundary pickled, with their retry_after
        return (type(self), (str(self), self.retry_after))


class QueueFullError(UnavailableError):
    """The model's request queue is full; retry after ``retry_after`` seconds."""


class RunnerClosedError(UnavailableError):
    """The model version stopped taking requests (it was swapped out or unloaded); retry."""


class RequestTimeoutError(UnavailableError):
    """A request waited longer than the server's request timeout; retry or raise the timeout."""

    status_code = 504
    retry_after = None


class PublishError(UnavailableError):
    """A broker did not take a queue answer or dead letter (``modelyard consume``): the message
    it answers is given back to the queue, to be answered again."""


class WorkerUnavailableError(UnavailableError):
    """The model's device worker is restarting; retry after ``retry_after`` seconds."""


class WorkerDiedError(WorkerUnavailableError):
    """The device worker exited while this request was in flight; retry shortly."""


class ServerStartError(ModelyardError):
    """A server started as a child process exited or was not ready in time; the message quotes
    its output, which says why (a port in use, a registry it cannot open)."""

    exit_code = 1


__all__ = [
    "AdapterError",
    "ArtifactDecryptError",
    "AuditChainError",
    "BadJSONError",
    "BodyTimeoutError",
    "BodyTooLargeError",
    "ConfigError",
    "ConflictError",
    "CrossSiteError",
    "DataValidationError",
    "DeviceError",
    "EnvironmentMismatchError",
    "ExportError",
    "FederationError",
    "ForbiddenError",
    "FrameworkMissingError",
    "GateFailed",
    "ImportSourceError",
    "InputError",
    "IntegrityError",
    "MethodNotAllowedError",
    "ModelyardError",
    "MonitoringError",
    "NotFoundError",
    "PublishError",
    "QueueFullError",
    "RequestError",
    "RequestTimeoutError",
    "RowRejectedError",
    "RunCancelled",
    "RunnerClosedError",
    "ServerStartError",
    "StorageError",
    "TooManyAttemptsError",
    "TrainingError",
    "UnauthorizedError",
    "UnavailableError",
    "UnsafeArtifactError",
    "UnsupportedMediaTypeError",
    "WorkerDiedError",
    "WorkerUnavailableError",
]
