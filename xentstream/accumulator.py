"""Exact sums outside the kernels: rounding, merging and serializing accumulators.

An accumulator is an ``int64`` array of shape ``(..., N_SLOTS)`` produced by the
kernels (see :mod:`xentstream._kernels.exact` for the layout). This module turns it
into correctly rounded floats and into plain JSON integers, and back.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from xentstream._kernels.exact import (
    CHUNK_BITS,
    N_CHUNKS,
    N_SLOTS,
    NAN,
    NEG_INF,
    POS_INF,
    UNIT_EXPONENT,
    normalize,
)

__all__ = [
    "N_SLOTS",
    "empty",
    "exact_integer",
    "from_json",
    "merge_into",
    "ratio",
    "to_float",
    "to_floats",
    "to_json",
]

_DENOMINATOR = 1 << -UNIT_EXPONENT
#: Bound on |value| of any accumulator in units of 2**-1075: 2**63 terms of at most
#: 2**1024 each (the top chunk then holds < 2**51). Loaded states must stay below it,
#: and so must a merge, which keeps int64 chunks from wrapping however often states
#: near the bound are merged.
MAX_MAGNITUDE = 1 << (63 + 1024 - UNIT_EXPONENT)
_TOP_CHUNK_BOUND = MAX_MAGNITUDE >> (CHUNK_BITS * (N_CHUNKS - 1))
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,700})")


def empty(*shape: int) -> np.ndarray:
    """Return a zeroed accumulator array of shape ``(*shape, N_SLOTS)``."""
    return np.zeros((*shape, N_SLOTS), dtype=np.int64)


def exact_integer(row: np.ndarray) -> int:
    """The fixed-point part of one accumulator row as a Python integer (units 2**-1075)."""
    total = 0
    for k in range(N_CHUNKS - 1, -1, -1):
        total = (total << CHUNK_BITS) + int(row[k])
    return total


def to_float(row: np.ndarray) -> float:
    """Correctly rounded float64 value of one accumulator row.

    Equal to ``math.fsum`` of the terms that were added (round half to even).

    Examples
    --------
    >>> import math
    >>> from xentstream._kernels.exact import add_term
    >>> acc = empty(1)
    >>> for term in (1e100, 1.0, -1e100, 1e-3):
    ...     add_term(acc[0], term)
    >>> to_float(acc[0]) == math.fsum([1e100, 1.0, -1e100, 1e-3])
    True
    """
    if row[NAN] or (row[POS_INF] and row[NEG_INF]):
        return math.nan
    if row[POS_INF]:
        return math.inf
    if row[NEG_INF]:
        return -math.inf
    total = exact_integer(row)
    try:
        # int / int is correctly rounded in CPython, however large the operands.
        return total / _DENOMINATOR
    except OverflowError:
        return math.inf if total > 0 else -math.inf


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """Correctly rounded quotient of two accumulator rows (a weighted mean).

    Both rows share the unit ``2**-1075``, so the quotient of their exact integers
    is the exact quotient of the sums; Python rounds it once. A zero denominator
    gives NaN (as torch does when every row is ignored).
    """
    if _is_special(numerator) or _is_special(denominator):
        return to_float(numerator) / to_float(denominator) if to_float(denominator) else math.nan
    top = exact_integer(numerator)
    bottom = exact_integer(denominator)
    if bottom == 0:
        return math.nan
    try:
        return top / bottom
    except OverflowError:
        return math.inf if (top > 0) == (bottom > 0) else -math.inf


def _is_special(row: np.ndarray) -> bool:
    return bool(row[POS_INF] or row[NEG_INF] or row[NAN])


def to_floats(acc: np.ndarray) -> np.ndarray:
    """Correctly rounded values of every row of ``acc`` (shape ``(..., N_SLOTS)``)."""
    flat = acc.reshape(-1, N_SLOTS)
    values = np.zeros(flat.shape[0], dtype=np.float64)
    # Most per-class rows of a large state are zero; only the others need Python ints.
    for index in np.flatnonzero(flat.any(axis=1)):
        values[index] = to_float(flat[index])
    return values.reshape(acc.shape[:-1])


def merge_into(target: np.ndarray, source: np.ndarray) -> None:
    """Add accumulator ``source`` into ``target`` in place (exact), then normalize.

    Raises
    ------
    ValueError
        If the sum would leave the range of :data:`MAX_MAGNITUDE` (only crafted
        states get there); ``target`` is then unchanged.
    """
    top = N_CHUNKS - 1
    # Both operands are normalized, so the top chunks carry the magnitude; bounding
    # their sum (+1 for a carry) keeps int64 from wrapping to the opposite sign.
    reach = np.abs(target[..., top].astype(np.float64) + source[..., top]) + 1
    if reach.size and reach.max() >= _TOP_CHUNK_BOUND:
        raise ValueError("accumulator: sum out of range (more than 2**63 largest float64 terms)")
    target += source
    normalize(target.reshape(-1, N_SLOTS))


def to_json(acc: np.ndarray) -> list[Any]:
    """Plain-JSON form of an accumulator array: nested lists of ``[value, +inf, -inf, nan]``.

    ``value`` is the exact fixed-point integer as a decimal string (JSON numbers
    lose precision in many readers), in units of ``2**-1075``.
    """
    if acc.ndim == 1:
        return [
            str(exact_integer(acc)),
            int(acc[POS_INF]),
            int(acc[NEG_INF]),
            int(acc[NAN]),
        ]
    return [to_json(sub) for sub in acc]


def from_json(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`to_json`; ``shape`` is the accumulator's leading shape.

    Raises
    ------
    ValueError
        If ``data`` does not have the expected structure.
    """
    acc = empty(*shape)
    _fill_from_json(acc, data)
    return acc


def _fill_from_json(acc: np.ndarray, data: Any) -> None:
    if acc.ndim > 1:
        if not isinstance(data, list) or len(data) != acc.shape[0]:
            raise ValueError(f"accumulator: expected a list of {acc.shape[0]} entries")
        for sub, item in zip(acc, data, strict=True):
            _fill_from_json(sub, item)
        return
    if not isinstance(data, list) or len(data) != 4:
        raise ValueError("accumulator: expected [value, pos_inf, neg_inf, nan]")
    value, pos_inf, neg_inf, nan = data
    # Exactly what to_json writes: int() would also take " 1_000 " or "+1".
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value):
        raise ValueError(f"accumulator: value {_show(value)} is not a decimal integer string")
    total = int(value)
    if abs(total) >= MAX_MAGNITUDE:
        raise ValueError(
            "accumulator: value out of range (more than 2**63 terms of the largest "
            "float64 could add up to)"
        )
    counts = (pos_inf, neg_inf, nan)
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 62 for c in counts):
        raise ValueError("accumulator: non-finite counts must be integers in [0, 2**62)")
    mask = (1 << CHUNK_BITS) - 1
    for k in range(N_CHUNKS - 1):
        acc[k] = total & mask
        total >>= CHUNK_BITS
    acc[N_CHUNKS - 1] = total
    acc[POS_INF], acc[NEG_INF], acc[NAN] = counts


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) > 60:
        return f"{value[:40]!r}... ({len(value)} characters)"
    return repr(value)[:80]
