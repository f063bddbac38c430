"""Calibration beside the loss: reliability bins with exact sums (SPEC section 9).

A model is calibrated when, among the rows it gives probability ``f``, the outcome
happens a share ``f`` of the time. The forecasts are binned into ``n_bins``
equal-width bins (:mod:`xentstream._kernels.calibration`): the top label's
probability and its correctness for multiclass (*top-label* calibration, as
torchmetrics' ``CalibrationError(task="multiclass")``), the positive class's
probability and the target for binary and for each label of a multi-label row. Each
bin keeps exact sums of the weight, ``s f``, ``s o``, ``s f^2``, ``s f o`` and
``s o^2``, so bins merge exactly across batches, files and machines.

From the bins (``W_k`` the weight of bin k, ``W`` the total, ``f_k`` and ``o_k`` the
bin's mean forecast and outcome, ``o`` the overall mean outcome):

- ``ece = sum_k W_k |o_k - f_k| / W``; ``mce = max_k |o_k - f_k|`` over non-empty bins;
- ``brier = sum s (f - o)^2 / W``, exact from the bins' sums (not binned): the top-label
  Brier score for multiclass, scikit-learn's ``brier_score_loss`` for binary;
- Murphy's decomposition of the Brier score, *binned*: ``reliability = sum_k W_k (f_k -
  o_k)^2 / W``, ``resolution = sum_k W_k (o_k - o)^2 / W``, ``uncertainty = o (1 - o)``;
  ``brier = reliability - resolution + uncertainty + within_bin``, where ``within_bin``
  is what binning leaves out (the within-bin variance and covariance terms of
  Stephenson et al. 2008, and for soft targets ``E o^2 - E o``); it is small when
  the bins are narrow;
- the log loss of the same binary forecasts split the same binned way:
  ``log_loss_calibration = sum_k W_k KL(o_k || f_k) / W`` and
  ``log_loss_refinement = sum_k W_k H(o_k) / W`` (Bernoulli KL and entropy; binned
  estimators, not the model's log loss itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from xentstream import accumulator
from xentstream._inputs import as_array, binary_columns
from xentstream._kernels import calibration as kernels
from xentstream._kernels import cpu
from xentstream._kernels.exact import (
    MAX_TERMS_PER_BLOCK,
    N_CHUNKS,
    N_SLOTS,
    normalize,
)
from xentstream._kernels.layout import INPUT_KINDS, LOGITS
from xentstream.accumulator import MAX_CLASS_BINS, CalibrationState

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "CLASS_FORECASTS",
    "FORECASTS",
    "MAX_GROUP_BINS",
    "CalibrationReport",
    "GroupBins",
    "batch_bins",
    "bins_scalars",
    "block_bins",
    "build_calibration_report",
    "class_batch_bins",
    "forecast_bins",
    "group_batch_bins",
]

_MIN_BLOCK_ROWS = 1 << 14


def _blocks(n: int, threads: int) -> int:
    blocks = max(1, min(threads * 4, n // _MIN_BLOCK_ROWS))
    return max(blocks, -(-n // MAX_TERMS_PER_BLOCK))


def _weights(sample_weight: Any, rows: int) -> np.ndarray:
    if sample_weight is None:
        return np.empty(0, dtype=np.float64)
    weights = as_array(sample_weight, "sample_weight").astype(np.float64, copy=False)
    return np.ascontiguousarray(weights).reshape(-1)[:rows] if weights.size else weights


def _labels_or_outcomes(target: np.ndarray, n_classes: int, soft: bool) -> tuple[Any, Any]:
    """The kernels' ``(labels, outcomes)``: hard labels (N,) and no outcomes, or no labels
    and outcome rows (N, C) (soft targets, multi-label targets)."""
    if soft:
        outcomes = np.ascontiguousarray(target, dtype=np.float64).reshape(-1, n_classes)
        return np.empty(0, np.int64), outcomes
    return np.asarray(target, np.int64).reshape(-1), np.empty((0, n_classes), np.float64)


#: The forecast a kind's rows make, by its class axis (``Kind.class_axis``): the top
#: class of a distribution, the positive class of a binary row, each label of a row.
FORECASTS = {"class": "top_label", None: "positive_class", "label": "each_label"}


def batch_bins(
    forecast: str,
    preds: Any,
    target: Any,
    sample_weight: Any,
    *,
    n_bins: int,
    input: str,
    ignore_index: int | None = None,
) -> CalibrationState:
    """The reliability bins of one batch the loss kernels already validated.

    ``forecast``: ``"top_label"`` (multiclass rows: the most probable class and whether
    it is right), ``"positive_class"`` (binary rows, predict_proba layouts included) or
    ``"each_label"`` (multi-label rows: every label's positive class); see
    :data:`FORECASTS`.
    """
    input_kind = INPUT_KINDS[input]
    state = CalibrationState(n_bins)
    threads = cpu.thread_count()
    preds = as_array(preds, "preds", floating=True)
    target = as_array(target, "target")
    if forecast not in FORECASTS.values():
        raise ValueError(f"forecast: must be one of {sorted(FORECASTS.values())}, got {forecast!r}")
    if forecast == "top_label":
        n_classes = preds.shape[-1]
        rows = np.ascontiguousarray(preds).reshape(-1, n_classes)
        n = rows.shape[0]
        labels, distributions = _labels_or_outcomes(target, n_classes, target.ndim == preds.ndim)
        sums = np.zeros((_blocks(n, threads), n_bins, kernels.N_BIN_SUMS, N_SLOTS), np.int64)
        counts = np.zeros((sums.shape[0], n_bins), np.int64)
        if n:
            arguments = (
                rows,
                labels,
                distributions,
                _weights(sample_weight, n),
                input_kind,
                0 if ignore_index is None else ignore_index,
                ignore_index is not None,
                sums,
                counts,
            )
            cpu.launch(kernels.top_label_bins, arguments, sums.shape[0], threads)
    else:
        if forecast == "positive_class":
            # Not validated again (the loss kernels did), so no sum tolerance is needed.
            preds, target = binary_columns(
                preds, target, input=input, sum_tol=0.0, validate=False, name="preds"
            )
            width = 1
        else:
            width = preds.shape[-1] if preds.ndim else 1
        flat = np.ascontiguousarray(preds).reshape(-1)
        outcomes = np.ascontiguousarray(target, dtype=np.float64).reshape(-1)
        n = flat.shape[0]
        sums = np.zeros((_blocks(n, threads), n_bins, kernels.N_BIN_SUMS, N_SLOTS), np.int64)
        counts = np.zeros((sums.shape[0], n_bins), np.int64)
        if n:
            arguments = (
                flat,
                outcomes,
                _weights(sample_weight, n // max(width, 1)),
                max(width, 1),
                input_kind,
                sums,
                counts,
            )
            cpu.launch(kernels.positive_class_bins, arguments, sums.shape[0], threads)
    return _combined(state, sums, counts)


def forecast_bins(forecasts: np.ndarray, sample_weight: Any, *, n_bins: int) -> CalibrationState:
    """The reliability bins of the top-label forecasts a loss kernel wrote.

    ``forecasts``: ``BatchSums.row_forecasts`` (2, N), each row's top-class
    probability and outcome (-1: an ignored row), from a metric's kernel pass with
    ``keep_forecasts`` (:func:`~xentstream._batch.multiclass_batch`): the bins then
    cost a tally, not a second pass over the predictions. The same bins as
    :func:`batch_bins` of ``"top_label"`` up to the last bits of a logits row's
    confidence (here ``exp(-log sum exp(x - max))`` as the loss kernel has it).

    Examples
    --------
    >>> import numpy as np
    >>> forecasts = np.array([[0.9, 0.7, 0.6], [1.0, 0.0, -1.0]])  # the last row ignored
    >>> forecast_bins(forecasts, None, n_bins=2).counts.tolist()
    [0, 2]
    """
    state = CalibrationState(n_bins)
    threads = cpu.thread_count()
    n = forecasts.shape[1]
    sums = np.zeros((_blocks(n, threads), n_bins, kernels.N_BIN_SUMS, N_SLOTS), np.int64)
    counts = np.zeros((sums.shape[0], n_bins), np.int64)
    if n:
        arguments = (forecasts, _weights(sample_weight, n), sums, counts)
        cpu.launch(kernels.forecast_bins, arguments, sums.shape[0], threads)
    return _combined(state, sums, counts)


def block_bins(sums: np.ndarray, counts: np.ndarray) -> CalibrationState:
    """The reliability bins of one batch from a loss kernel's per-block bins
    (``BatchSums.bin_blocks``: ``sums`` (blocks, n_bins, N_BIN_SUMS, N_SLOTS) and
    ``counts`` (blocks, n_bins)), bitwise :func:`batch_bins` of the same rows."""
    return _combined(CalibrationState(counts.shape[1]), sums, counts)


def _combined(state: CalibrationState, sums: np.ndarray, counts: np.ndarray) -> CalibrationState:
    """``state`` (zero) with the blocks' bins added (:func:`kernels.combine_bin_blocks`)."""
    kernels.combine_bin_blocks(sums, counts, state.sums, state.counts)
    return state


#: The per-class forecasts (``per_class`` / ``per_label``) of a kind's rows, by its class
#: axis: each class's probability against [label == c] (one-vs-rest) for a distribution,
#: each label's positive class for multi-label rows. Kinds without one keep none.
CLASS_FORECASTS = {"class": "each_class", "label": "each_label"}


def class_batch_bins(
    forecast: str,
    preds: Any,
    target: Any,
    sample_weight: Any,
    *,
    n_bins: int,
    input: str,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest reliability bins of every class of one validated batch.

    ``forecast``: ``"each_class"`` (multiclass rows: class c's probability p_c and the
    outcome [label == c], or a soft target's mass on c) or ``"each_label"`` (multi-label
    rows: each label's positive probability and target); see :data:`CLASS_FORECASTS`.
    Returns ``(sums, counts)`` of shapes (C, n_bins, N_BIN_SUMS, N_SLOTS) and (C, n_bins),
    the ``class_sums`` / ``class_counts`` of a per-class
    :class:`~xentstream.accumulator.CalibrationState`.

    Examples
    --------
    >>> sums, counts = class_batch_bins(
    ...     "each_class", [[0.9, 0.1], [0.3, 0.7]], [0, 0], None, n_bins=2, input="probs"
    ... )
    >>> counts.tolist()  # class 0: 0.3 in bin 0, 0.9 in bin 1; class 1: 0.1 and 0.7
    [[1, 1], [1, 1]]
    """
    if forecast not in CLASS_FORECASTS.values():
        raise ValueError(
            f"forecast: must be one of {sorted(CLASS_FORECASTS.values())}, got {forecast!r}"
        )
    input_kind = INPUT_KINDS[input]
    preds = as_array(preds, "preds", floating=True)
    target = as_array(target, "target")
    n_classes = preds.shape[-1] if preds.ndim else 1
    if n_classes * n_bins > MAX_CLASS_BINS:
        raise ValueError(
            f"calibration_bins: per-class bins for {n_classes} classes x {n_bins} bins exceed "
            f"{MAX_CLASS_BINS} (about {MAX_CLASS_BINS * kernels.N_BIN_SUMS * N_SLOTS >> 17} MiB "
            "of exact state); use fewer bins, or per_class=False for top-label bins only"
        )
    rows = np.ascontiguousarray(preds).reshape(-1, n_classes)
    n = rows.shape[0]
    distribution = forecast == "each_class"
    soft = not distribution or target.ndim == preds.ndim
    labels, outcomes = _labels_or_outcomes(target, n_classes, soft)
    scales = np.empty((n if distribution and input_kind == LOGITS else 0, 2), np.float64)
    if scales.shape[0]:
        kernels.row_scales(rows, scales)
    # Split rows too when there are fewer classes than threads (each split's sums are
    # separate and merged exactly, so the bits do not depend on the split).
    splits = max(
        -(-max(cpu.thread_count() * 2, 1) // n_classes) if n >= _MIN_BLOCK_ROWS else 1,
        -(-n // MAX_TERMS_PER_BLOCK),
        1,
    )
    sums = np.zeros((splits, n_classes, n_bins, kernels.N_BIN_SUMS, N_SLOTS), np.int64)
    counts = np.zeros((splits, n_classes, n_bins), np.int64)
    if n:
        kernels.class_bins(
            rows,
            labels,
            outcomes,
            _weights(sample_weight, n),
            input_kind,
            distribution,
            0 if ignore_index is None else ignore_index,
            ignore_index is not None,
            scales,
            sums,
            counts,
        )
    total = sums[0]
    for split in range(1, splits):
        accumulator.merge_into(total, sums[split])
    return total, counts.sum(axis=0)


#: Most groups-times-bins a grouped evaluation keeps reliability bins for: each bin is
#: 6 exact sums of N_SLOTS int64 (3.4 kB), so the cap is about 220 MB of state (and as
#: much again for a batch that brings every group; docs/performance.md has the numbers).
MAX_GROUP_BINS = 1 << 16


def group_batch_bins(
    forecast: str,
    preds: Any,
    target: Any,
    sample_weight: Any,
    order: np.ndarray,
    run_starts: np.ndarray,
    run_codes: np.ndarray,
    into: GroupBins,
    *,
    input: str,
    ignore_index: int | None = None,
    sum_tol: float = 0.0,
    forecasts: np.ndarray | None = None,
) -> None:
    """Add the forecasts of one validated batch to its groups' reliability bins ``into``.

    ``forecast`` as :func:`batch_bins`; ``forecasts``: the top-label forecasts the loss
    kernel wrote (``BatchSums.row_forecasts``, as :func:`forecast_bins` takes them),
    used instead of a pass over ``preds``. The batch's groups are its runs
    (:meth:`~xentstream.grouping.GroupKeys.codes`: run ``r`` is rows
    ``order[run_starts[r]:run_starts[r + 1]]``, of group ``run_codes[r]``). Only those
    groups' bins are touched; each group's end up bitwise those :func:`batch_bins`
    gives of its rows alone.

    Examples
    --------
    >>> import numpy as np
    >>> bins = GroupBins(2)
    >>> bins.resize(3)
    >>> group_batch_bins(
    ...     "top_label", [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], [0, 0, 1], None,
    ...     np.array([0, 2, 1]), np.array([0, 2, 3]), np.array([2, 0]), bins, input="probs",
    ... )
    >>> bins.counts.tolist()  # group 2: rows 0 and 2 (0.9, 0.6); group 0: row 1 (0.7)
    [[0, 1], [0, 0], [0, 2]]
    """
    input_kind = INPUT_KINDS[input]
    if forecast == "top_label" and forecasts is not None:
        n, width = forecasts.shape[1], 1
        conf, outcome = forecasts[0], forecasts[1]
        keep = outcome >= 0.0
    elif forecast == "top_label":
        preds = as_array(preds, "preds", floating=True)
        target = as_array(target, "target")
        n_classes = preds.shape[-1]
        rows = np.ascontiguousarray(preds).reshape(-1, n_classes)
        n = rows.shape[0]
        labels, distributions = _labels_or_outcomes(target, n_classes, target.ndim == preds.ndim)
        conf, outcome = np.empty(n), np.empty(n)
        keep = np.empty(n, dtype=np.bool_)
        if n:
            kernels.top_label_forecasts(
                rows,
                labels,
                distributions,
                input_kind,
                0 if ignore_index is None else ignore_index,
                ignore_index is not None,
                conf,
                outcome,
                keep,
            )
        width = 1
    elif forecast in ("positive_class", "each_label"):
        preds = as_array(preds, "preds", floating=True)
        target = as_array(target, "target")
        if forecast == "positive_class":
            preds, target = binary_columns(
                preds, target, input=input, sum_tol=sum_tol, validate=False, name="preds"
            )
            width = 1
        else:
            width = max(preds.shape[-1] if preds.ndim else 1, 1)
        flat = np.ascontiguousarray(preds).reshape(-1)
        outcome = np.ascontiguousarray(target, dtype=np.float64).reshape(-1)
        n = flat.shape[0] // width
        conf = np.empty(flat.shape[0])
        keep = np.empty(0, dtype=np.bool_)
        if flat.shape[0]:
            kernels.positive_forecasts(flat, input_kind, conf)
    else:
        raise ValueError(f"forecast: must be one of {sorted(FORECASTS.values())}, got {forecast!r}")
    if run_codes.shape[0]:
        into.add_forecasts(
            np.ascontiguousarray(order, np.int64),
            np.ascontiguousarray(run_starts, np.int64),
            np.ascontiguousarray(run_codes, np.int64),
            (conf, outcome, keep),
            _weights(sample_weight, n),
            width,
        )


class GroupBins:
    """Exact reliability bins of every group: ``sums`` (groups, n_bins, N_BIN_SUMS,
    N_SLOTS) and ``counts`` (groups, n_bins), a :class:`CalibrationState` each
    (:meth:`state`), grown as groups arrive; a batch touches only its own groups
    (:func:`group_batch_bins`), and a group's accumulators are normalized when read
    (or when their pending terms would fill a chunk), not every batch.

    Examples
    --------
    >>> import numpy as np
    >>> bins = GroupBins(2)
    >>> bins.resize(3)
    >>> group_batch_bins(
    ...     "positive_class", [0.2, 0.9], [0, 1], None, np.array([0, 1]), np.array([0, 1, 2]),
    ...     np.array([2, 0]), bins, input="probs",
    ... )
    >>> bins.counts.tolist(), bins.state(2).counts.tolist()
    ([[0, 1], [0, 0], [1, 0]], [1, 0])
    """

    def __init__(self, n_bins: int) -> None:
        self.n_bins = n_bins
        self.n_groups = 0
        self._sums = accumulator.empty(0, n_bins, kernels.N_BIN_SUMS)
        self._counts = np.zeros((0, n_bins), dtype=np.int64)
        self._pending = np.zeros(0, dtype=np.int64)  # terms since the last normalize

    @property
    def sums(self) -> np.ndarray:
        """The groups' bins, normalized (canonical: equal sums, equal bits)."""
        self._normalize()
        return self._sums[: self.n_groups]

    def _normalize(self) -> None:
        n = self.n_groups
        if n and self._pending[:n].any():
            kernels.normalize_pending(self._sums[:n], self._pending[:n])

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: self.n_groups]

    @property
    def nbytes(self) -> int:
        """Bytes of the groups' bins in use."""
        return self.sums.nbytes + self.counts.nbytes

    def check_groups(self, n_groups: int, by: tuple[str, ...]) -> None:
        """Raise, naming ``calibration_bins`` and ``by``, where ``n_groups`` groups'
        bins would pass :data:`MAX_GROUP_BINS`."""
        if n_groups * self.n_bins > MAX_GROUP_BINS:
            raise ValueError(
                f"calibration_bins: reliability bins per group for {n_groups} groups of "
                f"by={list(by)} x {self.n_bins} bins exceed {MAX_GROUP_BINS} group-bins "
                f"(about {MAX_GROUP_BINS * kernels.N_BIN_SUMS * N_SLOTS >> 17} MiB of exact "
                "state); use fewer calibration_bins or fewer groups, or drop "
                "calibration_bins for a grouped run"
            )

    def resize(self, n_groups: int) -> None:
        """Room for groups ``0 .. n_groups - 1`` (new groups have empty bins); the room
        doubles, so groups arriving a few a batch cost no copy each."""
        if n_groups > self._counts.shape[0]:
            capacity = max(
                n_groups, min(max(2 * self._counts.shape[0], 16), MAX_GROUP_BINS // self.n_bins)
            )
            for name in ("_sums", "_counts", "_pending"):
                old = getattr(self, name)
                grown = np.zeros((capacity, *old.shape[1:]), dtype=np.int64)
                grown[: old.shape[0]] = old
                setattr(self, name, grown)
        self.n_groups = max(self.n_groups, n_groups)

    def check_addable(self, codes: np.ndarray, sums: np.ndarray) -> None:
        """Raise, changing nothing, where :meth:`add` would (crafted, huge sums)."""
        accumulator.check_addable(self.sums[codes], sums)

    def add_forecasts(
        self,
        order: np.ndarray,
        run_starts: np.ndarray,
        run_codes: np.ndarray,
        forecasts: tuple[np.ndarray, np.ndarray, np.ndarray],
        weights: np.ndarray,
        width: int,
    ) -> None:
        """Add a batch's forecasts ``(conf, outcome, keep)`` run by run
        (:func:`~xentstream._kernels.calibration.grouped_bins`), in place."""
        conf, outcome, keep = forecasts
        kernels.grouped_bins(
            order,
            run_starts,
            run_codes,
            conf,
            outcome,
            keep,
            weights,
            width,
            self._sums,
            self._counts,
            self._pending,
        )

    def add(self, codes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        """Add bins ``sums`` / ``counts`` (one row per entry of ``codes``, no code twice)
        into those groups, exactly."""
        if not codes.shape[0]:
            return
        self._normalize()  # a merge adds normalized operands
        merged = self._sums[codes]  # only these groups are read and written
        accumulator.merge_into(merged, np.ascontiguousarray(sums))
        self._sums[codes] = merged
        self._counts[codes] += counts

    def state(self, code: int) -> CalibrationState:
        """Group ``code``'s bins as a state of their own (views, not copies)."""
        single = CalibrationState(self.n_bins)
        single.sums, single.counts = self.sums[code], self.counts[code]
        return single

    def packed(self) -> dict[str, np.ndarray]:
        """The arrays (:meth:`GroupState.packed`, not a file format)."""
        return {"sums": self.sums.copy(), "counts": self.counts.copy()}


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of a model's probabilities from reliability bins (module docstring).

    Attributes
    ----------
    bins : int
        Number of equal-width bins.
    count : int
        Forecasts binned (rows; rows times labels for multi-label).
    ece, mce : float or None
        Expected and maximum calibration error (L1, weighted by the bins' weight).
    brier : float or None
        Brier score of the binned forecasts (top label / positive class), exact.
    reliability, resolution, uncertainty, within_bin : float or None
        Murphy's decomposition of ``brier`` (``reliability - resolution +
        uncertainty + within_bin``), binned.
    log_loss_calibration, log_loss_refinement : float or None
        The binned calibration / refinement split of the forecasts' log loss.
    table : polars.DataFrame
        Per bin: ``lower``, ``upper``, ``count``, ``weight``, ``confidence`` (mean
        forecast) and ``accuracy`` (mean outcome): the reliability diagram.
    per_class : polars.DataFrame or None
        With ``per_class`` (``per_label``): one row per class, ``class`` and every
        scalar field of that class's one-vs-rest bins (forecast p_c, outcome [label ==
        c] or the target's mass on c; each label's positive class for multi-label).
    classes : tuple of CalibrationReport or None
        The same per class, with their reliability tables (``plot(per_class=True)``).
    """

    bins: int
    count: int
    ece: float | None
    mce: float | None
    brier: float | None
    reliability: float | None
    resolution: float | None
    uncertainty: float | None
    within_bin: float | None
    log_loss_calibration: float | None
    log_loss_refinement: float | None
    table: pl.DataFrame | None = field(default=None, compare=False)
    per_class: pl.DataFrame | None = field(default=None, compare=False)
    classes: tuple[CalibrationReport, ...] | None = field(default=None, compare=False, repr=False)

    def scalars(self, prefix: str = "calibration/") -> dict[str, float | int]:
        """The defined scalar fields, flat (for loggers)."""
        out: dict[str, float | int] = {}
        for name in SCALARS:
            value = getattr(self, name)
            if value is not None:
                out[f"{prefix}{name}"] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict, the table as a list of row dicts."""
        data: dict[str, Any] = {name: _json(getattr(self, name)) for name in ("bins", *SCALARS)}
        data["table"] = (
            None
            if self.table is None
            else [{k: _json(v) for k, v in row.items()} for row in self.table.to_dicts()]
        )
        if self.per_class is not None:
            data["per_class"] = [
                {k: _json(v) for k, v in row.items()} for row in self.per_class.to_dicts()
            ]
        return data

    def __str__(self) -> str:
        width = max(map(len, SCALARS))
        return "\n".join(
            f"{name:<{width}}  {value:.6g}"
            if isinstance(value, float)
            else f"{name:<{width}}  {value}"
            for name, value in ((n, getattr(self, n)) for n in ("bins", *SCALARS))
            if value is not None
        )

    def plot(
        self,
        ax: Any = None,
        *,
        per_class: bool = False,
        names: Any = None,
        most: int = 10,
    ) -> Any:
        """Draw the reliability diagram (needs matplotlib); returns the axes.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw (default: a new figure's).
        per_class : bool
            One reliability curve per class instead (each class's one-vs-rest bins:
            mean outcome against mean forecast, bins holding weight only), labelled
            with the class's ECE; needs the per-class bins (``per_class=True``).
        names : sequence of str, optional
            The classes' names for the legend (default: their indices).
        most : int
            With ``per_class``: the curves drawn at most, the classes of highest ECE
            (more would be unreadable).

        Raises
        ------
        ValueError
            For ``per_class=True`` without per-class bins.

        Examples
        --------
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import xentstream as xs
        >>> metric = xs.CrossEntropy(calibration_bins=5, per_class=True)
        >>> report = metric.update([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1]).compute()
        >>> ax = report.calibration.plot(per_class=True, names=["cat", "dog"])
        >>> [line.get_label().split(" ")[0] for line in ax.get_lines()]
        ['cat', 'dog', 'calibrated']
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - the plot extra
            raise ImportError('plot: needs matplotlib: pip install "xentstream[plot]"') from None
        if per_class and self.classes is None:
            raise ValueError(
                "per_class: this report has no per-class bins (per_class=True or "
                "per_label=True with calibration_bins)"
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4.5))
        if per_class:
            return self._plot_classes(ax, names, most)
        table = self.table
        centers = ((table["lower"] + table["upper"]) / 2).to_numpy()
        accuracy = table["accuracy"].to_numpy()
        width = 1.0 / self.bins
        ax.bar(
            centers, np.nan_to_num(accuracy), width=width * 0.95, color="#4c72b0", label="outcome"
        )
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
        ax.plot(centers, table["confidence"].to_numpy(), "o", color="#dd8452", label="confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("observed frequency")
        ece = "n/a" if self.ece is None else f"{self.ece:.4f}"
        ax.set_title(f"reliability (ECE {ece})")
        ax.legend(loc="upper left")
        return ax

    def _plot_classes(self, ax: Any, names: Any, most: int) -> Any:
        """The per-class reliability curves (:meth:`plot` with ``per_class``)."""
        classes = self.classes or ()
        labels = [str(n) for n in names] if names is not None else []
        if len(labels) != len(classes):
            labels = [str(c) for c in range(len(classes))]
        # The worst-calibrated first when not every class fits; then in class order.
        order = sorted(
            range(len(classes)), key=lambda c: -(classes[c].ece if classes[c].ece else 0.0)
        )
        shown = sorted(order[:most])
        for index, c in enumerate(shown):
            table = classes[c].table
            held = table.filter(table["weight"] > 0.0)
            ece = "n/a" if classes[c].ece is None else f"{classes[c].ece:.3f}"
            ax.plot(
                held["confidence"].to_numpy(),
                held["accuracy"].to_numpy(),
                marker="o",
                markersize=3,
                color=f"C{index % 10}",
                label=f"{labels[c]} (ECE {ece})",
            )
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean forecast of the class")
        ax.set_ylabel("observed frequency of the class")
        title = "reliability per class"
        if len(shown) < len(classes):
            title += f" ({len(shown)} of {len(classes)}, highest ECE)"
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize="small")
        return ax


#: Scalar fields in reading order.
SCALARS = (
    "count",
    "ece",
    "mce",
    "brier",
    "reliability",
    "resolution",
    "uncertainty",
    "within_bin",
    "log_loss_calibration",
    "log_loss_refinement",
)


def _json(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bernoulli_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p))


def _bernoulli_kl(o: float, f: float) -> float:
    """KL(Bernoulli(o) || Bernoulli(f)), 0 log 0 = 0."""
    total = 0.0
    for a, b in ((o, f), (1.0 - o, 1.0 - f)):
        if a > 0.0:
            total += a * (math.log(a / b) if b > 0.0 else math.inf)
    return max(total, 0.0)


def build_calibration_report(state: CalibrationState) -> CalibrationReport:
    """Every :class:`CalibrationReport` field from exact bins (per class too, when kept)."""
    report = _bins_report(state)
    if not state.per_class:
        return report
    import polars as pl

    classes: tuple[CalibrationReport, ...] = ()
    if state.class_sums is not None:
        classes = tuple(
            _bins_report(_class_state(state, c)) for c in range(state.class_sums.shape[0])
        )
    columns: dict[str, Any] = {"class": pl.Series("class", range(len(classes)), pl.Int64)}
    for name in SCALARS:
        dtype = pl.Int64 if name == "count" else pl.Float64
        columns[name] = pl.Series(name, [getattr(c, name) for c in classes], dtype)
    return replace(report, per_class=pl.DataFrame(columns), classes=classes)


def _class_state(state: CalibrationState, c: int) -> CalibrationState:
    """Class ``c``'s one-vs-rest bins as a state of their own (views, not copies)."""
    single = CalibrationState(state.n_bins)
    single.sums, single.counts = state.class_sums[c], state.class_counts[c]
    return single


def _bins_report(state: CalibrationState) -> CalibrationReport:
    import polars as pl

    n_bins = state.n_bins
    values = accumulator.to_floats(state.sums)  # (n_bins, N_BIN_SUMS), correctly rounded
    weight, confidence, accuracy = _bin_means(values)
    edges = np.arange(n_bins + 1) / n_bins
    table = pl.DataFrame(
        {
            "bin": np.arange(n_bins, dtype=np.int64),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": state.counts.astype(np.int64),
            "weight": weight,
            "confidence": confidence,
            "accuracy": accuracy,
        }
    )
    return CalibrationReport(bins=n_bins, **_scalars(state, values), table=table)


def bins_scalars(state: CalibrationState) -> dict[str, Any]:
    """Every scalar field of the :class:`CalibrationReport` of ``state`` (``count`` and
    :data:`SCALARS`; None where undefined), without its table: what grouped reports'
    columns take for each group.

    Examples
    --------
    >>> state = batch_bins("positive_class", [0.2, 0.9], [0, 1], None, n_bins=2, input="probs")
    >>> scalars = bins_scalars(state)
    >>> scalars["count"], round(scalars["ece"], 6), round(scalars["brier"], 6)
    (2, 0.15, 0.025)
    """
    return _scalars(state, accumulator.to_floats(state.sums))


def _bin_means(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bin's weight, mean confidence and mean outcome (NaN for empty bins)."""
    weight = values[:, kernels.BIN_WEIGHT]
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.where(weight > 0, values[:, kernels.BIN_CONFIDENCE] / weight, np.nan)
        accuracy = np.where(weight > 0, values[:, kernels.BIN_OUTCOME] / weight, np.nan)
    return weight, confidence, accuracy


def _scalars(state: CalibrationState, values: np.ndarray) -> dict[str, Any]:
    weight, confidence, accuracy = _bin_means(values)
    count = int(state.counts.sum())
    totals = _column_totals(state)
    total = accumulator.to_float(totals[kernels.BIN_WEIGHT])
    if not total > 0.0 or not math.isfinite(total):
        return {"count": count, **dict.fromkeys(SCALARS[1:])}
    used = weight > 0
    gaps = np.abs(accuracy[used] - confidence[used])
    shares = weight[used] / total
    ece = math.fsum(shares * gaps)
    mce = float(gaps.max())
    sums = {slot: accumulator.to_float(totals[slot]) for slot in range(kernels.N_BIN_SUMS)}
    brier = (
        math.fsum(
            (
                sums[kernels.BIN_CONFIDENCE_SQUARED],
                -2.0 * sums[kernels.BIN_PRODUCT],
                sums[kernels.BIN_OUTCOME_SQUARED],
            )
        )
        / total
    )
    base_rate = sums[kernels.BIN_OUTCOME] / total
    reliability = math.fsum(shares * (confidence[used] - accuracy[used]) ** 2)
    resolution = math.fsum(shares * (accuracy[used] - base_rate) ** 2)
    uncertainty = base_rate * (1.0 - base_rate)
    within_bin = brier - (reliability - resolution + uncertainty)
    kl = [
        _bernoulli_kl(float(o), float(f))
        for o, f in zip(accuracy[used], confidence[used], strict=True)
    ]
    calibration_term = math.fsum(shares * np.array(kl))
    refinement = math.fsum(
        shares * np.array([_bernoulli_entropy(float(o)) for o in accuracy[used]])
    )
    return {
        "count": count,
        "ece": ece,
        "mce": mce,
        "brier": brier,
        "reliability": reliability,
        "resolution": resolution,
        "uncertainty": uncertainty,
        "within_bin": within_bin,
        "log_loss_calibration": calibration_term,
        "log_loss_refinement": refinement,
    }


def _column_totals(state: CalibrationState) -> np.ndarray:
    """The exact totals over bins of every slot, (N_BIN_SUMS, N_SLOTS) normalized.

    Normalized chunks lie below 2**32, so their int64 sum over the bins is exact and one
    normalize makes it canonical (one compiled call, not a merge per bin: grouped
    reports take this for every group); a state with huge top chunks (only crafted
    ones) is merged bin by bin, with the range check."""
    sums = state.sums
    if not sums.shape[0] or np.abs(sums[..., N_CHUNKS - 1]).max() < 1 << 40:
        totals = np.ascontiguousarray(sums.sum(axis=0))
        normalize(totals)
        return totals
    totals = accumulator.empty(kernels.N_BIN_SUMS)
    for k in range(state.n_bins):
        accumulator.merge_into(totals, sums[k])
    return totals
