"""Per-row loss arithmetic shared by every CPU kernel.

These are plain called ``@njit`` functions, not ``inline="always"``: numba's own
inliner copies a callee's IR into every call site and re-runs type inference and SSA
on the result, which made one kernel take 34 s to compile (11 s without it). LLVM
still inlines the small ones into the kernels' loops, so those loops vectorize the
same (measured: kernel times unchanged within noise, see ``docs/performance.md``).

All arithmetic is float64 whatever the input dtype: float32 inputs are widened
element by element as they are read, never copied.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from xentstream._kernels.fastmath import (
    add_reassoc,
    exp64,
    log1p64,
    log64,
    log_sigmoid_pair,
    max_num,
)
from xentstream._kernels.layout import (
    LOGITS,
    LOGPROBS,
    OK,
    PRED_ALL_NEG_INF,
    PRED_NAN,
    PRED_NOT_PROBABILITY,
    PRED_POS_INF,
    PRED_POSITIVE_LOGPROB,
    PRED_ROW_SUM,
    PROBS,
    TARGET_INVALID,
    TARGET_NOT_PROBABILITY,
    TARGET_ROW_SUM,
)

_INF = np.inf
_NO_SHIFT = (0.0, 0.0)

#: Flags of every helper here: called, never inlined at numba's level (see above);
#: ``error_model="numpy"`` keeps zero-division checks out of the SIMD loops.
_CALLED = {"nogil": True, "error_model": "numpy"}


@njit(**_CALLED)
def neg_xlogy(coefficient, log_value):
    """-coefficient * log_value with 0 * log 0 = 0 (a zero coefficient never yields NaN)."""
    if coefficient == 0.0:
        return 0.0
    return -coefficient * log_value


@njit(**_CALLED)
def softplus(z):
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@njit(**_CALLED)
def clip_probability(p, eps):
    """clip(p, eps, 1 - eps); eps = 0 leaves p as it is (NaN stays NaN)."""
    if eps > 0.0:
        if p < eps:
            p = eps
        elif p > 1.0 - eps:
            p = 1.0 - eps
    return p


@njit(**_CALLED)
def clipped_log(p, eps):
    """log(clip(p, eps, 1 - eps)); eps = 0 gives log(p), hence -inf at p = 0."""
    return math.log(clip_probability(p, eps))


@njit(**_CALLED)
def clipped_log1m(p, eps):
    """log(1 - clip(p, eps, 1 - eps)), through log1p for accuracy at small p."""
    return math.log1p(-clip_probability(p, eps))


@njit(**_CALLED)
def scan_prediction_row(preds, i, opts):
    """One pass over prediction row ``i``: checks, top-1 class, log-normalizer, entropy.

    Returns ``(code, column, bad_value, argmax, normalizer, entropy)``. For logits
    ``normalizer`` is the pair ``(max_c x_ic, log sum_c exp(x_ic - max))`` whose sum is
    logsumexp(x_i); shifting by the maximum keeps every exp from overflowing, and
    keeping the two parts apart keeps ``(x - max) - log_sum`` exact to rounding even
    when the logits are huge (``x - (max + log_sum)`` would lose ``log_sum``
    entirely at 1e30). For probabilities and log-probabilities it is ``(0, 0)``.
    """
    n_classes = preds.shape[1]
    kind = opts.input_kind
    check = opts.validate
    argmax = 0
    best = -_INF
    entropy = 0.0
    if kind == LOGITS:
        for c in range(n_classes):
            x = np.float64(preds[i, c])
            if check:
                if x != x:
                    return PRED_NAN, c, x, 0, _NO_SHIFT, 0.0
                if x == _INF:
                    return PRED_POS_INF, c, x, 0, _NO_SHIFT, 0.0
            if x > best:
                best = x
                argmax = c
        if best == -_INF:
            return PRED_ALL_NEG_INF, -1, best, 0, _NO_SHIFT, 0.0
        scaled_sum = 0.0
        weighted_shift = 0.0
        for c in range(n_classes):
            shifted = np.float64(preds[i, c]) - best
            e = math.exp(shifted)
            scaled_sum += e
            if opts.with_entropy and e > 0.0:
                weighted_shift += e * shifted
        log_scaled_sum = math.log(scaled_sum)
        # H = log Z - sum p (x - max), with Z the shifted partition function.
        entropy = log_scaled_sum - weighted_shift / scaled_sum
        return OK, -1, 0.0, argmax, (best, log_scaled_sum), entropy
    total = 0.0
    for c in range(n_classes):
        x = np.float64(preds[i, c])
        if check:
            if x != x:
                return PRED_NAN, c, x, 0, _NO_SHIFT, 0.0
            if kind == PROBS and (x < 0.0 or x > 1.0):
                return PRED_NOT_PROBABILITY, c, x, 0, _NO_SHIFT, 0.0
            if kind == LOGPROBS and x > 0.0:
                return PRED_POSITIVE_LOGPROB, c, x, 0, _NO_SHIFT, 0.0
        if x > best:
            best = x
            argmax = c
        if kind == PROBS:
            total += x
            if opts.with_entropy and x > 0.0:
                entropy -= x * math.log(x)
        elif check or opts.with_entropy:
            p = math.exp(x)
            total += p
            if p > 0.0:
                entropy -= p * x
    if check and abs(total - 1.0) > opts.sum_tol:
        return PRED_ROW_SUM, -1, total, 0, _NO_SHIFT, 0.0
    return OK, -1, 0.0, argmax, _NO_SHIFT, entropy


@njit(**_CALLED)
def log_probability(preds, i, c, normalizer, opts):
    """Predicted log-probability of class ``c`` in row ``i`` (see SPEC section 2)."""
    x = np.float64(preds[i, c])
    if opts.input_kind == PROBS:
        return clipped_log(x, opts.eps)
    if opts.input_kind == LOGPROBS:
        return x
    shift, log_sum = normalizer
    return (x - shift) - log_sum


@njit(**_CALLED)
def scan_soft_target_row(target, i, opts):
    """Check soft-target row ``i``; returns ``(code, column, bad_value, argmax)``."""
    argmax = 0
    best = -_INF
    total = 0.0
    for c in range(target.shape[1]):
        q = np.float64(target[i, c])
        if opts.validate and not q >= 0.0:  # also catches NaN
            return TARGET_INVALID, c, q, 0
        if q > best:
            best = q
            argmax = c
        total += q
    if opts.validate and abs(total - 1.0) > opts.sum_tol:
        return TARGET_ROW_SUM, -1, total, 0
    return OK, -1, 0.0, argmax


@njit(**_CALLED)
def check_binary_pair(x, t, opts):
    """Check one binary prediction / target pair; returns ``(code, which, bad_value)``.

    ``which`` is 0 for the prediction and 1 for the target.
    """
    if not opts.validate:
        return OK, 0, 0.0
    if x != x:
        return PRED_NAN, 0, x
    if opts.input_kind == PROBS and (x < 0.0 or x > 1.0):
        return PRED_NOT_PROBABILITY, 0, x
    if opts.input_kind == LOGITS and x == _INF:
        return PRED_POS_INF, 0, x
    if opts.input_kind == LOGPROBS and x > 0.0:
        return PRED_POSITIVE_LOGPROB, 0, x
    if not (t >= 0.0 and t <= 1.0):
        return TARGET_NOT_PROBABILITY, 1, t
    return OK, 0, 0.0


@njit(**_CALLED)
def binary_log_probabilities(x, opts):
    """(log p, log(1 - p)) of the positive class for one binary prediction."""
    if opts.input_kind == LOGITS:
        # log sigmoid(x) = -softplus(-x); log(1 - sigmoid(x)) = -softplus(x)
        return -softplus(-x), -softplus(x)
    if opts.input_kind == LOGPROBS:
        # SPEC: log-probabilities are used as given (no clipping); log(1 - p) through
        # expm1 keeps its precision when p is within rounding of 1.
        return x, math.log(-math.expm1(x))
    return clipped_log(x, opts.eps), clipped_log1m(x, opts.eps)


@njit(**_CALLED)
def binary_loss(t, log_p, log_1mp, pos_weight):
    """-(pw t log p + (1 - t) log(1 - p)), with 0 * log 0 = 0."""
    return neg_xlogy(pos_weight * t, log_p) + neg_xlogy(1.0 - t, log_1mp)


@njit(**_CALLED)
def binary_entropy(log_p, log_1mp):
    """Entropy of a Bernoulli(p) given log p and log(1 - p)."""
    return neg_xlogy(math.exp(log_p), log_p) + neg_xlogy(math.exp(log_1mp), log_1mp)


@njit(**_CALLED)
def binary_target_entropy(t):
    """Entropy of a Bernoulli(t) target (0 for hard 0/1 targets)."""
    if t <= 0.0 or t >= 1.0:
        return 0.0
    return -(t * math.log(t) + (1.0 - t) * math.log1p(-t))


@njit(**_CALLED)
def binary_predicts_positive(x, opts):
    """Top-1 decision of a binary prediction: p >= 1/2."""
    if opts.input_kind == LOGITS:
        return x >= 0.0
    if opts.input_kind == LOGPROBS:
        return x >= -math.log(2.0)
    return x >= 0.5


# -- vectorized CPU row scans -------------------------------------------------------------
#
# The CPU kernels call the ``*_fast`` functions below; the scalar ones above stay the
# reference (and are what the CUDA twins call). A fast scan makes branch-free passes
# over the row -- maxima through ``max_num``, sums through ``add_reassoc``, exp and log
# from :mod:`fastmath` -- which LLVM turns into SIMD loops. Whenever the row holds
# anything unusual (NaN, +-inf, a value out of range, a failed sum-to-one check) it
# defers to the scalar scan, which reports the first bad column exactly as before. The
# order of a row's sum is fixed by the compiled code alone, so a row's loss never
# depends on the block, batch or thread that computes it.

#: Columns per chunk of the max pass: the inner loop over a chunk vectorizes and only
#: the chunk holding the maximum is searched for the first arg-max.
_ARGMAX_CHUNK = 256
#: Rows narrower than this are not worth a SIMD pass each (the vector body of a loop
#: starts at 16-32 elements); logits rows this narrow take their exps from a flat
#: pass over a group of rows instead (:func:`exp_rows`, :func:`scan_narrow_logits_row`).
NARROW_CLASSES = 64
#: Elements per group of narrow rows: the exps of a group stay in L1 (also the rows
#: of one SIMD pass of the binary kernel).
NARROW_GROUP_ELEMENTS = 1024
#: A narrow row whose logits all lie in [-_NARROW_RANGE, _NARROW_RANGE] needs no shift
#: by its maximum: sum exp(x) neither overflows nor loses its largest term.
_NARROW_RANGE = 600.0


@njit(**_CALLED)
def _scan_prediction_row_scalar(preds, i, opts):
    """:func:`scan_prediction_row` as a called function (the rare-row fallback)."""
    return scan_prediction_row(preds, i, opts)


@njit(**_CALLED)
def _scan_soft_target_row_scalar(target, i, opts):
    """:func:`scan_soft_target_row` as a called function (the rare-row fallback)."""
    return scan_soft_target_row(target, i, opts)


@njit(**_CALLED)
def _row_max_argmax(preds, i):
    """(max, first arg-max, probe) of row ``i``; probe is NaN iff the row holds NaN or inf."""
    n_classes = preds.shape[1]
    best = -_INF
    best_start = 0
    probe = 0.0
    for start in range(0, n_classes, _ARGMAX_CHUNK):
        stop = min(start + _ARGMAX_CHUNK, n_classes)
        chunk_best = -_INF
        for c in range(start, stop):
            x = np.float64(preds[i, c])
            chunk_best = max_num(chunk_best, x)
            probe = add_reassoc(probe, x * 0.0)
        if chunk_best > best:
            best = chunk_best
            best_start = start
    argmax = best_start
    for c in range(best_start, min(best_start + _ARGMAX_CHUNK, n_classes)):
        if np.float64(preds[i, c]) == best:
            argmax = c
            break
    return best, argmax, probe


@njit(**_CALLED)
def scan_prediction_row_fast(preds, i, opts):
    """:func:`scan_prediction_row`, vectorized for the usual row (same return values)."""
    kind = opts.input_kind
    n_classes = preds.shape[1]
    if kind == LOGPROBS or n_classes < NARROW_CLASSES:
        return _scan_prediction_row_scalar(preds, i, opts)
    best, argmax, probe = _row_max_argmax(preds, i)
    if probe != 0.0:  # NaN, +inf or -inf somewhere: the scalar scan sorts it out
        return _scan_prediction_row_scalar(preds, i, opts)
    if kind == LOGITS:
        scaled_sum = 0.0
        entropy = 0.0
        if opts.with_entropy:
            weighted_shift = 0.0
            for c in range(n_classes):
                shifted = np.float64(preds[i, c]) - best
                e = exp64(shifted)
                scaled_sum = add_reassoc(scaled_sum, e)
                weighted_shift = add_reassoc(weighted_shift, e * shifted)
            log_scaled_sum = math.log(scaled_sum)
            entropy = log_scaled_sum - weighted_shift / scaled_sum
        else:
            for c in range(n_classes):
                scaled_sum = add_reassoc(scaled_sum, exp64(np.float64(preds[i, c]) - best))
            log_scaled_sum = math.log(scaled_sum)
        return OK, -1, 0.0, argmax, (best, log_scaled_sum), entropy
    # PROBS
    total = 0.0
    out_of_range = 0
    entropy = 0.0
    for c in range(n_classes):
        x = np.float64(preds[i, c])
        total = add_reassoc(total, x)
        out_of_range += np.int64(x < 0.0) + np.int64(x > 1.0)
    if opts.with_entropy:
        for c in range(n_classes):
            x = np.float64(preds[i, c])
            term = x * log64(x)
            entropy = add_reassoc(entropy, -term if x > 0.0 else 0.0)
    if opts.validate and (out_of_range > 0 or abs(total - 1.0) > opts.sum_tol):
        return _scan_prediction_row_scalar(preds, i, opts)
    return OK, -1, 0.0, argmax, _NO_SHIFT, entropy


@njit(**_CALLED)
def log_probability_fast(preds, i, c, normalizer, opts):
    """:func:`log_probability` with the vectorizable log."""
    x = np.float64(preds[i, c])
    if opts.input_kind == PROBS:
        return log64(clip_probability(x, opts.eps))
    if opts.input_kind == LOGPROBS:
        return x
    shift, log_sum = normalizer
    return (x - shift) - log_sum


@njit(**_CALLED)
def neg_xlogy_fast(coefficient, log_value):
    """:func:`neg_xlogy` as a select (no branch)."""
    product = -coefficient * log_value
    return 0.0 if coefficient == 0.0 else product


@njit(**_CALLED)
def scan_soft_target_row_fast(target, i, opts):
    """:func:`scan_soft_target_row`, vectorized for the usual row."""
    n_classes = target.shape[1]
    _, argmax, probe = _row_max_argmax(target, i)
    if not opts.validate:
        if probe != 0.0:
            return _scan_soft_target_row_scalar(target, i, opts)
        return OK, -1, 0.0, argmax
    total = 0.0
    negative = 0
    for c in range(n_classes):
        q = np.float64(target[i, c])
        total = add_reassoc(total, q)
        negative += np.int64(q < 0.0)
    if probe != 0.0 or negative > 0 or abs(total - 1.0) > opts.sum_tol:
        return _scan_soft_target_row_scalar(target, i, opts)
    return OK, -1, 0.0, argmax


@njit(**_CALLED)
def binary_log_probabilities_fast(x, opts):
    """:func:`binary_log_probabilities` with one vectorizable exp and log1p for logits."""
    if opts.input_kind == LOGITS:
        return log_sigmoid_pair(x)
    if opts.input_kind == LOGPROBS:
        return x, math.log(-math.expm1(x))
    x = clip_probability(x, opts.eps)
    return log64(x), log1p64(-x)


@njit(**_CALLED)
def binary_loss_fast(t, log_p, log_1mp, pos_weight):
    """:func:`binary_loss` without branches."""
    return neg_xlogy_fast(pos_weight * t, log_p) + neg_xlogy_fast(1.0 - t, log_1mp)


@njit(**_CALLED)
def binary_pair_is_ok(x, t, opts):
    """Branch-free form of ``check_binary_pair(x, t, opts)[0] == OK``."""
    kind = opts.input_kind
    ok = x == x and t >= 0.0 and t <= 1.0
    if kind == PROBS:
        ok = ok and x >= 0.0 and x <= 1.0
    elif kind == LOGITS:
        ok = ok and x != _INF
    else:
        ok = ok and x <= 0.0
    return ok


@njit(**_CALLED)
def bernoulli_entropies_fast(preds, target, start, stop, opts, entropies, target_entropies):
    """``entropies[:k]`` = H(p), ``target_entropies[:k]`` = H(t) of 1-d ``start:stop``.

    In SIMD loops: with libm's scalar exp and log1p per value the entropies that
    metrics report cost 15x a multi-label row's loss.
    """
    if opts.input_kind == LOGITS:  # the kind tested once, outside the SIMD loop
        for r in range(stop - start):
            log_p, log_1mp = log_sigmoid_pair(np.float64(preds[start + r]))
            h = neg_xlogy_fast(exp64(log_p), log_p) + neg_xlogy_fast(exp64(log_1mp), log_1mp)
            entropies[r] = h
    else:
        for r in range(stop - start):
            log_p, log_1mp = binary_log_probabilities_fast(np.float64(preds[start + r]), opts)
            entropies[r] = binary_entropy(log_p, log_1mp)
    for r in range(stop - start):
        t = np.float64(target[start + r])
        h = -(t * log64(t) + (1.0 - t) * log1p64(-t))
        target_entropies[r] = h if t > 0.0 and t < 1.0 else 0.0


@njit(**_CALLED)
def binary_losses_fast(preds, target, start, stop, pos_weight, opts, out):
    """``out[:k]``: the binary loss of rows ``start:stop`` in one SIMD pass.

    One value per row leaves no inner loop to vectorize, so the loop runs across rows
    instead: exp / log1p from :mod:`fastmath` instead of one libm call pair per row
    (2x faster for 4 Mi rows). Invalid rows give NaN or garbage here; the kernel checks
    every row before it uses its loss. Log-probabilities keep the scalar ``expm1``.
    """
    kind = opts.input_kind  # tested once, outside each SIMD loop
    eps = opts.eps
    if kind == LOGITS:
        for r in range(stop - start):
            log_p, log_1mp = log_sigmoid_pair(np.float64(preds[start + r]))
            out[r] = binary_loss_fast(np.float64(target[start + r]), log_p, log_1mp, pos_weight)
    elif kind == PROBS:
        for r in range(stop - start):
            x = clip_probability(np.float64(preds[start + r]), eps)
            t = np.float64(target[start + r])
            out[r] = binary_loss_fast(t, log64(x), log1p64(-x), pos_weight)
    else:
        for r in range(stop - start):
            x = np.float64(preds[start + r])
            log_p, log_1mp = binary_log_probabilities(x, opts)
            out[r] = binary_loss_fast(np.float64(target[start + r]), log_p, log_1mp, pos_weight)


@njit(**_CALLED)
def exp_rows(preds, start, stop, out):
    """``out[:k] = exp(preds[start:stop].ravel())``: one flat SIMD pass over narrow rows."""
    n_classes = preds.shape[1]
    for r in range(stop - start):
        for c in range(n_classes):
            out[r * n_classes + c] = exp64(np.float64(preds[start + r, c]))


@njit(**_CALLED)
def scan_narrow_logits_row(preds, i, exps, offset, opts):
    """:func:`scan_prediction_row` for a narrow logits row whose exps are precomputed.

    ``exps[offset + c] = exp(preds[i, c])`` (:func:`exp_rows`). When the row's logits
    lie in [-600, 600] the log-normalizer is log sum exp(x) unshifted: the normalizer
    is ``(0, logsumexp)``, within 2e-16 * 600 of the shifted form. Other rows (and NaN
    or inf) take the scalar scan. Either way a row's result depends only on the row.
    """
    n_classes = preds.shape[1]
    best = -_INF
    lowest = _INF
    argmax = 0
    total = 0.0
    weighted = 0.0
    for c in range(n_classes):
        x = np.float64(preds[i, c])
        if x > best:
            best = x
            argmax = c
        lowest = min(lowest, x)
        e = exps[offset + c]
        total += e
        weighted += e * x
    if not (best <= _NARROW_RANGE and lowest >= -_NARROW_RANGE and total == total):
        return _scan_prediction_row_scalar(preds, i, opts)
    log_sum = math.log(total)
    entropy = 0.0
    if opts.with_entropy:
        entropy = log_sum - weighted / total
    return OK, -1, 0.0, argmax, (0.0, log_sum), entropy
