"""The public surface is explicit and importing it pulls in no framework."""

import subprocess
import sys

import modelyard

EXPECTED = {
    "ConfigError", "ConflictError", "DataValidationError", "GateFailed", "InputError",
    "IntegrityError", "ModelyardError", "Monitor", "MonitoringError", "NotFoundError",
    "Prediction", "Predictor", "Registry",
    "Signature", "Spec", "StorageError", "TrainingError", "__version__", "load", "load_project",
    "model",
}


def test_all_is_pinned():
    assert set(modelyard.__all__) == EXPECTED
    for name in modelyard.__all__:
        assert hasattr(modelyard, name), name


def test_import_needs_no_framework():
    code = (
        "import sys, modelyard, modelyard.adapters, modelyard.spec, modelyard.predictor;"
        "heavy = [m for m in ('torch', 'tensorflow', 'sklearn', 'xgboost', 'lightgbm',"
        " 'onnxruntime', 'keras') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_errors_share_one_root():
    for name in EXPECTED:
        obj = getattr(modelyard, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, modelyard.ModelyardError)
