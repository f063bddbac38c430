"""Parallel CPU kernels: one pass over a batch, exact partial sums per block of rows.

Every kernel has the same shape of signature::

    kernel(preds, target, <per-class or per-label weights>, sample_weight, groups, options,
           row_losses, row_terms, row_forecasts, bin_sums, bin_counts, term_rows, sums,
           counts, class_sums, class_counts, errors, error_values)

(``options``: :func:`~xentstream._kernels.layout.packed_options`, an int64 vector the
dispatcher types in C; the kernel rebuilds the ``KernelOptions`` from it) and splits
the rows into ``sums.shape[0]`` contiguous blocks, one ``prange`` iteration each.
A block writes only its own slice of the output arrays (no false sharing of
accumulators, no atomics). Because the sums are exact integers, the caller may
combine the blocks in any order and the bits do not depend on the number of blocks
or threads. Inside a block, each row's terms are staged in its
group's buffer and added a buffer at a time (:func:`_stage_row`,
:func:`~xentstream._kernels.exact.add_terms`): exact too, so the same bits.

Validation is fused into the same pass: a block stops at its first bad row and
records ``(row, code, column)`` in ``errors[block]`` and the offending value in
``error_values[block]``; the caller reports the smallest row over all blocks.
``sums[block, group]`` and ``counts[block, group]`` are per group: ``groups`` holds a
group code in ``[0, sums.shape[1])`` for every row (``by=`` in the feeders), so a
grouped evaluation costs the same single pass. Optional inputs and outputs are
switched off by passing arrays of length 0: ``groups`` (one group, code 0),
``row_losses`` (per-row losses for ``reduction="none"``), ``sample_weight``
(all ones), ``class_sums`` / ``class_counts`` (per-class statistics), ``row_terms``.

``row_terms`` (shape ``(N, N_ROW_TERMS)`` or ``(0, N_ROW_TERMS)``) receives every row's
exact terms, the values :func:`_stage_row` adds to each sum (``layout.ROW_IGNORED``
marks ignored rows), row ``i``'s at row ``term_rows[i]`` (when given, else ``i``):
grouped evaluation at any number of groups passes no ``groups`` and reduces these
terms per group afterwards (:mod:`xentstream._kernels.groups`), so that the kernel's
cost and memory do not grow with the group count.

``row_forecasts`` (shape ``(2, N)`` or ``(2, 0)``) receives every row's forecast for
the reliability bins (``calibration_bins``) and its outcome in the multiclass kernels:
the top class's probability and 1 or 0 for a hard label, the target's mass on it for a
soft one, -1 for an ignored row. The bins then cost a tally of these, not a second
pass over the predictions (:mod:`xentstream._kernels.calibration`). ``bin_sums`` / ``bin_counts``
(``(n_blocks, n_bins, N_BIN_SUMS, N_SLOTS)`` / ``(n_blocks, n_bins)``, or 0 blocks for
none) take the binary kernel's reliability bins themselves: an unweighted, ungrouped
block bins each chunk right after its loss pass, from L1
(``calibration.add_chunk_bins``), others each block after its loss pass
(``calibration.positive_block_bins``); the other kernels leave them alone.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import njit, prange

from xentstream._kernels.calibration import (
    add_chunk_bins,
    chunk_bins_scratch,
    finish_chunk_bins,
    positive_block_bins,
)
from xentstream._kernels.exact import MAX_STAGED_TERMS, add_term, add_terms, bits_float64
from xentstream._kernels.fastmath import add_reassoc, log64
from xentstream._kernels.layout import (
    CLASS_LOSS,
    CLASS_MASS,
    CLASS_WEIGHT,
    CORRECT,
    DENOMINATOR,
    DENOMINATOR_SQUARED,
    ENTROPY,
    IGNORED,
    LABEL_OUT_OF_RANGE,
    LOGITS,
    LOGPROBS,
    LOSS,
    LOSS_SQUARED,
    N_CLASS_SUMS,
    N_SUMS,
    OK,
    POSITIVE,
    ROW_IGNORED,
    ROWS,
    SAMPLE_WEIGHT_INVALID,
    TARGET_ENTROPY,
    WEIGHT,
    KernelOptions,
)
from xentstream._kernels.rows import (
    NARROW_CHUNK_ROWS,
    NARROW_CLASSES,
    NARROW_GROUP_ELEMENTS,
    bernoulli_entropies_fast,
    binary_chunk_terms,
    binary_log_probabilities_fast,
    binary_loss_fast,
    binary_losses_fast,
    binary_pair_is_ok,
    binary_predicts_positive,
    check_binary_pair,
    hard_label_losses,
    log_probability_fast,
    logit_label_losses,
    narrow_rows_chunk,
    neg_xlogy,
    neg_xlogy_fast,
    scan_prediction_row,
    scan_prediction_row_fast,
    scan_soft_target_row_fast,
    top_label_confidence,
    top_label_confidences,
)

# error_model="numpy": a float division is a plain IEEE division (no zero check that
# would block vectorization); every division in the kernels has a nonzero divisor.
_INF = np.inf
# Error codes passed to a called @njit function as numpy scalars, not Python ints:
# numba compiles a callee once per literal argument value (see exact.add_term).
_WEIGHT_ERROR = np.int64(SAMPLE_WEIGHT_INVALID)
_LABEL_ERROR = np.int64(LABEL_OUT_OF_RANGE)
_NO_COLUMN = np.int64(-1)
#: Rows whose terms a group of a block stages before adding them (9 x 2048 x 8 B =
#: 144 KiB): as many as one ``add_terms`` call may take, its no-overflow limit, so a
#: full buffer is one call per sum. Defined by that limit, so it cannot outgrow it.
_STAGED_ROWS = MAX_STAGED_TERMS
# The chunks that add whole columns of terms at once must fit one call too.
if max(NARROW_CHUNK_ROWS, NARROW_GROUP_ELEMENTS) > MAX_STAGED_TERMS:
    raise ImportError(
        "xentstream: NARROW_CHUNK_ROWS and NARROW_GROUP_ELEMENTS must not exceed "
        f"exact.MAX_STAGED_TERMS ({MAX_STAGED_TERMS}): add_terms would overflow"
    )
#: Bytes of staging columns per block (all groups): within a core's L2.
_STAGING_BYTES = 1 << 18
_KERNEL_FLAGS = {"parallel": True, "nogil": True, "cache": True, "error_model": "numpy"}


@njit(nogil=True, error_model="numpy")
def _static_fields(opts, with_entropy):
    """The fields of ``opts`` (``layout.packed_options``: an int64 vector) with the
    entropy flag of a kernel variant.

    ``with_entropy`` is a constant of the variant (a closure variable of its factory),
    so once LLVM inlines this and the row helpers every test of it folds away: the
    function variant holds no entropy code, the metric variant no test of the flag.
    A kernel rebuilds its options as ``KernelOptions(*_static_fields(...))``: numba's
    parfor lowering can rebuild a namedtuple inside a ``prange`` body only when the
    kernel calls its class itself. ``np.bool_`` drops the literal type (LLVM still sees
    a constant). The input kind stays a run-time value: as a constant too it tripled
    the variants a test suite compiles (each 8-20 s here) for no measured speed, the
    SIMD loops testing the kind outside themselves anyway.
    """
    return (
        opts[0],  # input_kind
        bits_float64(opts[1]),  # eps
        bits_float64(opts[2]),  # sum_tol
        opts[3] != 0,  # validate
        bits_float64(opts[4]),  # label_smoothing
        opts[5],  # ignore_index
        opts[6] != 0,  # has_ignore_index
        bits_float64(opts[7]),  # pos_weight
        np.bool_(with_entropy),
    )


@njit(nogil=True, error_model="numpy")
def _row_scratch(n):
    """Scratch of one block for a row's terms: float64, float32 and float64 arrays of n.

    Allocated in a called function on purpose: numba hoists an ``np.empty`` written
    directly in a ``prange`` body out of the loop when it cannot see the writes (they
    happen in called helpers), so blocks would share it; a call is never hoisted.
    """
    return np.empty(n), np.empty(n, dtype=np.float32), np.empty(n)


@njit(nogil=True, error_model="numpy")
def _block_bounds(block, n_blocks, n_rows):
    return block * n_rows // n_blocks, (block + 1) * n_rows // n_blocks


@njit(nogil=True, error_model="numpy")
def _sample_weight(sample_weight, i, validate):
    """Returns (weight, ok): 1.0 when no weights are given; ok False if invalid."""
    if sample_weight.shape[0] == 0:
        return 1.0, True
    s = np.float64(sample_weight[i])
    if validate and not (s >= 0.0 and s - s == 0.0):  # negative, NaN or inf
        return s, False
    return s, True


@njit(nogil=True, error_model="numpy")
def _record_error(errors, error_values, block, row, code, column, value):
    errors[block, 0] = row
    errors[block, 1] = code
    errors[block, 2] = column
    error_values[block] = value


@njit(nogil=True, error_model="numpy")
def _group(groups, i):
    if groups.shape[0] == 0:
        return 0
    return groups[i]


@njit(nogil=True, error_model="numpy")
def _stage_row(staged, k, unit, with_entropy, s, loss, d, entropy, h_target, correct):
    """Write one row's exact terms into column ``k`` of ``staged``; returns ``k + 1``.

    The terms: ``s * loss``, ``s * d``, ``s * loss**2 / d``, ``s``, ``(s * d)**2``,
    ``s * entropy``, ``s * h_target``, ``s * correct``; with ``unit`` weights (s = d = 1)
    only the loss, its square and (``with_entropy``) the entropies, the sums that count
    rows being added once per block (:func:`_add_unit_counts`). Kept free of calls so
    that LLVM inlines it: a per-row call costs more than the adds it stages.
    """
    staged[LOSS, k] = s * loss
    if unit:
        staged[LOSS_SQUARED, k] = loss * loss
    else:
        staged[DENOMINATOR, k] = s * d
        staged[LOSS_SQUARED, k] = s * (loss * loss / d) if d > 0.0 else 0.0
        staged[WEIGHT, k] = s
        staged[DENOMINATOR_SQUARED, k] = (s * d) * (s * d)
        staged[CORRECT, k] = s if correct else 0.0
    if with_entropy or not unit:
        staged[ENTROPY, k] = s * entropy
        staged[TARGET_ENTROPY, k] = s * h_target
    return k + 1


@njit(nogil=True, error_model="numpy")
def _write_row_terms(row_terms, i, s, loss, d, entropy, h_target, correct, positive):
    """Row ``i``'s exact term of every sum, as :func:`_stage_row` stages them unweighted.

    The weighted formulas for every row: with unit weights (s = d = 1) they give the
    same floats as the unit ones (``1 * x`` and ``x / 1`` are exact), and the count
    sums the kernel adds once per block are these rows' 1.0 terms added up.
    """
    terms = row_terms[i]
    terms[LOSS] = s * loss
    terms[DENOMINATOR] = s * d
    terms[LOSS_SQUARED] = s * (loss * loss / d) if d > 0.0 else 0.0
    terms[WEIGHT] = s
    terms[DENOMINATOR_SQUARED] = (s * d) * (s * d)
    terms[ENTROPY] = s * entropy
    terms[TARGET_ENTROPY] = s * h_target
    terms[CORRECT] = s if correct else 0.0
    terms[POSITIVE] = positive
    terms[ROW_IGNORED] = 0.0


@njit(nogil=True, error_model="numpy")
def _term_row(term_rows, i):
    """Where row ``i``'s terms go: ``term_rows[i]`` (the rows in group order, so that
    each group's terms lie together for the reduction), or ``i`` without it."""
    if term_rows.shape[0] == 0:
        return i
    return term_rows[i]


#: The outcome of an ignored row's forecast: the bins skip it.
_IGNORED_OUTCOME = -1.0


@njit(nogil=True, error_model="numpy")
def _write_forecast(row_forecasts, i, confidence, outcome):
    """Row ``i``'s top-label forecast for the reliability bins: its confidence and
    outcome (:data:`_IGNORED_OUTCOME` for an ignored row)."""
    row_forecasts[0, i] = confidence
    row_forecasts[1, i] = outcome


@njit(nogil=True, error_model="numpy")
def _write_ignored_row(row_terms, i):
    terms = row_terms[i]
    for slot in range(N_SUMS):
        terms[slot] = 0.0
    terms[ROW_IGNORED] = 1.0


@njit(nogil=True, error_model="numpy")
def _staged_slots(unit, with_entropy, positive):
    """The sums :func:`_stage_row` writes (plus POSITIVE, which binary stages itself).

    :func:`_add_staged` adds only these: a scan of a never-written column costs as
    much as the add it skips (unit weights: 1.5 ms of 16 ms for 4 Mi probabilities).
    """
    slots = np.empty(N_SUMS, dtype=np.int64)
    n = 0
    for slot in range(N_SUMS):
        counted = slot == DENOMINATOR or slot == WEIGHT or slot == DENOMINATOR_SQUARED
        counted = counted or slot == CORRECT  # unit weights: counted once per block
        entropy = slot == ENTROPY or slot == TARGET_ENTROPY
        if (unit and counted) or (unit and entropy and not with_entropy):
            continue
        if slot == POSITIVE and not positive:
            continue
        slots[n] = slot
        n += 1
    return slots[:n]


@njit(nogil=True, error_model="numpy")
def _add_staged(acc, staged, n_rows, slots):
    """Add the first ``n_rows`` columns of ``staged`` into ``acc`` (one group), exactly.

    Returns 0, the number of columns then staged.
    """
    for slot in slots:
        add_terms(acc[slot], staged[slot], n_rows)
    return 0


@njit(nogil=True, error_model="numpy")
def _staging_columns(n_sums, n_rows):
    """Columns per sum when ``n_sums`` sums stage at once: within L2, at least one."""
    columns = _STAGING_BYTES // max(1, n_sums * 8)
    return max(1, min(_STAGED_ROWS, n_rows, columns))


@njit(nogil=True, error_model="numpy")
def _staging_buffer(n_groups, n_rows):
    """Staging columns for one block of rows: ``staged[group, slot, k]``.

    Rows write their exact terms into their group's next column (:func:`_stage_row`);
    a full buffer is added by :func:`add_terms`, vectorized, several times cheaper a
    term than :func:`add_term` (the sums are exact, so the bits are the same). Up to
    :data:`_STAGED_ROWS` columns a group, fewer for many groups so that a block's
    buffer stays in L2 (one column: a row's terms are added at once). Not zeroed:
    :func:`_add_staged` reads only the slots and columns that rows wrote.
    """
    columns = _staging_columns(n_groups * N_SUMS, n_rows)
    return np.empty((n_groups, N_SUMS, columns)), np.zeros(n_groups, dtype=np.int64)


@njit(nogil=True, error_model="numpy")
def _add_all_staged(block_sums, staged, n_staged, slots):
    """At the end of a block: every group's staged columns into its sums."""
    for group in range(staged.shape[0]):
        _add_staged(block_sums[group], staged[group], n_staged[group], slots)


@njit(nogil=True, error_model="numpy")
def _label_staging_buffer(n_labels, n_rows):
    """Per-label staging columns of one block, ``staged[label, class slot, k]``.

    Like :func:`_staging_buffer`, for the per-label sums of the multi-label kernel
    (empty without ``per_label``): every row adds a term to each label's three sums.
    """
    return np.empty((n_labels, N_CLASS_SUMS, _staging_columns(n_labels * N_CLASS_SUMS, n_rows)))


@njit(nogil=True, error_model="numpy")
def _add_label_staged(block_class_sums, staged, n_rows):
    """Add the first ``n_rows`` staged columns of every label exactly; returns 0."""
    for label in range(staged.shape[0]):
        for slot in range(N_CLASS_SUMS):
            add_terms(block_class_sums[label, slot], staged[label, slot], n_rows)
    return 0


@njit(nogil=True, error_model="numpy")
def _add_unit_counts(block_sums, block_counts, correct):
    """Per group of one block: the count-valued sums that unit-weight rows do not stage."""
    for group in range(block_sums.shape[0]):
        rows = np.float64(block_counts[group, ROWS])  # exact: a block has < 2**53 rows
        add_term(block_sums[group, WEIGHT], rows)
        add_term(block_sums[group, DENOMINATOR], rows)
        add_term(block_sums[group, DENOMINATOR_SQUARED], rows)
        add_term(block_sums[group, CORRECT], np.float64(correct[group]))


@njit(nogil=True, error_model="numpy")
def _unit_weights(sample_weight, weights):
    """No sample weights and all class weights 1: every row has s = d = 1."""
    if sample_weight.shape[0] != 0:
        return False
    for c in range(weights.shape[0]):
        if weights[c] != 1.0:
            return False
    return True


def _make_multiclass_hard(with_entropy):
    """``multiclass_hard`` compiled with or without the entropies a metric reports."""

    @njit(**_KERNEL_FLAGS)
    def multiclass_hard(
        preds,
        target,
        class_weight,
        sample_weight,
        groups,
        opts,
        row_losses,
        row_terms,
        row_forecasts,
        bin_sums,
        bin_counts,
        term_rows,
        sums,
        counts,
        class_sums,
        class_counts,
        errors,
        error_values,
    ):
        """Cross-entropy of (N, C) predictions against N integer labels."""
        opts = KernelOptions(*_static_fields(opts, with_entropy))
        kind = opts.input_kind
        keep_rows = row_losses.shape[0] > 0
        keep_terms = row_terms.shape[0] > 0
        keep_forecasts = row_forecasts.shape[1] > 0
        n_rows, n_classes = preds.shape
        n_blocks = sums.shape[0]
        smoothing = opts.label_smoothing
        per_class = class_sums.shape[1] > 0
        # H of the smoothed one-hot target is the same for every row.
        target_entropy = 0.0
        if with_entropy and smoothing > 0.0:
            off = smoothing / n_classes
            on = 1.0 - smoothing + off
            target_entropy = neg_xlogy(on, math.log(on)) + (n_classes - 1) * neg_xlogy(
                off, math.log(off)
            )
        unit = _unit_weights(sample_weight, class_weight)
        staged_slots = _staged_slots(unit, with_entropy, False)
        share = smoothing / n_classes
        narrow = kind != LOGPROBS and n_classes < NARROW_CLASSES
        chunk_rows = NARROW_CHUNK_ROWS if narrow else 1
        # Whole chunks of narrow rows skip the row-by-row path when nothing about their
        # rows needs it (the row values are the same either way, see hard_label_losses).
        whole_chunks = narrow and unit and groups.shape[0] == 0 and not per_class
        whole_chunks = whole_chunks and smoothing == 0.0
        for block in prange(n_blocks):
            start, stop = _block_bounds(block, n_blocks, n_rows)
            correct = np.zeros(sums.shape[1], dtype=np.int64)
            staged, n_staged = _staging_buffer(sums.shape[1], stop - start)
            scratch32 = np.empty(preds.shape[1], dtype=np.float32)  # float32 exps
            width = chunk_rows if narrow else 0
            columns = np.empty((n_classes if narrow else 0, width))
            row_best = np.empty(width)
            row_argmax = np.empty(width, dtype=np.int64)
            row_log_sum = np.empty(width)
            row_entropy = np.empty(width)
            unusual = np.empty(width, dtype=np.uint8)
            losses = np.empty(width)
            squares = np.empty(width)
            confidences = np.empty(width if keep_forecasts else 0)
            chunk_start = start
            chunk_stop = start
            i = start - 1
            while i + 1 < stop:
                i += 1
                if narrow and i == chunk_stop:
                    chunk_start = i
                    chunk_stop = min(i + chunk_rows, stop)
                    n_unusual = narrow_rows_chunk(
                        preds,
                        chunk_start,
                        chunk_stop,
                        opts,
                        with_entropy,
                        columns,
                        row_best,
                        row_argmax,
                        row_log_sum,
                        row_entropy,
                        unusual,
                    )
                    if keep_forecasts:  # across rows; unusual rows get theirs below
                        top_label_confidences(
                            opts,
                            chunk_stop - chunk_start,
                            columns,
                            row_best,
                            row_argmax,
                            row_log_sum,
                            confidences,
                        )
                    if whole_chunks and n_unusual == 0:
                        special = hard_label_losses(
                            target,
                            chunk_start,
                            chunk_stop,
                            opts,
                            columns,
                            row_best,
                            row_log_sum,
                            losses,
                            squares,
                        )
                        if special == 0:
                            n = chunk_stop - chunk_start
                            if keep_rows:
                                row_losses[chunk_start:chunk_stop] = losses[:n]
                            for r in range(n):
                                correct[0] += np.int64(
                                    row_argmax[r] == np.int64(target[chunk_start + r])
                                )
                            if keep_forecasts:
                                row_forecasts[0, chunk_start:chunk_stop] = confidences[:n]
                                for r in range(n):
                                    right = row_argmax[r] == np.int64(target[chunk_start + r])
                                    row_forecasts[1, chunk_start + r] = np.float64(right)
                            # Before add_terms, which takes its terms as scratch.
                            for r in range(n if keep_terms else 0):
                                _write_row_terms(
                                    row_terms,
                                    _term_row(term_rows, chunk_start + r),
                                    1.0,
                                    losses[r],
                                    1.0,
                                    row_entropy[r] if with_entropy else 0.0,
                                    0.0,
                                    row_argmax[r] == np.int64(target[chunk_start + r]),
                                    0.0,
                                )
                            block_sums = sums[block, 0]
                            add_terms(block_sums[LOSS], losses, n)
                            add_terms(block_sums[LOSS_SQUARED], squares, n)
                            if with_entropy:
                                add_terms(block_sums[ENTROPY], row_entropy, n)
                            counts[block, 0, ROWS] += n
                            i = chunk_stop - 1
                            continue
                if narrow:
                    r = i - chunk_start
                    if unusual[r]:
                        code, column, bad, argmax, normalizer, entropy = scan_prediction_row(
                            preds, i, opts
                        )
                    else:
                        code, column, bad = OK, -1, 0.0
                        argmax = row_argmax[r]
                        normalizer = (row_best[r], row_log_sum[r])
                        entropy = row_entropy[r]
                elif n_classes < NARROW_CLASSES:  # narrow log-probabilities: the scalar scan
                    code, column, bad, argmax, normalizer, entropy = scan_prediction_row(
                        preds, i, opts
                    )
                else:
                    code, column, bad, argmax, normalizer, entropy = scan_prediction_row_fast(
                        preds, i, opts, scratch32
                    )
                if code != OK:
                    _record_error(errors, error_values, block, i, code, column, bad)
                    break
                s, ok = _sample_weight(sample_weight, i, opts.validate)
                if not ok:
                    _record_error(errors, error_values, block, i, _WEIGHT_ERROR, _NO_COLUMN, s)
                    break
                group = _group(groups, i)
                label = np.int64(target[i])
                if opts.has_ignore_index and label == opts.ignore_index:
                    counts[block, group, IGNORED] += 1
                    if keep_rows:
                        row_losses[i] = 0.0
                    if keep_terms:
                        _write_ignored_row(row_terms, _term_row(term_rows, i))
                    if keep_forecasts:
                        _write_forecast(row_forecasts, i, 0.0, _IGNORED_OUTCOME)
                    continue
                if label < 0 or label >= n_classes:
                    _record_error(errors, error_values, block, i, _LABEL_ERROR, label, 0.0)
                    break
                if keep_forecasts:
                    if narrow and not unusual[i - chunk_start]:
                        confidence = confidences[i - chunk_start]
                    else:
                        confidence = top_label_confidence(preds, i, argmax, normalizer, opts)
                    _write_forecast(row_forecasts, i, confidence, np.float64(argmax == label))
                w = class_weight[label]
                # log64, not libm: a narrow row whose chunk takes the whole-chunk path
                # gets its loss from hard_label_losses, which must give the same bits.
                loss = neg_xlogy(
                    (1.0 - smoothing) * w, log_probability_fast(preds, i, label, normalizer, opts)
                )
                if smoothing > 0.0:
                    smoothed = 0.0
                    if kind == LOGITS:  # the kind tested once, outside the SIMD loop
                        shift, log_sum = normalizer
                        for c in range(n_classes):
                            log_p = (np.float64(preds[i, c]) - shift) - log_sum
                            smoothed = add_reassoc(
                                smoothed, neg_xlogy_fast(share * class_weight[c], log_p)
                            )
                    else:
                        for c in range(n_classes):
                            smoothed = add_reassoc(
                                smoothed,
                                neg_xlogy_fast(
                                    share * class_weight[c],
                                    log_probability_fast(preds, i, c, normalizer, opts),
                                ),
                            )
                    loss += smoothed
                if keep_rows:
                    row_losses[i] = loss
                if keep_terms:
                    _write_row_terms(
                        row_terms,
                        _term_row(term_rows, i),
                        s,
                        loss,
                        w,
                        entropy if with_entropy or not unit else 0.0,
                        target_entropy if with_entropy or not unit else 0.0,
                        argmax == label,
                        0.0,
                    )
                counts[block, group, ROWS] += 1
                k = _stage_row(
                    staged[group],
                    n_staged[group],
                    unit,
                    with_entropy,
                    s,
                    loss,
                    w,
                    entropy,
                    target_entropy,
                    argmax == label,
                )
                if k == staged.shape[2]:
                    k = _add_staged(sums[block, group], staged[group], k, staged_slots)
                n_staged[group] = k
                if unit:
                    correct[group] += np.int64(argmax == label)
                if per_class:
                    class_acc = class_sums[block, label]
                    add_term(class_acc[CLASS_LOSS], s * loss)
                    if not unit:
                        add_term(class_acc[CLASS_WEIGHT], s * w)
                        add_term(class_acc[CLASS_MASS], s)
                    class_counts[block, label] += 1
            _add_all_staged(sums[block], staged, n_staged, staged_slots)
            if unit:
                _add_unit_counts(sums[block], counts[block], correct)
                if per_class:
                    for c in range(n_classes):
                        rows = np.float64(class_counts[block, c])
                        add_term(class_sums[block, c, CLASS_WEIGHT], rows)
                        add_term(class_sums[block, c, CLASS_MASS], rows)

    return multiclass_hard


def _make_multiclass_soft(with_entropy):
    """``multiclass_soft`` compiled with or without the entropies a metric reports."""

    @njit(**_KERNEL_FLAGS)
    def multiclass_soft(
        preds,
        target,
        class_weight,
        sample_weight,
        groups,
        opts,
        row_losses,
        row_terms,
        row_forecasts,
        bin_sums,
        bin_counts,
        term_rows,
        sums,
        counts,
        class_sums,
        class_counts,
        errors,
        error_values,
    ):
        """Cross-entropy of (N, C) predictions against (N, C) target distributions."""
        opts = KernelOptions(*_static_fields(opts, with_entropy))
        kind = opts.input_kind
        keep_rows = row_losses.shape[0] > 0
        keep_terms = row_terms.shape[0] > 0
        keep_forecasts = row_forecasts.shape[1] > 0
        n_rows, n_classes = preds.shape
        n_blocks = sums.shape[0]
        smoothing = opts.label_smoothing
        share = smoothing / n_classes
        per_class = class_sums.shape[1] > 0
        unit = sample_weight.shape[0] == 0
        staged_slots = _staged_slots(unit, with_entropy, False)
        for block in prange(n_blocks):
            start, stop = _block_bounds(block, n_blocks, n_rows)
            correct = np.zeros(sums.shape[1], dtype=np.int64)
            staged, n_staged = _staging_buffer(sums.shape[1], stop - start)
            scratch32 = np.empty(preds.shape[1], dtype=np.float32)  # float32 exps
            for i in range(start, stop):
                code, column, bad, argmax, normalizer, entropy = scan_prediction_row_fast(
                    preds, i, opts, scratch32
                )
                if code != OK:
                    _record_error(errors, error_values, block, i, code, column, bad)
                    break
                code, column, bad, target_argmax = scan_soft_target_row_fast(target, i, opts)
                if code != OK:
                    _record_error(errors, error_values, block, i, code, column, bad)
                    break
                s, ok = _sample_weight(sample_weight, i, opts.validate)
                if not ok:
                    _record_error(errors, error_values, block, i, _WEIGHT_ERROR, _NO_COLUMN, s)
                    break
                group = _group(groups, i)
                if keep_forecasts:  # the outcome of the top class: the target's mass on it
                    confidence = top_label_confidence(preds, i, argmax, normalizer, opts)
                    _write_forecast(row_forecasts, i, confidence, np.float64(target[i, argmax]))
                loss = 0.0
                target_entropy = 0.0
                # The row's loss and entropy come from the same SIMD loops whatever the
                # outputs, so a metric (per-class sums, entropy) and the function agree bitwise.
                if per_class:
                    for c in range(n_classes):
                        q = (1.0 - smoothing) * np.float64(target[i, c]) + share
                        if q == 0.0:
                            continue
                        term = neg_xlogy(
                            class_weight[c] * q, log_probability_fast(preds, i, c, normalizer, opts)
                        )
                        class_acc = class_sums[block, c]
                        add_term(class_acc[CLASS_LOSS], s * term)
                        add_term(class_acc[CLASS_WEIGHT], s * q)
                        add_term(class_acc[CLASS_MASS], s * q)
                    class_counts[block, target_argmax] += 1
                if kind == LOGITS:  # the kind tested once, outside the SIMD loop
                    shift, log_sum = normalizer
                    for c in range(n_classes):
                        q = (1.0 - smoothing) * np.float64(target[i, c]) + share
                        log_p = (np.float64(preds[i, c]) - shift) - log_sum
                        loss = add_reassoc(loss, neg_xlogy_fast(class_weight[c] * q, log_p))
                else:
                    for c in range(n_classes):
                        q = (1.0 - smoothing) * np.float64(target[i, c]) + share
                        loss = add_reassoc(
                            loss,
                            neg_xlogy_fast(
                                class_weight[c] * q,
                                log_probability_fast(preds, i, c, normalizer, opts),
                            ),
                        )
                if with_entropy:
                    for c in range(n_classes):
                        q = (1.0 - smoothing) * np.float64(target[i, c]) + share
                        target_entropy = add_reassoc(target_entropy, neg_xlogy_fast(q, log64(q)))
                if keep_rows:
                    row_losses[i] = loss
                if keep_terms:
                    _write_row_terms(
                        row_terms,
                        _term_row(term_rows, i),
                        s,
                        loss,
                        1.0,
                        entropy if with_entropy or not unit else 0.0,
                        target_entropy if with_entropy or not unit else 0.0,
                        argmax == target_argmax,
                        0.0,
                    )
                counts[block, group, ROWS] += 1
                k = _stage_row(
                    staged[group],
                    n_staged[group],
                    unit,
                    with_entropy,
                    s,
                    loss,
                    1.0,
                    entropy,
                    target_entropy,
                    argmax == target_argmax,
                )
                if k == staged.shape[2]:
                    k = _add_staged(sums[block, group], staged[group], k, staged_slots)
                n_staged[group] = k
                if unit:
                    correct[group] += np.int64(argmax == target_argmax)
            _add_all_staged(sums[block], staged, n_staged, staged_slots)
            if unit:
                _add_unit_counts(sums[block], counts[block], correct)

    return multiclass_soft


def _make_binary(with_entropy):
    """``binary`` compiled with or without the entropies a metric reports."""

    @njit(**_KERNEL_FLAGS)
    def binary(
        preds,
        target,
        unused_weight,
        sample_weight,
        groups,
        opts,
        row_losses,
        row_terms,
        row_forecasts,
        bin_sums,
        bin_counts,
        term_rows,
        sums,
        counts,
        class_sums,
        class_counts,
        errors,
        error_values,
    ):
        """Binary cross-entropy of N predictions of the positive class against N targets."""
        opts = KernelOptions(*_static_fields(opts, with_entropy))
        keep_rows = row_losses.shape[0] > 0
        keep_terms = row_terms.shape[0] > 0
        n_rows = preds.shape[0]
        n_blocks = sums.shape[0]
        unit = sample_weight.shape[0] == 0
        # Per-row terms come from the row-by-row path, as grouped rows do.
        grouped = groups.shape[0] > 0 or row_terms.shape[0] > 0
        staged_slots = _staged_slots(unit, with_entropy, True)
        binned = bin_sums.shape[0] > 0
        for block in prange(n_blocks):
            start, stop = _block_bounds(block, n_blocks, n_rows)
            correct_rows = np.zeros(sums.shape[1], dtype=np.int64)
            staged, n_staged = _staging_buffer(sums.shape[1], stop - start)
            bin_scratch = chunk_bins_scratch(preds, bin_sums.shape[1] if binned else 0)
            # The loss pass keeps float32 logits' exp(-|x|) for the chunk's bins.
            bin_exps = bin_scratch[1] if unit and not grouped else bin_scratch[1][:0]
            all_tallied = True
            # Losses of a chunk of rows come from one SIMD pass (the same whatever the
            # outputs, so a metric and the function agree bitwise). Unweighted,
            # ungrouped chunks run every other step across rows too; others check,
            # weigh and stage row by row.
            losses = np.empty(NARROW_GROUP_ELEMENTS)
            h_p = np.empty(NARROW_GROUP_ELEMENTS if with_entropy else 0)
            h_t = np.empty(NARROW_GROUP_ELEMENTS if with_entropy else 0)
            scratch32 = np.empty(NARROW_GROUP_ELEMENTS, dtype=np.float32)
            squares = np.empty(NARROW_GROUP_ELEMENTS)
            positives = np.empty(NARROW_GROUP_ELEMENTS)
            for chunk_start in range(start, stop, NARROW_GROUP_ELEMENTS):
                chunk_stop = min(chunk_start + NARROW_GROUP_ELEMENTS, stop)
                n = chunk_stop - chunk_start
                binary_losses_fast(
                    preds,
                    target,
                    chunk_start,
                    chunk_stop,
                    opts.pos_weight,
                    opts,
                    losses,
                    scratch32,
                    bin_exps,
                )
                soft_targets = 0
                if with_entropy:
                    soft_targets = bernoulli_entropies_fast(
                        preds, target, chunk_start, chunk_stop, opts, h_p, h_t, scratch32
                    )
                if unit and not grouped:
                    # Every per-row step across the chunk's rows, in SIMD loops: the
                    # checks as a count, the terms as whole columns for add_terms.
                    bad, correct, soft = binary_chunk_terms(
                        preds, target, chunk_start, chunk_stop, opts, losses, squares, positives
                    )
                    if bad > 0:
                        for i in range(chunk_start, chunk_stop):
                            code, which, value = check_binary_pair(
                                np.float64(preds[i]), np.float64(target[i]), opts
                            )
                            if code != OK:
                                _record_error(errors, error_values, block, i, code, which, value)
                                break
                        break
                    if keep_rows:
                        row_losses[chunk_start:chunk_stop] = losses[:n]
                    # The chunk's bins while its values are in L1, before add_terms
                    # takes positives as scratch.
                    if binned:
                        add_chunk_bins(
                            preds,
                            positives,
                            chunk_start,
                            chunk_stop,
                            opts.input_kind,
                            soft == 0,
                            bin_scratch,
                            sample_weight,
                            bin_sums[block],
                            bin_counts[block],
                        )
                        all_tallied = all_tallied and soft == 0
                    block_sums = sums[block, 0]
                    add_terms(block_sums[LOSS], losses, n)
                    add_terms(block_sums[LOSS_SQUARED], squares, n)
                    add_terms(block_sums[POSITIVE], positives, n)
                    if with_entropy:
                        add_terms(block_sums[ENTROPY], h_p, n)
                        if soft_targets > 0:  # else every H(t) is 0: nothing to add
                            add_terms(block_sums[TARGET_ENTROPY], h_t, n)
                    counts[block, 0, ROWS] += n
                    correct_rows[0] += correct
                    continue
                failed = False
                for i in range(chunk_start, chunk_stop):
                    x = np.float64(preds[i])
                    t = np.float64(target[i])
                    if opts.validate and not binary_pair_is_ok(x, t, opts):
                        code, which, bad_value = check_binary_pair(x, t, opts)
                        _record_error(errors, error_values, block, i, code, which, bad_value)
                        failed = True
                        break
                    s, ok = _sample_weight(sample_weight, i, opts.validate)
                    if not ok:
                        _record_error(errors, error_values, block, i, _WEIGHT_ERROR, _NO_COLUMN, s)
                        failed = True
                        break
                    group = _group(groups, i)
                    loss = losses[i - chunk_start]
                    entropy = 0.0
                    target_entropy = 0.0
                    if with_entropy:
                        entropy = h_p[i - chunk_start]
                        target_entropy = h_t[i - chunk_start]
                    if keep_rows:
                        row_losses[i] = loss
                    counts[block, group, ROWS] += 1
                    correct = binary_predicts_positive(x, opts) == (t >= 0.5)
                    if keep_terms:
                        _write_row_terms(
                            row_terms,
                            _term_row(term_rows, i),
                            s,
                            loss,
                            1.0,
                            entropy if with_entropy or not unit else 0.0,
                            target_entropy if with_entropy or not unit else 0.0,
                            correct,
                            s * t,
                        )
                    k = n_staged[group]
                    staged[group, POSITIVE, k] = s * t
                    k = _stage_row(
                        staged[group],
                        k,
                        unit,
                        with_entropy,
                        s,
                        loss,
                        1.0,
                        entropy,
                        target_entropy,
                        correct,
                    )
                    if k == staged.shape[2]:
                        k = _add_staged(sums[block, group], staged[group], k, staged_slots)
                    n_staged[group] = k
                    if unit:
                        correct_rows[group] += np.int64(correct)
                if failed:
                    break
            _add_all_staged(sums[block], staged, n_staged, staged_slots)
            if unit:
                _add_unit_counts(sums[block], counts[block], correct_rows)
            if binned and errors[block, 0] < 0:  # a bad block's bins are dropped
                if unit and not grouped:
                    finish_chunk_bins(bin_scratch, all_tallied, bin_sums[block], bin_counts[block])
                else:
                    positive_block_bins(
                        preds,
                        target,
                        sample_weight,
                        1,
                        opts.input_kind,
                        start,
                        stop,
                        bin_sums[block],
                        bin_counts[block],
                    )

    return binary


def _make_multilabel(with_entropy):
    """``multilabel`` compiled with or without the entropies a metric reports."""

    @njit(**_KERNEL_FLAGS)
    def multilabel(
        preds,
        target,
        pos_weight,
        sample_weight,
        groups,
        opts,
        row_losses,
        row_terms,
        row_forecasts,
        bin_sums,
        bin_counts,
        term_rows,
        sums,
        counts,
        class_sums,
        class_counts,
        errors,
        error_values,
    ):
        """Multi-label cross-entropy: per row, the sum over labels of the binary loss."""
        opts = KernelOptions(*_static_fields(opts, with_entropy))
        kind = opts.input_kind
        keep_rows = row_losses.shape[0] > 0
        keep_terms = row_terms.shape[0] > 0
        n_rows, n_labels = preds.shape
        n_blocks = sums.shape[0]
        per_label = class_sums.shape[1] > 0
        unit = sample_weight.shape[0] == 0
        staged_slots = _staged_slots(unit, with_entropy, False)
        for block in prange(n_blocks):
            start, stop = _block_bounds(block, n_blocks, n_rows)
            no_correct = np.zeros(sums.shape[1], dtype=np.int64)
            label_staged = _label_staging_buffer(class_sums.shape[1], stop - start)
            label_terms, scratch32, scratch64 = _row_scratch(n_labels)
            label_k = 0
            staged, n_staged = _staging_buffer(sums.shape[1], stop - start)
            h_p = np.empty(n_labels if with_entropy else 0)
            h_t = np.empty(n_labels if with_entropy else 0)
            for i in range(start, stop):
                failed = False
                bad_pairs = 0
                if opts.validate and kind == LOGITS:  # kind tested outside the loop
                    for c in range(n_labels):
                        x = np.float64(preds[i, c])
                        t = np.float64(target[i, c])
                        bad_pairs += np.int64(not x < _INF) + np.int64(not t >= 0.0)
                        bad_pairs += np.int64(not t <= 1.0)
                elif opts.validate:
                    for c in range(n_labels):
                        ok = binary_pair_is_ok(
                            np.float64(preds[i, c]), np.float64(target[i, c]), opts
                        )
                        bad_pairs += np.int64(not ok)
                for c in range(n_labels if bad_pairs > 0 else 0):
                    code, which, bad = check_binary_pair(
                        np.float64(preds[i, c]), np.float64(target[i, c]), opts
                    )
                    if code != OK:
                        # column encodes the label and which array: label for preds,
                        # n_labels + label for target.
                        _record_error(
                            errors, error_values, block, i, code, c + which * n_labels, bad
                        )
                        failed = True
                        break
                if failed:
                    break
                s, ok = _sample_weight(sample_weight, i, opts.validate)
                if not ok:
                    _record_error(errors, error_values, block, i, _WEIGHT_ERROR, _NO_COLUMN, s)
                    break
                group = _group(groups, i)
                loss = 0.0
                entropy = 0.0
                target_entropy = 0.0
                # The row's loss comes from the same SIMD loops whatever the outputs, so a
                # metric (per-label sums, entropy) and the function agree bitwise.
                if with_entropy:
                    bernoulli_entropies_fast(
                        preds[i], target[i], 0, n_labels, opts, h_p, h_t, scratch32
                    )
                    for c in range(n_labels):
                        entropy = add_reassoc(entropy, h_p[c])
                        target_entropy = add_reassoc(target_entropy, h_t[c])
                if kind == LOGITS:  # the kind tested once, outside the SIMD loops
                    loss = logit_label_losses(
                        preds[i], target[i], pos_weight, scratch32, scratch64, label_terms
                    )
                if per_label:
                    # Terms in SIMD loops (the kind tested outside them), then staged like
                    # the row sums: with add_term calls in it the loop stayed scalar (13x).
                    if kind != LOGITS:
                        for c in range(n_labels):
                            x = np.float64(preds[i, c])
                            log_p, log_1mp = binary_log_probabilities_fast(x, opts)
                            t = np.float64(target[i, c])
                            label_terms[c] = binary_loss_fast(t, log_p, log_1mp, pos_weight[c])
                    for c in range(n_labels):
                        t = np.float64(target[i, c])
                        label_staged[c, CLASS_LOSS, label_k] = s * label_terms[c]
                        label_staged[c, CLASS_WEIGHT, label_k] = s
                        label_staged[c, CLASS_MASS, label_k] = s * t
                        class_counts[block, c] += np.int64(t >= 0.5)
                    label_k += 1
                    if label_k == label_staged.shape[2]:
                        label_k = _add_label_staged(class_sums[block], label_staged, label_k)
                if kind != LOGITS:
                    for c in range(n_labels):
                        x = np.float64(preds[i, c])
                        t = np.float64(target[i, c])
                        log_p, log_1mp = binary_log_probabilities_fast(x, opts)
                        loss = add_reassoc(loss, binary_loss_fast(t, log_p, log_1mp, pos_weight[c]))
                if keep_rows:
                    row_losses[i] = loss
                if keep_terms:
                    _write_row_terms(
                        row_terms,
                        _term_row(term_rows, i),
                        s,
                        loss,
                        1.0,
                        entropy if with_entropy or not unit else 0.0,
                        target_entropy if with_entropy or not unit else 0.0,
                        False,
                        0.0,
                    )
                counts[block, group, ROWS] += 1
                k = _stage_row(
                    staged[group],
                    n_staged[group],
                    unit,
                    with_entropy,
                    s,
                    loss,
                    1.0,
                    entropy,
                    target_entropy,
                    False,
                )
                if k == staged.shape[2]:
                    k = _add_staged(sums[block, group], staged[group], k, staged_slots)
                n_staged[group] = k
            _add_all_staged(sums[block], staged, n_staged, staged_slots)
            _add_label_staged(class_sums[block], label_staged, label_k)
            if unit:
                _add_unit_counts(sums[block], counts[block], no_correct)

    return multilabel


def _make_prediction_entropy(with_entropy):
    """``prediction_entropy`` compiled with or without the entropies a metric reports."""

    @njit(**_KERNEL_FLAGS)
    def prediction_entropy(
        preds,
        unused_target,
        unused_weight,
        sample_weight,
        groups,
        opts,
        row_losses,
        row_terms,
        row_forecasts,
        bin_sums,
        bin_counts,
        term_rows,
        sums,
        counts,
        class_sums,
        class_counts,
        errors,
        error_values,
    ):
        """Entropy of each predicted distribution (rows of an (N, C) array)."""
        opts = KernelOptions(*_static_fields(opts, with_entropy))
        keep_rows = row_losses.shape[0] > 0
        keep_terms = row_terms.shape[0] > 0
        n_rows = preds.shape[0]
        n_blocks = sums.shape[0]
        staged_slots = _staged_slots(False, True, False)
        for block in prange(n_blocks):
            start, stop = _block_bounds(block, n_blocks, n_rows)
            staged, n_staged = _staging_buffer(sums.shape[1], stop - start)
            scratch32 = np.empty(preds.shape[1], dtype=np.float32)  # float32 exps
            for i in range(start, stop):
                code, column, bad, _, _, entropy = scan_prediction_row_fast(
                    preds, i, opts, scratch32
                )
                if code != OK:
                    _record_error(errors, error_values, block, i, code, column, bad)
                    break
                s, ok = _sample_weight(sample_weight, i, opts.validate)
                if not ok:
                    _record_error(errors, error_values, block, i, _WEIGHT_ERROR, _NO_COLUMN, s)
                    break
                group = _group(groups, i)
                if keep_rows:
                    row_losses[i] = entropy
                if keep_terms:
                    _write_row_terms(
                        row_terms,
                        _term_row(term_rows, i),
                        s,
                        entropy,
                        1.0,
                        entropy,
                        0.0,
                        False,
                        0.0,
                    )
                counts[block, group, ROWS] += 1
                k = _stage_row(
                    staged[group],
                    n_staged[group],
                    False,
                    True,
                    s,
                    entropy,
                    1.0,
                    entropy,
                    0.0,
                    False,
                )
                if k == staged.shape[2]:
                    k = _add_staged(sums[block, group], staged[group], k, staged_slots)
                n_staged[group] = k
            _add_all_staged(sums[block], staged, n_staged, staged_slots)

    return prediction_entropy


@functools.cache
def _threading_entry_points():
    """The threading layer's own ``get_num_threads`` / ``set_num_threads`` (C, ctypes).

    ``numba.get_num_threads`` / ``set_num_threads`` from Python cost ~2 / ~3 us a call
    (argument checks, the layer's start-up test), which a small batch pays twice. An
    ``@njit`` wrapper costs what a ctypes call does (~0.3 us) but cannot be disk-cached
    (it reads the layer's function pointers), so every process compiled it again:
    0.7-1.1 s of a warm first call (measured). The ctypes entry points are what numba's
    own Python functions call after their checks; the public ones serve when a numba
    version lacks them.
    """
    numba.get_num_threads()  # starts the threading layer, which defines them
    from numba.np.ufunc import parallel

    get = getattr(parallel, "_get_num_threads", None)
    put = getattr(parallel, "_set_num_threads", None)
    if get is None or put is None:
        return numba.get_num_threads, numba.set_num_threads
    return get, put


def thread_count():
    """``numba.get_num_threads()`` for the calling thread, ~2 us cheaper a call."""
    return _threading_entry_points()[0]()


def set_threads(n):
    """``numba.set_num_threads(n)`` for the calling thread, ~3 us cheaper a call (``n``
    is the caller's own count, or 1, so numba's range check is not needed)."""
    _threading_entry_points()[1](n)


def launch(kernel, arguments, n_blocks, threads):
    """``kernel(*arguments)``, a parallel kernel of ``n_blocks`` blocks, on a team of one
    thread when it has one block (``threads``: the caller's :func:`thread_count`).

    One block has work for one thread: a team of one wakes no other thread, which a
    small batch would otherwise wait for (numba's thread count is per calling thread, so
    this is thread-safe). A plain function, not a context manager: ~1.5 us less a call.
    """
    if n_blocks == 1 and threads > 1:
        set_threads(1)
        try:
            return kernel(*arguments)
        finally:
            set_threads(threads)
    return kernel(*arguments)


_FACTORIES = {
    "multiclass_hard": _make_multiclass_hard,
    "multiclass_soft": _make_multiclass_soft,
    "binary": _make_binary,
    "multilabel": _make_multilabel,
    "prediction_entropy": _make_prediction_entropy,
}


@functools.cache
def kernel(name, with_entropy):
    """The CPU kernel ``name``, specialized for whether the caller wants entropies.

    Functions do not, metrics do (for their Report). Each variant is compiled on its
    first call only and holds only its own path (``docs/performance.md``). The
    variants are closures over a plain constant, which numba's on-disk cache keys by
    value, so each is compiled once per machine, not once per process.
    """
    return _FACTORIES[name](bool(with_entropy))
