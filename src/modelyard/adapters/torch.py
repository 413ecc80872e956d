"""The PyTorch flavor: ``nn.Module`` saved with ``torch.export`` (TorchScript as fallback).

Loading never unpickles arbitrary objects, and checks first (:meth:`TorchAdapter.verify`, without
torch) that the archive holds nothing that would run code: ``torch.export.load`` itself unpickles
some payloads with plain pickle, evaluates size expressions and resolves graph targets by name, so
a ``.pt2`` may hold only PyTorch operators, sympy sizes and tensors; a TorchScript archive only
PyTorch's own operators; a state dict only tensors (and ``torch.load(..., weights_only=True)``
refuses the rest again). The bytes that were checked are the bytes that are loaded.

``predict`` returns the model's raw output. Turn class scores into labels with
:func:`modelyard.adapters.base.classify`; :meth:`TorchAdapter.predict_scores` gives probabilities.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import (
    artifact_file,
    check_gpu,
    class_ref,
    import_ref,
    listed,
    parse_device,
    probabilities,
    trusted_names,
)
from modelyard.adapters.torch_archive import check_export, check_state_dict, check_torchscript
from modelyard.errors import AdapterError, ConfigError, UnsafeArtifactError
from modelyard.schema import Signature

log = logging.getLogger(__name__)

_EXPORT = "model.pt2"
_SCRIPT = "model.ts"
_STATE = "state_dict.pt"
#: format -> the check of its archive (what loading it would run beyond PyTorch's operators).
_CHECKS = {"export": check_export, "torchscript": check_torchscript, "state_dict": check_state_dict}


class TorchAdapter:
    """Save, load and run ``torch.nn.Module`` models; ``save`` needs a ``sample`` batch.

    Formats (``meta["format"]``): ``export`` (``model.pt2``, a ``torch.export`` program with a
    dynamic batch dimension), ``torchscript`` (``model.ts``, used when export fails or for a
    ``ScriptModule``), and ``state_dict`` (see :meth:`save_state_dict`).
    """

    flavor: ClassVar[str] = "torch"
    extra: ClassVar[str] = "torch"
    accelerated: ClassVar[bool] = True

    @classmethod
    def gpu_count(cls) -> int:
        """CUDA devices PyTorch can use here."""
        return int(require("torch", cls.extra).cuda.device_count())

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a ``torch.nn.Module``."""
        if not is_loaded("torch"):
            return False
        import torch

        return isinstance(model, torch.nn.Module)

    def save(
        self, model: Any, path: Path, *, sample: Any = None, trusted_types: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Export ``model`` (in eval mode) into ``path``, falling back to TorchScript.

        ``sample`` is a small input batch (array or tensor); it fixes the per-row shape and dtype
        while the batch dimension stays dynamic. Raises :class:`ConfigError` without it.
        ``trusted_types`` names your own operators (``torch.ops.mylib.op``); a program that
        loading would refuse raises :class:`UnsafeArtifactError` now, and nothing is kept.
        """
        meta = self._save(model, Path(path), sample)
        if trusted_types:
            meta["trusted_types"] = sorted({str(t) for t in trusted_types})
        try:
            self.verify(path, meta)
        except UnsafeArtifactError:
            (Path(path) / str(meta["file"])).unlink(missing_ok=True)
            raise
        return meta

    def _save(self, model: Any, path: Path, sample: Any) -> dict[str, Any]:
        torch = require("torch", self.extra)
        path = Path(path)
        if isinstance(model, torch.jit.ScriptModule):
            return self._save_script(model, path)
        if sample is None:
            raise ConfigError(
                "torch: saving a model needs a sample input batch to export it; "
                "pass sample=X[:8] (a few training rows)"
            )
        example = _example(torch, model, sample)
        was_training = model.training
        _set_training(model, False)  # dropout and batch-norm are captured in inference mode
        try:
            return self._save_export(torch, model, example, path)
        except Exception as exc:  # export rejects some Python control flow; tracing may not
            log.warning("torch.export failed (%s); saving %s as TorchScript instead",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                        type(model).__name__)
            return self._save_trace(torch, model, example, path)
        finally:
            _set_training(model, was_training)

    def save_state_dict(
        self, model: Any, path: Path, init_kwargs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Save only the weights; loading rebuilds ``type(model)(**init_kwargs)``.

        The class must be importable (not defined in ``__main__`` or inside a function) and
        ``init_kwargs`` JSON-serialisable, since both are stored in the version's metadata. A
        state dict holding more than tensors (objects from ``get_extra_state``) raises
        :class:`UnsafeArtifactError` now: loading would refuse it.
        """
        torch = require("torch", self.extra)
        ref = class_ref(type(model), self.flavor)
        try:
            torch.save(model.state_dict(), Path(path) / _STATE)
        except Exception as exc:
            raise AdapterError(f"torch: could not save the state dict: {exc}") from exc
        meta = {
            "format": "state_dict",
            "file": _STATE,
            "class": ref,
            "init_kwargs": dict(init_kwargs or {}),
            "torch_version": torch.__version__,
        }
        try:
            self.verify(path, meta)
        except UnsafeArtifactError:
            (Path(path) / _STATE).unlink(missing_ok=True)
            raise
        return meta

    def verify(self, path: Path, meta: dict[str, Any]) -> None:
        """Refuse (:class:`UnsafeArtifactError`) an archive loading would refuse; loads nothing.

        A folder without the model file passes: there is nothing to run, and loading it fails.
        """
        if artifact_file(path, meta, _EXPORT, self.flavor).is_file():
            self._checked(path, meta)

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load the saved module onto ``device`` (``cpu`` or ``cuda:N``), in eval mode."""
        index = parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        if index is not None:
            check_gpu(index, self.gpu_count(), self.flavor)
        data, fmt, name = self._checked(path, meta)
        torch = require("torch", self.extra)
        where = "cpu" if index is None else f"cuda:{index}"
        try:
            module = _load_format(torch, fmt, io.BytesIO(data), meta, where)
            module = module.to(where)
        except (AdapterError, UnsafeArtifactError):
            raise
        except Exception as exc:
            raise AdapterError(f"torch: could not load {name} ({fmt}): {exc}") from exc
        if fmt != "export":  # an exported module has no train/eval switch; it is inference
            module.eval()
        return module

    def _checked(self, path: Path, meta: dict[str, Any]) -> tuple[bytes, str, str]:
        """The archive's bytes, its format and file name, once nothing in it would run code."""
        fmt = str(meta.get("format", "export"))
        check = _CHECKS.get(fmt)
        if check is None:
            raise AdapterError(f"torch: unknown format {fmt!r} in the version's metadata")
        target = artifact_file(path, meta, _EXPORT, self.flavor)
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise AdapterError(f"torch: cannot read {target.name}: {exc}") from exc
        refused = check(data, trusted_names(meta).__contains__)
        if refused:
            raise UnsafeArtifactError(
                f"torch: refusing to load {target.name} ({fmt}): it holds {listed(refused)}, "
                "which would run code beyond PyTorch's own operators and tensors; if this is your "
                "own code, trust it deliberately: list these names under trusted_types in the "
                "model's spec"
            )
        return data, fmt, target.name

    def predict(self, model: Any, batch: Any) -> Any:
        """The raw model output as numpy (a dict of arrays for several outputs)."""
        torch = require("torch", self.extra)
        x = _as_input(torch, model, batch).to(_device_of(torch, model))
        try:
            with torch.inference_mode():
                out = model(x)
        except Exception as exc:
            raise AdapterError(f"torch: {type(model).__name__} forward failed: {exc}") from exc
        return _to_numpy(out)

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities for an ``(n, k>1)`` output (logits are soft-maxed), else ``None``."""
        return probabilities(self.predict(model, batch))

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """The output and its class probabilities from one forward pass."""
        out = self.predict(model, batch)
        return out, probabilities(out)

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A tensor signature: one input with the per-row shape of ``X``."""
        return Signature.infer(X, y, layout="tensor")

    # -- formats --------------------------------------------------------------------------------
    def _save_export(self, torch: Any, model: Any, example: Any, path: Path) -> dict[str, Any]:
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, path / _EXPORT)
        return {"format": "export", "file": _EXPORT, **_meta(torch, example)}

    def _save_trace(self, torch: Any, model: Any, example: Any, path: Path) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                # deliberate: tracing is only the fallback for models export cannot handle
                warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
                scripted = torch.jit.trace(model, example)
        except Exception as exc:
            raise AdapterError(
                f"torch: {type(model).__name__} can be neither exported nor traced: {exc}; "
                "use TorchAdapter().save_state_dict(model, path, init_kwargs) instead"
            ) from exc
        return self._save_script(scripted, path, _meta(torch, example))

    def _save_script(
        self, module: Any, path: Path, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        torch = require("torch", self.extra)
        try:
            torch.jit.save(module, path / _SCRIPT)
        except Exception as exc:
            raise AdapterError(f"torch: could not save TorchScript: {exc}") from exc
        return {"format": "torchscript", "file": _SCRIPT, "torch_version": torch.__version__,
                **(extra or {})}


def _load_format(torch: Any, fmt: str, data: io.BytesIO, meta: dict[str, Any], where: str) -> Any:
    if fmt == "export":
        from torch.export.passes import move_to_device_pass

        # the program keeps the device it was exported on (maybe a GPU): move all of it,
        # constants included, which .to() on the module can miss
        return move_to_device_pass(torch.export.load(data), where).module()
    if fmt == "torchscript":
        return torch.jit.load(data, map_location=where)
    ref = str(meta.get("class", ""))
    cls = import_ref(ref, "torch")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        # the reference comes from the version's metadata: never call anything but a module
        raise UnsafeArtifactError(
            f"torch: refusing to load a state dict into {listed([ref])}: it is not a "
            "torch.nn.Module class"
        )
    module = cls(**meta.get("init_kwargs", {}))
    module.load_state_dict(torch.load(data, map_location=where, weights_only=True))
    return module


def _set_training(model: Any, mode: bool) -> None:
    # a module from torch.export.load refuses train()/eval(): it is inference-only already
    with contextlib.suppress(NotImplementedError):
        model.train(mode)


def _meta(torch: Any, example: Any) -> dict[str, Any]:
    return {
        "torch_version": torch.__version__,
        "input_dtype": str(example.dtype).removeprefix("torch."),
        "input_shape": list(example.shape[1:]),
    }


#: each module's first parameter and first floating weight (or None), found once: walking a
#: module's parameters and buffers cost 13 µs a call (W2's MLP). The tensors themselves are kept,
#: not their device and dtype, so a module moved or cast later (``.to()`` converts its tensors
#: in place) is read as it is now.
_REFERENCES: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _references(model: Any) -> tuple[Any, Any]:
    """``(first parameter, first floating parameter or buffer)`` of ``model``, either None."""
    try:
        return _REFERENCES[model]
    except KeyError:
        pass
    except TypeError:  # a module that cannot be weakly referenced: look every time
        return _walk(model)
    found = _walk(model)
    with contextlib.suppress(TypeError):
        _REFERENCES[model] = found
    return found


def _walk(model: Any) -> tuple[Any, Any]:
    first = next(iter(model.parameters()), None)
    weight = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                  None)
    return first, weight


def _device_of(torch: Any, model: Any) -> Any:
    param = _references(model)[0]
    return param.device if param is not None else torch.device("cpu")


def _float_dtype(torch: Any, model: Any) -> Any:
    """The dtype float input must have: that of the model's first floating weight."""
    weight = _references(model)[1]
    return weight.dtype if weight is not None else torch.float32


def _as_input(torch: Any, model: Any, batch: Any) -> Any:
    x = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(_array(batch))
    if x.is_floating_point():
        return x.to(_float_dtype(torch, model))
    return x


def _array(batch: Any) -> Any:
    if hasattr(batch, "to_numpy"):  # a DataFrame from a table signature
        batch = batch.to_numpy()
    return np.ascontiguousarray(batch)


def _example(torch: Any, model: Any, sample: Any) -> Any:
    x = _as_input(torch, model, sample)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ConfigError("torch: sample must be a non-empty batch of rows")
    if x.shape[0] < 2:  # export specialises a batch of one to a constant size
        x = torch.cat([x[:1], x[:1]])
    return x[:8].contiguous().to(_device_of(torch, model))


def _to_numpy(out: Any) -> Any:
    if isinstance(out, dict):
        return {str(k): _to_numpy(v) for k, v in out.items()}
    if isinstance(out, tuple | list):
        return out[0].detach().cpu().numpy() if len(out) == 1 else {
            f"output_{i}": _to_numpy(v) for i, v in enumerate(out)
        }
    return out.detach().cpu().numpy()


__all__ = ["TorchAdapter"]
