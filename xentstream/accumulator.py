"""Exact sums outside the kernels: rounding, merging and serializing accumulators.

An accumulator is an ``int64`` array of shape ``(..., N_SLOTS)`` produced by the
kernels (see :mod:`xentstream._kernels.exact` for the layout). This module turns it
into correctly rounded floats and into plain JSON integers, and back.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, ClassVar

import numpy as np

from xentstream._errors import show
from xentstream._kernels import layout
from xentstream._kernels.calibration import BIN_SUM_NAMES, BIN_WEIGHT, N_BIN_SUMS
from xentstream._kernels.exact import (
    CHUNK_BITS,
    N_CHUNKS,
    N_SLOTS,
    NAN,
    NEG_INF,
    POS_INF,
    UNIT_EXPONENT,
    add_normalized,
    sum_fits,
)

__all__ = [
    "N_SLOTS",
    "CalibrationState",
    "ExactState",
    "check_addable",
    "empty",
    "exact_integer",
    "from_json",
    "is_special",
    "merge_into",
    "ratio",
    "to_float",
    "to_floats",
    "to_json",
]

_DENOMINATOR = 1 << -UNIT_EXPONENT
_LITTLE_ENDIAN = sys.byteorder == "little"
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
    top = int(row[N_CHUNKS - 1])
    if _LITTLE_ENDIAN and row.flags.c_contiguous:
        halves = row[: N_CHUNKS - 1].view(np.uint32)
        high = halves[1::2].tobytes()
        if high.count(0) == len(high):
            # Normalized (every chunk below the top in [0, 2**32)): the low halves are
            # the integer's 32-bit digits, read at once (a loop of Python int shifts
            # cost ~10 us a row, which grouped reports and states pay per group).
            digits = int.from_bytes(halves[0::2].tobytes(), "little")
            return (top << (CHUNK_BITS * (N_CHUNKS - 1))) + digits
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
    if is_special(numerator) or is_special(denominator):
        return to_float(numerator) / to_float(denominator) if to_float(denominator) else math.nan
    return integer_ratio(exact_integer(numerator), exact_integer(denominator))


def integer_ratio(top: int, bottom: int) -> float:
    """:func:`ratio` of two rows of exact integers ``top`` and ``bottom``: rounded once,
    NaN for a zero ``bottom``, infinite beyond float64."""
    if bottom == 0:
        return math.nan
    try:
        return top / bottom
    except OverflowError:
        return math.inf if (top > 0) == (bottom > 0) else -math.inf


def is_special(row: np.ndarray) -> bool:
    """Whether an accumulator row holds an infinite or NaN term (then no exact value)."""
    return bool(row[POS_INF] or row[NEG_INF] or row[NAN])


def to_floats(acc: np.ndarray) -> np.ndarray:
    """Correctly rounded values of every row of ``acc`` (shape ``(..., N_SLOTS)``)."""
    flat = acc.reshape(-1, N_SLOTS)
    values = np.zeros(flat.shape[0], dtype=np.float64)
    # Most per-class rows of a large state are zero; only the others need Python ints.
    for index in np.flatnonzero(flat.any(axis=1)):
        values[index] = to_float(flat[index])
    return values.reshape(acc.shape[:-1])


def check_addable(target: np.ndarray, source: np.ndarray) -> None:
    """Raise the ``ValueError`` :func:`merge_into` would raise, changing nothing."""
    # Both operands are normalized, so the top chunks carry the magnitude; bounding
    # their sum (+1 for a carry) keeps int64 from wrapping to the opposite sign.
    if target.shape != source.shape:
        raise ValueError(f"accumulator: shapes {target.shape} and {source.shape} differ")
    if not sum_fits(
        target.reshape(-1, N_SLOTS), source.reshape(-1, N_SLOTS), float(_TOP_CHUNK_BOUND)
    ):
        raise _out_of_range()


def _out_of_range() -> ValueError:
    return ValueError("accumulator: sum out of range (more than 2**63 largest float64 terms)")


def merge_into(target: np.ndarray, source: np.ndarray) -> None:
    """Add accumulator ``source`` into ``target`` in place (exact), then normalize.

    Raises
    ------
    ValueError
        If the sum would leave the range of :data:`MAX_MAGNITUDE` (only crafted
        states get there); ``target`` is then unchanged.
    """
    if target.shape != source.shape:
        raise ValueError(f"accumulator: shapes {target.shape} and {source.shape} differ")
    if not target.flags.c_contiguous:  # reshape would add into a copy
        raise ValueError("accumulator: the target of a merge must be C-contiguous")
    if not add_normalized(
        target.reshape(-1, N_SLOTS), source.reshape(-1, N_SLOTS), float(_TOP_CHUNK_BOUND)
    ):
        raise _out_of_range()


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


#: Counters are int64 in the kernels; a file's counts (and their total) must fit.
MAX_COUNT = (1 << 63) - 1


def counts_from_json(values: Any, what: str) -> np.ndarray:
    """Row counters of a state file: a list of integers in [0, 2**63) adding up below it."""
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise ValueError(f"{what} must be a list of non-negative integers, got {show(values)}")
    if any(v > MAX_COUNT for v in values) or sum(values) > MAX_COUNT:
        raise ValueError(f"{what}: counts add up to more than 2**63 - 1 rows")
    return np.array(values, dtype=np.int64)


def _add_label_counts(mine: np.ndarray | None, theirs: np.ndarray | None) -> np.ndarray | None:
    """Label counts of two states together (None, unknown, wins)."""
    if mine is None or theirs is None:
        return None
    if len(mine) == len(theirs):
        return mine + theirs
    width = max(len(mine), len(theirs))
    total = np.zeros(width, dtype=np.int64)
    total[: len(mine)] += mine
    total[: len(theirs)] += theirs
    return total


class CalibrationState:
    """Exact reliability bins: ``sums`` (n_bins, N_BIN_SUMS, N_SLOTS), ``counts`` (n_bins,).

    ``per_class``: also one-vs-rest bins of every class, ``class_sums`` (C, n_bins,
    N_BIN_SUMS, N_SLOTS) and ``class_counts`` (C, n_bins), None until a batch brought
    them (the class count may be inferred from the first batch).
    """

    def __init__(self, n_bins: int, *, per_class: bool = False) -> None:
        self.n_bins = n_bins
        self.sums = empty(n_bins, N_BIN_SUMS)
        self.counts = np.zeros(n_bins, dtype=np.int64)
        self.per_class = per_class
        self.class_sums: np.ndarray | None = None
        self.class_counts: np.ndarray | None = None

    def check_addable(self, other: CalibrationState) -> None:
        """Raise, before anything changed, where :meth:`merge` of ``other`` would fail."""
        if other.n_bins != self.n_bins:
            raise ValueError(f"calibration_bins: {self.n_bins} here, {other.n_bins} there")
        check_addable(self.sums, other.sums)
        if self.per_class and other.class_sums is not None and self.class_sums is not None:
            if other.class_sums.shape != self.class_sums.shape:
                raise ValueError(
                    f"calibration.per_class: {self.class_sums.shape[0]} classes here, "
                    f"{other.class_sums.shape[0]} there"
                )
            check_addable(self.class_sums, other.class_sums)

    def merge(self, other: CalibrationState) -> CalibrationState:
        """Add ``other``'s bins (exact); returns ``self``."""
        self.check_addable(other)
        return self._merge_checked(other)

    def _merge_checked(self, other: CalibrationState) -> CalibrationState:
        """:meth:`merge` after :meth:`check_addable` passed (each check costs ~10 us, a
        metric's every batch with bins)."""
        merge_into(self.sums, other.sums)
        self.counts += other.counts
        if self.per_class and other.class_sums is not None:
            if self.class_sums is None:
                self.class_sums = empty(*other.class_sums.shape[:-1])
                self.class_counts = np.zeros(other.class_counts.shape, dtype=np.int64)
            merge_into(self.class_sums, other.class_sums)
            self.class_counts += other.class_counts
        return self

    def copy(self) -> CalibrationState:
        twin = CalibrationState(self.n_bins, per_class=self.per_class)
        twin.sums, twin.counts = self.sums.copy(), self.counts.copy()
        if self.class_sums is not None:
            twin.class_sums, twin.class_counts = self.class_sums.copy(), self.class_counts.copy()
        return twin

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "bins": self.n_bins,
            "counts": [int(c) for c in self.counts],
            "sums": {name: to_json(self.sums[:, slot]) for slot, name in enumerate(BIN_SUM_NAMES)},
        }
        if self.per_class:  # written only when kept: other files stay as they were
            data["per_class"] = (
                None
                if self.class_sums is None
                else {
                    "counts": self.class_counts.tolist(),
                    "sums": {
                        name: to_json(self.class_sums[:, :, slot])
                        for slot, name in enumerate(BIN_SUM_NAMES)
                    },
                }
            )
        return data

    @classmethod
    def from_json(cls, data: Any, n_bins: int) -> CalibrationState:
        """Inverse of :meth:`to_json`; a ``ValueError`` naming the key otherwise.

        A ``per_class`` key makes a per-class state; whether the metric keeps one is
        the metric's check."""
        keys = {"bins", "counts", "sums"}
        if not isinstance(data, dict) or set(data) - {"per_class"} != keys:
            raise ValueError("calibration: must be an object with the keys bins, counts, sums")
        if data["bins"] != n_bins or isinstance(data["bins"], bool):
            raise ValueError(f"calibration.bins: {data['bins']!r}, but the config says {n_bins}")
        state = cls(n_bins, per_class="per_class" in data)
        state.counts, state.sums = _bins_from_json(data, (n_bins,), "calibration")
        if data.get("per_class") is not None:
            classes = data["per_class"]
            if not isinstance(classes, dict) or set(classes) != {"counts", "sums"}:
                raise ValueError(
                    "calibration.per_class: must be an object with the keys counts, sums"
                )
            width = len(classes["counts"]) if isinstance(classes["counts"], list) else -1
            if not 1 <= width <= MAX_CLASS_BINS // n_bins:
                raise ValueError(
                    f"calibration.per_class.counts: must be a list of 1 to "
                    f"{MAX_CLASS_BINS // n_bins} classes' bin counts"
                )
            state.class_counts, state.class_sums = _bins_from_json(
                classes, (width, n_bins), "calibration.per_class"
            )
        return state


#: Most class-times-bins a per-class calibration keeps (each is about 3.4 kB of exact state).
MAX_CLASS_BINS = 1 << 14


def _bins_from_json(
    data: dict[str, Any], shape: tuple[int, ...], name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(counts, sums) of bins of ``shape``; every bin with weight has rows."""
    counts = data["counts"]
    flat = np.asarray(counts, dtype=object).reshape(-1) if isinstance(counts, list) else None
    if (
        flat is None
        or np.shape(np.asarray(counts, dtype=object)) != shape
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in flat)
        or sum(flat) >= 1 << 63
    ):
        size = " x ".join(map(str, shape))
        raise ValueError(f"{name}.counts: must be {size} non-negative integers")
    sums = data["sums"]
    if not isinstance(sums, dict) or set(sums) != set(BIN_SUM_NAMES):
        raise ValueError(f"{name}.sums: must be an object with the keys {BIN_SUM_NAMES}")
    exact = empty(*shape, N_BIN_SUMS)
    for slot, key in enumerate(BIN_SUM_NAMES):
        try:
            exact[..., slot, :] = from_json(sums[key], shape)
        except ValueError as error:
            raise ValueError(f"{name}.sums.{key}: {error}") from None
    binned = np.array(flat, dtype=np.int64).reshape(shape)
    weights = exact[..., BIN_WEIGHT, :]
    for index in zip(*np.nonzero((binned == 0) & weights.any(axis=-1)), strict=True):
        where = ", ".join(str(int(i)) for i in index)
        raise ValueError(f"{name}.sums.weight: bin {where} has weight but no rows")
    return binned, exact


class ExactState:
    """The exact state of one metric (or one group): every sum and counter it keeps.

    Attributes
    ----------
    sums : ndarray, shape (N_SUMS, N_SLOTS)
        One accumulator per quantity of ``layout.SUM_NAMES``.
    counts : ndarray, shape (N_COUNTS,)
        ``layout.COUNT_NAMES``: rows counted, rows ignored.
    class_sums : ndarray or None, shape (C, N_CLASS_SUMS, N_SLOTS)
        Per-class (per-label) sums once a batch brought them; None otherwise.
    class_counts : ndarray or None, shape (C,)
        Per-class rows (multi-label: positives), with ``class_sums``.
    label_counts : ndarray or None
        Exact counts of hard labels, for kinds that keep them; None when unknown
        (soft targets or sample weights were seen) or not kept.
    calibration : CalibrationState or None
        Reliability bins, for metrics with ``calibration_bins`` (not for groups).

    Every method that adds is all-or-nothing: a sum that would leave the
    accumulators' range raises before any part changed.

    Examples
    --------
    >>> a, b = ExactState(), ExactState()
    >>> a.counts[0] = 2
    >>> b.merge(a).merge(a).counts.tolist()
    [4, 0]
    """

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "counts",
        "sums",
        "class_sums",
        "class_counts",
        "label_counts",
        "calibration",
    )

    def __init__(self, *, counts_labels: bool = False, calibration_bins: int | None = None) -> None:
        self.sums = empty(layout.N_SUMS)
        self.counts = np.zeros(layout.N_COUNTS, dtype=np.int64)
        self.class_sums: np.ndarray | None = None
        self.class_counts: np.ndarray | None = None
        self.label_counts: np.ndarray | None = (
            np.zeros(0, dtype=np.int64) if counts_labels else None
        )
        self.calibration: CalibrationState | None = (
            None if calibration_bins is None else CalibrationState(calibration_bins)
        )

    @property
    def rows_seen(self) -> int:
        """Rows consumed, ignored rows included."""
        return int(self.counts[layout.ROWS]) + int(self.counts[layout.IGNORED])

    def ensure_classes(self, n_classes: int) -> None:
        """Zero per-class state for ``n_classes`` classes, unless there already is some."""
        if self.class_sums is None:
            self.class_sums = empty(n_classes, layout.N_CLASS_SUMS)
            self.class_counts = np.zeros(n_classes, dtype=np.int64)

    def add(
        self,
        sums: np.ndarray,
        counts: np.ndarray,
        class_sums: np.ndarray | None = None,
        class_counts: np.ndarray | None = None,
        label_counts: np.ndarray | None = None,
        calibration: CalibrationState | None = None,
    ) -> ExactState:
        """Add exact partial sums (a batch's, a group's share, another state's).

        ``label_counts`` None means the added rows' labels are unknown, which makes
        this state's unknown too. ``calibration``: the added rows' reliability bins
        (a state without bins ignores them). Returns ``self``.
        """
        if class_sums is not None and self.class_sums is not None:
            check_addable(self.class_sums, class_sums)
        if calibration is not None and self.calibration is not None:
            if calibration.n_bins != self.calibration.n_bins:
                raise ValueError(
                    f"calibration_bins: {self.calibration.n_bins} here, {calibration.n_bins} there"
                )
            self.calibration.check_addable(calibration)
        merge_into(self.sums, sums)  # checked first: the last part that can fail
        self.counts += counts
        if class_sums is not None:
            self.ensure_classes(class_sums.shape[0])
            merge_into(self.class_sums, class_sums)
            self.class_counts += class_counts
        self.label_counts = _add_label_counts(self.label_counts, label_counts)
        if calibration is not None and self.calibration is not None:
            self.calibration._merge_checked(calibration)  # checked above
        return self

    def merge(self, other: ExactState) -> ExactState:
        """Add ``other`` into this state (``other`` is unchanged). Returns ``self``."""
        return self.add(
            other.sums,
            other.counts,
            other.class_sums,
            other.class_counts,
            other.label_counts,
            other.calibration,
        )

    def copy(self) -> ExactState:
        """An independent copy."""
        twin = ExactState.__new__(ExactState)
        for name in self.SECTIONS:
            value = getattr(self, name)
            setattr(twin, name, None if value is None else value.copy())
        return twin

    def to_json(self, n_classes: int | None = None) -> dict[str, Any]:
        """Plain-JSON sections of a state file (``SECTIONS``).

        ``n_classes``: write zero per-class sums for that many classes when none were
        added yet (a loader sizes per-class state by what a file holds, never by the
        class count it claims).
        """
        class_sums, class_counts = self.class_sums, self.class_counts
        if class_sums is None and n_classes:
            class_sums = empty(n_classes, layout.N_CLASS_SUMS)
            class_counts = np.zeros(n_classes, dtype=np.int64)
        return {
            "counts": dict(zip(layout.COUNT_NAMES, (int(c) for c in self.counts), strict=True)),
            "sums": dict(zip(layout.SUM_NAMES, to_json(self.sums), strict=True)),
            "class_sums": None if class_sums is None else to_json(class_sums),
            "class_counts": None if class_counts is None else [int(c) for c in class_counts],
            "label_counts": None if self.label_counts is None else self.label_counts.tolist(),
            # Written only when kept: files of metrics without bins stay as they were.
            **({} if self.calibration is None else {"calibration": self.calibration.to_json()}),
        }

    @classmethod
    def from_json(
        cls,
        data: dict[str, Any],
        *,
        per_class: bool,
        counts_labels: bool,
        calibration_bins: int | None = None,
    ) -> ExactState:
        """Inverse of :meth:`to_json`: structure and ranges checked, nothing else.

        ``per_class``: whether per-class sums may be present; ``counts_labels``:
        whether label counts may be; ``calibration_bins``: the reliability bins that
        must be present (None: none may be). Whether the numbers could come from real
        rows is the metric's check.

        Raises
        ------
        ValueError
            On any structural mismatch, naming the section.
        """
        state = cls()
        counts = data["counts"]
        if not isinstance(counts, dict) or set(counts) != set(layout.COUNT_NAMES):
            raise ValueError(f"counts must be an object with the keys {list(layout.COUNT_NAMES)}")
        state.counts = counts_from_json([counts[k] for k in layout.COUNT_NAMES], "counts")
        sums = data["sums"]
        if not isinstance(sums, dict) or set(sums) != set(layout.SUM_NAMES):
            raise ValueError(f"sums must be an object with the keys {list(layout.SUM_NAMES)}")
        state.sums = from_json([sums[k] for k in layout.SUM_NAMES], (layout.N_SUMS,))
        class_sums = data["class_sums"]
        if class_sums is not None:
            if not isinstance(class_sums, list) or not per_class:
                raise ValueError("class_sums: a list, and only with per_class / per_label")
            width = len(class_sums)
            state.class_sums = from_json(class_sums, (width, layout.N_CLASS_SUMS))
            state.class_counts = counts_from_json(data["class_counts"], "class_counts")
            if state.class_counts.shape != (width,):
                raise ValueError("class_counts does not match class_sums")
        elif data["class_counts"] is not None:
            raise ValueError("class_counts given without class_sums")
        labels = data.get("label_counts")
        if labels is not None and not counts_labels:
            raise ValueError("label_counts: this kind of state holds none")
        # States written before label counts existed have none: unknown, not zero.
        state.label_counts = None if labels is None else counts_from_json(labels, "label_counts")
        bins = data.get("calibration")
        if calibration_bins is None and bins is not None:
            raise ValueError("calibration: given, but the metric keeps no calibration_bins")
        if calibration_bins is not None:
            if bins is None:
                raise ValueError(f"calibration: missing ({calibration_bins} calibration_bins)")
            state.calibration = CalibrationState.from_json(bins, calibration_bins)
            if int(state.calibration.counts.sum()) > int(state.counts.sum()) * (1 << 31):
                raise ValueError("calibration.counts: more forecasts than rows could give")
        return state
