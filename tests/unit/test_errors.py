"""The one exception tree: every error the package raises on purpose lives in errors.py."""

import ast
import pickle
from pathlib import Path

import modelyard
from modelyard import errors
from modelyard.serving.http import error_body

#: the one exception class outside errors.py: a signal with no one left to answer.
SIGNALS = {"ClientDisconnectedError"}


def _exception_classes_outside_errors() -> list[str]:
    root = Path(modelyard.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and any(
                    (b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")).endswith(
                        ("Error", "Exception", "Failed")) for b in node.bases):
                found.append(f"{path.relative_to(root)}:{node.name}")
    return found


def test_no_module_defines_its_own_exceptions() -> None:
    outside = [c for c in _exception_classes_outside_errors() if c.split(":")[1] not in SIGNALS]
    assert outside == []


def test_every_error_is_in_the_tree_and_drawn_in_its_docstring() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ModelyardError), name
        assert name in (errors.__doc__ or ""), f"{name} is not drawn in errors.py's docstring"
        assert 400 <= cls.status_code < 600 and cls.exit_code > 0, name


def test_refused_requests_are_usage_errors_and_unavailable_ones_retry() -> None:
    for cls in (errors.BodyTooLargeError, errors.UnauthorizedError, errors.ForbiddenError,
                errors.CrossSiteError, errors.UnsupportedMediaTypeError, errors.BadJSONError):
        assert cls.exit_code == 2 and 400 <= cls.status_code < 500, cls
    for cls in (errors.QueueFullError, errors.RunnerClosedError, errors.WorkerDiedError):
        assert issubclass(cls, errors.UnavailableError)
        assert (cls.status_code, cls.exit_code) == (503, 15)
        _, _, headers = error_body(cls("busy"))
        assert (b"retry-after", b"1") in headers


def test_a_timeout_is_504_without_retry_after() -> None:
    status, _, headers = error_body(errors.RequestTimeoutError("no result within 1 s"))
    assert status == 504 and not any(name == b"retry-after" for name, _ in headers)


def test_unavailable_errors_cross_processes_with_their_retry_after() -> None:
    for error in (errors.QueueFullError("full", retry_after=4), errors.WorkerDiedError("gone", 3),
                  errors.RequestTimeoutError("slow")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert again.retry_after == error.retry_after
