"""Helpers for testing adapters, the server and code built on modelyard.

- :func:`check_adapter`: the conformance check every adapter passes, like scikit-learn's
  ``check_estimator`` (:mod:`~modelyard.testing.conformance`);
- :func:`tabular_data` and :func:`labeled_frame`: training data to fit them on;
- small real models registered in a registry in seconds: :func:`register_hgb`,
  :func:`register_constant`, :func:`register_text`, :func:`register_mlp`,
  :func:`register_probe` (a :class:`ProbeModel` that fails, hangs or crashes on request) and
  :func:`register_model` under them (:mod:`~modelyard.testing.models`);
- :class:`ServerProcess`: a real server in a child process on a free port
  (:mod:`~modelyard.testing.server`).

The server and the CLI never import this package (a test walks their imports to keep it so).
"""

from modelyard.testing.conformance import check_adapter
from modelyard.testing.models import (
    ProbeModel,
    labeled_frame,
    mlp,
    register_constant,
    register_hgb,
    register_mlp,
    register_model,
    register_probe,
    register_text,
    tabular_data,
)
from modelyard.testing.server import ServerProcess

__all__ = [
    "ProbeModel",
    "ServerProcess",
    "check_adapter",
    "labeled_frame",
    "mlp",
    "register_constant",
    "register_hgb",
    "register_mlp",
    "register_model",
    "register_probe",
    "register_text",
    "tabular_data",
]
