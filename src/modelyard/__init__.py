"""modelyard: one yard for every model.

Declare a model once (``modelyard.yaml`` or ``@modelyard.model``), and train, version, promote,
roll back and load it whatever its framework::

    import modelyard

    fraud = modelyard.load("fraud@production")
    fraud.predict([{"amount": 120.0, "hour": 3, ...}])
"""

import importlib
from typing import TYPE_CHECKING, Any

from modelyard.errors import (
    ConfigError,
    ConflictError,
    DataValidationError,
    GateFailed,
    InputError,
    IntegrityError,
    ModelyardError,
    MonitoringError,
    NotFoundError,
    StorageError,
    TrainingError,
)

if TYPE_CHECKING:
    from modelyard.monitoring.monitor import Monitor
    from modelyard.predictor import Prediction, Predictor, load
    from modelyard.registry import Registry
    from modelyard.schema import Signature
    from modelyard.spec import Spec, compose, load_project, model

__version__ = "0.1.0"

# The rest is imported on first use (PEP 562), so the CLI and ``import modelyard`` start fast:
# the registry pulls in SQLAlchemy, the spec pydantic, the predictor numpy.
_LAZY = {
    "Monitor": "modelyard.monitoring.monitor",
    "Prediction": "modelyard.predictor",
    "Predictor": "modelyard.predictor",
    "load": "modelyard.predictor",
    "Registry": "modelyard.registry",
    "Signature": "modelyard.schema",
    "Spec": "modelyard.spec",
    "compose": "modelyard.spec",
    "load_project": "modelyard.spec",
    "model": "modelyard.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataValidationError",
    "GateFailed",
    "InputError",
    "IntegrityError",
    "ModelyardError",
    "Monitor",
    "MonitoringError",
    "NotFoundError",
    "Prediction",
    "Predictor",
    "Registry",
    "Signature",
    "Spec",
    "StorageError",
    "TrainingError",
    "__version__",
    "compose",
    "load",
    "load_project",
    "model",
]
