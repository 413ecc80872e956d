"""The public surface is explicit and importing it pulls in no framework."""

import ast
import subprocess
import sys
from pathlib import Path

import modelyard

EXPECTED = {
    "ConfigError", "ConflictError", "DataValidationError", "GateFailed", "InputError",
    "IntegrityError", "ModelyardError", "Monitor", "MonitoringError", "NotFoundError",
    "Prediction", "Predictor", "Registry",
    "Signature", "Spec", "StorageError", "TrainingError", "__version__", "compose", "load",
    "load_project",
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


TESTING = {
    "ProbeModel", "ServerProcess", "check_adapter", "labeled_frame", "mlp", "register_constant",
    "register_hgb",
    "register_mlp", "register_model", "register_probe", "register_text", "tabular_data",
}


def test_the_testing_surface_is_pinned():
    import modelyard.testing

    assert set(modelyard.testing.__all__) == TESTING
    for name in TESTING:
        assert hasattr(modelyard.testing, name), name


def _imported_modules(path: Path, package: str) -> set[str]:
    """Every module a source file imports, function-local and relative imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y, inside ``package``
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_the_server_and_the_cli_never_import_test_helpers():
    root = Path(modelyard.__file__).parent
    offenders = []
    for folder in ("cli", "serving"):
        for path in sorted((root / folder).rglob("*.py")):
            package = "modelyard." + ".".join(path.relative_to(root).parent.parts)
            modules = _imported_modules(path, package)
            bad = sorted(m for m in modules
                         if m == "modelyard.testing" or m.startswith("modelyard.testing."))
            if bad:
                offenders.append(f"{path.relative_to(root)}: {bad}")
    assert not offenders, offenders
