"""The exception tree. Every error modelyard raises on purpose is a ``ModelyardError``.

::

    ModelyardError                  root: catch this to catch everything we raise
    ├── ConfigError                 a spec, modelyard.yaml or setting is malformed
    ├── NotFoundError               an unknown model, version, alias or run
    ├── ConflictError               the request clashes with the registry's state
    ├── InputError                  prediction input does not match the signature
    ├── DataValidationError         training data failed its checks (carries a report)
    ├── FrameworkMissingError       an optional framework is not installed
    ├── UnsafeArtifactError         a load would have to run untrusted code
    ├── DeviceError                 a requested device is not available
    ├── IntegrityError              an artifact's digest does not match the registry
    ├── StorageError                the registry database or artifact store is unreachable
    ├── TrainingError               the user's train function (or its process) failed
    ├── GateFailed                  a candidate did not pass its promotion gate
    ├── MonitoringError             monitoring has too little data to answer (yet)
    ├── AdapterError                a framework raised while saving, loading or predicting
    └── ServerStartError            a server child process exited or was not ready in time

Each message says what happened and what to do about it. Framework exceptions are translated into
this tree once, at the adapter boundary.
"""

from __future__ import annotations

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


class StorageError(ModelyardError):
    """The registry database or the artifact store cannot be reached or written."""

    status_code = 503
    exit_code = 10


class TrainingError(ModelyardError):
    """The user's train function raised, or its process died."""

    exit_code = 11


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


class ServerStartError(ModelyardError):
    """A server started as a child process exited or was not ready in time; the message quotes
    its output, which says why (a port in use, a registry it cannot open)."""

    exit_code = 1


__all__ = [
    "AdapterError",
    "ConfigError",
    "ConflictError",
    "DataValidationError",
    "DeviceError",
    "FrameworkMissingError",
    "GateFailed",
    "InputError",
    "IntegrityError",
    "ModelyardError",
    "MonitoringError",
    "NotFoundError",
    "ServerStartError",
    "StorageError",
    "TrainingError",
    "UnsafeArtifactError",
]
