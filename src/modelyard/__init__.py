"""modelyard: one yard for every model.

Declare a model once (``modelyard.yaml`` or ``@modelyard.model``), and train, version, promote,
roll back and load it whatever its framework::

    import modelyard

    fraud = modelyard.load("fraud@production")
    fraud.predict([{"amount": 120.0, "hour": 3, ...}])
"""

from modelyard.errors import (
    ConfigError,
    ConflictError,
    DataValidationError,
    GateFailed,
    InputError,
    IntegrityError,
    ModelyardError,
    NotFoundError,
    StorageError,
    TrainingError,
)
from modelyard.predictor import Prediction, Predictor, load
from modelyard.registry import Registry
from modelyard.schema import Signature
from modelyard.spec import Spec, load_project, model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConflictError",
    "DataValidationError",
    "GateFailed",
    "InputError",
    "IntegrityError",
    "ModelyardError",
    "NotFoundError",
    "Prediction",
    "Predictor",
    "Registry",
    "Signature",
    "Spec",
    "StorageError",
    "TrainingError",
    "__version__",
    "load",
    "load_project",
    "model",
]
