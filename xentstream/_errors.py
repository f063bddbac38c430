"""Errors of bad data (SPEC section 7): :class:`DataError`, and the messages for the
codes the kernels' fused validation writes.

Each message names the argument or column, the row (as an offset in the whole
stream) and the rule broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xentstream._kernels import layout

__all__ = ["DEFAULT_NAMES", "ColumnNames", "DataError", "kernel_error", "shorten", "show"]


@dataclass(frozen=True)
class ColumnNames:
    """How the inputs are called in messages: argument names, or a feeder's columns."""

    preds: str = "preds"
    target: str = "target"
    sample_weight: str = "sample_weight"


DEFAULT_NAMES = ColumnNames()


class DataError(ValueError):
    """Bad data at one row of a stream (SPEC section 7); a ``ValueError``.

    The message reads ``"{column}: row {row}{position}: {rule}"``, after
    ``"{context}: "`` where a driver names a part of a larger run. The parts are kept
    as attributes, so that whoever knows where a batch sits in a longer stream moves
    the row by a number (:meth:`shifted`), not by editing text: :mod:`xentstream.dask`
    turns a partition's row into a row of the whole stream that way.

    Built by :meth:`at`; ``DataError(message)``, as code that rebuilds an exception
    from its type and text calls it, is a DataError of unknown row (``row`` None).

    Attributes
    ----------
    column : str or None
        The argument or column holding the bad value.
    row : int or None
        The row, counted from the start of the stream.
    position : str
        The rest of the location, as the message shows it after the row: the row
        within its batch, the index of multi-dimensional inputs, the class or label
        (``" (batch row 4), class 2"``), or ``""``.
    rule : str or None
        What is wrong, and the rule broken.
    context : str
        Where in a larger run (``"partition 3 of 8 (...)"``), or ``""``.

    Examples
    --------
    >>> import xentstream as xs
    >>> try:
    ...     xs.cross_entropy([[0.5, 0.5], [0.9, float("nan")]], [0, 1])
    ... except xs.DataError as raised:
    ...     error = raised
    >>> error.column, error.row, error.rule
    ('preds', 1, 'prediction is NaN; predictions must not be NaN')
    >>> print(error.shifted(1000, context="part 2"))
    part 2: preds: row 1001, class 1: prediction is NaN; predictions must not be NaN
    """

    column: str | None = None
    row: int | None = None
    position: str = ""
    rule: str | None = None
    context: str = ""

    @classmethod
    def at(
        cls, column: str, row: int, rule: str, position: str = "", *, context: str = ""
    ) -> DataError:
        """The error of ``column`` at stream row ``row``: ``rule`` broken there."""
        head = f"{context}: " if context else ""
        error = cls(f"{head}{column}: row {row}{position}: {rule}")
        # Instance attributes: pickled with the error (BaseException keeps __dict__),
        # so a Dask worker's error reaches the client whole.
        error.column, error.row, error.position, error.rule = column, int(row), position, rule
        error.context = context
        return error

    def shifted(self, rows: int, *, context: str = "") -> DataError:
        """The same error ``rows`` rows later in a longer stream, ``context`` naming
        the part of the run it came from.

        Raises
        ------
        ValueError
            For an error of unknown row (built from its message alone).
        """
        if self.row is None or self.column is None or self.rule is None:
            raise ValueError("this DataError has no row to shift (built from its message)")
        return DataError.at(self.column, self.row + rows, self.rule, self.position, context=context)


#: Codes of a bad target value (the others are of the predictions).
_TARGET_CODES = frozenset(
    (
        layout.LABEL_OUT_OF_RANGE,
        layout.TARGET_INVALID,
        layout.TARGET_ROW_SUM,
        layout.TARGET_NOT_PROBABILITY,
    )
)


def _index(row: int, leading_shape: tuple[int, ...]) -> str:
    """`` (index (i, j))`` of a batch row of multi-dimensional inputs, else ``""``."""
    if len(leading_shape) > 1 and 0 <= row < int(np.prod(leading_shape)):
        return f" (index {tuple(int(i) for i in np.unravel_index(row, leading_shape))})"
    return ""


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
    axis: str | None,
    target_columns_follow: bool = False,
    rules: Mapping[int, str] | None = None,
) -> DataError:
    """Build the :class:`DataError` for one kernel error record.

    ``row`` is the row within the batch; the error's row is ``row_offset + row``
    (the message adds the batch row, and the batch index for multi-dimensional
    inputs). ``axis`` names the column a record points at (the kind's
    :attr:`~xentstream.kinds.Kind.class_axis`: ``"class"``, ``"label"``; None: one
    value a row, no column shown). ``target_columns_follow``: the kernel records a
    bad target column ``j`` as ``n_classes + j`` (targets shaped like the predictions).
    ``rules``: a kind's own wording of codes it gives another meaning (a rule with a
    ``{value}`` field, e.g. ``{layout.TARGET_INVALID: "count {value!r} is negative"}``),
    so that a new kind words its errors in its batch function, with no code here.

    Examples
    --------
    >>> from xentstream._kernels import layout
    >>> error = kernel_error(layout.PRED_NAN, 3, 1, float("nan"), names=DEFAULT_NAMES,
    ...     row_offset=0, leading_shape=(5,), n_classes=2, sum_tol=1e-8, axis="label")
    >>> str(error)
    'preds: row 3, label 1: prediction is NaN; predictions must not be NaN'
    """
    position = _index(row, leading_shape)
    if row_offset:
        position = f" (batch row {row}{position})"
    stream_row = row_offset + row
    if target_columns_follow and column >= n_classes:
        column -= n_classes
    at = f"{position}, {axis} {column}" if column >= 0 and axis is not None else position

    def preds(rule: str, where: str = at) -> DataError:
        return DataError.at(names.preds, stream_row, rule, where)

    def target(rule: str, where: str = at) -> DataError:
        return DataError.at(names.target, stream_row, rule, where)

    if rules and code in rules:
        column_of = target if code in _TARGET_CODES else preds
        return column_of(rules[code].format(value=value))
    if code == layout.PRED_NAN:
        return preds("prediction is NaN; predictions must not be NaN")
    if code == layout.PRED_POS_INF:
        return preds("logit is +inf; logits must be finite or -inf")
    if code == layout.PRED_NOT_PROBABILITY:
        return preds(
            f"probability {value!r} is outside [0, 1] "
            "(pass input='logits' or input='logprobs' for other scores)"
        )
    if code == layout.PRED_POSITIVE_LOGPROB:
        return preds(f"log-probability {value!r} is positive; log-probabilities must be <= 0")
    if code == layout.PRED_ROW_SUM:
        return preds(
            f"probabilities sum to {value!r}, not 1 within sum_tol={sum_tol:.3g} (pass "
            "input='logits' for unnormalized scores, or a larger sum_tol)"
        )
    if code == layout.PRED_ALL_NEG_INF:
        return preds("every logit is -inf, so no class has positive probability")
    if code == layout.LABEL_OUT_OF_RANGE:
        return target(
            f"label {column} is outside [0, {n_classes}) and is not ignore_index", position
        )
    if code == layout.TARGET_INVALID:
        return target(f"target probability {value!r} is negative or NaN")
    if code == layout.TARGET_ROW_SUM:
        return target(f"target probabilities sum to {value!r}, not 1 within sum_tol={sum_tol:.3g}")
    if code == layout.TARGET_NOT_PROBABILITY:
        return target(f"target {value!r} is outside [0, 1]")
    if code == layout.SAMPLE_WEIGHT_INVALID:
        return DataError.at(
            names.sample_weight,
            stream_row,
            f"weight {value!r} is invalid; sample weights must be finite and >= 0",
            position,
        )
    return preds(f"invalid input (kernel error code {code})", position)


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
