"""Test helpers for adapter authors: ``check_adapter`` is the conformance check every flavor passes.

Like scikit-learn's ``check_estimator``: call it in a test with a small trained model and its
training data; it raises :class:`AssertionError` naming the first rule the adapter breaks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import DeviceError
from modelyard.schema import Signature
from modelyard.types import Adapter, ArtifactVerifier, JointPredictor


def check_adapter(
    adapter: Any, model: Any, X: Any, y: Any = None, *, device: str = "cpu"
) -> Signature:
    """Check that ``adapter`` saves, loads and runs ``model`` (trained on ``X``) as promised.

    Checks the protocol attributes, ``handles``, the inferred signature (which must accept ``X``
    and its records/list form), a relocatable save with JSON-ready metadata that the adapter's own
    ``verify`` accepts (when it has one), identical predictions after loading (and after a second
    round trip), ``predict_with_scores`` (when it has one) equal to ``predict`` and
    ``predict_scores``, one output row per input row for batches of
    1, 3 and ``len(X)``, and that impossible devices raise :class:`DeviceError`. Returns the
    signature.
    """
    name = str(getattr(adapter, "flavor", type(adapter).__name__))
    _check_protocol(adapter, name)
    assert adapter.handles(model), f"{name}: handles() is False for its own model {model!r:.80}"
    assert not adapter.handles(object()), f"{name}: handles(object()) must be False"

    signature = adapter.infer_signature(model, X, y)
    batch = _check_signature(signature, X, name)
    expected = adapter.predict(model, batch)
    same_from_records = adapter.predict(model, signature.prepare(_records(signature, X))[0])
    assert _same(expected, same_from_records), f"{name}: records input predicts differently"
    _check_rows(adapter, model, batch, name)
    _check_joint(adapter, model, batch, name)

    with tempfile.TemporaryDirectory() as tmp:
        loaded, path, meta = _round_trip(adapter, model, batch, Path(tmp, "first"), device, name)
        _check_same(adapter, model, loaded, batch, name, "after load")
        _check_rows(adapter, loaded, batch, f"{name} (loaded)")
        _check_joint(adapter, loaded, batch, f"{name} (loaded)")
        _check_devices(adapter, path, meta, name)
        assert adapter.handles(loaded), f"{name}: handles() is False for a loaded model"
        again, _, _ = _round_trip(adapter, loaded, batch, Path(tmp, "second"), device, name)
        _check_same(adapter, model, again, batch, name, "after a second round trip")
    return signature


def _check_protocol(adapter: Any, name: str) -> None:
    assert isinstance(adapter, Adapter), f"{name}: does not implement the Adapter protocol"
    assert isinstance(adapter.flavor, str) and adapter.flavor, f"{name}: flavor must be a name"
    assert isinstance(adapter.extra, str), f"{name}: extra must be a str (the pip extra)"
    assert isinstance(adapter.accelerated, bool), f"{name}: accelerated must be a bool"


def _check_signature(signature: Any, X: Any, name: str) -> Any:
    assert isinstance(signature, Signature), f"{name}: infer_signature must return a Signature"
    stored = json.loads(json.dumps(signature.to_dict()))
    assert Signature.from_dict(stored) == signature, f"{name}: signature does not survive JSON"
    batch, n = signature.prepare(X)
    assert n == len(X), f"{name}: prepare(X) counted {n} rows, X has {len(X)}"
    _, n_records = signature.prepare(_records(signature, X))
    assert n_records == n, f"{name}: prepare(records) counted {n_records} rows, not {n}"
    return batch


def _round_trip(
    adapter: Any, model: Any, batch: Any, where: Path, device: str, name: str
) -> tuple[Any, Path, dict[str, Any]]:
    """Save into an empty folder, move it elsewhere (artifacts are relocatable), load it."""
    saved = where / "saved"
    saved.mkdir(parents=True)
    meta = adapter.save(model, saved, sample=_take(batch, min(8, len(batch))))
    assert isinstance(meta, dict), f"{name}: save must return a dict of metadata"
    assert any(saved.iterdir()), f"{name}: save wrote no files"
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}: save returned metadata that is not JSON: {exc}") from None
    assert str(saved) not in text, f"{name}: metadata holds the save path; artifacts must move"
    moved = where / "moved"
    shutil.copytree(saved, moved)
    shutil.rmtree(saved)
    if isinstance(adapter, ArtifactVerifier):  # what it saved, it must accept at registration
        adapter.verify(moved, json.loads(text))
    return adapter.load(moved, json.loads(text), device), moved, meta


def _check_rows(adapter: Any, model: Any, batch: Any, name: str) -> None:
    for n in sorted({1, min(3, len(batch)), len(batch)}):
        rows = _n_rows(adapter.predict(model, _take(batch, n)))
        assert rows == n, f"{name}: predict on {n} row(s) returned {rows} row(s)"


def _check_same(adapter: Any, model: Any, loaded: Any, batch: Any, name: str, when: str) -> None:
    assert _same(adapter.predict(model, batch), adapter.predict(loaded, batch)), (
        f"{name}: predictions differ {when}"
    )
    scores = getattr(adapter, "predict_scores", None)
    if scores is not None:
        before, after = scores(model, batch), scores(loaded, batch)
        assert (before is None) == (after is None), f"{name}: predict_scores changed {when}"
        if before is not None:
            assert _n_rows(before) == len(batch), f"{name}: predict_scores rows != input rows"
            assert _same(before, after), f"{name}: predict_scores differ {when}"


def _check_joint(adapter: Any, model: Any, batch: Any, name: str) -> None:
    """An adapter's ``predict_with_scores`` gives exactly ``predict`` and ``predict_scores``."""
    plain: Any = adapter
    if not isinstance(adapter, JointPredictor):
        return
    labels, scores = adapter.predict_with_scores(model, batch)
    adapter = plain
    expected = adapter.predict(model, batch)
    assert _same(labels, expected), f"{name}: predict_with_scores differs from predict"
    assert np.asarray(labels).dtype == np.asarray(expected).dtype, (
        f"{name}: predict_with_scores gives {np.asarray(labels).dtype} labels, predict "
        f"{np.asarray(expected).dtype}")
    want = adapter.predict_scores(model, batch)
    assert (scores is None) == (want is None), f"{name}: predict_with_scores scores differ"
    if want is not None:
        assert _same(scores, want), f"{name}: predict_with_scores scores differ"


def _check_devices(adapter: Any, path: Path, meta: dict[str, Any], name: str) -> None:
    bad = ["tpu", "cuda:x"]
    if not adapter.accelerated:
        bad.append("cuda:0")
    elif hasattr(adapter, "gpu_count"):
        bad.append(f"cuda:{adapter.gpu_count()}")  # one past the last GPU
    for device in bad:
        _assert_raises(DeviceError, partial(adapter.load, path, meta, device),
                       f"{name}: load on device {device!r} must raise DeviceError")


def _assert_raises(error: type[Exception], call: Callable[[], Any], message: str) -> None:
    try:
        call()
    except error:
        return
    except Exception as exc:
        raise AssertionError(f"{message}, raised {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{message}, but it loaded")


# -- batches ------------------------------------------------------------------------------------
def _records(signature: Signature, X: Any) -> list[Any]:
    """``X`` the way a JSON client sends it: records for a table, nested lists for a tensor."""
    if hasattr(X, "to_dict") and hasattr(X, "columns"):
        return list(X.to_dict("records"))
    rows = np.asarray(X).tolist()
    if signature.layout == "table":
        return [dict(zip(signature.names, row, strict=True)) for row in rows]
    return list(rows)


def _take(batch: Any, n: int) -> Any:
    return batch.iloc[:n] if hasattr(batch, "iloc") else batch[:n]


def _n_rows(out: Any) -> int:
    if isinstance(out, Mapping):
        counts = {_n_rows(v) for v in out.values()}
        assert len(counts) == 1, f"outputs have different row counts: {sorted(counts)}"
        return counts.pop()
    return len(out)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
            and all(_same(a[k], b[k]) for k in a)
        )
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(a, b))


__all__ = ["check_adapter"]
