"""Numbers from clients, strictly: only numbers, and only those the target dtype can hold.

numpy would take ``True``, ``None`` and ``"NaN"`` as numbers, turn ``1e300`` into ``inf`` in
float32 and wrap ``1e30`` around in int64, so a client's mistake would reach the model as a
silently wrong value (or crash it). :func:`to_numeric` refuses each of them with an
:class:`InputError` whose ``loc`` names the field and the position of the first bad value. The
signature's input path and the OIP codecs call it; the native fast path checks the same rules
without it (``plain_numbers``).

Arrays that are already numeric (binary tensors, in-process numpy and pandas) are only range
checked: a NaN or an infinity that is already a float is the caller's own value, not an overflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from modelyard.errors import InputError

#: the element types a JSON decoder gives for numbers.
PLAIN_NUMBERS = frozenset((int, float))
_FLOAT = {float}


def plain_numbers(values: Iterable[Any]) -> bool:
    """Whether every value is a plain ``int`` or ``float`` (``bool`` is not): cheap, C-level."""
    return set(map(type, values)) <= PLAIN_NUMBERS


def to_numeric(values: Any, dtype: Any, field: str, loc: Sequence[Any]) -> np.ndarray:
    """``values`` (nested lists or an array) as an array of numeric ``dtype``.

    Raises :class:`InputError` (422) for a value that is not a number (strings, ``null``,
    booleans), a fraction for an integer dtype, or a number the dtype cannot hold. ``field``
    names the input in the message (``"input 'image'"``), ``loc`` starts each detail's location.
    """
    target = np.dtype(dtype)
    if target.kind == "f" and type(values) is list:
        floats = _plain_floats(values, target)
        if floats is not None:
            return floats
    if not isinstance(values, list | tuple | np.ndarray) and not _is_number(values):
        values = np.asarray(values)  # a DataFrame, a framework tensor, a string, None, ...
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        source = values
        if source.dtype.kind not in "fiu":
            raise _error(field, loc, None, f"expected numbers, got {_kind(source.dtype)} values")
    else:
        bad = first_non_number(values)
        if bad is not None:
            index, value = bad
            raise _error(field, loc, index, f"expected {target.name}, got {_show(value)}")
        source = _infer(values, target, field, loc)
    return _cast(source, target, field, loc)


def _plain_floats(values: list[Any], target: np.dtype[Any]) -> np.ndarray | None:
    """A JSON tensor's common case at a third of the cost: a list (or a list of equal rows) of
    Python floats only, converted straight to ``target`` -- the same rounding as the long way
    (float64, then ``target``). ``None`` for anything else (ints, whose conversion to float32
    the long way rounds once, other types, ragged or deeper lists) and for a value ``target``
    cannot hold: the long way then converts it or names what is wrong."""
    if not values:
        return None
    try:
        leaves = itertools.chain.from_iterable(values) if type(values[0]) is list else values
        if set(map(type, leaves)) != _FLOAT:
            return None
        if target.itemsize >= 8:  # a Python float always fits
            return np.array(values, dtype=target)
        with np.errstate(over="ignore"):
            out = np.array(values, dtype=target)
    except (TypeError, ValueError):  # a row that is a number, rows of different lengths
        return None
    return out if np.isfinite(out).all() else None


def first_non_number(values: Any) -> tuple[int, Any] | None:
    """``(flat index, value)`` of the first element of nested lists that is not a number."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "fiu":
            return None
        if values.dtype.kind != "O":
            return (0, values.reshape(-1)[0] if values.size else values)
        values = values.tolist()
    if not isinstance(values, list | tuple):
        return None if _is_number(values) else (0, values)
    index = 0
    stack: list[Any] = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple) and item and isinstance(item[0], list | tuple):
            stack.extend(reversed(item))  # rows: walk them in order
            continue
        if isinstance(item, np.ndarray):
            found = first_non_number(item)
            if found is not None:
                return (index + found[0], found[1])
            index += item.size
            continue
        leaf = item if isinstance(item, list | tuple) else (item,)
        if not plain_numbers(leaf):
            for offset, value in enumerate(leaf):
                if not _is_number(value):
                    return (index + offset, value)
        index += len(leaf)
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, list | tuple | np.ndarray):
        return True  # a nested row, walked by the caller
    return isinstance(value, int | float | np.integer | np.floating)


def _infer(values: Any, target: np.dtype[Any], field: str, loc: Sequence[Any]) -> np.ndarray:
    """An array of the numbers (already known to be numbers) at full precision."""
    try:
        try:
            source = np.asarray(values)
        except OverflowError:  # an int beyond 64 bits among others
            source = np.asarray(values, dtype=object)
    except ValueError:
        source = None
    if source is not None and source.dtype.kind == "O" and all(
            isinstance(v, int | float) for v in source.reshape(-1)):
        return _big(source, target, field, loc)  # Python ints beyond 64 bits
    if source is None or source.dtype.kind == "O":
        raise _error(field, loc, None, "the values are not a regular array (rows of different "
                                       "lengths, or nested too deep)")
    return source


def _big(source: np.ndarray, target: np.dtype[Any], field: str,
         loc: Sequence[Any]) -> np.ndarray:
    flat = source.reshape(-1)
    if target.kind == "f":
        try:
            return np.asarray([float(v) for v in flat], dtype=np.float64).reshape(source.shape)
        except OverflowError:
            index = next(i for i, v in enumerate(flat) if abs(v) > 2**1023)
            raise _error(field, loc, index,
                         f"{_show(flat[index])} is out of range for {target.name}") from None
    info = np.iinfo(target)
    for index, value in enumerate(flat):
        if isinstance(value, float) and not value.is_integer():
            raise _error(field, loc, index, f"{_show(value)} is not a whole number "
                                            f"({target.name})")
        if not info.min <= value <= info.max:
            raise _error(field, loc, index, f"{_show(value)} is out of range for {target.name}")
    return np.asarray([int(v) for v in flat], dtype=target).reshape(source.shape)


def _cast(source: np.ndarray, target: np.dtype[Any], field: str,
          loc: Sequence[Any]) -> np.ndarray:
    if target.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = source.astype(target, copy=False)
        if source.dtype.itemsize > target.itemsize or source.dtype.kind in "iu":
            overflowed = np.isinf(out) & np.isfinite(source)
            if overflowed.any():
                index = int(np.flatnonzero(overflowed.reshape(-1))[0])
                raise _error(field, loc, index, f"{_show(source.reshape(-1)[index])} is out of "
                                                f"range for {target.name}")
        return out
    if source.dtype.kind == "f":
        flat = source.reshape(-1)
        whole = np.isfinite(flat) & (flat == np.trunc(flat))
        if not whole.all():
            index = int(np.flatnonzero(~whole)[0])
            raise _error(field, loc, index, f"{_show(flat[index])} is not a whole number "
                                            f"({target.name})")
    _check_int_range(source, target, field, loc)
    return source.astype(target, copy=False)


def _check_int_range(source: np.ndarray, target: np.dtype[Any], field: str,
                     loc: Sequence[Any]) -> None:
    if source.size == 0 or np.can_cast(source.dtype, target, casting="safe"):
        return
    info = np.iinfo(target)
    flat = source.reshape(-1)
    if source.dtype.kind == "f":  # the bounds as floats: powers of two, exact
        low, high = float(info.min), float(info.max) + 1.0
        inside = (flat >= low) & (flat < high)
    else:
        inside = (flat >= info.min) & (flat <= info.max)
    if not inside.all():
        index = int(np.flatnonzero(~inside)[0])
        raise _error(field, loc, index, f"{_show(flat[index])} is out of range for "
                                        f"{target.name}")


def _error(field: str, loc: Sequence[Any], index: int | None, problem: str) -> InputError:
    where = [*loc] if index is None else [*loc, index]
    at = "" if index is None else f" (item {index})"
    return InputError(f"{field}{at}: {problem}", [{"loc": where, "msg": problem}])


def _show(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "null (not a number)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (not a number)"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "an object (not a number)"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e16:
        return f"{value:.6g}"
    return repr(value)[:40]


def _kind(dtype: np.dtype[Any]) -> str:
    return {"b": "boolean", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta",
            "c": "complex"}.get(dtype.kind, dtype.name)


__all__ = ["PLAIN_NUMBERS", "first_non_number", "plain_numbers", "to_numeric"]
