"""The server's input path: validate a request against a signature, fast for the common cases.

:meth:`Signature.prepare` is the one definition of what input a model accepts, but it is written
for generality (about 150 µs for one 20-feature record). :class:`InputPath` adds fast paths for
the shapes a live server sees most -- numeric records, rows and columns for a table of one float
dtype, and the OIP tensors of such a table (one ``[n, features]`` tensor, or one ``[n]`` tensor
per column) -- that build exactly the array ``prepare`` would build. Anything else, and any input
the fast path cannot take as-is, goes through ``prepare``, so errors are always ``prepare``'s
field-level :class:`InputError`.

Queued payloads stay plain numpy arrays; a DataFrame (``frame=True`` signatures) is built once per
batch by :meth:`InputPath.finalize`, not once per request.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.numeric import plain_numbers
from modelyard.schema import Signature

_FAST_DTYPES = {"float64": np.float64, "float32": np.float32}


class InputPath:
    """Turn request payloads into concatenable batches for one signature, then into model input."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.names = signature.names
        self.width = len(self.names)
        dtypes = {f.dtype for f in signature.inputs}
        self._fast: Any = None
        if signature.layout == "table" and len(dtypes) == 1 and all(
            f.shape == () for f in signature.inputs
        ):
            self._fast = _FAST_DTYPES.get(next(iter(dtypes)))

    def prepare(self, payload: Any) -> tuple[Any, int]:
        """``(batch, rows)`` for ``payload``; raises :class:`InputError` naming each bad field."""
        if self._fast is not None:
            fast = self._try_fast(payload)
            if fast is not None:
                return fast, len(fast)
        batch, n = self.signature.prepare(payload)
        if self.signature.frame and self._fast is not None and hasattr(batch, "to_numpy"):
            batch = batch.to_numpy(dtype=self._fast)  # one DataFrame per batch, not per request
        return batch, n

    def _try_fast(self, payload: Any) -> np.ndarray | None:
        if isinstance(payload, np.ndarray):
            return self._array(payload)
        try:
            if isinstance(payload, list) and payload:
                rows = self._rows(payload)
                # strings, nulls and booleans go the slow way, which names them (numpy would
                # take them as numbers)
                if rows is None or not plain_numbers(itertools.chain.from_iterable(rows)):
                    return None
                arr = np.array(rows, dtype=self._fast)
            elif isinstance(payload, Mapping) and len(payload) == self.width:
                columns = self._columns(payload)
                if columns is None:
                    return None
                arr = columns
            else:
                return None
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if arr.ndim != 2 or arr.shape[1] != self.width or arr.shape[0] == 0:
            return None
        if self._fast is np.float32 and not np.isfinite(arr).all():
            return None  # a float32 overflow: the slow path says which value
        return arr

    def _rows(self, payload: list[Any]) -> list[Any] | None:
        """Records or row lists as a list of rows in signature order (``None``: not fast)."""
        first, names, width = payload[0], self.names, self.width
        if isinstance(first, dict):
            if any(len(r) != width for r in payload):
                return None
            return [[r[k] for k in names] for r in payload]
        if isinstance(first, list):
            return payload
        if len(payload) == width and isinstance(first, int | float):
            return [payload]  # one flat row
        return None

    def _array(self, payload: np.ndarray) -> np.ndarray | None:
        """A numeric ``[n, features]`` tensor (OIP) in the table's dtype (``None``: not fast)."""
        if (payload.ndim != 2 or payload.shape[1] != self.width or not len(payload)
                or payload.dtype.kind not in "fiu"):
            return None
        arr = self._cast(payload)
        return None if arr is None else np.ascontiguousarray(arr)

    def _cast(self, values: np.ndarray) -> np.ndarray | None:
        """``values`` in the table's dtype; ``None`` for a value it cannot hold (an overflow to
        infinity, which ``prepare`` names), as :func:`~modelyard.numeric.to_numeric` judges."""
        if values.dtype == self._fast:
            return values
        with np.errstate(over="ignore"):
            out = values.astype(self._fast)
        narrowed = values.dtype.itemsize > out.dtype.itemsize or values.dtype.kind in "iu"
        if narrowed and (np.isinf(out) & np.isfinite(values)).any():
            return None
        return out

    def _columns(self, payload: Mapping[str, Any]) -> np.ndarray | None:
        """Columns (or one record) as a 2-D array (``None``: not fast)."""
        cols = [payload[k] for k in self.names]
        if all(type(c) is np.ndarray for c in cols):
            return self._tensor_columns(cols)
        if all(isinstance(c, list) for c in cols):
            if not plain_numbers(itertools.chain.from_iterable(cols)):
                return None
            return np.array(cols, dtype=self._fast).T.copy()
        if plain_numbers(cols):
            return np.array([cols], dtype=self._fast)  # one record
        return None

    def _tensor_columns(self, cols: list[np.ndarray]) -> np.ndarray | None:
        """One numeric ``[n]`` tensor per column (OIP) as a 2-D array (``None``: not fast)."""
        n = len(cols[0])
        if n == 0 or any(c.ndim != 1 or len(c) != n or c.dtype.kind not in "fiu" for c in cols):
            return None
        out = np.empty((n, self.width), dtype=self._fast)
        for i, col in enumerate(cols):
            cast = self._cast(col)
            if cast is None:
                return None
            out[:, i] = cast
        return out

    def concat(self, batches: Sequence[Any]) -> Any:
        """One batch from several prepared ones, rows in order."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        if hasattr(first, "iloc"):  # mixed-dtype frames stay DataFrames
            import pandas as pd

            return pd.concat(list(batches), ignore_index=True)
        return np.concatenate(batches)

    def finalize(self, batch: Any) -> Any:
        """The model's input for a concatenated batch (a DataFrame for ``frame`` signatures)."""
        if self.signature.frame and isinstance(batch, np.ndarray):
            import pandas as pd

            return pd.DataFrame(batch, columns=self.names, copy=False)
        return batch

    def warmup_payload(self) -> Any:
        """A one-row input that passes validation, used to warm a freshly loaded version."""
        sig = self.signature
        if sig.layout == "tensor":
            spec = sig.inputs[0]
            if spec.dtype == "string":
                return ["warm up"]
            shape = tuple(1 if d is None else d for d in spec.shape)
            return np.zeros((1, *shape)).tolist()
        return [{f.name: _zero(f.dtype) for f in sig.inputs}]


def _zero(dtype: str) -> Any:
    if dtype == "string":
        return ""
    if dtype == "bool":
        return False
    return 0 if dtype.startswith(("int", "uint")) else 0.0


__all__ = ["InputPath"]
