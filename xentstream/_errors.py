"""Error messages for the codes the kernels' fused validation writes (SPEC section 7).

Each message names the argument or column, the row (as an offset in the whole
stream) and the rule broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xentstream._kernels import layout

__all__ = ["DEFAULT_NAMES", "ColumnNames", "kernel_error", "shorten", "show"]


@dataclass(frozen=True)
class ColumnNames:
    """How the inputs are called in messages: argument names, or a feeder's columns."""

    preds: str = "preds"
    target: str = "target"
    sample_weight: str = "sample_weight"


DEFAULT_NAMES = ColumnNames()


def _where(row: int, leading_shape: tuple[int, ...]) -> str:
    text = f"row {row}"
    if len(leading_shape) > 1 and 0 <= row < int(np.prod(leading_shape)):
        text += f" (index {tuple(int(i) for i in np.unravel_index(row, leading_shape))})"
    return text


def kernel_error(
    code: int,
    row: int,
    column: int,
    value: float,
    *,
    names: ColumnNames,
    row_offset: int,
    leading_shape: tuple[int, ...],
    n_classes: int,
    sum_tol: float,
    kind: str,
) -> ValueError:
    """Build the ``ValueError`` for one kernel error record.

    ``row`` is the row within the batch; the message shows ``row_offset + row``
    (and the batch index for multi-dimensional inputs).
    """
    where = _where(row, leading_shape)
    if row_offset:
        where = f"row {row_offset + row} (batch {where})"
    label_word = "label" if kind == "multilabel" else "class"
    if kind == "multilabel" and column >= n_classes:
        column -= n_classes  # the multi-label kernel flags target columns this way
    at = f"{where}, {label_word} {column}" if column >= 0 and kind != "binary" else where
    if code == layout.PRED_NAN:
        return ValueError(f"{names.preds}: {at}: prediction is NaN; predictions must not be NaN")
    if code == layout.PRED_POS_INF:
        return ValueError(f"{names.preds}: {at}: logit is +inf; logits must be finite or -inf")
    if code == layout.PRED_NOT_PROBABILITY:
        return ValueError(
            f"{names.preds}: {at}: probability {value!r} is outside [0, 1] "
            "(pass input='logits' or input='logprobs' for other scores)"
        )
    if code == layout.PRED_POSITIVE_LOGPROB:
        return ValueError(
            f"{names.preds}: {at}: log-probability {value!r} is positive; "
            "log-probabilities must be <= 0"
        )
    if code == layout.PRED_ROW_SUM:
        return ValueError(
            f"{names.preds}: {at}: probabilities sum to {value!r}, not 1 within "
            f"sum_tol={sum_tol:.3g} (pass input='logits' for unnormalized scores, or a "
            "larger sum_tol)"
        )
    if code == layout.PRED_ALL_NEG_INF:
        return ValueError(
            f"{names.preds}: {at}: every logit is -inf, so no class has positive probability"
        )
    if code == layout.LABEL_OUT_OF_RANGE:
        return ValueError(
            f"{names.target}: {where}: label {column} is outside [0, {n_classes}) "
            "and is not ignore_index"
        )
    if code == layout.TARGET_INVALID:
        return ValueError(f"{names.target}: {at}: target probability {value!r} is negative or NaN")
    if code == layout.TARGET_ROW_SUM:
        return ValueError(
            f"{names.target}: {at}: target probabilities sum to {value!r}, not 1 within "
            f"sum_tol={sum_tol:.3g}"
        )
    if code == layout.TARGET_NOT_PROBABILITY:
        if kind == "multilabel":
            at = f"{where}, label {column}"
        return ValueError(f"{names.target}: {at}: target {value!r} is outside [0, 1]")
    if code == layout.SAMPLE_WEIGHT_INVALID:
        return ValueError(
            f"{names.sample_weight}: {where}: weight {value!r} is invalid; "
            "sample weights must be finite and >= 0"
        )
    return ValueError(f"{names.preds}: {where}: invalid input (kernel error code {code})")


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to about ``limit`` characters, so that messages stay one short line."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 20]}... ({len(text)} characters)"


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut to ``limit``; huge integers by their size only
    (their decimal form alone would cost seconds and megabytes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, list | dict | tuple) and len(value) > 20:
        return f"<a {type(value).__name__} of {len(value)} entries>"
    try:
        return shorten(repr(value), limit)
    except ValueError:  # the interpreter's int digit limit, inside a container
        return f"<a {type(value).__name__}>"
