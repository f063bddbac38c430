"""Streaming metric objects (SPEC section 4): exact state that outlives any batch.

A metric is a config (what is computed, :mod:`xentstream.config`), an exact state
(the sums so far, :class:`~xentstream.accumulator.ExactState`), an optional window
and a lock. What differs between the loss kinds is read from their declaration in
:mod:`xentstream.kinds`; this module holds no per-kind branch.

``update`` sends a batch through the same path as the functional API
(:mod:`xentstream._batch`) and merges the batch's sums only after the batch
passed validation, so a rejected batch leaves the state untouched. Because the
sums are exact integers, merging is associative and commutative: any split of
the rows, any merge order, any number of threads or processes gives the same bits.
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from xentstream import accumulator, calibration
from xentstream._batch import ENGINES, BatchSums, Replay
from xentstream._errors import DEFAULT_NAMES, ColumnNames, show
from xentstream._inputs import as_array
from xentstream._kernels import layout, load_cuda
from xentstream._kernels.calibration import BIN_WEIGHT
from xentstream.accumulator import N_SLOTS, ExactState
from xentstream.config import LossConfig
from xentstream.kinds import KINDS, Kind
from xentstream.report import Report, build_report
from xentstream.state import FORMAT, VERSION, Stateful, read_json, strict_loading

__all__ = [
    "BinaryCrossEntropy",
    "CrossEntropy",
    "Metric",
    "MultiLabelCrossEntropy",
    "check_engine",
    "load",
]

#: Classes a state without per-class sums may claim for a per-class metric (files
#: written since per-class metrics save zero sums before their first row hold them).
_MAX_UNBACKED_CLASSES = 1 << 16


def check_engine(engine: str) -> str:
    """Validate ``engine=``; ``"cuda"`` fails here, at construction, without a GPU."""
    if engine not in ENGINES:
        raise ValueError(f"engine: must be one of {ENGINES}, got {engine!r}")
    if engine == "cuda":
        # ImportError naming the extra without numba-cuda; RuntimeError without a GPU.
        load_cuda().ensure_available()
    return engine


def _check_window(window: int | None) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window < 1 << 62:
        raise ValueError(
            f"window: must be a positive integer (below 2**62) or None, got {show(window)}"
        )
    return window


#: Every key a state file holds (state_dict writes all of them).
_STATE_KEYS = ("format", "version", "metric", "config", "n_classes", "window", "window_rows")
_STATE_KEYS += ExactState.SECTIONS
#: Classes a state file may claim: int32 indices in the kernels.
_MAX_CLASSES = (1 << 31) - 1


def _is_int(value: Any) -> bool:
    """A JSON integer (``true`` / ``1.0`` / ``"1"`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _class_count_from_json(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= _MAX_CLASSES:
        raise ValueError(f"n_classes must be null or an integer in [1, 2**31), got {show(value)}")
    return value


def _window_rows_from_json(rows: Any, window: int | None) -> list[tuple[float, float]]:
    if rows is None:
        return []
    if window is None:
        raise ValueError("window_rows: given, but the metric has no window")
    if not isinstance(rows, list) or len(rows) > window:
        raise ValueError(f"window_rows: must be a list of at most window={window} pairs")
    pairs = []
    for pair in rows:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        ):
            raise ValueError(f"window_rows: entries must be [number, number], got {show(pair)}")
        pairs.append((float(pair[0]), float(pair[1])))
    return pairs


#: Sums that cannot be negative when every row passed validation (weights >= 0,
#: losses and entropies >= 0, indicators in [0, 1]).
_NON_NEGATIVE = tuple(range(layout.N_SUMS))
#: The slacks of the Cauchy-Schwarz checks (defined where the grouped screen of
#: ``_kernels.groups.screen_groups`` reads them too).
_CS_SLACK_BITS = layout.CAUCHY_SCHWARZ_SLACK_BITS
_UNDERFLOW_UNITS = layout.UNDERFLOW_UNITS


def _check_label_counts(metric: Metric) -> None:
    """Known label counts count every counted row once, in one of the metric's classes."""
    counts = metric.state.label_counts
    if counts is None:
        return
    rows = int(metric.state.counts[layout.ROWS])
    if int(counts.sum()) != rows:
        raise ValueError(
            f"label_counts: add up to {int(counts.sum())} rows, but counts.rows is {rows}"
        )
    if metric.n_classes is not None and len(counts) > metric.n_classes:
        raise ValueError(
            f"label_counts: {len(counts)} classes, but the metric has {metric.n_classes}"
        )


def _check_calibration(metric: Metric) -> None:
    """Reliability bins hold every counted row's forecasts (one per label for kinds with
    a label axis) with the rows' exact weight."""
    bins = metric.state.calibration
    if bins is None:
        return
    keeps = metric._class_forecast is not None
    if bins.per_class != keeps:
        raise ValueError(
            "calibration.per_class: "
            + ("missing, although" if keeps else "given, but not")
            + " kept with calibration_bins and per_class / per_label"
        )
    if bins.class_sums is not None:
        _check_class_bins(metric, bins)
    per_row = (metric.n_classes or 0) if metric.kind.class_axis == "label" else 1
    rows = int(metric.state.counts[layout.ROWS])
    if int(bins.counts.sum()) != rows * per_row:
        raise ValueError(
            f"calibration.counts: {int(bins.counts.sum())} forecasts, but {rows} rows give "
            f"{rows * per_row}"
        )
    weight = metric.state.sums[layout.WEIGHT]
    binned = bins.sums[:, BIN_WEIGHT]
    if accumulator.is_special(weight) or any(accumulator.is_special(row) for row in binned):
        return
    total = sum(accumulator.exact_integer(row) for row in binned)
    if total != accumulator.exact_integer(weight) * per_row:
        raise ValueError(
            "calibration.sums.weight: does not add up to the rows' weight (sums.weight)"
        )


def _check_class_bins(metric: Metric, bins: Any) -> None:
    """Per-class bins: one per class, each class binning every counted row once."""
    width = bins.class_counts.shape[0]
    if metric.n_classes is not None and width != metric.n_classes:
        raise ValueError(
            f"calibration.per_class: {width} classes, but the metric has {metric.n_classes}"
        )
    rows = int(metric.state.counts[layout.ROWS])
    binned = bins.class_counts.sum(axis=1)
    if (binned != rows).any():
        c = int(np.argmax(binned != rows))
        raise ValueError(
            f"calibration.per_class.counts: class {c} bins {int(binned[c])} forecasts, but "
            f"{rows} rows were counted"
        )
    weight = metric.state.sums[layout.WEIGHT]
    binned_weights = bins.class_sums[:, :, BIN_WEIGHT].reshape(-1, N_SLOTS)
    if accumulator.is_special(weight) or any(map(accumulator.is_special, binned_weights)):
        return
    expected = accumulator.exact_integer(weight)
    for c in range(width):
        total = sum(accumulator.exact_integer(row) for row in bins.class_sums[c, :, BIN_WEIGHT])
        if total != expected:
            raise ValueError(
                f"calibration.per_class.sums.weight: class {c}'s bins do not add up to the "
                "rows' weight (sums.weight)"
            )


def _check_consistent(metric: Metric) -> None:
    """Refuse a state whose numbers cannot come from any stream of rows.

    Only what holds for every stream is checked, so that no real state is refused;
    a file whose counts were raised together with consistent sums cannot be told
    from a real one (state files are plain JSON, not signed).
    """
    state = metric.state
    sums, counts = state.sums, state.counts
    rows = int(counts[layout.ROWS])
    values = [accumulator.exact_integer(row) for row in sums]
    specials = sums[:, [accumulator.POS_INF, accumulator.NEG_INF, accumulator.NAN]]
    if rows == 0:
        if any(values) or specials.any():
            raise ValueError("sums: not zero although no row was counted (counts.rows is 0)")
        if state.class_sums is not None and (state.class_sums.any() or state.class_counts.any()):
            raise ValueError("class_sums: not zero although no row was counted")
        return
    if metric.config.validate:
        for slot in _NON_NEGATIVE:
            if values[slot] < 0 or specials[slot, 1]:
                raise ValueError(
                    f"sums.{layout.SUM_NAMES[slot]}: negative, but every term of it is >= 0 "
                    "for validated rows"
                )
        if not specials[layout.WEIGHT].any() and values[layout.CORRECT] > values[layout.WEIGHT]:
            raise ValueError("sums.correct: larger than sums.weight (a share of the rows)")
    loss, square, denominator = (
        values[layout.LOSS],
        values[layout.LOSS_SQUARED],
        values[layout.DENOMINATOR],
    )
    if (
        metric.kind.unit_denominators(metric.config)
        and not specials[[layout.LOSS, layout.LOSS_SQUARED, layout.DENOMINATOR]].any()
        and loss * loss << _CS_SLACK_BITS
        > (square + _UNDERFLOW_UNITS * rows) * denominator * ((1 << _CS_SLACK_BITS) + 1)
    ):
        # (sum s L)^2 <= (sum s L^2)(sum s) for any weights s >= 0 (Cauchy-Schwarz).
        raise ValueError(
            "sums: loss, loss_squared and denominator are inconsistent "
            "(loss**2 > loss_squared * denominator, impossible for any rows)"
        )
    den_square = values[layout.DENOMINATOR_SQUARED]
    if (
        denominator > 0
        and not specials[[layout.DENOMINATOR, layout.DENOMINATOR_SQUARED]].any()
        and denominator * denominator << _CS_SLACK_BITS
        > rows * (den_square + _UNDERFLOW_UNITS * rows) * ((1 << _CS_SLACK_BITS) + 1)
        << -accumulator.UNIT_EXPONENT
    ):
        # (sum x)^2 <= n sum x^2 over the n counted rows: the sums need at least this many.
        raise ValueError(
            f"counts.rows: {rows} rows cannot hold these sums "
            "(denominator**2 > rows * denominator_squared)"
        )
    if state.class_counts is not None:
        total = int(state.class_counts.sum())
        if metric.kind.one_class_per_row and total != rows:
            raise ValueError(f"class_counts: add up to {total} rows, but counts.rows is {rows}")
        if not metric.kind.one_class_per_row and int(state.class_counts.max()) > rows:
            raise ValueError(f"class_counts: a label has more positives than the {rows} rows")


def _exact_sum(values: tuple[float, ...]) -> int:
    """Exact sum of finite floats as an integer in units of 2**-1074."""
    total = 0
    for value in values:
        numerator, denominator = value.as_integer_ratio()
        total += numerator << (1075 - denominator.bit_length())
    return total


class _Window:
    """The last ``size`` counted rows as (s L, s d) pairs, for the windowed loss."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)

    def extend(self, weighted_losses: np.ndarray, weights: np.ndarray) -> None:
        keep = min(self.size, len(weights))
        if keep:
            pairs = zip(weighted_losses[-keep:].tolist(), weights[-keep:].tolist(), strict=True)
            self.rows.extend(pairs)

    def loss(self) -> float | None:
        if not self.rows:
            return None
        losses, weights = zip(*self.rows, strict=True)
        try:
            # Exact sums as integers, then one correctly rounded division: the same
            # bits as the one-shot loss of these rows (fsum / fsum rounds twice).
            top, bottom = _exact_sum(losses), _exact_sum(weights)
        except (OverflowError, ValueError):  # an inf or NaN term
            total = math.fsum(weights)
            return math.fsum(losses) / total if total else math.nan
        if not bottom:
            return math.nan
        try:
            return top / bottom
        except OverflowError:
            return math.inf if (top > 0) == (bottom > 0) else -math.inf

    def copy(self) -> _Window:
        twin = _Window(self.size)
        twin.rows.extend(self.rows)
        return twin


def _kernel_target(batch: BatchSums | None, target: Any) -> Any:
    """The targets as the kernel read them (converted once, integer one-hot rows already
    soft floats), else as given: what label counting reads."""
    converted = getattr(batch, "target", None)  # token batches keep their own
    return target if converted is None else converted


class Metric(Stateful):
    """Base of the streaming metrics: a config, its exact state, update / merge / compute.

    Subclasses set ``kind`` (their :class:`~xentstream.kinds.Kind`); everything else
    is generic over the kind. The constructor takes a config, or the kind's options
    as keywords (``Metric.__init__(self, engine=..., window=..., **options)``): a
    subclass's own constructor only names them, for its signature and its docs.

    Attributes
    ----------
    config : LossConfig
        What is computed.
    state : ExactState
        The exact sums so far. Read it freely; change it only through the methods
        (they hold the metric's lock).
    engine : str
        Where the kernels run.
    window : int or None
        Rows of the windowed loss.
    """

    kind: ClassVar[Kind]
    _registry: ClassVar[dict[str, type[Metric]]] = {}
    #: (config, engine, :class:`~xentstream._batch.Replay`) of the last small batch.
    _replay: tuple | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Metric._registry[cls.__name__] = cls

    def __init__(
        self,
        config: LossConfig | None = None,
        *,
        engine: str = "auto",
        window: int | None = None,
        **options: Any,
    ):
        if config is None:  # the kind's options, completed as a constructor completes them
            config = self.kind.complete(self.kind.make_config(**options))
        elif options:
            raise TypeError(f"{next(iter(options))}: an option of the config given, not here")
        self.config = config
        self.engine = check_engine(engine)
        self.window = _check_window(window)
        Stateful.__init__(self)
        self.reset()

    @classmethod
    def from_config(
        cls, config: LossConfig, *, engine: str = "auto", window: int | None = None
    ) -> Metric:
        """A fresh metric of this class for a complete ``config`` (its kind's config)."""
        if not isinstance(config, cls.kind.config):
            raise TypeError(f"config: a {cls.__name__} takes a {cls.kind.config.__name__}")
        metric = cls.__new__(cls)
        Metric.__init__(metric, config, engine=engine, window=window)
        return metric

    @staticmethod
    def for_config(
        config: LossConfig, *, engine: str = "auto", window: int | None = None
    ) -> Metric:
        """A fresh metric of the class that computes ``config``'s kind, completed as its
        constructor completes it (per-class weights fix the class count): how the
        command line builds a metric from its flags.

        Examples
        --------
        >>> from xentstream.config import MultilabelConfig
        >>> metric = Metric.for_config(MultilabelConfig(pos_weight=(1.0, 2.0)))
        >>> type(metric).__name__, metric.n_classes
        ('MultiLabelCrossEntropy', 2)
        """
        for cls in Metric._registry.values():
            if cls.kind.config is type(config):
                return cls.from_config(cls.kind.complete(config), engine=engine, window=window)
        raise TypeError(f"config: no metric computes a {type(config).__name__}")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_replay", None)  # holds a compiled kernel; rebuilt by the next batch
        return state

    # -- state ---------------------------------------------------------------------------

    def reset(self) -> Metric:
        """Forget every row seen; the config (and inferred class count) is kept."""
        with self._lock:
            self.state = self.kind.state(
                counts_labels=self.kind.counts_labels,
                calibration_bins=self.config.calibration_bins,
            )
            if self._class_forecast is not None:
                self.state.calibration.per_class = True
            self._window = _Window(self.window) if self.window else None
        return self

    @property
    def _class_forecast(self) -> str | None:
        """The per-class reliability bins' forecast (``calibration.CLASS_FORECASTS``) when
        this metric keeps them: ``calibration_bins`` with ``per_class`` / ``per_label``."""
        if self.config.calibration_bins is None or not self.kind.per_class(self.config):
            return None
        return calibration.CLASS_FORECASTS.get(self.kind.class_axis)

    @property
    def rows_seen(self) -> int:
        """Rows consumed so far, ignored rows included (the offset of the next batch)."""
        return self.state.rows_seen

    @property
    def n_classes(self) -> int | None:
        """Classes (labels) of the inputs: from the config, else inferred from the first
        batch; None for kinds without a class dimension."""
        return self.kind.class_count(self.config)

    def _adopt_class_count(self, n_classes: int) -> None:
        """Fix the class count (inferred from a batch, or the other side of a merge)."""
        field = self.kind.count_field
        if field is None:
            return
        current = getattr(self.config, field)
        if current is None:
            self.config = replace(self.config, **{field: n_classes})
        elif current != n_classes:
            raise ValueError(f"{field}: {current} here, {n_classes} in the other state")

    def _zero_class_count(self) -> int | None:
        """Classes to show zero per-class sums for before any row (per-class metrics)."""
        return self.n_classes if self.kind.per_class(self.config) else None

    # -- update --------------------------------------------------------------------------

    def update(
        self,
        preds: Any,
        target: Any,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
    ) -> Metric:
        """Add one batch. Atomic: a rejected batch leaves the state bit for bit unchanged.

        Error messages give rows as offsets in the whole stream (rows seen before
        plus the row in this batch). ``names`` lets feeders report column names.
        Returns ``self``.
        """
        self.accumulate(preds, target, sample_weight, names=names)
        return self

    def forward(self, preds: Any, target: Any, sample_weight: Any = None) -> float:
        """Add one batch (as :meth:`update`) and return this batch's mean loss.

        What a training loop logs per step, as ``torchmetrics``' ``forward``; the
        metric's :attr:`value` is the running loss over every batch so far.
        ``metric(preds, target)`` is the same call.

        Examples
        --------
        >>> import xentstream as xs
        >>> m = xs.CrossEntropy()
        >>> round(m([[0.5, 0.5]], [0]), 6), round(m([[0.9, 0.1]], [0]), 6)
        (0.693147, 0.105361)
        >>> round(m.value, 6)
        0.399254
        """
        batch = self.accumulate(preds, target, sample_weight)
        return accumulator.ratio(batch.sums[layout.LOSS], batch.sums[layout.DENOMINATOR])

    __call__ = forward

    def to(self, device: Any) -> Metric:
        """Run the kernels on ``device`` (``"cpu"``, ``"cuda"``, a ``torch.device``);
        returns ``self``. The exact state itself always lives in host memory (it is a
        few kilobytes of integers)."""
        kind = str(getattr(device, "type", device)).split(":", 1)[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        self.engine = check_engine(kind)
        return self

    def accumulate(
        self,
        preds: Any,
        target: Any,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        groups: np.ndarray | None = None,
        n_groups: int = 1,
        row_offset: int | None = None,
    ) -> BatchSums:
        """:meth:`update`, returning the batch's exact sums (per group with ``groups``).

        Feeders use it for grouped evaluation: one kernel pass updates this metric
        and yields ``group_sums`` / ``group_counts`` for per-group states
        (:meth:`group_label_counts` gives their label counts). ``groups``: an int64
        code in ``[0, n_groups)`` per row. ``row_offset``: the stream offset of the
        batch's first row in error messages (default :attr:`rows_seen`).
        """
        with self._lock:
            plain = sample_weight is None and groups is None and row_offset is None
            if plain and self._replay is not None:
                config, engine, replay = self._replay
                if config is self.config and engine == self.engine:
                    batch = replay(preds, target)
                    if batch is not None:
                        self.absorb(batch, target, None)
                        return batch
            batch = self.run_batch(
                preds,
                target,
                sample_weight,
                names=names,
                groups=groups,
                n_groups=n_groups,
                row_offset=row_offset,
            )
            self.absorb(batch, target, sample_weight)
            if plain and batch.replay is not None:
                # The next batches of this layout skip the Python around the kernel.
                # Bound to the config as absorbing left it: a first batch fixes the
                # class count, which a replay of its layout (the same count) passes.
                replay = Replay.bind(batch, preds, target)
                self._replay = None if replay is None else (self.config, self.engine, replay)
        return batch

    def run_batch(
        self,
        preds: Any,
        target: Any,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        groups: np.ndarray | None = None,
        n_groups: int = 1,
        row_offset: int | None = None,
        keep_rows: bool = False,
    ) -> BatchSums:
        """The first half of :meth:`accumulate`: one validated kernel pass, nothing
        absorbed (the state is unchanged). ``keep_rows``: also the per-row losses
        (``batch.row_losses``, see :meth:`row_denominators`), as a paired comparison
        of two metrics needs before it absorbs either batch."""
        offset = self.rows_seen if row_offset is None else row_offset
        bins = self.config.calibration_bins
        # The kernel bins the rows itself, or writes the bins' forecasts, where it can:
        # then the bins cost no second pass over the predictions.
        bin_outputs: dict[str, Any] = {}
        if bins is not None and self.kind.kernel_bins:
            bin_outputs["calibration_bins"] = bins
        elif bins is not None and self.kind.kernel_forecasts:
            bin_outputs["keep_forecasts"] = True
        batch = self.kind.batch(
            self.config,
            preds,
            target,
            sample_weight,
            keep_rows=keep_rows,
            keep_terms=self._window is not None,
            with_entropy=True,
            row_offset=offset,
            names=names,
            engine=self.engine,
            groups=groups,
            n_groups=n_groups,
            **bin_outputs,
        )
        if bins is not None and batch.n_rows:
            # The loss kernels validated every value above: the bins' pass needs no checks.
            options = {
                "n_bins": bins,
                "input": self.config.input,
                "ignore_index": getattr(self.config, "ignore_index", None),
            }
            if batch.bin_blocks is not None:
                batch.calibration = calibration.block_bins(*batch.bin_blocks)
            elif batch.row_forecasts is not None:
                batch.calibration = calibration.forecast_bins(
                    batch.row_forecasts, sample_weight, n_bins=bins
                )
            else:
                batch.calibration = calibration.batch_bins(
                    calibration.FORECASTS[self.kind.class_axis],
                    preds,
                    target,
                    sample_weight,
                    **options,
                )
            forecast = self._class_forecast
            if forecast is not None:
                bins_of = batch.calibration
                bins_of.per_class = True
                bins_of.class_sums, bins_of.class_counts = calibration.class_batch_bins(
                    forecast, preds, target, sample_weight, **options
                )
        return batch

    def absorb(self, batch: BatchSums, target: Any, sample_weight: Any) -> None:
        """The second half of :meth:`accumulate`: add a :meth:`run_batch` result of these
        inputs to the state (an empty batch is a no-op: no zeroed per-class state)."""
        with self._lock:
            if batch.n_rows:
                self._adopt_class_count(batch.n_classes)
                self._absorb(batch, target, sample_weight)

    def row_denominators(self, target: Any, batch: BatchSums) -> np.ndarray:
        """Per-row denominators d_i of a batch with per-row losses (-1: an ignored row)."""
        size = batch.row_losses.size
        hook = self.kind.row_denominators
        return np.ones(size) if hook is None else hook(self.config, target, size, batch.n_classes)

    def group_label_counts(
        self,
        target: Any,
        sample_weight: Any,
        codes: np.ndarray,
        n_groups: int,
        *,
        batch: BatchSums | None = None,
    ) -> np.ndarray | None:
        """Exact label counts per group of a batch, shape (n_groups, C); None where this
        kind keeps none or the batch's labels are unknown (soft, weighted). ``batch``:
        the batch's :meth:`accumulate` result, whose targets are already converted."""
        hook = self.kind.label_counts
        if hook is None or self.n_classes is None:
            return None
        return hook(
            self.config,
            _kernel_target(batch, target),
            sample_weight,
            self.n_classes,
            codes=codes,
            n_groups=n_groups,
        )

    def _absorb(self, batch: BatchSums, target: Any, sample_weight: Any) -> None:
        label_counts = None
        if self.kind.label_counts is not None:
            label_counts = self.kind.label_counts(
                self.config, _kernel_target(batch, target), sample_weight, batch.n_classes
            )
        self.state.add(
            batch.sums,
            batch.counts,
            batch.class_sums,
            batch.class_counts,
            label_counts,
            batch.calibration,
        )
        if self._window is not None:
            self._window.extend(*self._window_terms(batch, target, sample_weight))

    def _window_terms(
        self, batch: BatchSums, target: Any, sample_weight: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (s L, s d) terms of a batch's counted rows, for the window: the kernel's
        own (``batch.kept_terms``), so that each row's ``d_i`` and whether it counts are
        defined in the kernel alone; from the per-row losses where the kernel wrote no
        terms (the CUDA twins)."""
        terms = batch.kept_terms
        if terms is not None:
            counted = terms[:, layout.ROW_IGNORED] == 0.0
            if not counted.all():
                terms = terms[counted]
            return terms[:, layout.LOSS], terms[:, layout.DENOMINATOR]
        losses = batch.row_losses.reshape(-1)
        denominators = self.row_denominators(target, batch)
        weights = (
            np.ones_like(losses)
            if sample_weight is None
            else np.asarray(as_array(sample_weight, "sample_weight"), np.float64).reshape(-1)
        )
        counted = denominators >= 0  # ignored rows carry -1
        return (weights * losses)[counted], (weights * np.maximum(denominators, 0))[counted]

    # -- results -------------------------------------------------------------------------

    @property
    def value(self) -> float:
        """Running mean loss (NaN before any counted row)."""
        with self._lock:
            sums = self.state.sums
            return accumulator.ratio(sums[layout.LOSS], sums[layout.DENOMINATOR])

    def compute(self) -> Report:
        """Summarize the state as a :class:`~xentstream.Report` (idempotent)."""
        with self._lock:
            return self.report_of(self.state, window_loss=self._window_loss())

    def report_of(self, state: ExactState, *, window_loss: float | None = None) -> Report:
        """The :class:`~xentstream.Report` of ``state`` under this metric's config (the
        report of a group's state in grouped evaluation)."""
        class_sums = class_counts = None
        zero_classes = self._zero_class_count()
        if state.class_sums is None and zero_classes:
            class_sums = accumulator.empty(zero_classes, layout.N_CLASS_SUMS)
            class_counts = np.zeros(zero_classes, dtype=np.int64)
        report = build_report(
            kind=self.kind,
            state=state,
            unweighted=not self.kind.loss_weighted(self.config),
            window_loss=window_loss,
            class_sums=class_sums,
            class_counts=class_counts,
        )
        if self.kind.extra_report is None:
            return report
        return replace(report, **self.kind.extra_report(self.config, state))

    def _window_loss(self) -> float | None:
        return self._window.loss() if self._window is not None else None

    # -- merge ---------------------------------------------------------------------------

    def merge_key(self) -> dict[str, Any]:
        """What two metrics must share to merge: the config and the window (a state
        without, or with a shorter, window would silently drop rows from it)."""
        return {**self.config.to_dict(), "window": self.window}

    def merge(self, other: Metric) -> Metric:
        """Add ``other``'s state into this one (exact); ``other`` is left unchanged.

        Raises
        ------
        TypeError
            If ``other`` is another kind of metric.
        ValueError
            If the configurations differ.
        """
        if type(other) is not type(self):
            raise TypeError(
                f"merge: cannot merge {type(other).__name__} into {type(self).__name__}"
            )
        if other is self:
            raise ValueError("merge: cannot merge a metric into itself")
        with other._lock:
            key, n_classes = other.merge_key(), other.n_classes
            state = other.state.copy()
            window = None if other._window is None else other._window.copy()
        with self._lock:
            self._check_compatible(key, n_classes, "merge")
            if n_classes is not None:
                self._adopt_class_count(n_classes)
            self.state.merge(state)
            if self._window is not None and window is not None:
                self._window.rows.extend(window.rows)
        return self

    def _check_loadable(self, other: Metric) -> None:
        self._check_compatible(other.merge_key(), other.n_classes, "load_state_dict")

    def _check_compatible(self, config: dict[str, Any], n_classes: int | None, what: str) -> None:
        mine = self.merge_key()
        count_key = self.kind.count_field
        theirs = dict(config)
        # A class count inferred from data on one side only is not a conflict.
        if count_key is not None:
            mine[count_key] = theirs[count_key] = None
            if n_classes is not None and self.n_classes is not None and n_classes != self.n_classes:
                raise ValueError(
                    f"{what}: {count_key} differ ({self.n_classes} here, {n_classes} there)"
                )
        if mine != theirs:
            differing = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            details = ", ".join(f"{k}={mine.get(k)!r} vs {theirs.get(k)!r}" for k in differing)
            raise ValueError(f"{what}: configurations differ: {details}")

    # -- serialization -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able, versioned dict of the config and the exact state."""
        with self._lock:
            return {
                "format": FORMAT,
                "version": VERSION,
                "metric": type(self).__name__,
                "config": self.config.to_dict(),
                "n_classes": self.n_classes,
                "window": self.window,
                **self.state.to_json(self._zero_class_count()),
                "window_rows": (
                    None if self._window is None else [list(pair) for pair in self._window.rows]
                ),
            }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, engine: str = "auto") -> Metric:
        """Rebuild a metric from :meth:`state_dict` output.

        Raises
        ------
        ValueError
            If ``state`` is malformed, of another format version, or of another metric.
        """
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("state: not an xentstream metric state (missing 'format')")
        claimed = state.get("metric")
        by_name = cls is Metric and isinstance(claimed, str)
        named = Metric._registry.get(claimed, cls) if by_name else cls
        # A kind with more exact state has more sections (named's: the class it holds).
        sections = named.kind.state.SECTIONS if named is not Metric else ()
        unknown = sorted(set(state) - set(_STATE_KEYS) - set(sections))
        if unknown:  # read exactly as written, or not at all
            shown = ", ".join(show(k, 30) for k in unknown[:3])
            raise ValueError(f"state: unknown keys {shown}{', ...' if len(unknown) > 3 else ''}")
        version = state.get("version")
        if not _is_int(version) or version != VERSION:
            raise ValueError(
                f"state: version {show(version)} is not supported (expected {VERSION})"
            )
        name = state.get("metric")
        if cls is Metric:
            if not isinstance(name, str) or name not in Metric._registry:
                raise ValueError(f"state: unknown metric {show(name)}")
            cls = Metric._registry[name]
        elif name != cls.__name__:
            raise ValueError(f"state: holds a {show(name)}, not a {cls.__name__}")
        with strict_loading("state"):
            if not isinstance(state["config"], dict):
                raise ValueError("config must be a JSON object")
            config = cls.kind.config.from_dict(state["config"])
            metric = cls.from_config(config, engine=engine, window=state.get("window"))
            n_classes = _class_count_from_json(state["n_classes"])
            if n_classes != metric.n_classes:
                # state_dict writes the config's count: a file where they differ was edited
                raise ValueError(
                    f"n_classes is {show(n_classes)} but the config says {metric.n_classes}"
                )
            per_class = metric.kind.per_class(config)
            if state["class_sums"] is not None and not per_class:
                raise ValueError("class_sums: a list, and only with per_class / per_label")
            if state.get("label_counts") is not None and not cls.kind.counts_labels:
                raise ValueError(f"label_counts: a {cls.__name__} state holds none")
            exact = cls.kind.state.from_json(
                state,
                per_class=per_class,
                counts_labels=cls.kind.counts_labels,
                calibration_bins=config.calibration_bins,
            )
            if exact.class_sums is not None:
                width = exact.class_sums.shape[0]
                if width != (n_classes or width):
                    raise ValueError(f"class_sums has {width} rows for {n_classes} classes")
            elif per_class and (exact.counts.any() or (n_classes or 0) > _MAX_UNBACKED_CLASSES):
                # The per-class state is sized by what the file holds, never by what it
                # claims: n_classes alone must not allocate (or report) millions of rows.
                raise ValueError(
                    "class_sums: missing, although per-class sums are kept "
                    f"(for {n_classes} classes)"
                )
            metric.state = exact
            rows = _window_rows_from_json(state.get("window_rows"), metric.window)
            if metric._window is not None:
                metric._window.rows.extend(rows)
            _check_consistent(metric)
            _check_label_counts(metric)
            _check_calibration(metric)
        return metric

    # -- plumbing ------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.rows_seen}, value={self.value!r})"


def load(path: str | os.PathLike[str], *, engine: str = "auto") -> Metric:
    """Load a metric saved with :meth:`Metric.save`.

    Raises
    ------
    ValueError
        If the file is malformed, of an unknown version, or not a metric state.

    Examples
    --------
    >>> import tempfile, os, xentstream as xs
    >>> m = xs.CrossEntropy().update([[0.7, 0.3]], [0])
    >>> path = os.path.join(tempfile.mkdtemp(), "state.json")
    >>> m.save(path)
    >>> xs.load(path).value == m.value
    True
    """
    data = read_json(path)
    try:
        return Metric.from_state_dict(data, engine=engine)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


class CrossEntropy(Metric):
    """Streaming multiclass cross-entropy (hard labels or soft targets).

    Parameters
    ----------
    num_classes : int, optional
        Number of classes; inferred from the first batch when omitted.
    input, class_weight, ignore_index, label_smoothing, eps, sum_tol, validate
        As in :func:`xentstream.cross_entropy`.
    per_class : bool
        Also keep exact per-class sums (``Report.per_class``, normalized entropy).
    engine : {"auto", "cpu", "cuda"}
        Where the kernels run.
    window : int, optional
        Also report the loss over the last ``window`` counted rows.
    calibration_bins : int, optional
        Also keep that many equal-width reliability bins of the top label's
        probability (``Report.ece`` / ``mce`` / ``brier``, ``Report.calibration``;
        :mod:`xentstream.calibration`), in the same pass over the batch.
    **options
        Further options of :class:`~xentstream.config.MulticlassConfig` (an option
        added to the config is taken here before it has a parameter of its own).

    Examples
    --------
    >>> import xentstream as xs
    >>> m = xs.CrossEntropy(num_classes=3)
    >>> m.update([[0.7, 0.2, 0.1]], [0]).update([[0.1, 0.8, 0.1]], [1]).compute().count
    2
    """

    kind = KINDS["multiclass"]

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        input: str = "probs",
        class_weight: Any = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        eps: float | str = "auto",
        per_class: bool = False,
        sum_tol: float | None = None,
        validate: bool = True,
        engine: str = "auto",
        window: int | None = None,
        calibration_bins: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            engine=engine,
            window=window,
            calibration_bins=calibration_bins,
            num_classes=num_classes,
            input=input,
            class_weight=class_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            eps=eps,
            per_class=per_class,
            sum_tol=sum_tol,
            validate=validate,
            **options,
        )


class BinaryCrossEntropy(Metric):
    """Streaming binary cross-entropy (SPEC section 2, "Binary").

    Parameters
    ----------
    input, pos_weight, eps, sum_tol, validate
        As in :func:`xentstream.binary_cross_entropy`.
    engine, window
        As in :class:`CrossEntropy`.
    calibration_bins : int, optional
        Reliability bins of the positive class's probability, as in :class:`CrossEntropy`.
    **options
        Further options of :class:`~xentstream.config.BinaryConfig`, as in
        :class:`CrossEntropy`.

    Examples
    --------
    >>> import xentstream as xs
    >>> m = xs.BinaryCrossEntropy(input="logits").update([2.0, -1.0], [1, 0])
    >>> 0.0 < m.value < 1.0
    True
    """

    kind = KINDS["binary"]

    def __init__(
        self,
        *,
        input: str = "probs",
        pos_weight: float | None = None,
        eps: float | str = "auto",
        sum_tol: float | None = None,
        validate: bool = True,
        engine: str = "auto",
        window: int | None = None,
        calibration_bins: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            engine=engine,
            window=window,
            input=input,
            pos_weight=pos_weight,
            eps=eps,
            sum_tol=sum_tol,
            validate=validate,
            calibration_bins=calibration_bins,
            **options,
        )


class MultiLabelCrossEntropy(Metric):
    """Streaming multi-label cross-entropy: per row, the sum over labels of the binary loss.

    Parameters
    ----------
    num_labels : int, optional
        Number of labels; inferred from the first batch when omitted.
    input, pos_weight, eps, sum_tol, validate
        As in :func:`xentstream.multilabel_cross_entropy`.
    per_label : bool
        Also keep exact per-label sums (``Report.per_class``, normalized entropy).
    engine, window
        As in :class:`CrossEntropy`.
    calibration_bins : int, optional
        Reliability bins of every label's probability (pooled), as in
        :class:`CrossEntropy`.
    **options
        Further options of :class:`~xentstream.config.MultilabelConfig`, as in
        :class:`CrossEntropy`.

    Examples
    --------
    >>> import xentstream as xs
    >>> m = xs.MultiLabelCrossEntropy(per_label=True).update([[0.9, 0.2]], [[1, 0]])
    >>> m.compute().per_class.columns
    ['label', 'positives', 'positive_rate', 'loss']
    """

    kind = KINDS["multilabel"]

    def __init__(
        self,
        num_labels: int | None = None,
        *,
        input: str = "probs",
        pos_weight: Any = None,
        eps: float | str = "auto",
        per_label: bool = False,
        sum_tol: float | None = None,
        validate: bool = True,
        engine: str = "auto",
        window: int | None = None,
        calibration_bins: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            engine=engine,
            window=window,
            calibration_bins=calibration_bins,
            num_labels=num_labels,
            input=input,
            pos_weight=pos_weight,
            eps=eps,
            per_label=per_label,
            sum_tol=sum_tol,
            validate=validate,
            **options,
        )
