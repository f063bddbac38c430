"""Parallel CPU kernels: one pass over a batch, exact partial sums per block of rows.

Every kernel has the same shape of signature::

    kernel(preds, target, <per-class or per-label weights>, sample_weight, groups, opts,
           row_losses, sums, counts, class_sums, class_counts, errors, error_values)

and splits the rows into ``sums.shape[0]`` contiguous blocks, one ``prange``
iteration each. A block writes only its own slice of the output arrays (no false
sharing of accumulators, no atomics). Because the sums are exact integers, the
caller may combine the blocks in any order and the bits do not depend on the
number of blocks or threads.

Validation is fused into the same pass: a block stops at its first bad row and
records ``(row, code, column)`` in ``errors[block]`` and the offending value in
``error_values[block]``; the caller reports the smallest row over all blocks.
``sums[block, group]`` and ``counts[block, group]`` are per group: ``groups`` holds a
group code in ``[0, sums.shape[1])`` for every row (``by=`` in the feeders), so a
grouped evaluation costs the same single pass. Optional inputs and outputs are
switched off by passing arrays of length 0: ``groups`` (one group, code 0),
``row_losses`` (per-row losses for ``reduction="none"``), ``sample_weight``
(all ones), ``class_sums`` / ``class_counts`` (per-class statistics).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from xentstream._kernels.exact import add_term
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
    LOSS,
    LOSS_SQUARED,
    OK,
    POSITIVE,
    ROWS,
    SAMPLE_WEIGHT_INVALID,
    TARGET_ENTROPY,
    WEIGHT,
)
from xentstream._kernels.rows import (
    binary_entropy,
    binary_log_probabilities,
    binary_loss,
    binary_predicts_positive,
    binary_target_entropy,
    check_binary_pair,
    log_probability,
    neg_xlogy,
    scan_prediction_row,
    scan_soft_target_row,
)

_KERNEL_FLAGS = {"parallel": True, "nogil": True, "cache": True}


@njit(inline="always", nogil=True)
def _block_bounds(block, n_blocks, n_rows):
    return block * n_rows // n_blocks, (block + 1) * n_rows // n_blocks


@njit(inline="always", nogil=True)
def _sample_weight(sample_weight, i, validate):
    """Returns (weight, ok): 1.0 when no weights are given; ok False if invalid."""
    if sample_weight.shape[0] == 0:
        return 1.0, True
    s = np.float64(sample_weight[i])
    if validate and not (s >= 0.0 and s - s == 0.0):  # negative, NaN or inf
        return s, False
    return s, True


@njit(inline="always", nogil=True)
def _record_error(errors, error_values, block, row, code, column, value):
    errors[block, 0] = row
    errors[block, 1] = code
    errors[block, 2] = column
    error_values[block] = value


@njit(inline="always", nogil=True)
def _group(groups, i):
    if groups.shape[0] == 0:
        return 0
    return groups[i]


@njit(inline="always", nogil=True)
def _add_row(acc, s, loss, denominator, entropy, target_entropy, correct):
    """Accumulate the exact per-row terms shared by every loss into ``acc`` (one group)."""
    add_term(acc, LOSS, s * loss)
    add_term(acc, DENOMINATOR, s * denominator)
    if denominator > 0.0:
        add_term(acc, LOSS_SQUARED, s * (loss * loss / denominator))
    add_term(acc, WEIGHT, s)
    add_term(acc, DENOMINATOR_SQUARED, (s * denominator) * (s * denominator))
    add_term(acc, ENTROPY, s * entropy)
    add_term(acc, TARGET_ENTROPY, s * target_entropy)
    if correct:
        add_term(acc, CORRECT, s)


@njit(**_KERNEL_FLAGS)
def multiclass_hard(
    preds,
    target,
    class_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Cross-entropy of (N, C) predictions against N integer labels."""
    n_rows, n_classes = preds.shape
    n_blocks = sums.shape[0]
    smoothing = opts.label_smoothing
    keep_rows = row_losses.shape[0] > 0
    per_class = class_sums.shape[1] > 0
    # H of the smoothed one-hot target is the same for every row.
    target_entropy = 0.0
    if opts.with_entropy and smoothing > 0.0:
        off = smoothing / n_classes
        on = 1.0 - smoothing + off
        target_entropy = neg_xlogy(on, math.log(on)) + (n_classes - 1) * neg_xlogy(
            off, math.log(off)
        )
    for block in prange(n_blocks):
        start, stop = _block_bounds(block, n_blocks, n_rows)
        for i in range(start, stop):
            code, column, bad, argmax, normalizer, entropy = scan_prediction_row(preds, i, opts)
            if code != OK:
                _record_error(errors, error_values, block, i, code, column, bad)
                break
            s, ok = _sample_weight(sample_weight, i, opts.validate)
            if not ok:
                _record_error(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, -1, s)
                break
            group = _group(groups, i)
            label = np.int64(target[i])
            if opts.has_ignore_index and label == opts.ignore_index:
                counts[block, group, IGNORED] += 1
                if keep_rows:
                    row_losses[i] = 0.0
                continue
            if label < 0 or label >= n_classes:
                _record_error(errors, error_values, block, i, LABEL_OUT_OF_RANGE, label, 0.0)
                break
            w = class_weight[label]
            loss = neg_xlogy(
                (1.0 - smoothing) * w, log_probability(preds, i, label, normalizer, opts)
            )
            if smoothing > 0.0:
                share = smoothing / n_classes
                for c in range(n_classes):
                    loss += neg_xlogy(
                        share * class_weight[c], log_probability(preds, i, c, normalizer, opts)
                    )
            if keep_rows:
                row_losses[i] = loss
            counts[block, group, ROWS] += 1
            _add_row(sums[block, group], s, loss, w, entropy, target_entropy, argmax == label)
            if per_class:
                class_acc = class_sums[block, label]
                add_term(class_acc, CLASS_LOSS, s * loss)
                add_term(class_acc, CLASS_WEIGHT, s * w)
                add_term(class_acc, CLASS_MASS, s)
                class_counts[block, label] += 1


@njit(**_KERNEL_FLAGS)
def multiclass_soft(
    preds,
    target,
    class_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Cross-entropy of (N, C) predictions against (N, C) target distributions."""
    n_rows, n_classes = preds.shape
    n_blocks = sums.shape[0]
    smoothing = opts.label_smoothing
    share = smoothing / n_classes
    keep_rows = row_losses.shape[0] > 0
    per_class = class_sums.shape[1] > 0
    for block in prange(n_blocks):
        start, stop = _block_bounds(block, n_blocks, n_rows)
        for i in range(start, stop):
            code, column, bad, argmax, normalizer, entropy = scan_prediction_row(preds, i, opts)
            if code != OK:
                _record_error(errors, error_values, block, i, code, column, bad)
                break
            code, column, bad, target_argmax = scan_soft_target_row(target, i, opts)
            if code != OK:
                _record_error(errors, error_values, block, i, code, column, bad)
                break
            s, ok = _sample_weight(sample_weight, i, opts.validate)
            if not ok:
                _record_error(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, -1, s)
                break
            group = _group(groups, i)
            loss = 0.0
            target_entropy = 0.0
            for c in range(n_classes):
                q = (1.0 - smoothing) * np.float64(target[i, c]) + share
                if q == 0.0:
                    continue
                term = neg_xlogy(
                    class_weight[c] * q, log_probability(preds, i, c, normalizer, opts)
                )
                loss += term
                if opts.with_entropy:
                    target_entropy += neg_xlogy(q, math.log(q))
                if per_class:
                    class_acc = class_sums[block, c]
                    add_term(class_acc, CLASS_LOSS, s * term)
                    add_term(class_acc, CLASS_WEIGHT, s * q)
                    add_term(class_acc, CLASS_MASS, s * q)
            if per_class:
                class_counts[block, target_argmax] += 1
            if keep_rows:
                row_losses[i] = loss
            counts[block, group, ROWS] += 1
            _add_row(
                sums[block, group], s, loss, 1.0, entropy, target_entropy, argmax == target_argmax
            )


@njit(**_KERNEL_FLAGS)
def binary(
    preds,
    target,
    unused_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Binary cross-entropy of N predictions of the positive class against N targets."""
    n_rows = preds.shape[0]
    n_blocks = sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    for block in prange(n_blocks):
        start, stop = _block_bounds(block, n_blocks, n_rows)
        for i in range(start, stop):
            x = np.float64(preds[i])
            t = np.float64(target[i])
            code, which, bad = check_binary_pair(x, t, opts)
            if code != OK:
                _record_error(errors, error_values, block, i, code, which, bad)
                break
            s, ok = _sample_weight(sample_weight, i, opts.validate)
            if not ok:
                _record_error(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, -1, s)
                break
            group = _group(groups, i)
            log_p, log_1mp = binary_log_probabilities(x, opts)
            loss = binary_loss(t, log_p, log_1mp, opts.pos_weight)
            entropy = 0.0
            target_entropy = 0.0
            if opts.with_entropy:
                entropy = binary_entropy(log_p, log_1mp)
                target_entropy = binary_target_entropy(t)
            if keep_rows:
                row_losses[i] = loss
            counts[block, group, ROWS] += 1
            correct = binary_predicts_positive(x, opts) == (t >= 0.5)
            _add_row(sums[block, group], s, loss, 1.0, entropy, target_entropy, correct)
            add_term(sums[block, group], POSITIVE, s * t)


@njit(**_KERNEL_FLAGS)
def multilabel(
    preds,
    target,
    pos_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Multi-label cross-entropy: per row, the sum over labels of the binary loss."""
    n_rows, n_labels = preds.shape
    n_blocks = sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    per_label = class_sums.shape[1] > 0
    for block in prange(n_blocks):
        start, stop = _block_bounds(block, n_blocks, n_rows)
        for i in range(start, stop):
            failed = False
            for c in range(n_labels):
                code, which, bad = check_binary_pair(
                    np.float64(preds[i, c]), np.float64(target[i, c]), opts
                )
                if code != OK:
                    # column encodes the label and which array: label for preds,
                    # n_labels + label for target.
                    _record_error(errors, error_values, block, i, code, c + which * n_labels, bad)
                    failed = True
                    break
            if failed:
                break
            s, ok = _sample_weight(sample_weight, i, opts.validate)
            if not ok:
                _record_error(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, -1, s)
                break
            group = _group(groups, i)
            loss = 0.0
            entropy = 0.0
            target_entropy = 0.0
            for c in range(n_labels):
                x = np.float64(preds[i, c])
                t = np.float64(target[i, c])
                log_p, log_1mp = binary_log_probabilities(x, opts)
                term = binary_loss(t, log_p, log_1mp, pos_weight[c])
                loss += term
                if opts.with_entropy:
                    entropy += binary_entropy(log_p, log_1mp)
                    target_entropy += binary_target_entropy(t)
                if per_label:
                    label_acc = class_sums[block, c]
                    add_term(label_acc, CLASS_LOSS, s * term)
                    add_term(label_acc, CLASS_WEIGHT, s)
                    add_term(label_acc, CLASS_MASS, s * t)
                    if t >= 0.5:
                        class_counts[block, c] += 1
            if keep_rows:
                row_losses[i] = loss
            counts[block, group, ROWS] += 1
            _add_row(sums[block, group], s, loss, 1.0, entropy, target_entropy, False)


@njit(**_KERNEL_FLAGS)
def prediction_entropy(
    preds,
    unused_target,
    unused_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Entropy of each predicted distribution (rows of an (N, C) array)."""
    n_rows = preds.shape[0]
    n_blocks = sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    for block in prange(n_blocks):
        start, stop = _block_bounds(block, n_blocks, n_rows)
        for i in range(start, stop):
            code, column, bad, _, _, entropy = scan_prediction_row(preds, i, opts)
            if code != OK:
                _record_error(errors, error_values, block, i, code, column, bad)
                break
            s, ok = _sample_weight(sample_weight, i, opts.validate)
            if not ok:
                _record_error(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, -1, s)
                break
            group = _group(groups, i)
            if keep_rows:
                row_losses[i] = entropy
            counts[block, group, ROWS] += 1
            _add_row(sums[block, group], s, entropy, 1.0, entropy, 0.0, False)
