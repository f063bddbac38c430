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
sum s o^2; ``counts[block, bin]`` the forecasts in each bin. Every sum is exact, so the
bits do not depend on the blocks or threads: the top-label and positive-class bins add
each term's fixed-point digits (unweighted 0/1 outcomes through a per-chunk tally,
:func:`_tally_chunk`), the per-class bins stage terms for
:func:`~xentstream._kernels.exact.add_terms`. Inputs were validated by the loss kernels
first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from xentstream._kernels.exact import (
    CHUNK_BITS,
    MAX_TERMS_PER_BLOCK,
    N_SLOTS,
    UNIT_EXPONENT,
    add_term,
    add_terms,
    add_units,
    combine_blocks,
    normalize,
)
from xentstream._kernels.fastmath import (
    add_four,
    add_reassoc,
    exp32,
    exp64,
    is_float32,
    max_num,
)
from xentstream._kernels.layout import LOGITS, LOGPROBS
from xentstream._kernels.rows import (
    NARROW_GROUP_ELEMENTS,
    positive_probabilities_fast,
    positive_probabilities_from_exps,
)

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
def _row_max(row):
    top = np.float64(row[0])
    for c in range(1, row.shape[0]):
        top = max_num(top, np.float64(row[c]))
    return top


@njit(nogil=True, cache=True)
def _inverse_exp_total(row, top):
    """``1 / sum exp(x - top)`` of a logits row: float32 exps of float32 logits summed in
    float64, as the loss kernels compute them."""
    total = 0.0
    if is_float32(row):
        shift = np.float32(top)
        for c in range(row.shape[0]):
            total = add_reassoc(total, np.float64(exp32(row[c] - shift)))
    else:
        for c in range(row.shape[0]):
            total = add_reassoc(total, exp64(np.float64(row[c]) - top))
    return 1.0 / total


@njit(nogil=True, cache=True)
def _top_label(row, input_kind):
    """(index, probability) of the row's most probable class (the first of ties).

    The maximum and the sum of exponentials are vectorizable loops (``max_num``,
    ``add_reassoc``, the branch-free ``exp64``): a scalar loop of ``math.exp`` cost
    twice the loss kernel's whole pass over logits rows (C=10, measured).
    """
    top = _row_max(row)
    best = 0
    for c in range(row.shape[0]):
        if np.float64(row[c]) == top:
            best = c
            break
    if input_kind == LOGITS:
        return best, _inverse_exp_total(row, top)
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


# -- the top-label and positive-class bins -------------------------------------------------
#
# A block's forecasts are computed a chunk of rows at a time in SIMD loops (narrow rows
# across rows, as the loss kernels scan them); each forecast's terms then go straight
# into its bin's accumulator: a term in [2**-31, 2**13) is three integer pieces added to
# three fixed chunks (:func:`_fixed_add`), which is what ``add_term`` would add, found
# with three multiplications instead of its bit work. Unweighted rows with 0/1 outcomes
# (hard labels, 0/1 binary targets) count their weight and outcome sums as integers and
# add them once per block. Exact throughout, so the bits never depend on the blocks.

#: Chunk of the accumulator that takes the lowest piece of a :func:`_fixed_add` term.
_FIXED_CHUNK = 31
if UNIT_EXPONENT + CHUNK_BITS * _FIXED_CHUNK != -83:
    raise ImportError("xentstream: calibration's fixed chunks assume chunk 31 counts 2**-83")
#: Terms in [_FIXED_LOW, _FIXED_HIGH) have an ulp of at least 2**-83 and at most 2**32
#: units 2**-19 each: every top-label confidence (>= 1/C), its square above 2**-31, and
#: weights up to thousands times them. Others (0, tiny, huge, non-finite) take add_term.
_FIXED_LOW = 2.0**-31
_FIXED_HIGH = 2.0**13
_SCALE_TOP = 2.0**19
_UNIT_TOP = 2.0**-19
_SCALE_MID = 2.0**51
_UNIT_MID = 2.0**-51
_SCALE_LOW = 2.0**83
#: Rows of a chunk whose forecasts one set of SIMD loops computes (scratch stays in L1).
_CHUNK_ROWS = 256
#: Rows narrower than this are scanned across rows (too short to vectorize along).
_NARROW_CLASSES = 64
#: Positive-class forecasts of a chunk (one value each).
_CHUNK_VALUES = 1024


@njit(nogil=True, error_model="numpy")
def _float_digits(value):
    """The three 32-bit digits ``(low, mid, top)`` of ``value`` in ``[_FIXED_LOW,
    _FIXED_HIGH)``, in units ``2**-83``, ``2**-51`` and ``2**-19``, as float64 integers.

    Such a value is an integer number of units ``2**-83`` below ``2**96``: the digits
    are peeled off by exact multiplications, floors and subtractions; they are the
    amounts ``add_term`` adds to chunks 31-33. Floats, not integers: branch-free SIMD
    loops take them, while AVX2 has no vector conversion of float64 to int64.
    """
    top = np.floor(value * _SCALE_TOP)
    rest = value - top * _UNIT_TOP  # exact: the low bits of value
    mid = np.floor(rest * _SCALE_MID)
    return (rest - mid * _UNIT_MID) * _SCALE_LOW, mid, top


@njit(nogil=True, error_model="numpy")
def _fixed_add(acc, value):
    """``add_term(acc, value)``, cheaper for ``value`` in ``[_FIXED_LOW, _FIXED_HIGH)``:
    its :func:`_float_digits` added to chunks 31-33 (each below ``2**32``, so the chunks'
    room for ``2**31`` terms holds)."""
    if value >= _FIXED_LOW and value < _FIXED_HIGH:
        low, mid, top = _float_digits(value)
        acc[_FIXED_CHUNK] += np.int64(low)
        acc[_FIXED_CHUNK + 1] += np.int64(mid)
        acc[_FIXED_CHUNK + 2] += np.int64(top)
    else:
        add_term(acc, value)


@njit(nogil=True, error_model="numpy")
def _bin_index(f, n_bins):
    """The bin of forecast ``f`` (:func:`_bin_of`), without converting NaN or huge values."""
    scaled = f * n_bins
    safe = min(scaled, n_bins - 1.0) if scaled >= 0.0 else 0.0  # NaN: bin 0, as _bin_of
    return np.int64(np.int32(safe))  # via int32: AVX2 converts float64 to int32 in SIMD


@njit(nogil=True, error_model="numpy")
def _scratch(preds, n_columns, n_rows, n_bins):
    """A block's chunk scratch, tally and integer bin counts, allocated in a called
    function: numba hoists an ``np.empty`` of a ``prange`` body out of the loop (so blocks
    would share it) when only called helpers write it. The transposed chunk and its
    maxima keep the dtype of ``preds`` (float32 compares and exps need no conversion)."""
    return (
        np.empty((n_columns, n_rows), dtype=preds.dtype),
        np.empty(n_rows, dtype=preds.dtype),
        np.empty(n_rows),
        np.empty(n_rows),
        np.empty(n_rows, dtype=np.float32),
        np.empty(n_rows, dtype=np.int64),
        np.empty(n_rows, dtype=np.int64),
        np.zeros(n_bins, dtype=np.int64),
        _tally_scratch(n_bins),
        np.empty((_TALLY_DIGITS, n_rows)),
        np.empty(n_rows),
    )


@njit(nogil=True, error_model="numpy")
def _top_label_chunk(preds, start, stop, input_kind, columns, top, best, conf, total, exps32):
    """Top class ``best[r]`` and its probability ``conf[r]`` of narrow rows ``start:stop``.

    The chunk is transposed into ``columns[c, r]`` (the dtype of ``preds``) and every
    pass runs over its rows in SIMD lanes: the first maximum ``top[r]`` and its class,
    then for logits ``1 / sum exp(x - max)`` (float32 exps of float32 logits, summed in
    float64, as :func:`_top_label`), for log-probabilities ``exp(max)``. Each row's
    values come from its own lane with the classes in a fixed order, so they depend on
    the row only, never on the chunk.
    """
    chunk = preds[start:stop]  # sliced: an index start + r would cost a wraparound check
    n, n_classes = chunk.shape
    for r in range(n):
        for c in range(n_classes):
            columns[c, r] = chunk[r, c]
    for r in range(n):
        top[r] = columns[0, r]
        best[r] = 0
    for c in range(1, n_classes):
        for r in range(n):
            x = columns[c, r]
            larger = x > top[r]  # strict: the first maximum wins
            top[r] = x if larger else top[r]
            best[r] = c if larger else best[r]
    if input_kind == LOGITS:
        for r in range(n):
            total[r] = 0.0
        if is_float32(preds):
            for c in range(n_classes):
                for r in range(n):  # float32 math in its own loop, widened in the next
                    exps32[r] = exp32(columns[c, r] - top[r])
                for r in range(n):
                    total[r] = total[r] + np.float64(exps32[r])
        else:
            for c in range(n_classes):
                for r in range(n):
                    total[r] = total[r] + exp64(np.float64(columns[c, r]) - np.float64(top[r]))
        for r in range(n):
            conf[r] = 1.0 / total[r]
    elif input_kind == LOGPROBS:
        for r in range(n):
            conf[r] = math.exp(np.float64(top[r]))
    else:
        for r in range(n):
            conf[r] = np.float64(top[r])


# -- the tally of unweighted 0/1 outcomes ----------------------------------------------------
#
# The common case (hard labels or 0/1 targets, no sample weights) adds per forecast only
# f (to the confidence, and to the product when the outcome is 1) and f*f; the weight and
# outcome sums are counts. For f in [2**-16, 1] (every top-label forecast of up to 2**16
# classes, nearly every positive-class one) f is an integer number of units 2**-68 and
# f*f one of units 2**-84 (their ulps are at least that), each split into two integer
# digits (a SIMD loop into a column-major ``digits`` table): f's high digit (units
# 2**-30, at most 2**30) carries the forecast's count too, as 2**41 more, so a row
# needs four adds, not five; its low digit is below 2**38, f*f's two below 2**42 (units
# 2**-42, 2**-84). Each forecast adds its four digits to one row of a small table (one
# 4-lane vector add, :func:`~xentstream._kernels.fastmath.add_four`),
# ``tally[2 k + o]`` (bin k, outcome o: a bin's confidence is its two rows' sum, its
# product the hit row's), in float64: a chunk's digit sums stay below 2**53, so they are
# exact. After each chunk :func:`_flush_tally` moves the table's sums and counts into
# the block's int64 sums; :func:`_drain_tally` adds those to the bins' accumulators and
# counts when the block ends (or every :data:`_DRAIN_CHUNKS` chunks): a flush is a few
# integer adds a row instead of six ``add_term`` calls a bin.
# Measured (1 thread, one 1024-forecast chunk again and again): 8.8 ns a forecast with
# row-major digits (their loop stayed scalar), 3.9-4.1 ns with five scalar adds a row and
# the accumulators updated every chunk, 2.4-2.6 ns now.

#: Digits a forecast adds to its tally row: f's two (units 2**-30, 2**-68; the first
#: holds the count, 2**41 a forecast), then f*f's two (units 2**-42, 2**-84).
_TALLY_DIGITS = 4  # one 4-lane vector add a forecast (fastmath.add_four)
_TALLY_LOW = 2.0**-16
_F_SPLIT = 2.0**30
_F_UNIT_HIGH = 2.0**-30
_F_SCALE_LOW = 2.0**68
_COUNT_UNIT = 2.0**41
_INVERSE_COUNT_UNIT = 2.0**-41
_Q_SPLIT = 2.0**42
_Q_UNIT_HIGH = 2.0**-42
_Q_SCALE_LOW = 2.0**84
#: Chunks whose int64 digit sums a block holds before they join the accumulators:
#: each chunk adds at most 2**52 to a digit's sum over both outcome rows, so 2**9
#: chunks stay below the 2**62 that ``add_units`` takes.
_DRAIN_CHUNKS = 1 << 9
_CHUNK_MOST = max(_CHUNK_ROWS, _CHUNK_VALUES)
if (
    _CHUNK_MOST * (_Q_SPLIT + 1.0) >= 2.0**53
    or _DRAIN_CHUNKS * _CHUNK_MOST * (_Q_SPLIT + 1.0) >= 2.0**62
    or _CHUNK_MOST * (_COUNT_UNIT + _F_SPLIT) >= 2.0**53
    or _CHUNK_MOST * _F_SPLIT >= _COUNT_UNIT  # the count is the sum's digits above 2**41
):
    raise ImportError("xentstream: calibration's tally of a chunk must stay exact in float64")


@njit(nogil=True, error_model="numpy")
def _tally_scratch(n_bins):
    """A block's tally: the chunk's float64 table (the last row discarded), the block's
    int64 digit sums and counts by table row, and the number of chunks those hold."""
    return (
        np.zeros((2 * n_bins + 1, _TALLY_DIGITS)),
        np.zeros((2 * n_bins, _TALLY_DIGITS + 1), dtype=np.int64),
        np.zeros(1, dtype=np.int64),
    )


@njit(nogil=True, error_model="numpy")
def _tally_chunk(conf, outcome, n, n_bins, tally, digits, rows, block_sums, block_counts, hits):
    """Tally ``n`` unweighted forecasts ``conf[r]`` with outcomes ``outcome[r]`` (1.0 or
    0.0; negative skips an ignored row) and add them to the block's bins. Forecasts
    outside ``[2**-16, 1]`` take :func:`_add_counted` instead.

    The first loop is branch-free SIMD (column-major ``digits``; no select of ``f``): a
    forecast not tallied adds its digits, NaN maybe, to the last table row, ``rows[r]``,
    which is discarded, and its row index is selected before the int32 conversion, so
    NaN is never converted. Row-major digits or a select of ``f`` kept this loop scalar
    (8.8 vs 3.4 ns a forecast, both loops, 1 thread); two branches in it cost 2.7x more.
    """
    table = tally[0]
    discard = 2.0 * n_bins
    top_bin = n_bins - 1.0
    n_slow = 0
    for r in range(n):
        f = conf[r]
        o = outcome[r]
        fast = (f >= _TALLY_LOW) & (f <= 1.0)  # NaN: not fast
        high = np.floor(f * _F_SPLIT)
        square = f * f
        square_high = np.floor(square * _Q_SPLIT)
        digits[0, r] = high + _COUNT_UNIT
        digits[1, r] = (f - high * _F_UNIT_HIGH) * _F_SCALE_LOW  # exact: f's bits below 2**-30
        digits[2, r] = square_high
        digits[3, r] = (square - square_high * _Q_UNIT_HIGH) * _Q_SCALE_LOW
        tallied = fast & (o >= 0.0)
        row = 2.0 * np.floor(min(f * n_bins, top_bin)) + o  # for fast f: 2 _bin_index + o
        rows[r] = np.int32(row if tallied else discard)  # AVX2 converts float64 to int32
        n_slow += np.int64((not fast) & (o >= 0.0))
    for r in range(n):
        add_four(table, rows[r], digits[0, r], digits[1, r], digits[2, r], digits[3, r])
    for r in range(n if n_slow else 0):
        f = conf[r]
        o = outcome[r]
        if o >= 0.0 and not ((f >= _TALLY_LOW) & (f <= 1.0)):
            k = _bin_index(f, n_bins)
            block_counts[k] += 1
            hits[k] += np.int64(o)
            _add_counted(block_sums[k], f, o == 1.0)
    _flush_tally(tally, block_sums, block_counts, hits)


@njit(nogil=True, error_model="numpy")
def _flush_tally(tally, block_sums, block_counts, hits):
    """Move a chunk's table (:func:`_tally_chunk`) into the block's int64 digit sums and
    counts, and zero it: every sum is an integer below 2**53, so each conversion is
    exact. Nothing shared is written: blocks' ``block_counts`` share cache lines, and
    threads writing them every chunk cost ~1 ns a forecast on two threads."""
    table, pending, n_chunks = tally
    table[table.shape[0] - 1] = 0.0  # the discarded row
    for row in range(pending.shape[0]):
        sums = table[row]
        if sums[0] == 0.0:  # a tallied forecast adds at least 2**41 here
            continue
        count = np.floor(sums[0] * _INVERSE_COUNT_UNIT)
        pending[row, 0] += np.int64(sums[0] - count * _COUNT_UNIT)
        for j in range(1, _TALLY_DIGITS):
            pending[row, j] += np.int64(sums[j])
        pending[row, _TALLY_DIGITS] += np.int64(count)
        for j in range(_TALLY_DIGITS):
            sums[j] = 0.0
    n_chunks[0] += 1
    if n_chunks[0] == _DRAIN_CHUNKS:
        _drain_tally(tally, block_sums, block_counts, hits)


@njit(nogil=True, error_model="numpy")
def _drain_tally(tally, block_sums, block_counts, hits):
    """Add the block's int64 digit sums (:func:`_flush_tally`) to its bins' accumulators
    and its counts to ``block_counts`` / ``hits``, and zero them: a bin's confidence
    digits are both its rows', its product the hit row's."""
    _, pending, n_chunks = tally
    for k in range(block_sums.shape[0]):
        miss = pending[2 * k]
        hit = pending[2 * k + 1]
        block_counts[k] += miss[_TALLY_DIGITS] + hit[_TALLY_DIGITS]
        hits[k] += hit[_TALLY_DIGITS]
        sums = block_sums[k]
        add_units(sums[BIN_CONFIDENCE], miss[0] + hit[0], -30)
        add_units(sums[BIN_CONFIDENCE], miss[1] + hit[1], -68)
        add_units(sums[BIN_CONFIDENCE_SQUARED], miss[2] + hit[2], -42)
        add_units(sums[BIN_CONFIDENCE_SQUARED], miss[3] + hit[3], -84)
        add_units(sums[BIN_PRODUCT], hit[0], -30)
        add_units(sums[BIN_PRODUCT], hit[1], -68)
    pending[:] = 0
    n_chunks[0] = 0


@njit(nogil=True, error_model="numpy")
def _binary_outcomes(target, start, stop):
    """Whether every outcome of ``start:stop`` is 0 or 1 (then ``s o^2 = s o``)."""
    values = target[start:stop]
    odd = 0
    for r in range(values.shape[0]):
        t = values[r]
        odd += np.int64((t != 0.0) & (t != 1.0))
    return odd == 0


@njit(nogil=True, error_model="numpy")
def _add_forecast(acc, w, f, o, weighted, binary):
    """One forecast's terms into its bin's accumulators ``acc`` (slots, N_SLOTS): the
    floats the staged path adds (``w * f * f`` is ``(w * f) * f``), added exactly."""
    if weighted:
        _fixed_add(acc[BIN_WEIGHT], w)
    wf = w * f
    wo = w * o
    _fixed_add(acc[BIN_CONFIDENCE], wf)
    _fixed_add(acc[BIN_OUTCOME], wo)
    _fixed_add(acc[BIN_CONFIDENCE_SQUARED], wf * f)
    _fixed_add(acc[BIN_PRODUCT], wf * o)
    if not binary:
        _fixed_add(acc[BIN_OUTCOME_SQUARED], wo * o)


@njit(nogil=True, error_model="numpy")
def _add_counted(acc, f, hit):
    """An unweighted forecast with a 0/1 outcome ``hit``: its weight and outcome are
    counted (:func:`_finish_bins`); ``f o`` is ``f`` or nothing."""
    _fixed_add(acc[BIN_CONFIDENCE], f)
    _fixed_add(acc[BIN_CONFIDENCE_SQUARED], f * f)
    if hit:
        _fixed_add(acc[BIN_PRODUCT], f)


@njit(nogil=True, error_model="numpy")
def _finish_bins(sums, counts, hits, tally, weighted, binary, counted):
    """End a block's bins: add the digit sums still in its ``tally``
    (:func:`_drain_tally`) and what was counted, not summed: the weight of unweighted
    forecasts (their count), the outcomes ``hits`` of ``counted`` ones (of their ``o^2``
    too when not every outcome of the block is 0/1: the tallied ones are), and for 0/1
    outcomes ``s o^2``, which equals ``s o`` term by term (the same bits).

    Not normalized: :func:`combine_bin_blocks` normalizes every block it adds, and a block's
    chunks have room for its terms and these few (two normalizations of a block's 90
    accumulators here cost ~9 us, a sixth of a 64k-row batch's bins)."""
    _drain_tally(tally, sums, counts, hits)
    for k in range(sums.shape[0]):
        if not weighted:
            add_term(sums[k, BIN_WEIGHT], np.float64(counts[k]))  # < 2**53: exact
        if counted:
            add_term(sums[k, BIN_OUTCOME], np.float64(hits[k]))
        if counted and not binary:  # tallied 0/1 outcomes beside summed soft ones: o^2 = o
            add_term(sums[k, BIN_OUTCOME_SQUARED], np.float64(hits[k]))
    if binary:
        for k in range(sums.shape[0]):
            sums[k, BIN_OUTCOME_SQUARED, :] = sums[k, BIN_OUTCOME, :]


@njit(parallel=True, cache=True)
def top_label_bins(
    preds, labels, soft, sample_weight, input_kind, ignore, has_ignore, sums, counts
):
    """Bins of the top-label forecasts of ``preds`` (N, C).

    ``labels`` (N,) hard labels, or ``soft`` (N, C) target distributions when
    ``labels`` is empty.
    """
    n_rows, n_classes = preds.shape
    n_blocks, n_bins = sums.shape[0], sums.shape[1]
    hard = labels.shape[0] > 0
    weighted = sample_weight.shape[0] > 0
    narrow = n_classes < _NARROW_CLASSES
    counted = hard and not weighted
    for block in prange(n_blocks):
        start = block * n_rows // n_blocks
        stop = (block + 1) * n_rows // n_blocks
        columns, top, conf, total, exps32, best, bins, hits, tally, digits, outcome = _scratch(
            preds, n_classes if narrow else 0, _CHUNK_ROWS, n_bins
        )
        block_sums = sums[block]
        block_counts = counts[block]
        for chunk_start in range(start, stop, _CHUNK_ROWS):
            chunk_stop = min(chunk_start + _CHUNK_ROWS, stop)
            n = chunk_stop - chunk_start
            if narrow:
                _top_label_chunk(
                    preds,
                    chunk_start,
                    chunk_stop,
                    input_kind,
                    columns,
                    top,
                    best,
                    conf,
                    total,
                    exps32,
                )
            else:
                for r in range(n):
                    best[r], conf[r] = _top_label(preds[chunk_start + r], input_kind)
            if counted:
                chunk_labels = labels[chunk_start:chunk_stop]
                for r in range(n):  # the outcome of each row's top class
                    label = np.int64(chunk_labels[r])
                    skip = has_ignore and label == ignore
                    outcome[r] = -1.0 if skip else np.float64(label == best[r])
                _tally_chunk(
                    conf, outcome, n, n_bins, tally, digits, bins, block_sums, block_counts, hits
                )
                continue
            for r in range(n):
                bins[r] = _bin_index(conf[r], n_bins)
            for r in range(n):
                i = chunk_start + r
                if hard and has_ignore and labels[i] == ignore:
                    continue
                if hard:
                    o = 1.0 if labels[i] == best[r] else 0.0
                else:
                    o = np.float64(soft[i, best[r]])
                k = bins[r]
                block_counts[k] += 1
                w = np.float64(sample_weight[i]) if weighted else 1.0
                _add_forecast(block_sums[k], w, conf[r], o, weighted, hard)
        _finish_bins(block_sums, block_counts, hits, tally, weighted, hard, counted)


@njit(nogil=True, error_model="numpy")
def _counted_outcomes(outcomes, start, stop):
    """Whether every outcome of ``start:stop`` is 1, 0 or -1 (an ignored row)."""
    values = outcomes[start:stop]
    odd = 0
    for r in range(values.shape[0]):
        o = values[r]
        odd += np.int64((o != 0.0) & (o != 1.0) & (o != -1.0))
    return odd == 0


@njit(parallel=True, cache=True)
def forecast_bins(forecasts, sample_weight, sums, counts):
    """Bins of the top-label forecasts a loss kernel wrote (``row_forecasts`` (2, N):
    each row's confidence, then its outcome; -1 skips an ignored row).

    Blocks whose outcomes are all 0/1 and unweighted take the counted tally; others
    add every term (a soft target's mass). Both add the same exact numbers, so a row's
    bins never depend on the path its block took.
    """
    n = forecasts.shape[1]
    n_blocks, n_bins = sums.shape[0], sums.shape[1]
    weighted = sample_weight.shape[0] > 0
    confidences = forecasts[0]
    outcomes = forecasts[1]
    for block in prange(n_blocks):
        start = block * n // n_blocks
        stop = (block + 1) * n // n_blocks
        _, _, _, _, _, _, bins, hits, tally, digits, _ = _scratch(
            confidences, 0, _CHUNK_VALUES, n_bins
        )
        block_sums = sums[block]
        block_counts = counts[block]
        binary = _counted_outcomes(outcomes, start, stop)
        counted = binary and not weighted
        for chunk_start in range(start, stop, _CHUNK_VALUES):
            chunk_stop = min(chunk_start + _CHUNK_VALUES, stop)
            m = chunk_stop - chunk_start
            conf = confidences[chunk_start:chunk_stop]
            chunk_outcomes = outcomes[chunk_start:chunk_stop]
            if counted:  # outcomes 1.0, 0.0 or -1.0 (ignored): the tally's own
                _tally_chunk(
                    conf,
                    chunk_outcomes,
                    m,
                    n_bins,
                    tally,
                    digits,
                    bins,
                    block_sums,
                    block_counts,
                    hits,
                )
                continue
            _add_chunk(
                conf,
                chunk_outcomes,
                chunk_start,
                1,
                sample_weight,
                binary,
                bins,
                block_sums,
                block_counts,
            )
        _finish_bins(block_sums, block_counts, hits, tally, weighted, binary, counted)


@njit(nogil=True, error_model="numpy")
def _add_chunk(
    conf, outcomes, first, row_width, sample_weight, binary, bins, block_sums, block_counts
):
    """Every term of a chunk's forecasts ``conf`` with outcomes ``outcomes`` (below 0:
    an ignored row, skipped) into their bins, the chunk's first value being value
    ``first`` of the call (``row_width`` forecasts a row of ``sample_weight``): the
    general path, for weighted forecasts or outcomes other than 0 and 1."""
    n_bins = block_counts.shape[0]
    weighted = sample_weight.shape[0] > 0
    for r in range(conf.shape[0]):
        bins[r] = _bin_index(conf[r], n_bins)
    for r in range(conf.shape[0]):
        o = np.float64(outcomes[r])
        if o < 0.0:
            continue
        k = bins[r]
        block_counts[k] += 1
        w = np.float64(sample_weight[(first + r) // row_width]) if weighted else 1.0
        _add_forecast(block_sums[k], w, conf[r], o, weighted, binary)


@njit(parallel=True, cache=True)
def positive_class_bins(preds, target, sample_weight, row_width, input_kind, sums, counts):
    """Bins of positive-class forecasts: ``preds`` and ``target`` flat, ``row_width``
    forecasts per row of ``sample_weight`` (1 for binary, the labels for multi-label)."""
    n = preds.shape[0]
    n_blocks = sums.shape[0]
    for block in prange(n_blocks):
        start = block * n // n_blocks
        stop = (block + 1) * n // n_blocks
        positive_block_bins(
            preds,
            target,
            sample_weight,
            row_width,
            input_kind,
            start,
            stop,
            sums[block],
            counts[block],
        )


@njit(nogil=True, error_model="numpy")
def positive_block_bins(
    preds, target, sample_weight, row_width, input_kind, start, stop, block_sums, block_counts
):
    """One block's bins of the positive-class forecasts of values ``start:stop``
    (``block_sums`` (n_bins, N_BIN_SUMS, N_SLOTS), ``block_counts`` (n_bins,), zeroed;
    left for :func:`combine_bin_blocks` to normalize): the body of
    :func:`positive_class_bins`, which the binary loss kernel calls too, on each of its
    own blocks right after its loss pass, while the block's values are still in cache
    (no second launch, no float64 copy of the targets, no forecasts written out and read
    back). Exact, so the bits never depend on the blocks."""
    n_bins = block_counts.shape[0]
    weighted = sample_weight.shape[0] > 0
    _, _, conf, _, exps32, _, bins, hits, tally, digits, outcome = _scratch(
        preds, 0, _CHUNK_VALUES, n_bins
    )
    # Binary targets may be probabilities: 0/1 outcomes are asked of the block's data.
    binary = _binary_outcomes(target, start, stop)
    counted = binary and not weighted
    for chunk_start in range(start, stop, _CHUNK_VALUES):
        chunk_stop = min(chunk_start + _CHUNK_VALUES, stop)
        m = chunk_stop - chunk_start
        positive_probabilities_fast(preds, chunk_start, chunk_stop, input_kind, conf, exps32)
        outcomes = target[chunk_start:chunk_stop]
        if counted:  # the block's targets are all 0 or 1 (or -0.0): the tally's own
            for r in range(m):  # as float64: the tally's SIMD loop converts nothing
                outcome[r] = np.float64(outcomes[r])
            _tally_chunk(
                conf, outcome, m, n_bins, tally, digits, bins, block_sums, block_counts, hits
            )
            continue
        _add_chunk(
            conf[:m],
            outcomes,
            chunk_start,
            row_width,
            sample_weight,
            binary,
            bins,
            block_sums,
            block_counts,
        )
    _finish_bins(block_sums, block_counts, hits, tally, weighted, binary, counted)


@njit(nogil=True, cache=True)
def combine_bin_blocks(block_sums, block_counts, sums, counts):
    """Add the blocks' bins (``block_sums`` (blocks, n_bins, N_BIN_SUMS, N_SLOTS), each
    normalized here; ``block_counts`` (blocks, n_bins)) into zeroed ``sums`` / ``counts``:
    one compiled call, not a Python merge per block (numpy's sum of the counts alone took
    ~6 us, on every batch of a metric with bins)."""
    n_blocks = block_sums.shape[0]
    combine_blocks(block_sums.reshape(n_blocks, -1, N_SLOTS), sums.reshape(-1, N_SLOTS))
    for block in range(n_blocks):
        for k in range(counts.shape[0]):
            counts[k] += block_counts[block, k]


# -- bins fed chunk by chunk, from inside a loss kernel ---------------------------------------
#
# The binary loss kernel's unweighted, ungrouped chunks bin each chunk right after its loss
# pass: the outcomes are the float64 targets that pass has already staged and its 0/1 count
# says which chunks the tally takes, so the bins read no value twice and scan no block
# ahead. Every path adds the same exact numbers, so the bins' bits never depend on it.

if NARROW_GROUP_ELEMENTS > _CHUNK_VALUES:
    raise ImportError("xentstream: a loss kernel's chunk must fit the bins' chunk scratch")


@njit(nogil=True, error_model="numpy")
def chunk_bins_scratch(preds, n_bins):
    """Scratch for :func:`add_chunk_bins` of one block (allocated in a called function,
    as :func:`_scratch`): forecasts, float32 exps, bin rows, hits, tally, digits; empty
    for no bins (``n_bins`` 0)."""
    n_values = _CHUNK_VALUES if n_bins > 0 else 0
    _, _, conf, _, exps32, _, bins, hits, tally, digits, _ = _scratch(preds, 0, n_values, n_bins)
    return conf, exps32, bins, hits, tally, digits


@njit(nogil=True, error_model="numpy")
def add_chunk_bins(
    preds, outcomes, start, stop, input_kind, binary, scratch, no_weights, block_sums, block_counts
):
    """Bin the unweighted positive-class forecasts of values ``start:stop`` (at most
    :data:`xentstream._kernels.rows.NARROW_GROUP_ELEMENTS`) with float64 outcomes
    ``outcomes[:n]``: the tally when ``binary`` (every outcome 0 or 1), else every term.
    ``scratch`` from :func:`chunk_bins_scratch`, ``no_weights`` an empty weight column;
    :func:`finish_chunk_bins` ends the block. For float32 logits, ``scratch``'s float32
    exps already hold the chunk's ``exp(-|x|)``: the loss pass wrote them
    (:func:`~xentstream._kernels.rows.binary_losses_fast`'s ``exps32``)."""
    conf, exps32, bins, hits, tally, digits = scratch
    n = stop - start
    if input_kind == LOGITS and is_float32(preds):
        positive_probabilities_from_exps(preds, start, stop, exps32, conf)
    else:
        positive_probabilities_fast(preds, start, stop, input_kind, conf, exps32)
    if binary:
        _tally_chunk(
            conf,
            outcomes,
            n,
            block_counts.shape[0],
            tally,
            digits,
            bins,
            block_sums,
            block_counts,
            hits,
        )
    else:
        _add_chunk(
            conf[:n], outcomes[:n], start, 1, no_weights, False, bins, block_sums, block_counts
        )


@njit(nogil=True, error_model="numpy")
def finish_chunk_bins(scratch, all_binary, block_sums, block_counts):
    """End a block's bins fed by :func:`add_chunk_bins` (:func:`_finish_bins`;
    ``all_binary``: every chunk was tallied)."""
    _finish_bins(block_sums, block_counts, scratch[3], scratch[4], False, all_binary, True)


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
    top = _row_max(row)
    return top, _inverse_exp_total(row, top)


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


# -- per-group bins (grouped evaluation) ---------------------------------------------------
#
# A grouped run bins every row's forecast in its group's bins as well: the forecasts are
# computed a chunk at a time by the very helpers of the bins above (a row's forecast
# depends on the row only), then each run of a group's rows adds its terms to that
# group's bins, one run per task (runs are disjoint, so tasks never share a bin). Every
# term goes in through ``_add_forecast``'s general path: for unit weights and 0/1
# outcomes its terms are the counted path's numbers (1.0 * f is f, o * o is o), and the
# sums are exact, so a group's bins are bitwise those of a one-shot metric over its rows.


@njit(parallel=True, cache=True)
def top_label_forecasts(preds, labels, soft, input_kind, ignore, has_ignore, conf, outcome, keep):
    """Every row's top-label forecast into ``conf`` (N,), its outcome (``labels`` (N,)
    hard labels or ``soft`` (N, C) targets when ``labels`` is empty) into ``outcome`` and
    whether it counts (not ``ignore``) into ``keep``, as :func:`top_label_bins` bins them."""
    n_rows, n_classes = preds.shape
    narrow = n_classes < _NARROW_CLASSES
    hard = labels.shape[0] > 0
    n_chunks = -(-n_rows // _CHUNK_ROWS)
    n_blocks = min(n_chunks, 64)
    for block in prange(n_blocks):
        columns, top, chunk_conf, total, exps32, best, _, _, _, _, _ = _scratch(
            preds, n_classes if narrow else 0, _CHUNK_ROWS, 1
        )
        for chunk in range(block * n_chunks // n_blocks, (block + 1) * n_chunks // n_blocks):
            start = chunk * _CHUNK_ROWS
            stop = min(start + _CHUNK_ROWS, n_rows)
            n = stop - start
            if narrow:
                _top_label_chunk(
                    preds, start, stop, input_kind, columns, top, best, chunk_conf, total, exps32
                )
            else:
                for r in range(n):
                    best[r], chunk_conf[r] = _top_label(preds[start + r], input_kind)
            for r in range(n):
                i = start + r
                conf[i] = chunk_conf[r]
                if hard:
                    label = np.int64(labels[i])
                    keep[i] = not (has_ignore and label == ignore)
                    outcome[i] = 1.0 if label == best[r] else 0.0
                else:
                    keep[i] = True
                    outcome[i] = np.float64(soft[i, best[r]])


@njit(parallel=True, cache=True)
def positive_forecasts(preds, input_kind, conf):
    """Every positive-class forecast of the flat ``preds`` into ``conf``, as
    :func:`positive_class_bins` bins them."""
    n = preds.shape[0]
    n_chunks = -(-n // _CHUNK_VALUES)
    for chunk in prange(n_chunks):
        start = chunk * _CHUNK_VALUES
        stop = min(start + _CHUNK_VALUES, n)
        exps32 = _scratch(preds, 0, _CHUNK_VALUES, 1)[4]
        positive_probabilities_fast(preds, start, stop, input_kind, conf[start:stop], exps32)


#: Terms a group's bins take between normalizations: each adds below 2**32 to a chunk,
#: and a normalized chunk is below 2**32, so int64 chunks hold 2**30 of them with room.
MAX_PENDING_TERMS = MAX_TERMS_PER_BLOCK


@njit(parallel=True, cache=True)
def grouped_bins(
    order,
    run_starts,
    run_codes,
    conf,
    outcome,
    keep,
    sample_weight,
    row_width,
    sums,
    counts,
    pending,
):
    """Add each run's forecasts to its group's bins, in place: ``sums`` (groups, n_bins,
    N_BIN_SUMS, N_SLOTS), ``counts`` (groups, n_bins), ``pending`` (groups,) the terms
    added since the group's bins were last normalized.

    Run ``r`` holds rows ``order[run_starts[r]:run_starts[r + 1]]``, all of group
    ``run_codes[r]`` (no group twice); row ``i`` has ``row_width`` forecasts
    ``conf[i * row_width + l]`` with outcomes ``outcome`` and, unless ``keep`` is
    empty, whether each counts. ``sample_weight`` (N,) or empty. A group's bins are
    normalized only when their pending terms would pass :data:`MAX_PENDING_TERMS`
    (:func:`normalize_pending` before they are read): a batch's cost is its rows and
    the bins it touches, not a pass over every touched group's accumulators.
    """
    n_runs, n_bins = run_codes.shape[0], sums.shape[1]
    weighted = sample_weight.shape[0] > 0
    kept = keep.shape[0] > 0
    for r in prange(n_runs):
        group = run_codes[r]
        group_sums = sums[group]
        group_counts = counts[group]
        terms = (run_starts[r + 1] - run_starts[r]) * row_width
        if pending[group] + terms > MAX_PENDING_TERMS:
            normalize(group_sums.reshape(-1, N_SLOTS))
            pending[group] = 0
        pending[group] += terms
        for j in range(run_starts[r], run_starts[r + 1]):
            row = order[j]
            w = np.float64(sample_weight[row]) if weighted else 1.0
            for label in range(row_width):
                i = row * row_width + label
                if kept and not keep[i]:
                    continue
                f = conf[i]
                k = _bin_index(f, n_bins)
                group_counts[k] += 1
                _add_forecast(group_sums[k], w, f, outcome[i], True, False)


@njit(parallel=True, cache=True)
def normalize_pending(sums, pending):
    """Normalize the bins of every group with pending terms (canonical again)."""
    for group in prange(pending.shape[0]):
        if pending[group]:
            normalize(sums[group].reshape(-1, N_SLOTS))
            pending[group] = 0
