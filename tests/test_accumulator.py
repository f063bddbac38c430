"""The exact superaccumulator (SPEC section 3) against math.fsum and exact rationals.

Terms are added with the kernels' own ``add_term`` (called from Python), so what
is checked here is the arithmetic every kernel inlines.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import exact_sum
from strategies import FLOAT64_MAX, float64_terms, term_lists

from xentstream import accumulator
from xentstream._kernels.exact import (
    MAX_STAGED_TERMS,
    N_CHUNKS,
    N_SLOTS,
    NAN,
    NEG_INF,
    POS_INF,
    add_term,
    add_terms,
)

TINY = 5e-324  # smallest subnormal
SMALLEST_NORMAL = 2.2250738585072014e-308


def accumulate(terms: list[float], rows: int = 1, slot: int = 0) -> np.ndarray:
    """A fresh accumulator array with ``terms`` added to row ``slot``, normalized."""
    acc = accumulator.empty(rows)
    for term in terms:
        add_term(acc[slot], float(term))
    accumulator.merge_into(acc, accumulator.empty(rows))  # normalizes
    return acc


def accumulate_staged(terms: list[float], chunk: int = MAX_STAGED_TERMS) -> np.ndarray:
    """:func:`accumulate` through ``add_terms`` (the kernels' staged path), ``chunk`` at a time."""
    acc = accumulator.empty(1)
    for start in range(0, len(terms), chunk):
        part = np.array(terms[start : start + chunk], dtype=np.float64)
        add_terms(acc[0], part, part.shape[0])
    accumulator.merge_into(acc, accumulator.empty(1))
    return acc


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def correctly_rounded(value: Fraction) -> float:
    """Round an exact rational to float64, overflowing to +-inf like IEEE addition."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


EDGE_CASES = {
    "cancel-huge": [1e100, 1.0, -1e100, 1e-3],
    "tenths": [0.1] * 10,
    "subnormals": [TINY] * 1000,
    "mixed-subnormals": [TINY, -1e-310, SMALLEST_NORMAL, 1e-320, -TINY * 7],
    "subnormal-to-normal": [SMALLEST_NORMAL / 2, SMALLEST_NORMAL / 2],
    "max-cancels": [FLOAT64_MAX, -FLOAT64_MAX, 1.0],
    "max-and-tiny": [FLOAT64_MAX, TINY, -FLOAT64_MAX],
    "tie-to-even-down": [1.0, 2.0**-53],
    "tie-broken-up": [1.0, 2.0**-53, 2.0**-1074],
    "tie-to-even-up": [1.0 + 2.0**-52, 2.0**-53],
    "wide-range": [2.0**1000, 1.0, 2.0**-1000, -(2.0**1000), TINY],
    "all-zero": [0.0, -0.0, 0.0],
    "empty": [],
    "negative": [-1.5, -2.25, 1e-300, -1e300],
    "catastrophic": [1e16, 1.0, -1e16, 1.0, 1e-16] * 3,
}


@pytest.mark.parametrize("terms", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_sum_equals_fsum_on_edge_cases(terms: list[float]) -> None:
    acc = accumulate(terms)
    assert accumulator.to_float(acc[0]) == math.fsum(terms)
    assert accumulator.to_float(acc[0]) == correctly_rounded(exact_sum(terms))


def test_sum_of_large_terms_overflows_to_inf_only_when_the_exact_sum_does() -> None:
    # fsum refuses these ("intermediate overflow"); the exact sum decides.
    fits = [FLOAT64_MAX, FLOAT64_MAX, -FLOAT64_MAX]
    assert accumulator.to_float(accumulate(fits)[0]) == correctly_rounded(exact_sum(fits))
    assert accumulator.to_float(accumulate(fits)[0]) == FLOAT64_MAX
    too_big = [FLOAT64_MAX, FLOAT64_MAX]
    assert accumulator.to_float(accumulate(too_big)[0]) == math.inf
    assert accumulator.to_float(accumulate([-x for x in too_big])[0]) == -math.inf


# -- add_terms: the staged path must give the very bits of add_term, term by term ------------

STAGED_CASES = {
    **EDGE_CASES,
    # 2**11 terms just below a power of two: the largest integer sums a level can reach
    "full-top-binade": [math.nextafter(2.0, 0.0)] * MAX_STAGED_TERMS,
    "full-top-binade-negative": [-math.nextafter(2.0, 0.0)] * MAX_STAGED_TERMS,
    "rounds-up-to-next-power": [math.nextafter(2.0, 0.0), 1.0 + 2.0**-52] * 1024,
    # remainders below the second level (terms 2**60 smaller, low bits set)
    "leftover-below-two-levels": [1.0, 2.0**-60 * (1 + 2.0**-52), -(2.0**-70) * 3.0] * 50,
    # the extraction's exponent range: largest terms at its edges and just outside
    "exponent-921-below": [2.0**-921, 2.0**-1000, -(2.0**-950) * 1.5],
    "exponent-922-below": [2.0**-922, 2.0**-1000, -(2.0**-950) * 1.5],
    "exponent-1000": [2.0**1000 * 1.75, -(2.0**990), 3.0],
    "exponent-1001": [2.0**1001 * 1.75, -(2.0**990), 3.0],
    "non-finite-among-finite": [1.5, math.inf, -(2.0**-30), math.nan, -math.inf, 7.0],
    "non-finite-only": [math.inf, math.inf],
    "subnormal-only": [TINY, -TINY * 3, 1e-310],
}


@pytest.mark.parametrize("terms", STAGED_CASES.values(), ids=STAGED_CASES.keys())
def test_add_terms_equals_add_term_on_edge_cases(terms: list[float]) -> None:
    assert np.array_equal(accumulate_staged(terms), accumulate(terms))


def scaled_by_power_of_two(term: float, exponent: int) -> float:
    """``term * 2**exponent``, or ``term`` itself where that would overflow."""
    try:
        return math.ldexp(term, exponent)
    except OverflowError:
        return term


@given(
    term_lists(max_size=200),
    st.integers(-1100, 1100),
    st.lists(st.sampled_from([math.inf, -math.inf, math.nan]), max_size=2),
    st.integers(1, 64),
)
def test_add_terms_equals_add_term(
    terms: list[float], exponent: int, specials: list[float], chunk: int
) -> None:
    """Bit for bit, over the whole exponent range (terms moved by ``2**exponent``)."""
    scaled = [scaled_by_power_of_two(t, exponent) for t in terms] + specials
    staged = accumulate_staged(scaled, chunk)
    assert np.array_equal(staged, accumulate(scaled))
    if not specials:
        assert accumulator.to_float(staged[0]) == correctly_rounded(exact_sum(scaled))


def test_add_terms_only_overwrites_its_first_terms() -> None:
    terms = np.array([1.0, 2.0**-80 + 1.0, 5.0, 9.0])
    acc = accumulator.empty(1)
    add_terms(acc[0], terms, 3)
    assert terms[3] == 9.0
    accumulator.merge_into(acc, accumulator.empty(1))
    assert np.array_equal(acc, accumulate([1.0, 2.0**-80 + 1.0, 5.0]))


@given(term_lists())
def test_sum_is_correctly_rounded(terms: list[float]) -> None:
    value = accumulator.to_float(accumulate(terms)[0])
    assert value == correctly_rounded(exact_sum(terms))
    try:
        expected = math.fsum(terms)
    except OverflowError:
        return  # fsum gives up on an intermediate overflow; the exact check above holds
    # fsum may return -0.0 where the integer sum is +0.0; the values are equal.
    assert bits(value) == bits(expected + 0.0)


@given(term_lists(), st.randoms(use_true_random=False))
def test_order_of_terms_does_not_change_a_bit(terms: list[float], random) -> None:
    shuffled = list(terms)
    random.shuffle(shuffled)
    assert np.array_equal(accumulate(terms), accumulate(shuffled))


@given(term_lists(), st.lists(st.integers(0, 40), max_size=4))
def test_merged_parts_equal_one_accumulator(terms: list[float], cuts: list[int]) -> None:
    bounds = [0, *sorted(min(c, len(terms)) for c in cuts), len(terms)]
    merged = accumulator.empty(1)
    for start, stop in itertools.pairwise(bounds):
        accumulator.merge_into(merged, accumulate(terms[start:stop]))
    assert np.array_equal(merged, accumulate(terms))


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ([math.inf, 1.0], math.inf),
        ([-math.inf, 1e308, 1e308], -math.inf),
        ([math.inf, -math.inf], math.nan),
        ([math.nan, 1.0], math.nan),
        ([math.inf, math.nan], math.nan),
        ([math.inf, math.inf, -1.0], math.inf),
    ],
)
def test_non_finite_terms_follow_ieee_addition(terms: list[float], expected: float) -> None:
    value = accumulator.to_float(accumulate(terms)[0])
    assert bits(value) == bits(expected) or (math.isnan(value) and math.isnan(expected))
    plain = 0.0
    for term in terms:
        plain += term
    assert math.isnan(value) == math.isnan(plain)
    assert math.isnan(value) or value == plain


def test_non_finite_terms_are_counted_apart_from_the_finite_sum() -> None:
    acc = accumulate([math.inf, 2.5, -math.inf, math.inf, math.nan, 0.5])
    assert acc[0, POS_INF] == 2
    assert acc[0, NEG_INF] == 1
    assert acc[0, NAN] == 1
    assert accumulator.exact_integer(acc[0]) == 3 * 2**1075  # 2.5 + 0.5 in units of 2**-1075


def test_to_floats_rounds_every_row() -> None:
    rows = [[1e100, 1.0, -1e100], [0.1] * 3, [], [math.inf]]
    acc = accumulator.empty(2, 2)
    for index, terms in enumerate(rows):
        for term in terms:
            add_term(acc.reshape(4, N_SLOTS)[index], term)
    values = accumulator.to_floats(acc)
    assert values.shape == (2, 2)
    assert values.ravel().tolist() == [math.fsum(terms) for terms in rows]


def test_normalize_makes_the_representation_canonical() -> None:
    # The same value reached through carries, borrows and plain addition.
    direct = accumulate([3.0])
    roundabout = accumulate([2.0**60, 3.0, -(2.0**60), 2.0**-1000, -(2.0**-1000)])
    assert np.array_equal(direct, roundabout)
    negative = accumulate([-3.0])
    assert (negative[0, : N_CHUNKS - 1] >= 0).all()
    assert (negative[0, : N_CHUNKS - 1] < 2**32).all()
    assert negative[0, N_CHUNKS - 1] < 0  # the top chunk keeps the sign


@given(term_lists(), st.lists(st.sampled_from([math.inf, -math.inf, math.nan]), max_size=3))
def test_json_round_trip_is_lossless(terms: list[float], specials: list[float]) -> None:
    acc = accumulate(terms + specials, rows=2, slot=1)
    text = json.dumps(accumulator.to_json(acc))
    back = accumulator.from_json(json.loads(text), (2,))
    assert np.array_equal(back, acc)
    assert bits(accumulator.to_float(back[1])) == bits(accumulator.to_float(acc[1]))


def test_json_round_trip_of_nested_accumulators() -> None:
    acc = accumulator.empty(2, 3)
    flat = acc.reshape(6, N_SLOTS)
    for slot, term in enumerate([1e-300, -2.5, 1e300, TINY, -FLOAT64_MAX, 7.0]):
        add_term(flat[slot], term)
    accumulator.merge_into(acc, accumulator.empty(2, 3))
    back = accumulator.from_json(json.loads(json.dumps(accumulator.to_json(acc))), (2, 3))
    assert np.array_equal(back, acc)


def test_json_values_are_exact_integer_strings() -> None:
    acc = accumulate([1.0])
    value, pos_inf, neg_inf, nan = accumulator.to_json(acc[0])
    assert int(value) == 2**1075  # units of 2**-1075
    assert (pos_inf, neg_inf, nan) == (0, 0, 0)


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([["1", 0, 0, 0]], ()),
        (["1", 0, 0], ()),
        (["one", 0, 0, 0], ()),
        ([None, 0, 0, 0], ()),
        (["1", -1, 0, 0], ()),
        (["1", 0, 0.5, 0], ()),
        ([["1", 0, 0, 0]], (2,)),
        ("1", (1,)),
        ([str(2**2200), 0, 0, 0], ()),
    ],
    ids=[
        "nested-too-deep",
        "three-fields",
        "not-an-integer",
        "null-value",
        "negative-count",
        "float-count",
        "too-few-rows",
        "not-a-list",
        "out-of-range",
    ],
)
def test_from_json_rejects_malformed_data(data: object, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="accumulator"):
        accumulator.from_json(data, shape)


@given(
    term_lists(max_size=20),
    st.lists(float64_terms.map(abs).filter(lambda x: 0 < x < 1e300), min_size=1, max_size=20),
)
def test_ratio_is_the_correctly_rounded_quotient(
    numerator: list[float], denominator: list[float]
) -> None:
    value = accumulator.ratio(accumulate(numerator)[0], accumulate(denominator)[0])
    assert value == correctly_rounded(exact_sum(numerator) / exact_sum(denominator))


def test_ratio_rounds_once() -> None:
    # The numerator 1 + 2**-53 is not a float64 (fsum rounds it to 1.0), so dividing
    # the rounded sums rounds twice and lands on another float than the exact quotient.
    numerator = [1.0, 2.0**-53]
    denominator = [3.0]
    exact = (Fraction(1) + Fraction(2) ** -53) / 3
    value = accumulator.ratio(accumulate(numerator)[0], accumulate(denominator)[0])
    assert value == float(exact)
    assert value != math.fsum(numerator) / math.fsum(denominator)


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        ([1.0], [], math.nan),  # zero weight: undefined, as torch's mean over no rows
        ([], [], math.nan),
        ([math.inf], [2.0], math.inf),
        ([math.nan], [2.0], math.nan),
        ([FLOAT64_MAX], [TINY], math.inf),
        ([TINY], [FLOAT64_MAX], 0.0),
    ],
)
def test_ratio_edge_cases(
    numerator: list[float], denominator: list[float], expected: float
) -> None:
    value = accumulator.ratio(accumulate(numerator)[0], accumulate(denominator)[0])
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == expected
