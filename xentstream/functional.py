"""One-shot loss functions (SPEC section 4): a batch in, a loss out.

Each function builds the same config a metric would, runs the batch through the
shared update path (:mod:`xentstream._batch`) and reduces the exact sums.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from xentstream import accumulator
from xentstream._batch import (
    BatchSums,
    binary_batch,
    entropy_batch,
    multiclass_batch,
    multilabel_batch,
)
from xentstream._inputs import as_array
from xentstream._kernels import layout
from xentstream.config import LossConfig
from xentstream.kinds import KINDS

__all__ = ["binary_cross_entropy", "cross_entropy", "entropy", "multilabel_cross_entropy"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(batch: BatchSums, reduction: str, sample_weight: Any = None) -> float | np.ndarray:
    if reduction == "none":
        if sample_weight is None or batch.row_losses.size == 0:
            return batch.row_losses
        # s_i * L_i in float64: the very product the kernel adds to the sum, so that
        # reduction="sum" == math.fsum(reduction="none") (SPEC section 4), as Keras
        # applies sample weights to per-sample losses. The weights passed validation.
        weights = as_array(sample_weight, "sample_weight")
        return batch.row_losses * weights.astype(np.float64).reshape(batch.row_losses.shape)
    if reduction == "sum":
        return accumulator.to_float(batch.sums[layout.LOSS])
    return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])


def _label_codes(target: Any, labels: Any, name: str = "target") -> Any:
    """``target`` as indices into ``labels`` (scikit-learn's ``labels=``: the classes in
    the order of the prediction columns); ``target`` itself without ``labels``."""
    if labels is None:
        return target
    names = list(labels)
    index: dict[Any, int] = {}
    for position, label in enumerate(names):
        if label in index:
            raise ValueError(f"labels: {label!r} appears twice")
        index[label] = position
    if hasattr(target, "to_numpy"):  # pandas, polars, pyarrow: strings as objects
        pyarrow = type(target).__module__.startswith("pyarrow")
        values = np.asarray(target.to_numpy(zero_copy_only=False) if pyarrow else target.to_numpy())
    else:
        values = as_array(target, name) if _is_tensor(target) else np.asarray(target)
    uniques, inverse = np.unique(values, return_inverse=True)
    codes = np.empty(len(uniques), dtype=np.int64)
    for k, value in enumerate(uniques.tolist()):
        if value not in index:
            row = int(np.argmax(inverse.reshape(-1) == k))
            raise ValueError(
                f"{name}: row {row}: label {value!r} is not one of labels {names[:10]}"
            )
        codes[k] = index[value]
    return codes[inverse].reshape(values.shape)


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".", 1)[0] == "torch"


def _swapped_hint(error: Exception, preds: Any, target: Any, labels: Any) -> Exception:
    """``error`` with a hint when the inputs look like strings without ``labels=``, or
    like scikit-learn's argument order ``(y_true, y_pred)``."""
    try:
        p, t = np.asarray(preds), np.asarray(target)
    except Exception:  # device arrays, ragged lists: no hint
        return error
    hint = None
    if labels is None and t.dtype.kind in "USO":
        hint = (
            "string labels need labels= (the class names in the order of the prediction "
            "columns, as scikit-learn's log_loss takes them)"
        )
    elif p.dtype.kind in "iub" or (
        p.dtype.kind == "f" and p.ndim < t.ndim and np.array_equal(p, np.round(p))
    ):
        if t.dtype.kind == "f" and not np.array_equal(t, np.round(t)):
            hint = (
                "the arguments look swapped: xentstream takes (preds, target), like torch; "
                "scikit-learn's log_loss takes (y_true, y_pred)"
            )
    if hint is None:
        return error
    return type(error)(f"{error}; {hint}")


def cross_entropy(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    class_weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    sample_weight: Any = None,
    eps: float | str = "auto",
    reduction: Reduction = "mean",
    sum_tol: float | None = None,
    validate: bool = True,
    engine: str = "auto",
    labels: Any = None,
    **options: Any,
) -> float | np.ndarray:
    """Multiclass cross-entropy, as ``torch.nn.functional.cross_entropy``.

    Parameters
    ----------
    preds : array-like, shape (..., C)
        Probabilities, log-probabilities or logits (see ``input``); leading
        dimensions are flattened into rows, classes are last.
    target : array-like, shape (...) of integers, or shape (..., C) of floats
        Hard class labels, or soft target distributions (mixup, distillation).
    input : {"probs", "logprobs", "logits"}
        What ``preds`` holds. Probabilities are clipped to ``[eps, 1 - eps]``;
        logits are normalized with a max-shifted log-sum-exp (never overflows).
    class_weight : array-like, shape (C,), optional
        Weight ``w_c`` of each class. With hard targets the mean divides by the
        summed weights of the rows' labels, as torch does.
    ignore_index : int, optional
        Hard label whose rows are dropped (loss 0 with ``reduction="none"``).
    label_smoothing : float
        Mixes the target with the uniform distribution: ``(1 - e) q + e / C``.
    sample_weight : array-like, shape (...), optional
        Non-negative weight of each row.
    eps : float or "auto"
        Probability clipping; "auto" is the dtype's machine epsilon (scikit-learn's
        rule); ``0.0`` disables clipping.
    reduction : {"mean", "sum", "none"}
        ``"mean"``: sum of s_i L_i over sum of s_i d_i; ``"sum"``: sum of s_i L_i,
        both exact and correctly rounded; ``"none"``: per-row terms s_i L_i (float64,
        the leading shape of ``preds``; class and sample weights applied, so that
        ``"sum"`` equals ``math.fsum`` of them).
    sum_tol : float, optional
        Tolerance of the sum-to-one checks (default: sqrt of the dtype's eps).
    validate : bool
        ``False`` skips the value checks of SPEC section 7 (never the shape checks).
    engine : {"auto", "cpu", "cuda"}
        Where the kernel runs: ``"auto"`` uses the GPU when ``preds`` is a device
        array (``__cuda_array_interface__``: torch CUDA tensors, CuPy, numba), read
        in place; ``"cuda"`` also copies host inputs to the GPU; ``"cpu"`` copies
        device inputs to the host. (An addition to SPEC section 4's signatures.)
    labels : sequence, optional
        The classes in the order of the prediction columns, as scikit-learn's
        ``log_loss(labels=...)``: ``target`` then holds these values (strings, or
        integers other than 0..C-1) and is mapped to column indices.
    **options
        Further options of :class:`~xentstream.config.MulticlassConfig` (an option
        added to the config is taken here before it has a parameter of its own).

    Returns
    -------
    float or ndarray

    Raises
    ------
    ValueError
        Shape mismatches or invalid values; the message names the argument, the row
        and the rule.
    TypeError
        Unsupported input types or dtypes.

    Examples
    --------
    >>> import math
    >>> loss = cross_entropy([[0.7, 0.2, 0.1]], [0])
    >>> math.isclose(loss, -math.log(0.7))
    True
    >>> cross_entropy([[2.0, 0.0], [0.0, 2.0]], [0, 0], input="logits", reduction="none")
    array([0.12692801, 2.12692801])
    >>> math.isclose(cross_entropy([[0.7, 0.3]], ["cat"], labels=["cat", "dog"]), -math.log(0.7))
    True
    """
    _check_reduction(reduction)
    config = KINDS["multiclass"].make_config(
        input=input,
        eps=eps,
        sum_tol=sum_tol,
        validate=validate,
        class_weight=class_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        **options,
    )
    try:
        batch = multiclass_batch(
            config,
            preds,
            _label_codes(target, labels),
            sample_weight,
            keep_rows=reduction == "none",
            engine=engine,
        )
    except (TypeError, ValueError) as error:
        raise _swapped_hint(error, preds, target, labels) from None
    return _reduce(batch, reduction, sample_weight)


def binary_cross_entropy(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    pos_weight: float | None = None,
    sample_weight: Any = None,
    eps: float | str = "auto",
    reduction: Reduction = "mean",
    sum_tol: float | None = None,
    validate: bool = True,
    engine: str = "auto",
    labels: Any = None,
    **options: Any,
) -> float | np.ndarray:
    """Binary cross-entropy, as ``torch.nn.functional.binary_cross_entropy(_with_logits)``.

    ``L = -(pw t log p + (1 - t) log(1 - p))``; from logits through the stable
    softplus form, so no logit overflows.

    Parameters
    ----------
    preds : array-like, any shape
        Probability (or log-probability, or logit) of the positive class.
    target : array-like, same shape
        Targets in [0, 1]; bool and 0/1 integers are accepted.
    input : {"probs", "logprobs", "logits"}
    pos_weight : float, optional
        Weight of the positive term, as torch's ``pos_weight``.
    sample_weight : array-like, optional
        Row weights; the mean is ``sum(s L) / sum(s)`` (scikit-learn's ``log_loss``
        convention; torch's ``weight`` divides by the row count instead).
    eps, reduction, sum_tol, validate, engine
        As in :func:`cross_entropy`.
    labels : sequence of two, optional
        ``[negative, positive]``: the values ``target`` holds (e.g. ``["ham", "spam"]``).
    **options
        Further options of :class:`~xentstream.config.BinaryConfig`, as in
        :func:`cross_entropy`.

    Shapes people have are accepted: column vectors (a trailing axis of 1) on either
    side, and scikit-learn's ``predict_proba`` output of shape (N, 2) (rows must sum to
    1; column 1 is used; with ``input="logits"`` the binary logit is ``x1 - x0``).

    Returns
    -------
    float or ndarray

    Raises
    ------
    ValueError, TypeError
        As in :func:`cross_entropy`.

    Examples
    --------
    >>> import math
    >>> math.isclose(binary_cross_entropy([0.6], [1.0]), -math.log(0.6))
    True
    >>> proba = [[0.4, 0.6], [0.9, 0.1]]  # clf.predict_proba(X)
    >>> math.isclose(
    ...     binary_cross_entropy(proba, ["spam", "ham"], labels=["ham", "spam"]),
    ...     -(math.log(0.6) + math.log(0.9)) / 2,
    ... )
    True
    """
    _check_reduction(reduction)
    config = KINDS["binary"].make_config(
        input=input, eps=eps, sum_tol=sum_tol, validate=validate, pos_weight=pos_weight, **options
    )
    try:
        batch = binary_batch(
            config,
            preds,
            _label_codes(target, labels),
            sample_weight,
            keep_rows=reduction == "none",
            engine=engine,
        )
    except (TypeError, ValueError) as error:
        raise _swapped_hint(error, preds, target, labels) from None
    return _reduce(batch, reduction, sample_weight)


def multilabel_cross_entropy(
    preds: Any,
    target: Any,
    *,
    input: str = "probs",
    pos_weight: Any = None,
    sample_weight: Any = None,
    eps: float | str = "auto",
    reduction: Reduction = "mean",
    sum_tol: float | None = None,
    validate: bool = True,
    engine: str = "auto",
    **options: Any,
) -> float | np.ndarray:
    """Multi-label cross-entropy: per row, the SUM over labels of the binary loss.

    The mean is over rows. torch's ``binary_cross_entropy_with_logits(...,
    reduction="mean")`` averages over rows *and* labels, so it equals this value
    divided by the number of labels C.

    Parameters
    ----------
    preds : array-like, shape (..., C)
        Per-label probabilities (or log-probabilities, or logits).
    target : array-like, shape (..., C)
        Per-label targets in [0, 1]; bool accepted.
    pos_weight : float or array-like of shape (C,), optional
        Weight of the positive term, per label or for all.
    input, sample_weight, eps, reduction, sum_tol, validate, engine
        As in :func:`binary_cross_entropy`.
    **options
        Further options of :class:`~xentstream.config.MultilabelConfig`, as in
        :func:`cross_entropy`.

    Returns
    -------
    float or ndarray

    Raises
    ------
    ValueError, TypeError
        As in :func:`cross_entropy`.

    Examples
    --------
    >>> import math
    >>> loss = multilabel_cross_entropy([[0.9, 0.2]], [[1, 0]])
    >>> math.isclose(loss, -math.log(0.9) - math.log(0.8))
    True
    """
    _check_reduction(reduction)
    config = KINDS["multilabel"].make_config(
        input=input, eps=eps, sum_tol=sum_tol, validate=validate, pos_weight=pos_weight, **options
    )
    batch = multilabel_batch(
        config, preds, target, sample_weight, keep_rows=reduction == "none", engine=engine
    )
    return _reduce(batch, reduction, sample_weight)


def entropy(
    preds: Any,
    *,
    input: str = "probs",
    reduction: Reduction = "mean",
    sum_tol: float | None = None,
    validate: bool = True,
    engine: str = "auto",
) -> float | np.ndarray:
    """Entropy ``-sum_c p_c log p_c`` of each predicted distribution (nats).

    Parameters
    ----------
    preds : array-like, shape (..., C)
        Probabilities, log-probabilities or logits.
    input, reduction, sum_tol, validate, engine
        As in :func:`cross_entropy` (probabilities are not clipped here: 0 log 0 = 0).

    Returns
    -------
    float or ndarray

    Raises
    ------
    ValueError, TypeError
        As in :func:`cross_entropy`.

    Examples
    --------
    >>> import math
    >>> p = [0.2, 0.3, 0.5]
    >>> math.isclose(entropy([p]), -sum(x * math.log(x) for x in p))
    True
    """
    _check_reduction(reduction)
    config = LossConfig(input=input, sum_tol=sum_tol, validate=validate)
    batch = entropy_batch(config, preds, keep_rows=reduction == "none", engine=engine)
    return _reduce(batch, reduction)
