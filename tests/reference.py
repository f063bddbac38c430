"""Reference implementations of the losses of SPEC section 2, in plain float64 numpy.

Written to be read, not to be fast, and independent of the package: nothing here
imports xentstream. Every function takes the predictions as given (any float
dtype), widens them to float64 and applies the SPEC's formula literally:

- ``probs``: log(clip(p, eps, 1 - eps)), ``eps="auto"`` = ``np.finfo(dtype).eps``,
  ``eps=0`` no clipping;
- ``logprobs``: the values themselves;
- ``logits``: x - logsumexp(x) with the row maximum shifted out.

Per-row functions return float64 arrays over the leading dimensions; the
reductions follow torch's weighted mean, sum_i s_i L_i / sum_i s_i d_i. The
``*_terms`` functions keep each row's loss split by class (label), for per-class
sums; the ``*_rows`` functions add those shares up.

This is the one reference of the test suite and of the benchmarks: the "numpy" peer
of ``tests/comparisons.py`` (the cases the asv suite and ``asv_bench/compare.py`` time)
is these functions, and ``tests/test_report.py`` derives its expected report fields
from them.

Examples
--------
>>> import math
>>> rows = multiclass_rows([[0.7, 0.2, 0.1]], [0])
>>> math.isclose(rows.losses[0], -math.log(0.7))
True
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Rows",
    "Terms",
    "binary_rows",
    "binary_terms",
    "entropy_rows",
    "exact_mean",
    "exact_sum",
    "log_probabilities",
    "mean",
    "multiclass_rows",
    "multiclass_terms",
    "multilabel_rows",
    "resolve_eps",
    "sigmoid",
    "softmax",
    "total",
]


class Rows(NamedTuple):
    """Per-row losses L_i and denominators d_i (0 for ignored rows), float64."""

    losses: np.ndarray
    denominators: np.ndarray


def resolve_eps(eps: float | str, dtype: Any) -> float:
    """The clipping eps: "auto" is the machine epsilon of the predictions' dtype."""
    if eps == "auto":
        return float(np.finfo(dtype).eps)
    return float(eps)


def _float_dtype(values: Any) -> np.dtype:
    array = np.asarray(values)
    return array.dtype if array.dtype.kind == "f" else np.dtype(np.float64)


def _xlogy_negated(coefficient: np.ndarray, log_value: np.ndarray) -> np.ndarray:
    """-coefficient * log_value elementwise, with 0 * log 0 = 0."""
    with np.errstate(invalid="ignore"):
        product = -coefficient * log_value
    return np.where(coefficient == 0.0, 0.0, product)


def log_probabilities(preds: Any, input: str, eps: float | str = "auto") -> np.ndarray:
    """Predicted log-probabilities (..., C) in float64 (SPEC section 2, ``input=``)."""
    dtype = _float_dtype(preds)
    x = np.asarray(preds, dtype=np.float64)
    if input == "probs":
        bound = resolve_eps(eps, dtype)
        p = np.clip(x, bound, 1.0 - bound) if bound > 0.0 else x
        with np.errstate(divide="ignore"):
            return np.log(p)
    if input == "logprobs":
        return x
    if input == "logits":
        shift = np.max(x, axis=-1, keepdims=True)
        shifted = x - shift
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    raise ValueError(f"unknown input kind {input!r}")


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64: the probabilities that ``input="logits"`` stands for."""
    return np.exp(log_probabilities(logits, "logits"))


def sigmoid(logits: Any) -> np.ndarray:
    """The logistic function in float64 (its tanh form never overflows)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


class Terms(NamedTuple):
    """Each row's multiclass loss split by class, and the target it was computed from."""

    terms: np.ndarray  # (..., C): -w_c q_ic l_ic, 0 on ignored rows
    denominators: np.ndarray  # d_i, 0 on ignored rows
    target: np.ndarray  # q after label smoothing, (..., C)
    ignored: np.ndarray  # bool, (...)

    @property
    def rows(self) -> Rows:
        return Rows(np.sum(self.terms, axis=-1), self.denominators)


def multiclass_terms(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    class_weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    eps: float | str = "auto",
) -> Terms:
    """Multiclass cross-entropy per row and class: -w_c q_ic l_ic (see :func:`multiclass_rows`)."""
    log_p = log_probabilities(preds, input, eps)
    n_classes = log_p.shape[-1]
    weights = np.ones(n_classes) if class_weight is None else np.asarray(class_weight, float)
    target = np.asarray(target)
    if target.shape == log_p.shape[:-1]:
        labels = target.astype(np.int64)
        ignored = (
            labels == ignore_index
            if ignore_index is not None
            else np.zeros(labels.shape, dtype=bool)
        )
        kept_labels = np.where(ignored, 0, labels)
        q = (np.arange(n_classes) == kept_labels[..., None]).astype(np.float64)
        denominators = np.where(ignored, 0.0, weights[kept_labels])
    else:
        ignored = np.zeros(log_p.shape[:-1], dtype=bool)
        q = target.astype(np.float64)
        denominators = np.ones(log_p.shape[:-1])
    q = (1.0 - label_smoothing) * q + label_smoothing / n_classes
    terms = np.where(ignored[..., None], 0.0, _xlogy_negated(weights * q, log_p))
    return Terms(terms, denominators, q, ignored)


def multiclass_rows(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    class_weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    eps: float | str = "auto",
) -> Rows:
    """Multiclass cross-entropy per row: L_i = -sum_c w_c q_ic l_ic.

    ``target`` holds integer labels (hard, shape (...)) or distributions (soft,
    the predictions' shape). Hard rows have d_i = w_{y_i} (0 when ignored), soft
    rows d_i = 1, as ``torch.nn.functional.cross_entropy``.
    """
    return multiclass_terms(
        preds,
        target,
        input=input,
        class_weight=class_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        eps=eps,
    ).rows


def _binary_log_probabilities(
    x: np.ndarray, input: str, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(log p, log(1 - p)) of the positive class, elementwise."""
    with np.errstate(divide="ignore"):
        if input == "probs":
            p = np.clip(x, eps, 1.0 - eps) if eps > 0.0 else x
            return np.log(p), np.log1p(-p)
        if input == "logprobs":
            return x, np.log(-np.expm1(x))
        if input == "logits":
            # log sigmoid(x) = -log(1 + exp(-x)); log(1 - sigmoid(x)) = -log(1 + exp(x))
            return -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    raise ValueError(f"unknown input kind {input!r}")


def binary_terms(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    pos_weight: Any = None,
    eps: float | str = "auto",
) -> np.ndarray:
    """Binary cross-entropy of every value: -(pw t log p + (1 - t) log(1 - p)), float64."""
    dtype = _float_dtype(preds)
    x = np.asarray(preds, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    log_p, log_1mp = _binary_log_probabilities(x, input, resolve_eps(eps, dtype))
    return _xlogy_negated(pw * t, log_p) + _xlogy_negated(1.0 - t, log_1mp)


def binary_rows(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    pos_weight: float | None = None,
    eps: float | str = "auto",
) -> Rows:
    """Binary cross-entropy per row: L_i = -(pw t log p + (1 - t) log(1 - p))."""
    losses = binary_terms(preds, target, input=input, pos_weight=pos_weight, eps=eps)
    return Rows(losses, np.ones(losses.shape))


def multilabel_rows(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    pos_weight: Any = None,
    eps: float | str = "auto",
) -> Rows:
    """Multi-label cross-entropy per row: the SUM over labels of the binary loss."""
    terms = binary_terms(preds, target, input=input, pos_weight=pos_weight, eps=eps)
    losses = terms.sum(axis=-1)
    return Rows(losses, np.ones(losses.shape))


def entropy_rows(preds: Any, *, input: str = "probs") -> np.ndarray:
    """Entropy -sum_c p_c log p_c of each predicted distribution (no clipping)."""
    log_p = log_probabilities(preds, input, eps=0.0)
    return np.sum(_xlogy_negated(np.exp(log_p), log_p), axis=-1)


def _weights(sample_weight: Any, shape: tuple[int, ...]) -> np.ndarray:
    if sample_weight is None:
        return np.ones(shape)
    return np.asarray(sample_weight, dtype=np.float64)


def total(rows: Rows, sample_weight: Any = None) -> float:
    """``reduction="sum"``: sum_i s_i L_i (float64 products, summed with fsum)."""
    s = _weights(sample_weight, rows.losses.shape)
    return math.fsum((s * rows.losses).ravel())


def mean(rows: Rows, sample_weight: Any = None) -> float:
    """``reduction="mean"``: sum_i s_i L_i / sum_i s_i d_i (NaN when the denominator is 0)."""
    s = _weights(sample_weight, rows.losses.shape)
    denominator = math.fsum((s * rows.denominators).ravel())
    if denominator == 0.0:
        return math.nan
    return math.fsum((s * rows.losses).ravel()) / denominator


def exact_sum(terms: Any) -> Fraction:
    """The exact rational sum of finite float terms."""
    return sum(
        (Fraction(float(t)) for t in np.asarray(terms, dtype=np.float64).ravel()), Fraction(0)
    )


def exact_mean(numerator_terms: Any, denominator_terms: Any) -> float:
    """The correctly rounded quotient of two exact sums of float64 terms."""
    return float(exact_sum(numerator_terms) / exact_sum(denominator_terms))


def reliability_bins(confidence, outcome, n_bins, weights=None):
    """Reliability bins of forecasts ``confidence`` and outcomes ``outcome``, plain numpy:
    equal-width bins [k/n, (k+1)/n), the last one closed; ECE, MCE, Brier and its Murphy
    decomposition, per-bin counts, mean confidence and accuracy of the used bins."""
    weights = np.ones_like(confidence) if weights is None else weights
    index = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    w = np.bincount(index, weights, n_bins)
    f = np.bincount(index, weights * confidence, n_bins)
    o = np.bincount(index, weights * outcome, n_bins)
    used = w > 0
    fbar, obar = f[used] / w[used], o[used] / w[used]
    total = w.sum()
    base = (weights * outcome).sum() / total
    return {
        "ece": float(np.sum(w[used] / total * np.abs(obar - fbar))),
        "mce": float(np.max(np.abs(obar - fbar))),
        "brier": float(np.sum(weights * (confidence - outcome) ** 2) / total),
        "reliability": float(np.sum(w[used] * (fbar - obar) ** 2) / total),
        "resolution": float(np.sum(w[used] * (obar - base) ** 2) / total),
        "uncertainty": float(base * (1 - base)),
        "counts": np.bincount(index, minlength=n_bins),
        "confidence": fbar,
        "accuracy": obar,
    }


def clustered_stderr(a: Any, b: Any) -> float:
    """Cluster-robust (CR1) standard error of ``sum a / sum b`` over clusters (the
    documents' ``a_d``, ``b_d``), written out in float64."""
    ratio = math.fsum(a) / math.fsum(b)
    g = len(a)
    residuals = [float(x) - ratio * float(y) for x, y in zip(a, b, strict=True)]
    return math.sqrt(g / (g - 1) * math.fsum(r * r for r in residuals)) / math.fsum(b)


def exact_bin_sums(confidence, outcome, n_bins, weights=None):
    """Exact per-bin sums (``Fraction``) of the reliability bins' six terms, and counts.

    The terms are float64 numpy products as the bins define them: ``s``, ``s f``,
    ``s o``, ``(s f) f``, ``(s f) o``, ``(s o) o`` (``s = 1`` without weights), summed
    without rounding. Returns ``(sums, counts)``: ``sums[k][name]`` by the state file's
    names of the sums, ``counts`` (n_bins,) the forecasts per bin.
    """
    f = np.asarray(confidence, np.float64)
    o = np.asarray(outcome, np.float64)
    s = np.ones_like(f) if weights is None else np.asarray(weights, np.float64)
    index = np.clip((f * n_bins).astype(np.int64), 0, n_bins - 1)
    sf, so = s * f, s * o
    terms = {
        "weight": s,
        "confidence": sf,
        "outcome": so,
        "confidence_squared": sf * f,
        "product": sf * o,
        "outcome_squared": so * o,
    }
    sums = [
        {
            name: sum(map(Fraction, values[index == k].tolist()), Fraction(0))
            for name, values in terms.items()
        }
        for k in range(n_bins)
    ]
    return sums, np.bincount(index, minlength=n_bins)
