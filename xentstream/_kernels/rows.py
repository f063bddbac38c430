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
    exp32,
    exp64,
    is_float32,
    log1p32,
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
#: starts at 16-32 elements); logits and probability rows this narrow are processed
#: in chunks across rows instead (:func:`narrow_rows_chunk`).
NARROW_CLASSES = 64
#: Rows of one chunk of the binary kernel's SIMD passes across rows (its scratch
#: columns stay in L1).
NARROW_GROUP_ELEMENTS = 1024


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
def _float32_exps(row, best, out):
    """``out[c] = exp(row[c] - best)`` in float32 math, for a float32 logits row.

    float32 exp has twice the lanes of float64 and a shorter polynomial; in SPEC
    section 3's float32 budget (the shift's rounding moves a term by at most
    |x - max| * 6e-8 relative, i.e. the row's log-normalizer by < 3e-8). A loop of its
    own: one that also widened to float64 stayed scalar.
    """
    best32 = np.float32(best)  # exact: the maximum is one of the row's float32 values
    for c in range(row.shape[0]):
        out[c] = exp32(np.float32(row[c]) - best32)


@njit(**_CALLED)
def scan_prediction_row_fast(preds, i, opts, scratch32):
    """:func:`scan_prediction_row`, vectorized for the usual row (same return values).

    float32 logits take their exps from :func:`_float32_exps` (``scratch32``: float32
    scratch of the row's length), summed in float64.
    """
    kind = opts.input_kind
    n_classes = preds.shape[1]
    if kind == LOGPROBS or n_classes < NARROW_CLASSES:
        return scan_prediction_row(preds, i, opts)
    best, argmax, probe = _row_max_argmax(preds, i)
    if probe != 0.0:  # NaN, +inf or -inf somewhere: the scalar scan sorts it out
        return scan_prediction_row(preds, i, opts)
    if kind == LOGITS and is_float32(preds):
        _float32_exps(preds[i], best, scratch32)
        scaled_sum = 0.0
        entropy = 0.0
        if opts.with_entropy:
            weighted_shift = 0.0
            for c in range(n_classes):
                e = np.float64(scratch32[c])
                scaled_sum = add_reassoc(scaled_sum, e)
                weighted_shift = add_reassoc(weighted_shift, e * (np.float64(preds[i, c]) - best))
            log_scaled_sum = math.log(scaled_sum)
            entropy = log_scaled_sum - weighted_shift / scaled_sum
        else:
            for c in range(n_classes):
                scaled_sum = add_reassoc(scaled_sum, np.float64(scratch32[c]))
            log_scaled_sum = math.log(scaled_sum)
        return OK, -1, 0.0, argmax, (best, log_scaled_sum), entropy
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
        return scan_prediction_row(preds, i, opts)
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
def top_label_confidence(preds, i, argmax, normalizer, opts):
    """The probability of row ``i``'s top class ``argmax``: a reliability bin's forecast.

    Probabilities: the value itself (unclipped, as torchmetrics and scikit-learn bin
    it); log-probabilities and logits: ``exp64`` of the log-probability the loss uses.
    The branch-free ``exp64``, not libm, so that :func:`top_label_confidences` gives a
    narrow row the same bits in its SIMD lanes.
    """
    x = np.float64(preds[i, argmax])
    if opts.input_kind == PROBS:
        return x
    if opts.input_kind == LOGPROBS:
        return exp64(x)
    shift, log_sum = normalizer
    return exp64((x - shift) - log_sum)


@njit(**_CALLED)
def top_label_confidences(opts, n, columns, best, argmax, log_sum, out):
    """:func:`top_label_confidence` of the ordinary rows of a chunk that
    :func:`narrow_rows_chunk` scanned (its ``columns``, ``best``, ``argmax``,
    ``log_sum``), across rows: for logits the top value is the shift itself."""
    if opts.input_kind == PROBS:
        for r in range(n):
            out[r] = columns[argmax[r], r]
    else:
        for r in range(n):
            out[r] = exp64((best[r] - best[r]) - log_sum[r])


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
            return scan_soft_target_row(target, i, opts)
        return OK, -1, 0.0, argmax
    total = 0.0
    negative = 0
    for c in range(n_classes):
        q = np.float64(target[i, c])
        total = add_reassoc(total, q)
        negative += np.int64(q < 0.0)
    if probe != 0.0 or negative > 0 or abs(total - 1.0) > opts.sum_tol:
        return scan_soft_target_row(target, i, opts)
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
def bernoulli_entropies_fast(preds, target, start, stop, opts, entropies, target_entropies, out32):
    """``entropies[:k]`` = H(p), ``target_entropies[:k]`` = H(t) of 1-d ``start:stop``.

    In SIMD loops: with libm's scalar exp and log1p per value the entropies that
    metrics report cost 15x a multi-label row's loss. Logits: with ``a = |x|``,
    ``e = exp(-a)`` and ``m = log1p(e)`` (the softplus correction), the smaller of
    p, 1 - p is ``s = e / (1 + e)``, ``log s = -(a + m)`` and the larger's log is
    ``-m``, so ``H = s (a + m) + (1 - s) m = m + a s``: one exp and one log1p, all
    terms positive (float32 math for float32 logits into ``out32``, as the losses).
    The form with ``exp(log p)`` and ``exp(log(1 - p))`` cost 16 ns a row against
    3.6 (1 thread, float32, one 1024-row chunk again and again). 0/1 targets
    (nearly every binary dump) have H(t) = 0: a chunk of them skips the logs.
    Returns the number of targets strictly between 0 and 1 (0: every H(t) is 0).
    """
    # Sliced first: an index ``start + r`` of unknown sign gets numba's wraparound
    # select, which halves the SIMD loop's speed; ``r`` from a range is known >= 0.
    chunk = preds[start:stop]
    chunk_target = target[start:stop]
    n = stop - start
    if opts.input_kind == LOGITS:  # the kind tested once, outside the SIMD loop
        if is_float32(preds):
            # Each loop either float32 math or a widening: a loop with both stays scalar.
            for r in range(n):
                # np.float32: a no-op here, and it lets the float64 variant type this branch
                out32[r] = exp32(np.float32(-abs(chunk[r])))
            for r in range(n):
                entropies[r] = np.float64(out32[r])  # e
            for r in range(n):
                out32[r] = log1p32(out32[r])  # m
            for r in range(n):
                e = entropies[r]
                entropies[r] = np.float64(out32[r]) + abs(np.float64(chunk[r])) * (e / (1.0 + e))
        else:
            for r in range(n):
                entropies[r] = exp64(-abs(np.float64(chunk[r])))
            for r in range(n):
                e = entropies[r]
                entropies[r] = log1p64(e) + abs(np.float64(chunk[r])) * (e / (1.0 + e))
    elif opts.input_kind == PROBS:
        # p itself, not exp(log p): with binary_entropy's two libm exps a row this loop
        # stayed scalar (a metric's update over probabilities cost 3.5x the function).
        eps = opts.eps
        for r in range(n):
            x = clip_probability(np.float64(chunk[r]), eps)
            entropies[r] = neg_xlogy_fast(x, log64(x)) + neg_xlogy_fast(1.0 - x, log1p64(-x))
    else:
        for r in range(n):
            log_p, log_1mp = binary_log_probabilities_fast(np.float64(chunk[r]), opts)
            entropies[r] = binary_entropy(log_p, log_1mp)
    soft = 0
    for r in range(n):
        t = np.float64(chunk_target[r])
        soft += np.int64((t > 0.0) & (t < 1.0))
    if soft == 0:
        for r in range(n):
            target_entropies[r] = 0.0
        return soft
    for r in range(n):
        t = np.float64(chunk_target[r])
        h = -(t * log64(t) + (1.0 - t) * log1p64(-t))
        target_entropies[r] = h if (t > 0.0) & (t < 1.0) else 0.0  # & keeps it branch-free
    return soft


@njit(**_CALLED)
def _softplus_corrections(preds, start, stop, out32, out64, exps32):
    """``log1p(exp(-|x|))`` of the logits ``start:stop``: the inexact part of a softplus.

    float32 logits get float32 math into ``out32``, float64 logits float64 math into
    ``out64``. A loop of its own: a loop that also widens float32 to float64 or returns
    a pair stays scalar (measured 30 vs 14 ms for 4 Mi float32 values). A non-empty
    ``exps32`` also keeps float32 logits' ``exp(-|x|)``, the positive-class forecasts'
    exps (:func:`positive_probabilities_from_exps`): one store a value instead of a
    second exp pass.
    """
    chunk = preds[start:stop]  # see bernoulli_entropies_fast
    if is_float32(preds) and exps32.shape[0] > 0:
        for r in range(stop - start):
            e = exp32(np.float32(-abs(chunk[r])))
            exps32[r] = e
            out32[r] = log1p32(e)
    elif is_float32(preds):
        for r in range(stop - start):
            # np.float32: a no-op here, and it lets the float64 variant type this branch
            out32[r] = log1p32(exp32(np.float32(-abs(chunk[r]))))
    else:
        for r in range(stop - start):
            out64[r] = log1p64(exp64(-abs(np.float64(chunk[r]))))


@njit(**_CALLED)
def binary_losses_fast(preds, target, start, stop, pos_weight, opts, out, out32, exps32):
    """``out[:k]``: the binary loss of rows ``start:stop`` in SIMD passes across rows.

    One value per row leaves no inner loop to vectorize, so the loops run across rows
    instead. Logits: ``log sigmoid(+-x) = -(max(-+x, 0) + log1p(exp(-|x|)))``, the
    correction from :func:`_softplus_corrections` (float32 math for float32 input,
    SPEC section 3's budget), the rest exact in float64. Probabilities: ``log64`` /
    ``log1p64``. Invalid rows give NaN or garbage here; the kernel checks every row
    before it uses its loss. Log-probabilities keep the scalar ``expm1``. ``out32`` is
    float32 scratch of ``out``'s length; a non-empty ``exps32`` (as long) also gets float32
    logits' ``exp(-|x|)`` (:func:`_softplus_corrections`).
    """
    chunk = preds[start:stop]  # see bernoulli_entropies_fast
    chunk_target = target[start:stop]
    kind = opts.input_kind  # tested once, outside each SIMD loop
    eps = opts.eps
    if kind == LOGITS:
        _softplus_corrections(preds, start, stop, out32, out, exps32)
        for r in range(stop - start):
            m = np.float64(out32[r]) if is_float32(preds) else out[r]
            x = np.float64(chunk[r])
            positive_part = max(x, 0.0)
            log_p = -((positive_part - x) + m)
            log_1mp = -(positive_part + m)
            out[r] = binary_loss_fast(np.float64(chunk_target[r]), log_p, log_1mp, pos_weight)
    elif kind == PROBS:
        for r in range(stop - start):
            x = clip_probability(np.float64(chunk[r]), eps)
            t = np.float64(chunk_target[r])
            out[r] = binary_loss_fast(t, log64(x), log1p64(-x), pos_weight)
    else:
        for r in range(stop - start):
            x = np.float64(chunk[r])
            log_p, log_1mp = binary_log_probabilities(x, opts)
            out[r] = binary_loss_fast(np.float64(chunk_target[r]), log_p, log_1mp, pos_weight)


@njit(**_CALLED)
def positive_probabilities_fast(preds, start, stop, input_kind, out, out32):
    """``out[:k]``: the positive-class probability of the values ``start:stop`` in SIMD
    loops, the reliability bins' forecast of a binary (or multi-label) value, whether
    the binary loss kernel bins it (``calibration.positive_block_bins``) or the bins'
    own pass does.

    Logits: ``exp(-|x|)`` (branch-free ``exp64``; float32 logits ``exp32`` into the
    float32 scratch ``out32``, as the softplus corrections: twice the lanes, in SPEC
    section 3's float32 budget), then one division, its numerator selected: a select
    of two divisions cost both. Log-probabilities keep the scalar ``exp``.
    """
    values = preds[start:stop]  # sliced: see bernoulli_entropies_fast
    n = values.shape[0]
    if input_kind == LOGITS and is_float32(preds):
        for r in range(n):  # float32 math in its own loop, widened in the next
            out32[r] = exp32(-abs(values[r]))
        positive_probabilities_from_exps(preds, start, stop, out32, out)
    elif input_kind == LOGITS:
        for r in range(n):
            x = np.float64(values[r])
            e = exp64(-abs(x))
            out[r] = (1.0 if x >= 0.0 else e) / (1.0 + e)
    elif input_kind == LOGPROBS:
        for r in range(n):
            out[r] = math.exp(np.float64(values[r]))
    else:
        for r in range(n):
            out[r] = np.float64(values[r])


@njit(**_CALLED)
def positive_probabilities_from_exps(preds, start, stop, exps32, out):
    """``out[:k]``: the positive-class probability of the float32 logits ``start:stop``
    from their ``exps32[:k] = exp(-|x|)`` (:func:`positive_probabilities_fast`'s, or the
    loss pass's from :func:`binary_losses_fast`): the same bits either way."""
    values = preds[start:stop]  # sliced: see bernoulli_entropies_fast
    for r in range(values.shape[0]):
        e = np.float64(exps32[r])
        out[r] = (1.0 if values[r] >= 0.0 else e) / (1.0 + e)


@njit(**_CALLED)
def logit_label_losses(row, target_row, pos_weight, out32, out64, terms):
    """``terms[c]``: the binary loss of each logit of a multi-label row; returns their sum.

    The same arithmetic as :func:`binary_losses_fast` (the softplus correction in a
    pass of its own, float32 math for float32 logits), along the row's labels; the sum
    is one ``add_reassoc`` reduction, so a row's loss depends on the row only.
    """
    n = row.shape[0]
    _softplus_corrections(row, 0, n, out32, out64, out32[:0])
    loss = 0.0
    for c in range(n):
        m = np.float64(out32[c]) if is_float32(row) else out64[c]
        x = np.float64(row[c])
        positive_part = max(x, 0.0)
        log_p = -((positive_part - x) + m)
        log_1mp = -(positive_part + m)
        term = binary_loss_fast(np.float64(target_row[c]), log_p, log_1mp, pos_weight[c])
        terms[c] = term
        loss = add_reassoc(loss, term)
    return loss


@njit(**_CALLED)
def binary_chunk_terms(preds, target, start, stop, opts, losses, squares, positives):
    """The per-row steps of unweighted binary rows ``start:stop``, across rows.

    Given ``losses[:k]`` (:func:`binary_losses_fast`), writes ``squares[:k]`` (the
    loss squared) and ``positives[:k]`` (the target), and returns ``(bad, correct,
    soft)``: the rows that fail the checks of :func:`check_binary_pair`, the rows whose
    top-1 decision matches the target, and the targets other than 0 and 1 (none: the
    chunk's reliability bins take the tally). Branch-free (``&`` on booleans, counts as sums)
    so that each loop compiles to SIMD code; a caller that sees ``bad > 0`` looks for
    the first bad row with :func:`check_binary_pair`.
    """
    chunk = preds[start:stop]  # see bernoulli_entropies_fast
    chunk_target = target[start:stop]
    kind = opts.input_kind
    bad = 0
    correct = 0
    soft = 0
    threshold = 0.0 if kind == LOGITS else (-math.log(2.0) if kind == LOGPROBS else 0.5)
    for r in range(stop - start):
        x = np.float64(chunk[r])
        t = np.float64(chunk_target[r])
        ok = (x == x) & (t >= 0.0) & (t <= 1.0)
        if kind == PROBS:
            ok = ok & (x >= 0.0) & (x <= 1.0)
        elif kind == LOGITS:
            ok = ok & (x != _INF)
        else:
            ok = ok & (x <= 0.0)
        bad += np.int64(not ok)
        correct += np.int64((x >= threshold) == (t >= 0.5))
        soft += np.int64((t != 0.0) & (t != 1.0))
        squares[r] = losses[r] * losses[r]
        positives[r] = t
    if not opts.validate:
        bad = 0
    return bad, correct, soft


#: Rows of one chunk of narrow logits rows processed across SIMD lanes.
NARROW_CHUNK_ROWS = 256


@njit(**_CALLED)
def narrow_rows_chunk(
    preds, start, stop, opts, with_entropy, columns, best, argmax, log_sum, entropy, unusual
):
    """The row scans of narrow rows ``start:stop``, across rows instead of along them.

    A row of ten logits leaves a loop too short to vectorize, so the chunk is
    transposed into ``columns[c, r]`` (in L1) and every pass runs over the chunk's rows
    in SIMD lanes: the first maximum and its class, ``log sum exp(x - max)``, and with
    ``with_entropy`` the entropy ``log Z - sum p (x - max)``. Each row's values come
    from its own lane with the classes in a fixed order, so they depend on the row
    only, never on the chunk. ``unusual[r]`` is 1 for rows holding NaN or +-inf
    (their values here are garbage; the kernel re-scans them with
    :func:`scan_prediction_row`); returns the number of such rows. Probabilities:
    :func:`_narrow_probs_scan`.
    """
    chunk = preds[start:stop]  # see bernoulli_entropies_fast
    n, n_classes = chunk.shape
    for r in range(n):
        for c in range(n_classes):
            columns[c, r] = np.float64(chunk[r, c])
    if opts.input_kind == PROBS:
        return _narrow_probs_scan(opts, n, columns, best, argmax, log_sum, entropy, unusual)
    probe = log_sum  # scratch until the exp pass
    for r in range(n):
        best[r] = columns[0, r]
        argmax[r] = 0
        probe[r] = columns[0, r] * 0.0
    for c in range(1, n_classes):
        for r in range(n):
            x = columns[c, r]
            larger = x > best[r]  # strict: the first maximum wins, as in the scalar scan
            best[r] = x if larger else best[r]
            argmax[r] = c if larger else argmax[r]
            probe[r] = probe[r] + x * 0.0  # NaN iff the row holds NaN or +-inf
    n_unusual = 0
    for r in range(n):
        odd = probe[r] != 0.0
        unusual[r] = np.uint8(odd)
        n_unusual += np.int64(odd)
    total = entropy  # scratch: the row sums of exp(x - max)
    for r in range(n):
        total[r] = 0.0
    if with_entropy:
        weighted = log_sum  # scratch: sum exp(x - max) * (x - max)
        for r in range(n):
            weighted[r] = 0.0
        for c in range(n_classes):
            for r in range(n):
                shifted = columns[c, r] - best[r]
                e = exp64(shifted)
                total[r] = total[r] + e
                weighted[r] = weighted[r] + e * shifted
        for r in range(n):
            log_total = log64(total[r])
            entropy[r] = log_total - weighted[r] / total[r]
            log_sum[r] = log_total
    else:
        for c in range(n_classes):
            for r in range(n):
                total[r] = total[r] + exp64(columns[c, r] - best[r])
        for r in range(n):
            log_sum[r] = log64(total[r])
            entropy[r] = 0.0
    return n_unusual


@njit(**_CALLED)
def _narrow_probs_scan(opts, n, columns, best, argmax, log_sum, entropy, unusual):
    """:func:`narrow_rows_chunk` for probabilities (``columns`` already transposed).

    Unusual rows: NaN, a value outside [0, 1] or (validating) a sum off 1 by more than
    the tolerance. The normalizer is ``(0, 0)``; the entropy ``-sum p log p`` uses
    ``log64`` in the lanes.
    """
    n_classes = columns.shape[0]
    total = log_sum  # scratch: the row sums
    odd = best  # scratch: values out of range (the maxima come after)
    for r in range(n):
        total[r] = 0.0
        odd[r] = 0.0
        entropy[r] = 0.0
    for c in range(n_classes):
        for r in range(n):
            x = columns[c, r]
            total[r] = total[r] + x
            odd[r] = odd[r] + np.float64(not ((x >= 0.0) & (x <= 1.0)))  # NaN is odd too
    n_unusual = 0
    for r in range(n):
        bad = odd[r] > 0.0
        if opts.validate:
            bad = bad | (abs(total[r] - 1.0) > opts.sum_tol)
        unusual[r] = np.uint8(bad)
        n_unusual += np.int64(bad)
    if opts.with_entropy:
        for c in range(n_classes):
            for r in range(n):
                x = columns[c, r]
                term = x * log64(x)
                entropy[r] = entropy[r] + (-term if x > 0.0 else 0.0)
    for r in range(n):
        best[r] = columns[0, r]
        argmax[r] = 0
    for c in range(1, n_classes):
        for r in range(n):
            x = columns[c, r]
            larger = x > best[r]  # strict: the first maximum wins, as in the scalar scan
            best[r] = x if larger else best[r]
            argmax[r] = c if larger else argmax[r]
    for r in range(n):
        best[r] = 0.0  # the normalizer of probabilities is (0, 0)
        log_sum[r] = 0.0
    return n_unusual


@njit(**_CALLED)
def hard_label_losses(target, start, stop, opts, columns, best, log_sum, losses, squares):
    """Losses ``-log p_y`` of ordinary narrow rows ``start:stop``, across rows.

    ``losses[r] = -((x_y - max) - log_sum)`` (probabilities: ``-log64(clip(p_y))``),
    the same operations as :func:`log_probability_fast` and the kernel's ``neg_xlogy``
    for a unit weight, so a row gets the same bits here as in the kernel's row-by-row
    path. Also writes
    ``squares[r]``; returns the number of rows whose label is out of range or ignored
    (their losses are garbage and the caller takes the row-by-row path).
    """
    labels = target[start:stop]  # see bernoulli_entropies_fast
    n_classes = columns.shape[0]
    special = 0
    for r in range(stop - start):
        label = np.int64(labels[r])
        outside = (label < 0) | (label >= n_classes)
        if opts.has_ignore_index:
            outside = outside | (label == opts.ignore_index)
        special += np.int64(outside)
        column = min(max(label, 0), n_classes - 1)
        if opts.input_kind == PROBS:
            loss = -log64(clip_probability(columns[column, r], opts.eps))
        else:
            loss = -((columns[column, r] - best[r]) - log_sum[r])
        losses[r] = loss
        squares[r] = loss * loss
    return special
