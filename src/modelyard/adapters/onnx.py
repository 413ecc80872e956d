"""The ONNX flavor: any ``.onnx`` model, run with ONNX Runtime on cpu or CUDA."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import artifact_file, check_gpu, cuda_device_count, parse_device
from modelyard.errors import AdapterError, DeviceError
from modelyard.schema import Signature

_FILE = "model.onnx"
_CUDA = "CUDAExecutionProvider"

#: ONNX Runtime's input type names -> the numpy dtype a batch is cast to.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class OnnxModel:
    """A loaded ONNX model: the runtime session plus the model bytes (kept so it can be saved)."""

    def __init__(self, session: Any, data: bytes) -> None:
        self.session = session
        self.data = data
        self.inputs = [(i.name, _ORT_DTYPES.get(i.type, "float32")) for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]


class OnnxAdapter:
    """Save, load and run ONNX models: an ``onnx.ModelProto``, its bytes or a ``.onnx`` path.

    ``predict`` feeds the batch to the first input (a dict feeds inputs by name) and returns the
    first output, or a dict of outputs when the model has several.
    """

    flavor: ClassVar[str] = "onnx"
    extra: ClassVar[str] = "onnx"
    accelerated: ClassVar[bool] = True

    @classmethod
    def gpu_count(cls) -> int:
        """CUDA devices ONNX Runtime can use here (0 without its CUDA provider)."""
        ort = require("onnxruntime", cls.extra)
        return cuda_device_count() if _CUDA in ort.get_available_providers() else 0

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a ``ModelProto``, bytes, a ``.onnx`` path or a loaded model."""
        if isinstance(model, OnnxModel | bytes | bytearray):
            return True
        if isinstance(model, str | os.PathLike):
            return str(model).endswith(".onnx") and Path(model).is_file()
        if not is_loaded("onnx"):
            return False
        import onnx

        return isinstance(model, onnx.ModelProto)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Check the model and write it to ``model.onnx`` in ``path``."""
        onnx = require("onnx", self.extra)
        try:
            proto = _proto(onnx, model)
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise AdapterError(f"onnx: {type(model).__name__} is not a valid model: {exc}") from exc
        data = model.data if isinstance(model, OnnxModel) else proto.SerializeToString()
        (Path(path) / _FILE).write_bytes(data)
        initializers = {i.name for i in proto.graph.initializer}
        return {
            "file": _FILE,
            "opsets": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
            "inputs": [i.name for i in proto.graph.input if i.name not in initializers],
            "outputs": [o.name for o in proto.graph.output],
        }

    def load(self, path: Path, meta: dict[str, Any], device: str) -> OnnxModel:
        """An :class:`OnnxModel` whose session runs on ``device``."""
        index = parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        ort = require("onnxruntime", self.extra)
        providers: list[Any] = ["CPUExecutionProvider"]
        if index is not None:
            if _CUDA not in ort.get_available_providers():
                raise DeviceError(
                    f"onnx: device 'cuda:{index}' requested but this onnxruntime has no CUDA "
                    "provider; pip install onnxruntime-gpu, or set device: auto"
                )
            check_gpu(index, cuda_device_count(), self.flavor)
            providers.insert(0, (_CUDA, {"device_id": index}))
        target = artifact_file(path, meta, _FILE, self.flavor)
        try:
            data = target.read_bytes()
            session = ort.InferenceSession(data, _options(ort), providers=providers)
        except Exception as exc:
            raise AdapterError(f"onnx: could not load {target.name}: {exc}") from exc
        return OnnxModel(session, data)

    def predict(self, model: Any, batch: Any) -> Any:
        """The first output for the batch, or a dict of outputs when there are several.

        ``model`` is normally what :meth:`load` returned; a ``ModelProto``, bytes or path also
        works, but builds a new cpu session on every call.
        """
        if not isinstance(model, OnnxModel):
            model = self._session(model)
        if isinstance(batch, Mapping):
            types = dict(model.inputs)
            feed = {k: np.asarray(v, dtype=types.get(k)) for k, v in batch.items()}
        else:
            if hasattr(batch, "to_numpy"):  # a DataFrame
                batch = batch.to_numpy()
            name, dtype = model.inputs[0]
            feed = {name: np.asarray(batch, dtype=dtype)}
        try:
            out = model.session.run(None, feed)
        except Exception as exc:
            raise AdapterError(f"onnx: inference failed: {exc}") from exc
        if len(out) == 1:
            return out[0]
        return dict(zip(model.outputs, out, strict=True))

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """The output named like probabilities (``probabilities``, ``output_probability``), else
        ``None``."""
        out = self.predict(model, batch)
        if not isinstance(out, dict):
            return None
        for name, value in out.items():
            if "prob" in name.lower() and getattr(value, "ndim", 0) == 2:
                return value
        return None

    def _session(self, model: Any) -> OnnxModel:
        onnx, ort = require("onnx", self.extra), require("onnxruntime", self.extra)
        try:
            data = _proto(onnx, model).SerializeToString()
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise AdapterError(f"onnx: cannot run {type(model).__name__}: {exc}") from exc
        return OnnxModel(session, data)

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A table signature for 2-D input, a tensor signature otherwise."""
        return Signature.infer(X, y)


def _options(ort: Any) -> Any:
    """Session options: as many intra-op threads as ``OMP_NUM_THREADS`` gives the other
    frameworks (the server sets it under a CPU quota), else ONNX Runtime's default (one per
    core); ONNX Runtime does not read the variable itself."""
    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
    return options


def _proto(onnx: Any, model: Any) -> Any:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, OnnxModel):
        return onnx.load_model_from_string(model.data)
    if isinstance(model, bytes | bytearray):
        return onnx.load_model_from_string(bytes(model))
    return onnx.load_model(str(model))


__all__ = ["OnnxAdapter", "OnnxModel"]
