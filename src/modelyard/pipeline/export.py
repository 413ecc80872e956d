"""Export a version to ONNX with proof: convert, check parity, register the derived version.

``export_onnx(registry, "fraud:3")`` loads the version, converts it
(:func:`modelyard.adapters.onnx_export.to_onnx`), optionally quantizes the result's weights to
int8 (``onnxruntime.quantization.quantize_dynamic``), and runs both models on a held-out sample:
the one given (``sample``), else rows rebuilt from the version's reference statistics (the
per-feature samples stored at training), else, for a tensor model without them, seeded normal
rows of its input shape. :func:`modelyard.pipeline.parity.judge` compares the answers; a
conversion outside the tolerance is refused (:class:`ExportError`, with the figures) and nothing
is registered. Otherwise the ONNX model becomes a new version of the same model, flavor
``onnx``, with ``meta["derived_from"]`` naming its source, the parity figures as its metrics,
and its source's signature, lineage, reference statistics and serving sections. No alias moves.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.adapters import get_adapter, require
from modelyard.adapters.onnx_export import EXTRA, to_onnx
from modelyard.errors import ConfigError, ExportError, ModelyardError
from modelyard.pipeline.lineage import environment
from modelyard.pipeline.parity import Answers, Limits, Parity, judge
from modelyard.pipeline.profile import decode_sample
from modelyard.predictor import Predictor, open_version

if TYPE_CHECKING:
    from modelyard.pipeline.run_registry import RunRegistry
    from modelyard.registry import ModelVersion

#: rows of synthetic input for a tensor model with neither a sample nor reference statistics.
SYNTHETIC_ROWS = 256
#: the quantizations ``export --quantize`` offers.
QUANTIZATIONS = ("int8",)
#: meta keys a derived version keeps from its source (how it is served, watched, rolled out).
_KEPT = ("task", "serving", "monitoring", "rollout", "metrics")


@dataclass(frozen=True)
class ExportResult:
    """The registered ONNX version, its source, and the parity measured between them."""

    version: ModelVersion
    source: ModelVersion
    parity: Parity
    sample: str


def export_onnx(
    registry: RunRegistry, ref: str, *, sample: Any = None, quantize: str | None = None,
    limits: Limits | None = None, actor: str | None = None,
) -> ExportResult:
    """Convert version ``ref`` to ONNX, prove parity on a sample, register it as derived.

    Raises :class:`ExportError` for an unsupported model (the part named) or parity outside
    ``limits``; :class:`ConfigError` for a version that already is ONNX, an unknown
    ``quantize`` or no usable sample.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    source = registry.resolve(ref)
    if source.flavor == "onnx":
        raise ConfigError(f"{source.ref} already is an ONNX model; export its source instead")
    predictor = open_version(source, registry, device="cpu")
    batch, origin = _parity_batch(source, predictor, sample)
    rows = _float_rows(batch)
    data = to_onnx(source.flavor, predictor.model, rows)
    if predictor.task == "regression":
        data = _one_value_per_row(data)
    if quantize == "int8":
        data = _quantize_int8(data)
    onnx = get_adapter("onnx")
    with tempfile.TemporaryDirectory(prefix="modelyard-export-") as tmp:
        folder = Path(tmp)
        meta = onnx.save(data, folder)
        converted = onnx.load(folder, dict(meta), "cpu")
        parity = judge(_native_answers(predictor, batch),
                       _onnx_answers(onnx.predict(converted, rows), predictor.task),
                       limits or Limits())
        if not parity.passed:
            raise ExportError(f"{source.ref}: the ONNX conversion is refused, it does not answer "
                              f"like the original on {parity.summary()}: "
                              f"{'; '.join(parity.reasons)}; nothing was registered")
        version = registry.register(
            source.model, folder, flavor="onnx",
            meta={**meta, **{k: source.meta[k] for k in _KEPT if k in source.meta},
                  "derived_from": source.ref, "source_digest": source.artifact_digest,
                  "conversion": {"from": source.flavor, "quantize": quantize,
                                 "parity_sample": origin, "parity": parity.metrics()}},
            signature=dict(source.signature), metrics=parity.metrics(),
            params=dict(source.params), data_fingerprint=source.data_fingerprint,
            code_ref=dict(source.code_ref), environment=environment(),
            reference_stats=source.reference_stats,
            description=f"ONNX{' int8' if quantize else ''} export of {source.ref}",
            actor=actor,
        )
    return ExportResult(version, source, parity, origin)


# -- the parity sample ---------------------------------------------------------------------------
def _parity_batch(source: ModelVersion, predictor: Predictor, sample: Any) -> tuple[Any, str]:
    """The prepared batch both models answer, and where its rows came from."""
    if sample is not None:
        origin = "given"
    else:
        sample, origin = _from_reference(source)
    if not source.signature:
        if sample is None:
            raise ConfigError(f"{source.ref} has no signature and no reference statistics: give "
                              "a sample of input rows (--data)")
        return sample, origin
    if sample is None:
        sample, origin = _synthetic(source), "synthetic"
    try:
        batch, _ = predictor.signature.prepare(sample)
    except ModelyardError as exc:
        raise ConfigError(f"the parity sample does not fit {source.ref}'s signature: "
                          f"{exc}") from exc
    return batch, origin


def _from_reference(source: ModelVersion) -> tuple[Any, str]:
    """Rows rebuilt from the per-feature samples of a table profile, or ``(None, "")``."""
    stats = source.reference_stats or {}
    features = stats.get("features") or {}
    if stats.get("kind") != "table" or not features:
        return None, ""
    if any(f.get("type") != "numeric" or "sample" not in f for f in features.values()):
        raise ConfigError(f"{source.ref}'s reference statistics hold non-numeric features, "
                          "which cannot be rebuilt into rows: give a sample (--data)")
    columns = [decode_sample(f["sample"]) for f in features.values()]
    n = min(len(c) for c in columns)
    matrix = np.column_stack([c[:n] for c in columns])
    inputs = source.signature.get("inputs", [])
    if source.signature.get("frame") and len(inputs) == len(columns):
        import pandas as pd

        return pd.DataFrame(matrix, columns=[str(f["name"]) for f in inputs]), "reference"
    if source.signature.get("layout") == "tensor" and inputs:
        shape = tuple(inputs[0].get("shape", ()))
        if int(np.prod(shape)) == matrix.shape[1]:
            return matrix.reshape((n, *shape)).astype(np.float32), "reference"
        return None, ""
    return matrix, "reference"


def _synthetic(source: ModelVersion) -> np.ndarray:
    inputs = source.signature.get("inputs", [])
    if source.signature.get("layout") != "tensor" or len(inputs) != 1:
        raise ConfigError(f"{source.ref} has no reference statistics: give a sample (--data)")
    shape = tuple(int(d) for d in inputs[0].get("shape", ()))
    rng = np.random.default_rng(0)
    return rng.normal(size=(SYNTHETIC_ROWS, *shape)).astype(np.float32)


def _float_rows(batch: Any) -> np.ndarray:
    """The batch as float32 rows, the one input every converted model takes."""
    values = batch.to_numpy() if hasattr(batch, "to_numpy") else np.asarray(batch)
    try:
        return np.ascontiguousarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise ExportError("ONNX export takes numeric inputs only; this model's inputs hold "
                          "text or categories") from None


# -- the two sets of answers ---------------------------------------------------------------------
def _native_answers(predictor: Predictor, batch: Any) -> Answers:
    if predictor.task == "classification":
        scores = predictor.adapter.predict_scores(predictor.model, batch)
        labels = predictor.adapter.predict(predictor.model, batch)
        if scores is None:
            raise ExportError(f"{predictor.ref} gives no class probabilities to compare")
        return Answers(np.asarray(scores), np.asarray(labels))
    raw = predictor.adapter.predict(predictor.model, batch)
    if isinstance(raw, dict):
        raw = next(iter(raw.values()))
    return Answers(np.asarray(raw), _argmax(raw) if predictor.task != "regression" else None)


def _onnx_answers(out: Any, task: str | None) -> Answers:
    if isinstance(out, dict):
        labels = out.get("label")
        scores = next((v for k, v in out.items() if k != "label"), labels)
        if task == "classification":
            return Answers(np.asarray(scores), labels)
        out = scores
    return Answers(np.asarray(out), _argmax(out) if task != "regression" else None)


def _argmax(raw: Any) -> Any:
    arr = np.asarray(raw)
    return arr.argmax(axis=1) if arr.ndim == 2 and arr.shape[1] > 1 else None


def _one_value_per_row(data: bytes) -> bytes:
    """A regressor's single ``(n, 1)`` output reshaped to ``(n,)``, as its source answers."""
    onnx = require("onnx", EXTRA)
    proto = onnx.load_model_from_string(data)
    graph = proto.graph
    if len(graph.output) != 1:
        return data
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or dims[1].dim_value != 1:
        return data
    old = graph.output[0]
    flat = onnx.helper.make_tensor_value_info(
        f"{old.name}_flat", old.type.tensor_type.elem_type, [dims[0].dim_param or None])
    shape = onnx.helper.make_tensor("one_value_per_row_shape", onnx.TensorProto.INT64, [1], [-1])
    graph.initializer.append(shape)
    graph.node.append(onnx.helper.make_node(
        "Reshape", [old.name, shape.name], [flat.name], name="one_value_per_row"))
    graph.output.remove(old)
    graph.output.append(flat)
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):  # trees: ai.onnx.ml only
        proto.opset_import.append(onnx.helper.make_opsetid("", 13))
    return bytes(proto.SerializeToString())


#: operators whose weights dynamic int8 quantization rewrites.
_QUANTIZABLE = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LSTM", "GRU",
                          "EmbedLayerNormalization", "Gather"})


def _quantize_int8(data: bytes) -> bytes:
    """The model with its weights quantized to int8 (dynamic quantization, 7-bit range)."""
    require("onnxruntime.quantization", EXTRA)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kinds = {node.op_type for node in onnx.load_from_string(data).graph.node}
    if not kinds & _QUANTIZABLE:  # a tree ensemble: one ai.onnx.ml operator, no weight matrix
        raise ExportError(f"int8 quantization applies to weight matrices (neural networks, "
                          f"linear models); this model has none ({', '.join(sorted(kinds))}): "
                          "export it without --quantize")
    with tempfile.TemporaryDirectory(prefix="modelyard-quantize-") as tmp:
        source, target = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        source.write_bytes(data)
        try:
            # 7-bit weights (reduce_range): on a CPU without VNNI (AVX2 alone, AVX-512 without
            # it) ONNX Runtime's u8 x s8 products saturate with 8-bit weights -- a small MLP's
            # scores moved by 0.18 on an AVX2 host -- and the exported model may be served on
            # any CPU; the 7th bit costs little on the ones that have VNNI
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, reduce_range=True)
        except Exception as exc:
            raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
        return target.read_bytes()


__all__ = ["QUANTIZATIONS", "ExportResult", "export_onnx"]
