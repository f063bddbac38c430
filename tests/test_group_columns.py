"""Every group's scalar fields as whole arrays (issue 15): ``GroupedReport.to_polars()``,
iterated and looked-up reports, equal bit for bit to each group's own one-shot report.

The columns come from one kernel pass (``kernels.group_values``: every group's sums
rounded to float, their quotients and the variance rounded once, a result not certain
left to the exact integers) and one array formula per field. The references: Python's
integer arithmetic (``int / int`` is correctly rounded) for the kernel, and a fresh
metric over each group's rows alone for the reports.
"""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest
from stream_support import report_bits

import xentstream as xs
from xentstream import accumulator
from xentstream._kernels import groups as kernels
from xentstream._kernels import layout
from xentstream.grouping import GroupTable
from xentstream.report import FLAT_SCALAR_FIELDS

_UNIT = 1 << 1075  # accumulator integers count units of 2**-1075
_PAIRS = np.array(
    [
        [layout.LOSS, layout.DENOMINATOR],
        [layout.CORRECT, layout.WEIGHT],
        [layout.ENTROPY, layout.WEIGHT],
        [layout.TARGET_ENTROPY, layout.DENOMINATOR_SQUARED],
    ],
    dtype=np.int64,
)


def _quotient(top: int, bottom: int) -> float:
    if bottom == 0:
        return math.nan
    try:
        return top / bottom
    except OverflowError:
        return math.inf if (top > 0) == (bottom > 0) else -math.inf


def _same(got: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(got)
    return got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)


def _random_sums(rng: random.Random, ordinary: bool) -> list[int]:
    """Exact integers of one group's sums: ordinary magnitudes (a loss of 1e-18 to 1e18
    times small counts), or any the accumulators hold; ties of quotients by small and
    power-of-two denominators, exact and near-exact variances, negatives, zeros."""

    def value() -> int:
        if rng.random() < 0.1:
            return 0
        if ordinary:
            exponent = 1075 + rng.randint(-60, 60)
        else:
            exponent = rng.choice([rng.randint(0, 2140), 1075 + rng.randint(-1000, 1000)])
        width = rng.randint(1, 120)
        magnitude = rng.getrandbits(width) << max(0, exponent - width)
        return -magnitude if rng.random() < 0.2 else magnitude

    sums = [value() for _ in range(layout.N_SUMS)]
    shape = rng.random()
    if shape < 0.3:  # a tie: an odd 54-bit multiple of a small (or power-of-two) count
        count = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 16, 3 << 40])
        unit = 1 << rng.randint(900, 1100)
        sums[layout.DENOMINATOR] = sums[layout.WEIGHT] = count * unit
        for slot in (layout.LOSS, layout.CORRECT, layout.ENTROPY):
            odd = rng.getrandbits(53) | (1 << 53) | 1  # 54 bits: a tie once divided
            sums[slot] = count * odd * (unit >> rng.randint(50, 110))
    elif shape < 0.5:  # variance near zero: S D close to L^2
        loss, denominator = sums[layout.LOSS], abs(sums[layout.DENOMINATOR]) or _UNIT
        sums[layout.DENOMINATOR] = denominator
        sums[layout.LOSS_SQUARED] = loss * loss // denominator + rng.choice([0, 1, -1, 1 << 80])
    bound = accumulator.MAX_MAGNITUDE - 1
    return [max(-bound, min(bound, v)) for v in sums]


@pytest.mark.parametrize("ordinary", [True, False])
def test_group_values_round_every_group_once_as_python_integers(ordinary: bool) -> None:
    """Floats, quotients and the variance of each group equal Python's integer
    arithmetic bit for bit wherever the kernel gives a value; it declines (UNCERTAIN)
    only out of the normal range or within a hair of a rounding boundary that is not
    an exact tie, and ties (common: sums of two floats over a count of 2) it resolves."""
    rng = random.Random(15 + ordinary)
    n = 3 * kernels.VALUES_PER_BLOCK  # (blocks for the parallel kernel)
    ints = [_random_sums(rng, ordinary) for _ in range(n)]
    table = GroupTable(counts_labels=False)
    table.resize(n)
    sums = np.stack(
        [accumulator.from_json([[str(v), 0, 0, 0] for v in row], (layout.N_SUMS,)) for row in ints]
    )
    counts = np.tile(np.array([2, 0], dtype=np.int64), (n, 1))
    table.add_sums(np.arange(n), sums, counts)
    floats = np.empty((n, layout.N_SUMS))
    ratios = np.empty((n, _PAIRS.shape[0]))
    variance = np.empty(n)
    signs = np.empty((n, layout.N_SUMS), dtype=np.int8)
    flags = np.zeros(n, dtype=np.uint8)
    kernels.group_values(
        np.arange(n, dtype=np.int64), table.base, table.window, table.wide, table.side,
        table.counts, _PAIRS, floats, ratios, variance, signs, flags,
    )  # fmt: skip
    # Threads splitting the groups in blocks give the same outputs.
    twins = [np.empty_like(a) for a in (floats, ratios, variance, signs, flags)]
    kernels.group_values_parallel(
        np.arange(n, dtype=np.int64), table.base, table.window, table.wide, table.side,
        table.counts, _PAIRS, *twins,
    )  # fmt: skip
    for one, other in zip((floats, ratios, variance, signs, flags), twins, strict=True):
        assert one.tobytes() == other.tobytes()
    declined = 0
    for i, row in enumerate(ints):
        assert not flags[i] & kernels.SPECIAL
        loss, squares, denominator = (
            row[layout.LOSS], row[layout.LOSS_SQUARED], row[layout.DENOMINATOR]
        )  # fmt: skip
        # (what ordinary sums may leave to the integers: a subnormal)
        given = []
        for slot, exact in enumerate(row):
            assert signs[i, slot] == (exact > 0) - (exact < 0)
            given.append((floats[i, slot], _quotient(exact, _UNIT), abs(exact) < _UNIT >> 1000))
        for j, (a, b) in enumerate(_PAIRS.tolist()):
            given.append((ratios[i, j], _quotient(row[a], row[b]), False))
        try:
            exact_variance = _quotient(squares * denominator - loss * loss, denominator**2)
        except OverflowError:
            exact_variance = math.inf
        # (S D and L^2 are double-doubles: near a tie or a cancellation it may decline)
        given.append((variance[i], exact_variance, True))
        for got, expected, may_decline in given:
            if math.isnan(got) and not math.isnan(expected):
                assert flags[i] & kernels.UNCERTAIN
                assert may_decline or not ordinary, (i, expected)
                declined += 1
            else:
                assert _same(got, expected), (i, got, expected)
    if ordinary:
        assert declined < n // 4  # the near-zero variances made above, a few others


def _frame(rng: np.random.Generator, case: str, n: int, n_groups: int) -> pl.DataFrame:
    logits = rng.normal(0.0, 2.0, (n, 4))
    columns = {"g": rng.integers(0, n_groups, n)}
    if case == "binary":
        columns["p"], columns["y"] = logits[:, 0], (rng.random(n) < 0.4).astype(np.int64)
    elif case == "multilabel":
        columns["p"], columns["y"] = logits, (rng.random((n, 4)) < 0.3).astype(np.int64)
    elif case == "soft":
        soft = rng.random((n, 4))
        columns["p"], columns["y"] = logits, soft / soft.sum(axis=1, keepdims=True)
    else:
        columns["p"], columns["y"] = logits.astype(np.float32), rng.integers(0, 4, n)
    weights = rng.exponential(1.0, n)
    weights[rng.random(n) < 0.3] = 1.0
    weights[rng.random(n) < 0.02] *= 1e-200  # tiny weights widen their groups
    columns["w"] = weights
    return pl.DataFrame(columns)


def _metric(case: str) -> xs.Metric:
    if case == "binary":
        return xs.BinaryCrossEntropy(input="logits")
    if case == "multilabel":
        return xs.MultiLabelCrossEntropy(input="logits")
    if case == "soft":
        return xs.CrossEntropy(input="logits")
    return xs.CrossEntropy(
        input="logits", ignore_index=3, calibration_bins=8 if case == "calibration" else None
    )


@pytest.mark.parametrize(
    "case, weighted",
    [
        ("multiclass", False),
        ("multiclass", True),
        ("binary", True),
        ("soft", False),
        ("multilabel", False),
        ("calibration", True),
    ],
)
def test_columns_and_reports_equal_each_groups_one_shot_report(case: str, weighted: bool) -> None:
    """Random groups of 1 to ~20 rows (ignored rows, weights of 1 and not, widened
    groups): every ``to_polars()`` column, every iterated report and every looked-up
    report is bitwise the report of a fresh metric over that group's rows alone."""
    rng = np.random.default_rng([15, len(case), weighted])
    frame = _frame(rng, case, 4000, 900)
    metric = _metric(case)
    options = {"preds": "p", "target": "y", "by": "g", "batch_rows": 1500}
    if weighted:
        options["sample_weight"] = "w"
    result = xs.evaluate(frame, metric, **options)
    references = {}
    for (key,), part in frame.group_by("g", maintain_order=True):
        fresh = type(metric).from_config(metric.config)
        weights = part["w"].to_numpy() if weighted else None
        fresh.update(part["p"].to_numpy(), part["y"].to_numpy(), weights)
        references[(key,)] = fresh.compute()
    groups = result.groups
    built = []
    report = groups.report
    groups.report = lambda code: built.append(code) or report(code)
    table = result.to_polars()
    # Ordinary losses leave (nearly) no group to its exact integers: the arrays' values
    # are the ones checked here.
    assert len(built) <= len(references) // 100
    del groups.report
    assert table.height == len(references)
    for row in table.iter_rows(named=True):
        expected = references[(row["g"],)].scalars()
        for name in FLAT_SCALAR_FIELDS:
            assert _same_or_none(row[name], expected.get(name)), (row["g"], name)
    assert [(key,) for key in table["g"]] == sorted(references)  # key order
    assert len(result.groups) == len(references)
    for key, report in result.groups.items():
        assert report_bits(report) == report_bits(references[key]), key
    for key in list(references)[::97]:
        assert report_bits(result.groups[key]) == report_bits(references[key])
    worst = result.top(5).to_polars()
    losses = sorted((r.loss for r in references.values() if r.loss == r.loss), reverse=True)
    assert worst["loss"].to_list() == losses[:5]


def _same_or_none(got: float | int | None, expected: float | int | None) -> bool:
    if expected is None or got is None:
        return got is None and expected is None
    if isinstance(expected, int):
        return got == expected
    return _same(got, expected)
