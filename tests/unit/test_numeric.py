"""``to_numeric``: its shortcut for lists of floats gives exactly what the long way gives, and
leaves everything else (and every error) to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelyard import numeric
from modelyard.errors import InputError

ROW = np.random.default_rng(3).normal(scale=1e3, size=64).tolist()


def long_way(values: Any, dtype: Any) -> np.ndarray:
    """What ``to_numeric`` did before its shortcut (and still does for everything else)."""
    target = np.dtype(dtype)
    assert numeric.first_non_number(values) is None
    return numeric._cast(numeric._infer(values, target, "x", ["x"]), target, "x", ["x"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("values", [ROW, [ROW, ROW[::-1]], [0.1, 1 / 3, 2.0**-149, 5e-324],
                                    [[1.0000001, 16777217.0], [3.4e38, -3.4e38]]],
                         ids=["flat", "rows", "tiny", "edges"])
def test_lists_of_floats_convert_exactly_as_the_long_way(values: Any, dtype: Any) -> None:
    target = np.dtype(dtype)
    if target == np.float16 and np.abs(np.asarray(values)).max() > 65504:
        return  # the long way refuses these; tested below
    floats = numeric._plain_floats(values, target)
    assert floats is not None
    want = long_way(values, dtype)
    np.testing.assert_array_equal(floats, want)
    assert floats.dtype == want.dtype and floats.shape == want.shape
    np.testing.assert_array_equal(numeric.to_numeric(values, dtype, "x", ["x"]), want)


@pytest.mark.parametrize("values", [
    [1, 2, 3], [1.0, 2], [[1.0], [2.0, 3.0]], [[[1.0]]], [[1.0], 2.0], [1.0, True],
    [1.0, None], [1.0, "2"], [float("nan")], [float("inf")], [], [2**70 + 0.0, 1e300],
])
def test_anything_else_goes_the_long_way(values: Any) -> None:
    assert numeric._plain_floats(values, np.dtype(np.float32)) is None


@pytest.mark.parametrize(("values", "dtype"), [
    ([1e300], np.float32), ([[1.0, 1e39]], np.float32), ([1e6], np.float16),
    ([1.0, True], np.float64), ([[1.0], [2.0, 3.0]], np.float64), ([1.0, None], np.float32),
])
def test_errors_are_the_long_ways(values: Any, dtype: Any) -> None:
    with pytest.raises(InputError) as info:
        numeric.to_numeric(values, dtype, "input 'x'", ["x"])
    assert info.value.errors and info.value.errors[0]["loc"][0] == "x"


def test_non_finite_floats_of_the_caller_are_kept() -> None:
    got = numeric.to_numeric([float("nan"), float("inf")], np.float32, "x", ["x"])
    assert np.isnan(got[0]) and np.isinf(got[1]) and got.dtype == np.float32
