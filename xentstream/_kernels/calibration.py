"""Reliability bins: exact per-bin sums of forecast confidence and outcome.

A forecast is a probability ``f`` that an outcome ``o`` in [0, 1] happens: the top
label's probability and whether the top label is right (multiclass; with soft targets
``o`` is the target's mass on the top label), or the positive class's probability and
the target (binary, and each label of a multi-label row). Bin ``k`` of ``n`` equal-width
bins holds ``f`` in ``[k/n, (k+1)/n)`` (the last bin includes 1), as torchmetrics'
``CalibrationError`` and scikit-learn's ``calibration_curve`` bin.

``sums[block, bin, slot]`` (exact accumulators), slots :data:`N_BIN_SUMS`:
``BIN_WEIGHT`` sum s, ``BIN_CONFIDENCE`` sum s f, ``BIN_OUTCOME`` sum s o,
``BIN_CONFIDENCE_SQUARED`` sum s f^2, ``BIN_PRODUCT`` sum s f o, ``BIN_OUTCOME_SQUARED``
sum s o^2; ``counts[block, bin]`` the forecasts in each bin. Terms are staged per bin
and added with :func:`~xentstream._kernels.exact.add_terms` (exact, so the bits do not
depend on the blocks or threads). Inputs were validated by the loss kernels first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from xentstream._kernels.exact import N_SLOTS, add_term, add_terms, normalize
from xentstream._kernels.fastmath import add_reassoc, exp32, exp64, is_float32, max_num
from xentstream._kernels.layout import LOGITS, LOGPROBS

BIN_WEIGHT = 0
BIN_CONFIDENCE = 1
BIN_OUTCOME = 2
BIN_CONFIDENCE_SQUARED = 3
BIN_PRODUCT = 4
BIN_OUTCOME_SQUARED = 5
N_BIN_SUMS = 6
#: State-file names of the slots, in slot order.
BIN_SUM_NAMES = (
    "weight",
    "confidence",
    "outcome",
    "confidence_squared",
    "product",
    "outcome_squared",
)

#: Staged terms per bin and slot before they are added (a block's scratch stays small).
_STAGE = 256


@njit(nogil=True, cache=True)
def _top_label(row, input_kind):
    """(index, probability) of the row's most probable class (the first of ties).

    The maximum and the sum of exponentials are vectorizable loops (``max_num``,
    ``add_reassoc``, the branch-free ``exp64``): a scalar loop of ``math.exp`` cost
    twice the loss kernel's whole pass over logits rows (C=10, measured).
    """
    top = np.float64(row[0])
    for c in range(1, row.shape[0]):
        top = max_num(top, np.float64(row[c]))
    best = 0
    for c in range(row.shape[0]):
        if np.float64(row[c]) == top:
            best = c
            break
    if input_kind == LOGITS:
        total = 0.0
        if is_float32(row):  # float32 exps of float32 logits, as the loss kernels
            shift = np.float32(top)
            for c in range(row.shape[0]):
                total = add_reassoc(total, np.float64(exp32(row[c] - shift)))
        else:
            for c in range(row.shape[0]):
                total = add_reassoc(total, exp64(np.float64(row[c]) - top))
        return best, 1.0 / total
    if input_kind == LOGPROBS:
        return best, math.exp(top)
    return best, top


@njit(nogil=True, cache=True)
def _positive_probability(value, input_kind):
    x = np.float64(value)
    if input_kind == LOGITS:
        if x >= 0.0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    if input_kind == LOGPROBS:
        return math.exp(x)
    return x


@njit(nogil=True, cache=True)
def _bin_of(f, n_bins):
    k = np.int64(f * n_bins)
    if k >= n_bins:
        return n_bins - 1
    if k < 0:
        return 0
    return k


@njit(nogil=True, cache=True)
def _stage(staged, filled, sums, k, weight, f, o, derived):
    n = filled[k]
    staged[k, BIN_WEIGHT, n] = weight
    staged[k, BIN_CONFIDENCE, n] = weight * f
    staged[k, BIN_OUTCOME, n] = weight * o
    staged[k, BIN_CONFIDENCE_SQUARED, n] = weight * f * f
    staged[k, BIN_PRODUCT, n] = weight * f * o
    staged[k, BIN_OUTCOME_SQUARED, n] = weight * o * o
    filled[k] = n + 1
    if n + 1 == _STAGE:
        _flush(staged, filled, sums, k, derived)


@njit(nogil=True, cache=True)
def _flush(staged, filled, sums, k, derived):
    for slot in range(N_BIN_SUMS):
        if not derived[slot]:
            add_terms(sums[k, slot], staged[k, slot], filled[k])
    filled[k] = 0


@njit(nogil=True, cache=True)
def _finish(staged, filled, sums, counts, derived):
    """Add what is staged, then the slots derived rather than added (``derived``):
    the weight of unweighted rows is their count; for 0/1 outcomes ``s o^2 = s o``
    term by term, so the two sums have the same bits. A third fewer terms to add."""
    for k in range(sums.shape[0]):
        _flush(staged, filled, sums, k, derived)
    normalize(sums.reshape(-1, N_SLOTS))
    for k in range(sums.shape[0]):
        if derived[BIN_WEIGHT]:
            add_term(sums[k, BIN_WEIGHT], np.float64(counts[k]))  # < 2**53: exact
        if derived[BIN_OUTCOME_SQUARED]:
            sums[k, BIN_OUTCOME_SQUARED, :] = sums[k, BIN_OUTCOME, :]
    normalize(sums.reshape(-1, N_SLOTS))


@njit(nogil=True, cache=True)
def _derived(weighted, binary_outcomes):
    derived = np.zeros(N_BIN_SUMS, dtype=np.bool_)
    derived[BIN_WEIGHT] = not weighted
    derived[BIN_OUTCOME_SQUARED] = binary_outcomes
    return derived


@njit(parallel=True, cache=True)
def top_label_bins(
    preds, labels, soft, sample_weight, input_kind, ignore, has_ignore, sums, counts
):
    """Bins of the top-label forecasts of ``preds`` (N, C).

    ``labels`` (N,) hard labels, or ``soft`` (N, C) target distributions when
    ``labels`` is empty.
    """
    n_rows = preds.shape[0]
    n_blocks, n_bins = sums.shape[0], sums.shape[1]
    hard = labels.shape[0] > 0
    weighted = sample_weight.shape[0] > 0
    for block in prange(n_blocks):
        start = block * n_rows // n_blocks
        stop = (block + 1) * n_rows // n_blocks
        staged = np.empty((n_bins, N_BIN_SUMS, _STAGE), dtype=np.float64)
        filled = np.zeros(n_bins, dtype=np.int64)
        block_sums = sums[block]
        derived = _derived(weighted, hard)
        for i in range(start, stop):
            if hard and has_ignore and labels[i] == ignore:
                continue
            best, f = _top_label(preds[i], input_kind)
            o = (1.0 if labels[i] == best else 0.0) if hard else np.float64(soft[i, best])
            k = _bin_of(f, n_bins)
            counts[block, k] += 1
            weight = np.float64(sample_weight[i]) if weighted else 1.0
            _stage(staged, filled, block_sums, k, weight, f, o, derived)
        _finish(staged, filled, block_sums, counts[block], derived)


@njit(parallel=True, cache=True)
def positive_class_bins(preds, target, sample_weight, row_width, input_kind, sums, counts):
    """Bins of positive-class forecasts: ``preds`` and ``target`` flat, ``row_width``
    forecasts per row of ``sample_weight`` (1 for binary, the labels for multi-label)."""
    n = preds.shape[0]
    n_blocks, n_bins = sums.shape[0], sums.shape[1]
    weighted = sample_weight.shape[0] > 0
    for block in prange(n_blocks):
        start = block * n // n_blocks
        stop = (block + 1) * n // n_blocks
        staged = np.empty((n_bins, N_BIN_SUMS, _STAGE), dtype=np.float64)
        filled = np.zeros(n_bins, dtype=np.int64)
        block_sums = sums[block]
        derived = _derived(weighted, False)  # binary targets may be probabilities
        for i in range(start, stop):
            f = _positive_probability(preds[i], input_kind)
            o = np.float64(target[i])
            k = _bin_of(f, n_bins)
            counts[block, k] += 1
            weight = np.float64(sample_weight[i // row_width]) if weighted else 1.0
            _stage(staged, filled, block_sums, k, weight, f, o, derived)
        _finish(staged, filled, block_sums, counts[block], derived)


# -- per-class (one-vs-rest) bins ----------------------------------------------------------
#
# ``class_sums[split, class, bin, slot]``: the forecast of class c in a row is its
# probability p_c and the outcome [label == c] (or the soft target's mass on c), for
# multiclass rows (``distribution``); for multi-label rows each label's own positive
# probability and target. The work is split by class (times a few row ranges when there
# are fewer classes than threads), not by rows: a row block with every class's bins would
# stage and sum C times more state per thread.


@njit(nogil=True, cache=True)
def _row_scale(row):
    """(shift, 1 / sum exp(x - shift)) of a logits row, as :func:`_top_label` computes them."""
    top = np.float64(row[0])
    for c in range(1, row.shape[0]):
        top = max_num(top, np.float64(row[c]))
    total = 0.0
    if is_float32(row):
        shift = np.float32(top)
        for c in range(row.shape[0]):
            total = add_reassoc(total, np.float64(exp32(row[c] - shift)))
    else:
        for c in range(row.shape[0]):
            total = add_reassoc(total, exp64(np.float64(row[c]) - top))
    return top, 1.0 / total


@njit(parallel=True, cache=True)
def row_scales(preds, scales):
    """Each logits row's :func:`_row_scale` into ``scales`` (N, 2)."""
    for i in prange(preds.shape[0]):
        shift, inverse = _row_scale(preds[i])
        scales[i, 0] = shift
        scales[i, 1] = inverse


@njit(nogil=True, cache=True)
def _class_probability(preds, scales, i, c, input_kind, distribution):
    if not distribution:
        return _positive_probability(preds[i, c], input_kind)
    if input_kind == LOGITS:
        if is_float32(preds[i]):
            e = np.float64(exp32(preds[i, c] - np.float32(scales[i, 0])))
        else:
            e = exp64(np.float64(preds[i, c]) - scales[i, 0])
        return e * scales[i, 1]
    if input_kind == LOGPROBS:
        return math.exp(np.float64(preds[i, c]))
    return np.float64(preds[i, c])


@njit(nogil=True, cache=True)
def _add_staged(staged, filled, sums, k, skip):
    for slot in range(N_BIN_SUMS):
        if not skip[slot]:
            add_terms(sums[k, slot], staged[k, slot], filled[k])
    filled[k] = 0


@njit(parallel=True, cache=True)
def class_bins(
    preds,
    labels,
    soft,
    sample_weight,
    input_kind,
    distribution,
    ignore,
    has_ignore,
    scales,
    sums,
    counts,
):
    """One-vs-rest bins of every class: ``sums`` (splits, C, n_bins, N_BIN_SUMS, N_SLOTS),
    ``counts`` (splits, C, n_bins).

    ``preds`` (N, C); ``labels`` (N,) hard labels, or ``soft`` (N, C) outcomes (soft
    targets, multi-label targets) when ``labels`` is empty; ``distribution``: the row is
    one distribution (multiclass; ``scales`` from :func:`row_scales` for logits) rather
    than C independent positive-class forecasts (multi-label).
    """
    n_rows = preds.shape[0]
    n_splits, n_classes, n_bins = sums.shape[0], sums.shape[1], sums.shape[2]
    hard = labels.shape[0] > 0
    weighted = sample_weight.shape[0] > 0
    for task in prange(n_splits * n_classes):
        split = task // n_classes
        c = task % n_classes
        start = split * n_rows // n_splits
        stop = (split + 1) * n_rows // n_splits
        staged = np.empty((n_bins, N_BIN_SUMS, _STAGE), dtype=np.float64)
        filled = np.zeros(n_bins, dtype=np.int64)
        task_sums = sums[split, c]
        task_counts = counts[split, c]
        # Derived rather than added: an unweighted bin's weight is its count, and a 0/1
        # outcome's square is itself (the same bits, as in the top-label bins).
        skip = np.zeros(N_BIN_SUMS, dtype=np.bool_)
        skip[BIN_WEIGHT] = not weighted
        skip[BIN_OUTCOME_SQUARED] = hard
        for i in range(start, stop):
            if hard and has_ignore and labels[i] == ignore:
                continue
            f = _class_probability(preds, scales, i, c, input_kind, distribution)
            o = (1.0 if labels[i] == c else 0.0) if hard else np.float64(soft[i, c])
            k = _bin_of(f, n_bins)
            task_counts[k] += 1
            w = np.float64(sample_weight[i]) if weighted else 1.0
            n = filled[k]
            staged[k, BIN_WEIGHT, n] = w
            staged[k, BIN_CONFIDENCE, n] = w * f
            staged[k, BIN_OUTCOME, n] = w * o
            staged[k, BIN_CONFIDENCE_SQUARED, n] = w * f * f
            staged[k, BIN_PRODUCT, n] = w * f * o
            staged[k, BIN_OUTCOME_SQUARED, n] = w * o * o
            filled[k] = n + 1
            if n + 1 == _STAGE:
                _add_staged(staged, filled, task_sums, k, skip)
        for k in range(n_bins):
            _add_staged(staged, filled, task_sums, k, skip)
        normalize(task_sums.reshape(-1, N_SLOTS))
        for k in range(n_bins):
            if skip[BIN_WEIGHT]:
                add_term(task_sums[k, BIN_WEIGHT], np.float64(task_counts[k]))
            if skip[BIN_OUTCOME_SQUARED]:
                task_sums[k, BIN_OUTCOME_SQUARED, :] = task_sums[k, BIN_OUTCOME, :]
        normalize(task_sums.reshape(-1, N_SLOTS))
