"""Per-row loss arithmetic shared by every CPU kernel (inlined into them).

All arithmetic is float64 whatever the input dtype: float32 inputs are widened
element by element as they are read, never copied.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

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


@njit(inline="always", nogil=True)
def neg_xlogy(coefficient, log_value):
    """-coefficient * log_value with 0 * log 0 = 0 (a zero coefficient never yields NaN)."""
    if coefficient == 0.0:
        return 0.0
    return -coefficient * log_value


@njit(inline="always", nogil=True)
def softplus(z):
    """log(1 + exp(z)) without overflow: max(z, 0) + log1p(exp(-|z|))."""
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@njit(inline="always", nogil=True)
def clipped_log(p, eps):
    """log(clip(p, eps, 1 - eps)); eps = 0 gives log(p), hence -inf at p = 0."""
    if eps > 0.0:
        if p < eps:
            p = eps
        elif p > 1.0 - eps:
            p = 1.0 - eps
    return math.log(p)


@njit(inline="always", nogil=True)
def clipped_log1m(p, eps):
    """log(1 - clip(p, eps, 1 - eps)), through log1p for accuracy at small p."""
    if eps > 0.0:
        if p < eps:
            p = eps
        elif p > 1.0 - eps:
            p = 1.0 - eps
    return math.log1p(-p)


@njit(inline="always", nogil=True)
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


@njit(inline="always", nogil=True)
def log_probability(preds, i, c, normalizer, opts):
    """Predicted log-probability of class ``c`` in row ``i`` (see SPEC section 2)."""
    x = np.float64(preds[i, c])
    if opts.input_kind == PROBS:
        return clipped_log(x, opts.eps)
    if opts.input_kind == LOGPROBS:
        return x
    shift, log_sum = normalizer
    return (x - shift) - log_sum


@njit(inline="always", nogil=True)
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


@njit(inline="always", nogil=True)
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


@njit(inline="always", nogil=True)
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


@njit(inline="always", nogil=True)
def binary_loss(t, log_p, log_1mp, pos_weight):
    """-(pw t log p + (1 - t) log(1 - p)), with 0 * log 0 = 0."""
    return neg_xlogy(pos_weight * t, log_p) + neg_xlogy(1.0 - t, log_1mp)


@njit(inline="always", nogil=True)
def binary_entropy(log_p, log_1mp):
    """Entropy of a Bernoulli(p) given log p and log(1 - p)."""
    return neg_xlogy(math.exp(log_p), log_p) + neg_xlogy(math.exp(log_1mp), log_1mp)


@njit(inline="always", nogil=True)
def binary_target_entropy(t):
    """Entropy of a Bernoulli(t) target (0 for hard 0/1 targets)."""
    if t <= 0.0 or t >= 1.0:
        return 0.0
    return -(t * math.log(t) + (1.0 - t) * math.log1p(-t))


@njit(inline="always", nogil=True)
def binary_predicts_positive(x, opts):
    """Top-1 decision of a binary prediction: p >= 1/2."""
    if opts.input_kind == LOGITS:
        return x >= 0.0
    if opts.input_kind == LOGPROBS:
        return x >= -math.log(2.0)
    return x >= 0.5
