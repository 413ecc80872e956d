"""``serving.runtime``: declared in a spec, registered with a version, tuned at serve time, and
the pure choice of the ONNX export a version is served from."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.errors import ConfigError
from modelyard.schema import FieldSpec, Signature
from modelyard.serving import overrides
from modelyard.serving.onnx_runtime import SourceShaped, derivative
from modelyard.spec import ServingSpec, load_project
from modelyard.version_settings import VersionSettings

BASE = "models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n"


def project(tmp_path: Path, serving: str) -> Any:
    path = tmp_path / "modelyard.yaml"
    path.write_text(textwrap.dedent(BASE + f"    serving: {serving}\n"))
    return load_project(path)["m"]


def test_the_runtime_is_native_unless_the_spec_says_onnx(tmp_path: Path) -> None:
    assert ServingSpec().runtime == "native"
    assert project(tmp_path, "{device: cpu}").serving.runtime == "native"
    assert project(tmp_path, "{runtime: onnx}").serving.runtime == "onnx"


@pytest.mark.parametrize("value", ["tensorrt", "ONNX", "1", "[onnx]"])
def test_an_unknown_runtime_is_one_line_naming_the_field(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        project(tmp_path, f"{{runtime: {value}}}")
    assert "runtime" in str(info.value) and "\n" not in str(info.value)


def test_the_runtime_is_registered_with_the_version_and_read_back(tmp_path: Path) -> None:
    spec = project(tmp_path, "{runtime: onnx}")
    meta = VersionSettings.from_spec(spec).to_meta()
    assert meta["serving"] == {"runtime": "onnx"}
    assert VersionSettings.from_meta(meta, "m:1").serving.runtime == "onnx"
    assert VersionSettings.from_meta({}, "m:1").serving.runtime == "native"  # older versions
    with pytest.raises(ConfigError, match=r"serving\.runtime"):
        VersionSettings.from_meta({"serving": {"runtime": "tvm"}}, "m:1")


def test_the_serve_config_sets_the_runtime_per_model() -> None:
    checked = overrides.check({"fraud": {"runtime": "onnx"}, "*": {"runtime": "native"}})
    registered = ServingSpec.model_validate({"runtime": "native", "device": "cpu"})
    assert overrides.tuned(registered, checked, "fraud").runtime == "onnx"
    assert overrides.tuned(registered, checked, "fraud").device == "cpu"
    assert overrides.tuned(ServingSpec(runtime="onnx"), checked, "other").runtime == "native"
    with pytest.raises(ConfigError, match=r"models\.fraud\.runtime"):
        overrides.check({"fraud": {"runtime": "tensorrt"}})


@dataclass
class Version:
    """A registry version as the choice reads it."""

    model: str
    version: int
    flavor: str
    artifact_digest: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


def test_the_newest_export_of_that_very_artifact_serves() -> None:
    source = Version("m", 1, "sklearn", "a" * 64)
    linked = {"derived_from": "m:1", "source_digest": "a" * 64}
    versions = [
        Version("m", 2, "onnx", "b" * 64, linked),
        Version("m", 3, "sklearn", "c" * 64),                               # retrained
        Version("m", 4, "onnx", "d" * 64, {"derived_from": "m:3", "source_digest": "c" * 64}),
        Version("m", 5, "onnx", "e" * 64, linked),                          # exported again
        Version("m", 6, "onnx", "f" * 64, {**linked, "source_digest": "9" * 64}),  # not ours
    ]
    assert derivative(versions, source).ref == "m:5"
    assert derivative(versions[:2], source).ref == "m:2"
    assert derivative([versions[1], versions[2], versions[4]], source) is None
    assert derivative([], source) is None


class Raw:
    """The ONNX adapter's ``predict`` for a converted classifier: labels and float32 scores."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def predict(self, model: Any, batch: Any) -> Any:
        return self.out


def shaped(out: Any, *answers: FieldSpec) -> SourceShaped:
    signature = Signature((FieldSpec("x", "float64"),), outputs=answers, classes=(0, 1))
    return SourceShaped(Raw(out), signature)  # type: ignore[arg-type]


def test_a_classifier_answers_labels_and_scores_in_the_recorded_dtypes() -> None:
    out = {"label": np.array([1, 0], dtype=np.int64),
           "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)}
    adapter = shaped(out, FieldSpec("predictions", "int64"), FieldSpec("scores", "float64", (2,)))
    labels, scores = adapter.predict_with_scores(None, None)
    assert labels.tolist() == [1, 0] and labels.dtype == np.int64
    assert scores.dtype == np.float64 and scores.tolist() == [[0.25, 0.75], [0.5, 0.5]]
    assert adapter.predict(None, None).tolist() == [1, 0]
    assert adapter.predict_scores(None, None).dtype == np.float64
    # a version recorded before outputs were: the runtime's own dtypes
    assert shaped(out).predict_scores(None, None).dtype == np.float32


def test_one_output_passes_through_a_1d_one_in_the_recorded_dtype() -> None:
    logits = np.ones((2, 3), dtype=np.float32)
    assert shaped(logits).predict_with_scores(None, None)[0] is logits
    values = np.array([1.5, 2.5], dtype=np.float32)
    got = shaped(values, FieldSpec("predictions", "float64")).predict(None, None)
    assert got.dtype == np.float64 and got.tolist() == [1.5, 2.5]
    strings = shaped({"label": np.array(["a", "b"], dtype=object)},
                     FieldSpec("predictions", "string"))
    assert strings.predict(None, None).tolist() == ["a", "b"]
    assert strings.predict_scores(None, None) is None


@pytest.mark.parametrize(("threads", "want"), [("1", 1), ("3", 3), ("", 0), ("many", 0)])
def test_onnx_runtime_takes_its_threads_from_omp_num_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: str, want: int) -> None:
    """The server sets OMP_NUM_THREADS under a CPU quota; ONNX Runtime does not read it, so the
    adapter passes it on (0: ONNX Runtime's own default, a thread per core)."""
    import onnx
    from onnx import TensorProto, helper

    from modelyard.adapters import get_adapter

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "id",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    adapter = get_adapter("onnx")
    meta = adapter.save(model, tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    loaded = adapter.load(tmp_path, meta, "cpu")
    assert loaded.session.get_session_options().intra_op_num_threads == want
    assert adapter.predict(loaded, np.ones((1, 2))).tolist() == [[1.0, 1.0]]
