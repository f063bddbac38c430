"""Accuracy of the vectorizable exp / log / log1p against numpy (SPEC section 3 budget)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from xentstream._kernels.fastmath import (
    add_four,
    add_reassoc,
    exp32,
    exp64,
    log1p32,
    log1p64,
    log32,
    log64,
    max_num,
)


@njit(error_model="numpy")
def _exp(x, out):
    for i in range(x.shape[0]):
        out[i] = exp64(np.float64(x[i]))


@njit(error_model="numpy")
def _log(x, out):
    for i in range(x.shape[0]):
        out[i] = log64(np.float64(x[i]))


@njit(error_model="numpy")
def _log1p(x, out):
    for i in range(x.shape[0]):
        out[i] = log1p64(np.float64(x[i]))


@njit(error_model="numpy")
def _sum_and_max(x):
    total = 0.0
    best = -np.inf
    for i in range(x.shape[0]):
        total = add_reassoc(total, np.float64(x[i]))
        best = max_num(best, np.float64(x[i]))
    return total, best


def _apply(fn, x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float64)
    fn(x, out)
    return out


def _max_ulps(got: np.ndarray, expected: np.ndarray) -> float:
    finite = np.isfinite(expected) & (expected != 0.0)
    np.testing.assert_array_equal(got[~finite], expected[~finite])
    return float(
        np.max(np.abs(got[finite] - expected[finite]) / np.spacing(np.abs(expected[finite])))
    )


_RNG = np.random.default_rng(20_240_601)
_SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.2250738585072014e-308])


def test_exp_is_within_4_ulp_over_its_whole_range() -> None:
    x = np.concatenate(
        [
            _RNG.uniform(-745.2, 709.79, 400_000),
            _RNG.uniform(-1.0, 1.0, 100_000),
            -np.logspace(-320, np.log10(745.1), 20_000),
            np.logspace(-320, np.log10(709.7), 20_000),
            [709.78, 709.782712893384, -708.4, -744.4, -745.13, 1e-300, -1e-300],
        ]
    )
    with np.errstate(over="ignore", under="ignore"):
        expected = np.exp(x)
    assert _max_ulps(_apply(_exp, x), expected) <= 4


def _assert_follows_libm(kernel, reference, x: float) -> None:
    """The kernel's value at one special argument is numpy's, NaN for NaN."""
    got = _apply(kernel, np.array([x]))[0]
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        expected = reference(x)
    assert got == expected or (np.isnan(got) and np.isnan(expected))


@pytest.mark.parametrize(
    "x", [*_SPECIALS, 709.8, 710.0, 1e308, -745.2, -746.0, -1e308, 1e-20, -1e-20]
)
def test_exp_special_values_follow_libm(x: float) -> None:
    _assert_follows_libm(_exp, np.exp, x)


def test_exp_of_float32_input() -> None:
    x = _RNG.uniform(-103.0, 88.0, 200_000).astype(np.float32)
    got = _apply(_exp, x)
    expected = np.exp(x.astype(np.float64))
    assert _max_ulps(got, expected) <= 4


def test_log_is_within_2_ulp_including_subnormals() -> None:
    x = np.concatenate(
        [
            np.exp(_RNG.uniform(-744.0, 709.0, 400_000)),
            _RNG.uniform(0.5, 2.0, 100_000),
            np.array([5e-324, 1e-320, 1e-310, 2.2250738585072014e-308, 1.7976931348623157e308]),
            1.0 + np.arange(-50, 50) * np.finfo(np.float64).eps,
        ]
    )
    assert _max_ulps(_apply(_log, x), np.log(x)) <= 2


@pytest.mark.parametrize("x", [*_SPECIALS, -1.0, 1.0, -np.finfo(np.float64).tiny])
def test_log_special_values_follow_libm(x: float) -> None:
    _assert_follows_libm(_log, np.log, x)


def test_log1p_is_within_4_ulp_for_tiny_and_large_arguments() -> None:
    u = np.concatenate(
        [
            np.exp(_RNG.uniform(-745.0, 0.0, 300_000)),  # softplus: log1p(exp(-|x|))
            _RNG.uniform(-0.999, 1e3, 100_000),
            -np.exp(_RNG.uniform(-745.0, -0.01, 100_000)),
            [1e-320, 5e-324, 1e300, 1.7976931348623157e308],
        ]
    )
    assert _max_ulps(_apply(_log1p, u), np.log1p(u)) <= 4


@pytest.mark.parametrize("u", [0.0, -0.0, -1.0, np.inf, np.nan, -2.0, -np.inf])
def test_log1p_special_values_follow_libm(u: float) -> None:
    _assert_follows_libm(_log1p, np.log1p, u)


def test_float32_arguments_meet_the_float32_budget() -> None:
    """SPEC section 3: 1e-6 relative for float32 input (fastmath is float64 inside)."""
    x = _RNG.uniform(1e-30, 1e30, 100_000).astype(np.float32)
    got = _apply(_log, x)
    expected = np.log(x.astype(np.float64))
    assert np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1.0)) < 1e-15


def test_reductions_ignore_nothing_but_nan_in_max() -> None:
    x = _RNG.standard_normal(1001)
    total, best = _sum_and_max(x)
    assert total == pytest.approx(np.sum(x), rel=1e-13, abs=1e-12)
    assert best == np.max(x)
    x[17] = np.nan
    total, _ = _sum_and_max(x)
    # max_num carries nnan (it vectorizes only so): its value for a row holding NaN is
    # unspecified, and the row scans never use it for one (their probe re-scans it).
    assert np.isnan(total)


@njit(error_model="numpy")
def _add_fours(table, rows, values):
    for r in range(rows.shape[0]):
        add_four(table, rows[r], values[r, 0], values[r, 1], values[r, 2], values[r, 3])


def test_add_four_adds_one_row_lane_by_lane() -> None:
    rows = _RNG.integers(0, 7, 500)
    values = _RNG.standard_normal((500, 4))
    values[::9] = [np.inf, -0.0, np.nan, 1e300]
    table = _RNG.standard_normal((7, 4))
    expected = table.copy()
    for row, four in zip(rows, values, strict=True):
        expected[row] += four  # numpy's scalar adds, one lane at a time
    _add_fours(table, rows, values)
    np.testing.assert_array_equal(table, expected)


@njit(error_model="numpy")
def _exp32(x, out):
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])


@njit(error_model="numpy")
def _log32(x, out):
    for i in range(x.shape[0]):
        out[i] = log32(x[i])


@njit(error_model="numpy")
def _log1p32(x, out):
    for i in range(x.shape[0]):
        out[i] = log1p32(x[i])


def _apply32(fn, x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.float32)
    fn(x.astype(np.float32), out)
    return out


def _max_ulps32(got: np.ndarray, reference: np.ndarray) -> float:
    """Distance in float32 ulps from the float64 reference, rounded to float32."""
    expected = reference.astype(np.float32)
    finite = np.isfinite(expected) & (expected != 0.0)
    np.testing.assert_array_equal(got[~finite], expected[~finite])
    error = np.abs(got[finite].astype(np.float64) - reference[finite])
    return float(np.max(error / np.spacing(np.abs(expected[finite])).astype(np.float64)))


def test_exp32_is_within_2_ulp_and_flushes_below_the_normal_range() -> None:
    x = np.concatenate([_RNG.uniform(-87.3, 88.0, 400_000), _RNG.uniform(-1, 1, 100_000)])
    x = x.astype(np.float32)
    assert _max_ulps32(_apply32(_exp32, x), np.exp(x.astype(np.float64))) <= 2
    special = np.array([0.0, -0.0, -np.inf, np.nan, -88.0, -1e30], dtype=np.float32)
    got = _apply32(_exp32, special)
    np.testing.assert_array_equal(got, np.array([1, 1, 0, np.nan, 0, 0], dtype=np.float32))


def test_log32_is_within_2_ulp_including_subnormals() -> None:
    x = np.concatenate(
        [
            np.exp(_RNG.uniform(-103, 88, 400_000)),  # subnormal float32 below exp(-87.3)
            _RNG.uniform(0.5, 2.0, 100_000),
            [1.0, 2.0, 0.5, 1e-45, 3.4e38],
        ]
    ).astype(np.float32)
    assert _max_ulps32(_apply32(_log32, x), np.log(x.astype(np.float64))) <= 2
    special = np.array([0.0, -0.0, np.inf, -1.0, np.nan], dtype=np.float32)
    got = _apply32(_log32, special)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log(special.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


def test_log1p32_is_within_2_ulp_for_tiny_and_large_arguments() -> None:
    u = np.concatenate(
        [_RNG.uniform(0.0, 1.0, 200_000), np.exp(_RNG.uniform(-100, 0, 200_000)), [3e38]]
    ).astype(np.float32)
    assert _max_ulps32(_apply32(_log1p32, u), np.log1p(u.astype(np.float64))) <= 2
    special = np.array([0.0, -1.0, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(_apply32(_log1p32, special), [0.0, -np.inf, np.inf])
