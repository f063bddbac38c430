"""Property tests of SPEC section 3: exact sums, hence bitwise reproducibility.

- ``reduction="sum"`` is the correctly rounded sum of the float64 terms s_i * L_i,
  i.e. ``math.fsum`` of them, bit for bit;
- ``reduction="mean"`` is the correctly rounded quotient of two exact sums;
- any split of the rows into batches, merged through the exact accumulators, and
  any numba thread count give the same bits;
- no logit, however large, makes a computation overflow.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import exact_mean
from strategies import FLOAT32_MAX, Problem, cut_points, extreme_logits, problems

import xentstream as xs
from xentstream import _batch, accumulator
from xentstream._kernels import layout
from xentstream.config import BinaryConfig, MulticlassConfig, MultilabelConfig

FUNCTIONS = {
    "hard": xs.cross_entropy,
    "soft": xs.cross_entropy,
    "binary": xs.binary_cross_entropy,
    "multilabel": xs.multilabel_cross_entropy,
}


def bits(value: float) -> bytes:
    # +0.0 and -0.0 are the same sum (an all-zero fsum may keep the sign); NaN is NaN.
    return struct.pack("<d", value + 0.0)


def run(problem: Problem, reduction: str, rows: slice = slice(None)) -> Any:
    preds, target, weights = problem.rows(rows.start or 0, rows.stop or problem.n_rows)
    return FUNCTIONS[problem.kind](
        preds, target, sample_weight=weights, reduction=reduction, **problem.options
    )


def denominators(problem: Problem) -> np.ndarray:
    """d_i of SPEC section 2: the label's class weight for hard targets, else 1."""
    if problem.kind != "hard":
        return np.ones(problem.n_rows)
    weights = problem.options.get("class_weight")
    weights = np.ones(problem.preds.shape[1]) if weights is None else np.asarray(weights)
    labels = problem.target
    ignored = labels == problem.options.get("ignore_index", -1)
    return np.where(ignored, 0.0, weights[np.where(ignored, 0, labels)])


@given(problems())
def test_sum_is_fsum_of_weighted_row_losses(problem: Problem) -> None:
    terms = run(problem, "none").tolist()  # the weighted terms s_i L_i (SPEC section 4)
    assert bits(run(problem, "sum")) == bits(math.fsum(terms))


@given(problems())
def test_mean_is_the_correctly_rounded_quotient_of_exact_sums(problem: Problem) -> None:
    numerator = run(problem, "none")  # s_i L_i
    weights = np.ones(problem.n_rows) if problem.sample_weight is None else problem.sample_weight
    denominator = weights * denominators(problem)
    mean = run(problem, "mean")
    if not np.any(denominator):
        assert math.isnan(mean)
    else:
        assert bits(mean) == bits(exact_mean(numerator, denominator))


def _config(problem: Problem) -> Any:
    if problem.kind in ("hard", "soft"):
        return MulticlassConfig(**problem.options)
    if problem.kind == "binary":
        return BinaryConfig(**problem.options)
    return MultilabelConfig(**problem.options)


_BATCH = {
    "hard": _batch.multiclass_batch,
    "soft": _batch.multiclass_batch,
    "binary": _batch.binary_batch,
    "multilabel": _batch.multilabel_batch,
}


def _split_sums(problem: Problem, cuts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Exact sums and counts of the batches between ``cuts``, merged in order."""
    sums = accumulator.empty(layout.N_SUMS)
    counts = np.zeros(layout.N_COUNTS, dtype=np.int64)
    config = _config(problem)
    bounds = [0, *cuts, problem.n_rows]
    for start, stop in itertools.pairwise(bounds):
        preds, target, weights = problem.rows(start, stop)
        batch = _BATCH[problem.kind](config, preds, target, weights, row_offset=start)
        accumulator.merge_into(sums, batch.sums)
        counts += batch.counts
    return sums, counts


@given(problems(max_rows=300), st.data())
def test_any_batch_split_gives_identical_bits(problem: Problem, data: st.DataObject) -> None:
    cuts = data.draw(cut_points(problem.n_rows))
    whole, whole_counts = _split_sums(problem, [])
    split, split_counts = _split_sums(problem, cuts)
    assert np.array_equal(split, whole)  # the canonical exact sums themselves
    assert np.array_equal(split_counts, whole_counts)
    mean = accumulator.ratio(split[layout.LOSS], split[layout.DENOMINATOR])
    assert bits(mean) == bits(run(problem, "mean"))
    assert bits(accumulator.to_float(split[layout.LOSS])) == bits(run(problem, "sum"))


@given(problems(max_rows=300), st.data())
def test_merge_order_does_not_matter(problem: Problem, data: st.DataObject) -> None:
    cuts = data.draw(cut_points(problem.n_rows))
    bounds = [0, *cuts, problem.n_rows]
    config = _config(problem)
    parts = [
        _BATCH[problem.kind](config, *problem.rows(start, stop)).sums
        for start, stop in itertools.pairwise(bounds)
    ]
    order = data.draw(st.permutations(range(len(parts))))
    forward = accumulator.empty(layout.N_SUMS)
    shuffled = accumulator.empty(layout.N_SUMS)
    for index in range(len(parts)):
        accumulator.merge_into(forward, parts[index])
        accumulator.merge_into(shuffled, parts[order[index]])
    assert np.array_equal(forward, shuffled)


@contextmanager
def numba_threads(count: int) -> Iterator[None]:
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("kind", ["hard", "soft", "binary", "multilabel"])
def test_thread_count_does_not_change_a_bit(kind: str) -> None:
    # Enough rows for several blocks per thread (the kernels split by size and threads).
    problem = _large_problem(kind)
    threads = numba.get_num_threads()
    full = {r: run(problem, r) for r in ("mean", "sum", "none")}
    width = 1 if kind == "binary" else problem.preds.shape[1]
    blocks_all = _batch._block_count(problem.n_rows, width, False, 1)
    with numba_threads(1):
        single = {r: run(problem, r) for r in ("mean", "sum", "none")}
        blocks_one = _batch._block_count(problem.n_rows, width, False, 1)
    assert numba.get_num_threads() == threads  # restored
    assert blocks_one > 1
    if threads > 1:
        assert blocks_all > blocks_one
    assert bits(single["mean"]) == bits(full["mean"])
    assert bits(single["sum"]) == bits(full["sum"])
    assert np.array_equal(single["none"], full["none"])


def _large_problem(kind: str) -> Problem:
    rng = np.random.default_rng(["hard", "soft", "binary", "multilabel"].index(kind))
    n, n_classes = 120_000, 4
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    weights = rng.uniform(0.0, 3.0, size=n)
    if kind == "hard":
        labels = rng.integers(0, n_classes, size=n)
        labels[::7] = -100
        options = {
            "input": "logits",
            "class_weight": [0.5, 1.0, 2.0, 3.0],
            "ignore_index": -100,
            "label_smoothing": 0.1,
        }
        return Problem(kind, logits, labels, weights, options)
    if kind == "soft":
        target = rng.dirichlet(np.ones(n_classes), size=n)
        return Problem(kind, logits, target, weights, {"input": "logits"})
    if kind == "binary":
        target = rng.integers(0, 2, size=n * n_classes).astype(np.float64)
        return Problem(
            kind,
            logits.reshape(-1),
            target,
            np.repeat(weights, n_classes),
            {"input": "logits", "pos_weight": 2.0},
        )
    target = rng.integers(0, 2, size=(n, n_classes)).astype(np.float64)
    return Problem(kind, logits, target, weights, {"input": "logits", "pos_weight": 1.5})


@given(problems(max_rows=300), st.data())
def test_many_small_blocks_give_identical_bits(problem: Problem, data: st.DataObject) -> None:
    # Shrink the block size so that even a few rows are spread over many blocks.
    expected = {r: run(problem, r) for r in ("mean", "sum", "none")}
    previous = _batch._MIN_BLOCK_ELEMENTS
    _batch._MIN_BLOCK_ELEMENTS = data.draw(st.integers(1, 64))
    try:
        got = {r: run(problem, r) for r in ("mean", "sum", "none")}
    finally:
        _batch._MIN_BLOCK_ELEMENTS = previous
    assert bits(got["mean"]) == bits(expected["mean"])
    assert bits(got["sum"]) == bits(expected["sum"])
    assert np.array_equal(got["none"], expected["none"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(data=st.data())
def test_extreme_logits_never_overflow(dtype: Any, data: st.DataObject) -> None:
    logits = data.draw(extreme_logits(dtype))
    labels = data.draw(
        st.lists(st.integers(0, logits.shape[1] - 1), min_size=len(logits), max_size=len(logits))
    )
    labels = np.array(labels)
    losses = xs.cross_entropy(logits, labels, input="logits", reduction="none")
    assert np.isfinite(losses).all()
    assert (losses >= 0.0).all()
    # Every loss is at most the gap between the row maximum and the label's logit,
    # plus log C: the log-sum-exp bound, evaluated in float64 where it cannot overflow.
    wide = logits.astype(np.float64)
    gap = wide.max(axis=1) - wide[np.arange(len(labels)), labels]
    assert (losses <= gap + math.log(logits.shape[1]) * (1 + 1e-12)).all()
    assert math.isfinite(xs.cross_entropy(logits, labels, input="logits"))
    soft = np.full(logits.shape, 1.0 / logits.shape[1], dtype=dtype)
    assert np.isfinite(xs.cross_entropy(logits, soft, input="logits", reduction="none")).all()
    assert np.isfinite(xs.entropy(logits, input="logits", reduction="none")).all()
    flat = logits.reshape(-1)
    targets = np.resize(np.array([0.0, 1.0], dtype=dtype), flat.shape)
    binary = xs.binary_cross_entropy(
        flat, targets, input="logits", pos_weight=3.0, reduction="none"
    )
    assert np.isfinite(binary).all()
    multilabel = xs.multilabel_cross_entropy(
        logits, targets.reshape(logits.shape), input="logits", reduction="none"
    )
    assert np.isfinite(multilabel).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_float32_max_logits(dtype: Any) -> None:
    logits = np.array([[FLOAT32_MAX, -FLOAT32_MAX], [-FLOAT32_MAX, FLOAT32_MAX]], dtype=dtype)
    losses = xs.cross_entropy(logits, np.array([1, 1]), input="logits", reduction="none")
    assert losses[0] == 2 * FLOAT32_MAX  # exact in float64: no overflow on the way
    assert losses[1] == 0.0
    binary = xs.binary_cross_entropy(
        logits[:, 0], np.array([0.0, 1.0], dtype=dtype), input="logits", reduction="none"
    )
    assert np.array_equal(binary, [FLOAT32_MAX, FLOAT32_MAX])
