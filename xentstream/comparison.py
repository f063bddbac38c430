"""Paired comparison of two models scored on the same rows (SPEC section 9).

"Is the new model better?" is a paired question: both models see the same rows, so
the per-row loss difference ``D_i = L_Ai - L_Bi`` removes the rows' own difficulty,
which dominates the variance of each loss. :class:`Comparison` keeps, exactly,

- each model's own metric state (two metrics of the same configuration: their
  Reports are what each model alone would report),
- ``sum s_i D_i``, ``sum s_i D_i**2 / d_i``, ``sum s_i d_i``, ``sum (s_i d_i)**2``,
- the weight and the number of rows where model A (``preds``) is better, and where
  model B (``baseline_preds``) is,

from one kernel pass per model over each batch (the loss kernels' per-row output)
and a pass over the two per-row loss columns (:mod:`xentstream._kernels.paired`).
All sums are exact integers, so the result is bitwise identical for any split of
the rows, any merge order and any thread count.

Statistics
----------
Row ``i`` has weight ``a_i = s_i d_i`` (``d_i`` the class weight of its label, 1
otherwise) and per-unit difference ``v_i = D_i / d_i``, so the mean difference is
``sum a v / sum a = (loss_A - loss_B)`` up to the rounding of each ``D_i``. The
standard error is the one :class:`~xentstream.Report` uses for a loss, applied to
``v``: ``sigma^2 = sum a v^2 / sum a - mean^2`` from exact integers, rounded once,
``n_eff = (sum a)^2 / sum a^2`` (Kish), ``stderr = sqrt(sigma^2 / (n_eff - 1))``.
With unit weights this is the paired t statistic's denominator
(``scipy.stats.ttest_rel``): ``std(D, ddof=1) / sqrt(n)``. ``z = mean / stderr``;
the p-value is two-sided under the normal approximation (the t distribution with
``n - 1`` degrees of freedom differs by less than 1% of the p-value for ``n`` in
the thousands, where evaluations live).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Any

import numba
import numpy as np

from xentstream import accumulator
from xentstream._batch import BatchSums
from xentstream._errors import DEFAULT_NAMES, ColumnNames, show
from xentstream._inputs import as_array
from xentstream._kernels import layout, paired
from xentstream._kernels.exact import MAX_TERMS_PER_BLOCK, N_SLOTS, combine_blocks, normalize
from xentstream.metrics import Metric
from xentstream.report import Report, format_value
from xentstream.state import Stateful, read_json, strict_loading

__all__ = ["Comparison", "ComparisonReport", "load"]

FORMAT = "xentstream.comparison"
VERSION = 1

_Z95 = NormalDist().inv_cdf(0.975)
_SUM_NAMES = (
    "difference",
    "difference_squared",
    "weight",
    "weight_squared",
    "model_better",
    "baseline_better",
)
_COUNT_NAMES = ("rows", "model_better", "baseline_better")
_STATE_KEYS = ("format", "version", "model", "baseline", "sums", "counts")
#: Rows per block of the paired pass: fewer and the per-block zeroing dominates.
_MIN_BLOCK_ROWS = 1 << 14
_BASELINE_PREDS = "baseline_preds"


@dataclass(frozen=True)
class PairedBatch:
    """One batch through a :class:`Comparison`: each model's exact batch sums and the
    paired sums and counters per group, shapes ``(n_groups, N_PAIRED_SUMS, N_SLOTS)``
    and ``(n_groups, N_PAIRED_COUNTS)`` (one group without ``groups``)."""

    model: BatchSums
    baseline: BatchSums
    sums: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class ComparisonReport:
    """A paired comparison of model A (``preds``) against model B (``baseline_preds``).

    ``None`` where undefined (fewer than two rows, non-finite losses).

    Attributes
    ----------
    difference : float
        Mean per-row loss difference A - B (negative: A is better), weighted as the
        loss is (NaN before any row).
    stderr : float or None
        Paired standard error of ``difference`` (module docstring).
    ci95 : tuple of float or None
        Normal-approximation 95% interval for ``difference``.
    z : float or None
        ``difference / stderr``.
    p_value : float or None
        Two-sided p-value of "no difference" under the normal approximation.
    count : int
        Rows compared (rows the loss ignores are not).
    model_better : float or None
        Share of the rows' weight where A's loss is strictly lower (the share of rows
        without sample or class weights).
    baseline_better : float or None
        Share where B's loss is strictly lower; the rest are ties.
    model_better_rows, baseline_better_rows : int
        Rows where A's (B's) loss is strictly lower.
    model, baseline : Report
        Each model's own report, as its metric alone would give it.
    clustered_stderr : float or None
        Token comparisons with documents: the standard error of ``difference`` with
        documents as clusters (cluster-robust, CR1, as the token kind's own
        ``clustered_stderr``); tokens of one document are correlated, so ``stderr``
        (per token, the paired t-test's) is too small. None otherwise.
    clustered_ci95, clustered_p_value : tuple of float / float, or None
        The 95% interval and two-sided p-value of ``difference`` from
        ``clustered_stderr`` (normal approximation, as ``ci95`` / ``p_value`` from
        ``stderr``); :meth:`verdict` uses these when they are there.
    """

    difference: float
    stderr: float | None
    ci95: tuple[float, float] | None
    z: float | None
    p_value: float | None
    count: int
    model_better: float | None
    baseline_better: float | None
    model_better_rows: int
    baseline_better_rows: int
    model: Report
    baseline: Report
    clustered_stderr: float | None = None
    clustered_ci95: tuple[float, float] | None = None
    clustered_p_value: float | None = None

    def scalars(self, prefix: str = "") -> dict[str, float | int]:
        """The defined scalars as one flat dict (``ci95`` as two entries), then each
        model's :meth:`Report.scalars` under ``model/`` and ``baseline/``.

        Examples
        --------
        >>> import xentstream as xs
        >>> c = xs.Comparison(xs.CrossEntropy())
        >>> c = c.update([[0.9, 0.1], [0.6, 0.4]], [[0.6, 0.4], [0.5, 0.5]], [0, 0])
        >>> c.compute().scalars()["model_better_rows"]
        2
        """
        out: dict[str, float | int] = {}
        for name, value in self._shown():
            if name in ("ci95", "clustered_ci95"):
                out[f"{prefix}{name}_low"], out[f"{prefix}{name}_high"] = value
            else:
                out[f"{prefix}{name}"] = value
        out.update(self.model.scalars(f"{prefix}model/"))
        out.update(self.baseline.scalars(f"{prefix}baseline/"))
        return out

    def _shown(self) -> list[tuple[str, Any]]:
        return [(n, getattr(self, n)) for n in _SCALARS if getattr(self, n) is not None]

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict: the comparison's fields, each model's ``Report.to_dict()``."""
        data: dict[str, Any] = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if isinstance(value, Report):
                data[name] = value.to_dict()
            elif isinstance(value, float) and math.isnan(value):
                data[name] = None
            elif isinstance(value, tuple):
                data[name] = list(value)
            else:
                data[name] = value
        return data

    def verdict(self, model: str = "model", baseline: str = "baseline") -> str:
        """One sentence: which model is better, by how much, with what confidence.

        ``model`` / ``baseline``: the names to use for A and B. With documents (token
        comparisons) the interval and p-value are the document-clustered ones: tokens
        of one document are not independent evidence.
        """
        clustered = self.clustered_p_value is not None
        interval = self.clustered_ci95 if clustered else self.ci95
        p_value = self.clustered_p_value if clustered else self.p_value
        if interval is None or p_value is None or math.isnan(self.difference):
            return "not enough rows to compare"
        better = model if self.difference < 0 else baseline
        low, high = interval
        strength = "significant" if p_value < 0.05 else "not significant"
        unit = "token, documents as clusters" if clustered else "row"
        return (
            f"{better} is better by {abs(self.difference):.4g} nats per {unit} "
            f"(95% CI of {model} - {baseline}: [{low:.4g}, {high:.4g}], "
            f"p = {p_value:.2g}, {strength} at the 5% level)"
        )

    @property
    def per_document(self) -> Any:
        """The token kind's documents side by side (None without both models'
        per-document tables, ``per_document=True``): a polars frame of ``document``,
        ``tokens``, ``model_loss``, ``baseline_loss`` and ``difference`` (model -
        baseline, of the two correctly rounded losses), in the tables' order."""
        mine, theirs = self.model.per_document, self.baseline.per_document
        if mine is None or theirs is None:
            return None
        import polars as pl

        # Both models saw the same rows: the same documents, in the same order.
        return mine.select(
            "document",
            "tokens",
            pl.col("loss").alias("model_loss"),
            theirs["loss"].alias("baseline_loss"),
            (pl.col("loss") - theirs["loss"]).alias("difference"),
        )

    def __str__(self) -> str:
        names = [name for name in _SIDE_BY_SIDE if getattr(self.model, name) is not None]
        labels = [self.model.label(name) for name in names]
        width = max(map(len, (*_SCALARS, *labels)))
        lines = [f"{name:<{width}}  {format_value(value)}" for name, value in self._shown()]
        lines.append("")
        lines.append(f"{'':<{width}}  {'model':>12}  {'baseline':>12}")
        for name, label in zip(names, labels, strict=True):
            a, b = getattr(self.model, name), getattr(self.baseline, name)
            lines.append(f"{label:<{width}}  {format_value(a):>12}  {format_value(b):>12}")
        table = self.per_document
        if table is not None:
            import polars as pl

            with pl.Config(tbl_rows=200, tbl_hide_dataframe_shape=True):
                lines.extend(["", str(table)])
        lines.append("")
        lines.append(self.verdict())
        return "\n".join(lines)


#: Each model's own report fields that the comparison's table shows side by side, where
#: the models have them (the token kind's document and unit statistics).
_SIDE_BY_SIDE = (
    "loss",
    "stderr",
    "clustered_stderr",
    "accuracy",
    "perplexity",
    "document_perplexity",
    "bits_per_unit",
)


_SCALARS = (
    "difference",
    "stderr",
    "clustered_stderr",
    "ci95",
    "z",
    "p_value",
    "clustered_ci95",
    "clustered_p_value",
    "count",
    "model_better",
    "baseline_better",
    "model_better_rows",
    "baseline_better_rows",
)


def paired_statistics(
    sums: np.ndarray, counts: np.ndarray
) -> tuple[float, float | None, float | None, float | None]:
    """Mean difference, its stderr, z and the two-sided p-value from the exact sums.

    ``sums`` has the :mod:`xentstream._kernels.paired` layout (``N_PAIRED_SUMS``
    accumulator rows), ``counts`` its counters.
    """
    difference_row = sums[paired.DIFFERENCE]
    weight_row = sums[paired.WEIGHT]
    mean = accumulator.ratio(difference_row, weight_row)
    rows = int(counts[paired.PAIRED_ROWS])
    specials = slice(N_SLOTS - 3, N_SLOTS)
    if rows < 2 or sums[: paired.WEIGHT_SQUARED + 1, specials].any():
        return mean, None, None, None
    total, squares, weight = (
        accumulator.exact_integer(sums[slot])
        for slot in (paired.DIFFERENCE, paired.DIFFERENCE_SQUARED, paired.WEIGHT)
    )
    if weight <= 0:
        return mean, None, None, None
    try:
        # sum a v^2 / sum a - mean^2 with every sum an exact integer: one rounding.
        variance = max((squares * weight - total * total) / (weight * weight), 0.0)
    except OverflowError:
        return mean, None, None, None
    weight_float = accumulator.to_float(weight_row)
    weight_squares = accumulator.to_float(sums[paired.WEIGHT_SQUARED])
    if weight_squares <= 0.0:
        return mean, None, None, None
    effective_n = weight_float * weight_float / weight_squares
    if effective_n <= 1.0 + 1e-12:
        return mean, None, None, None
    stderr = math.sqrt(variance / (effective_n - 1.0))
    if stderr == 0.0:
        # Identical losses on every row: no evidence either way (z undefined).
        return mean, stderr, None, None
    z = mean / stderr
    return mean, stderr, z, _two_sided_p(z)


def _two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) of a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _interval(mean: float, stderr: float | None) -> tuple[float, float] | None:
    """The normal-approximation 95% interval of ``mean`` (None without a stderr)."""
    return None if stderr is None else (mean - _Z95 * stderr, mean + _Z95 * stderr)


def _check_metric(metric: Any) -> Metric:
    if not isinstance(metric, Metric):
        raise TypeError(
            "metric: must be a metric object such as xs.CrossEntropy(...), "
            f"got {type(metric).__name__}"
        )
    if not metric.kind.pairable:
        raise TypeError(
            f"metric: a {type(metric).__name__} cannot be compared yet (paired comparison "
            f"of the {metric.kind.name} kind is not built)"
        )
    return metric


def _fresh(metric: Metric) -> Metric:
    """An empty metric of ``metric``'s kind, configuration, engine and window."""
    twin = Metric.from_state_dict(metric.state_dict(), engine=metric.engine)
    return twin.reset()


class Comparison(Stateful):
    """Paired comparison of two models' losses on the same rows, exact and mergeable.

    Parameters
    ----------
    metric : Metric
        The loss both models are scored with, e.g. ``xs.CrossEntropy(input="logits")``;
        used as a template (its configuration, engine and window; not its rows).

    Notes
    -----
    Model A's predictions are ``preds``, model B's ``baseline_preds``; differences are
    A - B, so a negative :attr:`value` says that A has the lower loss. The statistics
    are described in :mod:`xentstream.comparison`.

    Examples
    --------
    >>> import xentstream as xs
    >>> c = xs.Comparison(xs.CrossEntropy())
    >>> new = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    >>> old = [[0.6, 0.4], [0.4, 0.6], [0.7, 0.3]]
    >>> report = c.update(new, old, [0, 1, 0]).compute()
    >>> report.count, report.model_better_rows, report.baseline_better_rows
    (3, 2, 1)
    >>> import math
    >>> math.isclose(report.difference, report.model.loss - report.baseline.loss)
    True
    """

    def __init__(self, metric: Metric) -> None:
        template = _check_metric(metric)
        self.model = _fresh(template)
        self.baseline = _fresh(template)
        Stateful.__init__(self)
        self._sums = accumulator.empty(paired.N_PAIRED_SUMS)
        self._counts = np.zeros(paired.N_PAIRED_COUNTS, dtype=np.int64)

    # -- state ---------------------------------------------------------------------------

    def reset(self) -> Comparison:
        """Forget every row seen (both models' states too); returns ``self``."""
        with self._lock:
            self.model.reset()
            self.baseline.reset()
            self._sums = accumulator.empty(paired.N_PAIRED_SUMS)
            self._counts = np.zeros(paired.N_PAIRED_COUNTS, dtype=np.int64)
        return self

    @property
    def rows_seen(self) -> int:
        """Rows consumed so far, ignored rows included (the offset of the next batch)."""
        return self.model.rows_seen

    @property
    def engine(self) -> str:
        """Where both models' kernels run."""
        return self.model.engine

    def merge_key(self) -> dict[str, Any]:
        """What two comparisons must share to merge: their metrics' :meth:`Metric.merge_key`."""
        return {"metric": type(self.model).__name__, **self.model.merge_key()}

    @property
    def value(self) -> float:
        """Running mean loss difference A - B (NaN before any counted row)."""
        with self._lock:
            return accumulator.ratio(self._sums[paired.DIFFERENCE], self._sums[paired.WEIGHT])

    # -- update --------------------------------------------------------------------------

    def update(
        self,
        preds: Any,
        baseline_preds: Any,
        target: Any,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        baseline_name: str = _BASELINE_PREDS,
        **side: Any,
    ) -> Comparison:
        """Add one batch of rows scored by both models. Atomic: a rejected batch (bad
        values in either model's predictions, mismatched shapes) changes nothing.

        Parameters
        ----------
        preds, baseline_preds : array-like
            Model A's and model B's predictions for the same rows, each as the
            metric's ``update`` takes them.
        target, sample_weight : array-like
            Shared by both models.
        names, baseline_name
            Column names for messages (feeders); ``names.preds`` names ``preds``.
        **side
            The side columns of a metric that takes them, shared by both models: the
            token kind's ``document`` ids and ``units`` (and ``document_name`` /
            ``units_name`` for messages), as its ``update`` takes them; each model's
            report then has its documents' statistics (clustered standard error,
            per-document table) and bits per unit.

        Returns
        -------
        Comparison
            ``self``.

        Raises
        ------
        ValueError, TypeError
            As the metric's ``update``; also when the two models' predictions have a
            different number of classes, or for a side column the metric takes none of.

        Examples
        --------
        >>> import numpy as np, xentstream as xs
        >>> c = xs.Comparison(xs.TokenCrossEntropy(input="nll"))
        >>> report = c.update([0.5, 1.0, 2.0], [0.7, 1.0, 1.5], None,
        ...                   document=["a", "a", "b"]).compute()
        >>> report.count, report.model.documents, report.model_better_rows
        (3, 2, 1)
        """
        self.accumulate(
            preds,
            baseline_preds,
            target,
            sample_weight,
            names=names,
            baseline_name=baseline_name,
            **side,
        )
        return self

    def accumulate(
        self,
        preds: Any,
        baseline_preds: Any,
        target: Any,
        sample_weight: Any = None,
        *,
        names: ColumnNames = DEFAULT_NAMES,
        baseline_name: str = _BASELINE_PREDS,
        groups: np.ndarray | None = None,
        n_groups: int = 1,
        row_offset: int | None = None,
        **side: Any,
    ) -> PairedBatch:
        """:meth:`update`, returning both models' batch sums and the paired sums and
        counters per group (``groups``: an int64 code in ``[0, n_groups)`` per row), as
        :meth:`Metric.accumulate` does for one model; feeders use it. ``row_offset``:
        the stream offset of the batch's first row in messages."""
        baseline_names = ColumnNames(
            preds=baseline_name, target=names.target, sample_weight=names.sample_weight
        )
        side = self._side_columns(side)
        with self._lock:
            offset = self.rows_seen if row_offset is None else row_offset
            model, baseline = self.model, self.baseline
            options = {"groups": groups, "n_groups": n_groups, "row_offset": offset, **side}
            batch = model.run_batch(
                preds, target, sample_weight, names=names, keep_rows=True, **options
            )
            baseline_batch = baseline.run_batch(
                baseline_preds,
                target,
                sample_weight,
                names=baseline_names,
                keep_rows=True,
                **options,
            )
            if batch.n_rows and batch.n_classes != baseline_batch.n_classes:
                raise ValueError(
                    f"{baseline_name}: has {baseline_batch.n_classes} classes (last "
                    f"dimension) but {names.preds} has {batch.n_classes}; both models "
                    "must predict the same classes"
                )
            denominators = model.row_denominators(target, batch)
            sums, counts = _paired_batch(
                batch.row_losses,
                baseline_batch.row_losses,
                denominators,
                sample_weight,
                groups,
                n_groups,
            )
            if batch.n_rows:  # an empty batch is a no-op
                model.absorb(batch, target, sample_weight)
                baseline.absorb(baseline_batch, target, sample_weight)
                total = sums.sum(axis=0)  # the groups' exact total (carries below)
                normalize(total)
                accumulator.merge_into(self._sums, total)
                self._counts += counts.sum(axis=0)
        return PairedBatch(batch, baseline_batch, sums, counts)

    def _side_columns(self, side: dict[str, Any]) -> dict[str, Any]:
        """The side columns given (None: not given), refused for a metric without them."""
        given = {name: value for name, value in side.items() if value is not None}
        takes = self.model.kind.side_columns
        for name in given:
            column = name.removesuffix("_name")
            if column not in takes:
                raise ValueError(
                    f"{column}: a comparison of {type(self.model).__name__} takes no "
                    f"{column} column (TokenCrossEntropy takes document and units)"
                )
        return given

    def absorb_group(self, batch: PairedBatch, code: int, label_counts: Any = None) -> None:
        """Add group ``code``'s share of a grouped :meth:`accumulate` batch to this
        (per-group) comparison: the models' and the paired sums (and a token batch's
        per-document sums of the group), no per-class sums and no reliability bins.
        ``label_counts``: :meth:`Metric.group_label_counts` of the batch (shared: both
        models score the same targets), or None."""
        labels = None if label_counts is None else label_counts[code]
        with self._lock:
            for metric, sums in ((self.model, batch.model), (self.baseline, batch.baseline)):
                documents = getattr(sums, "group_documents", None)
                extra = {} if documents is None else {"documents": documents[code]}
                metric.state.add(
                    sums.group_sums[code], sums.group_counts[code], label_counts=labels, **extra
                )
            accumulator.merge_into(self._sums, batch.sums[code])
            self._counts += batch.counts[code]

    # -- results -------------------------------------------------------------------------

    def compute(self) -> ComparisonReport:
        """Summarize the state as a :class:`ComparisonReport` (idempotent)."""
        with self._lock:
            return _build_report(self._sums, self._counts, self.model, self.baseline)

    # -- merge ---------------------------------------------------------------------------

    def merge(self, other: Comparison) -> Comparison:
        """Add ``other``'s state into this one (exact); ``other`` is left unchanged.

        Raises
        ------
        TypeError
            If ``other`` is not a :class:`Comparison`.
        ValueError
            If the two comparisons' metrics differ in kind or configuration (then
            nothing is changed).
        """
        if not isinstance(other, Comparison):
            raise TypeError(f"merge: cannot merge a {type(other).__name__} into a Comparison")
        if other is self:
            raise ValueError("merge: cannot merge a comparison into itself")
        with other._lock:
            theirs = other.state_dict()
        with self._lock:
            snapshot = self.state_dict()
            try:
                self._merge_state(Comparison.from_state_dict(theirs, engine=self.model.engine))
            except BaseException:
                self._restore(Comparison.from_state_dict(snapshot, engine=self.model.engine))
                raise
        return self

    def _merge_state(self, other: Comparison) -> None:
        for mine, theirs in ((self.model, other.model), (self.baseline, other.baseline)):
            if type(mine) is not type(theirs):
                raise TypeError(
                    f"merge: cannot merge a comparison of {type(theirs).__name__} into one "
                    f"of {type(mine).__name__}"
                )
            mine.merge(theirs)
        accumulator.merge_into(self._sums, other._sums)
        self._counts += other._counts

    def _restore(self, saved: Comparison) -> None:
        self.model, self.baseline = saved.model, saved.baseline
        self._sums, self._counts = saved._sums, saved._counts

    # -- serialization -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able, versioned dict: both metrics' states and the paired sums."""
        with self._lock:
            return {
                "format": FORMAT,
                "version": VERSION,
                "model": self.model.state_dict(),
                "baseline": self.baseline.state_dict(),
                "sums": dict(zip(_SUM_NAMES, accumulator.to_json(self._sums), strict=True)),
                "counts": dict(zip(_COUNT_NAMES, (int(c) for c in self._counts), strict=True)),
            }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, engine: str = "auto") -> Comparison:
        """Rebuild a comparison from :meth:`state_dict` output.

        Raises
        ------
        ValueError
            If ``state`` is malformed, of another version, or inconsistent (the
            message names the key).
        """
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("comparison state: not an xentstream comparison (format)")
        keys = set(state)
        if keys != set(_STATE_KEYS):
            wrong = sorted(map(str, keys ^ set(_STATE_KEYS)))
            shown = ", ".join(show(k, 30) for k in wrong[:3])
            raise ValueError(f"comparison state: unknown or missing keys {shown}")
        version = state["version"]
        if not (isinstance(version, int) and not isinstance(version, bool)) or version != VERSION:
            raise ValueError(
                f"comparison state: version {show(version)} is not supported (expected {VERSION})"
            )
        with strict_loading("comparison state"):
            model = _load_metric(state["model"], "model", engine)
            baseline = _load_metric(state["baseline"], "baseline", engine)
            if type(model) is not type(baseline) or model.merge_key() != baseline.merge_key():
                raise ValueError("baseline: not the same metric and configuration as model")
            sums = state["sums"]
            if not isinstance(sums, dict) or set(sums) != set(_SUM_NAMES):
                raise ValueError(f"sums: must be an object with the keys {list(_SUM_NAMES)}")
            try:
                values = accumulator.from_json(
                    [sums[k] for k in _SUM_NAMES], (paired.N_PAIRED_SUMS,)
                )
            except ValueError as error:
                raise ValueError(f"sums: {error}") from None
            counts = state["counts"]
            if not isinstance(counts, dict) or set(counts) != set(_COUNT_NAMES):
                raise ValueError(f"counts: must be an object with the keys {list(_COUNT_NAMES)}")
            numbers = [counts[k] for k in _COUNT_NAMES]
            for name, number in zip(_COUNT_NAMES, numbers, strict=True):
                if not (isinstance(number, int) and not isinstance(number, bool)) or not (
                    0 <= number < 1 << 63
                ):
                    raise ValueError(
                        f"counts.{name}: must be an integer in [0, 2**63), got {show(number)}"
                    )
            rows, model_better, baseline_better = numbers
            if model_better + baseline_better > rows:
                raise ValueError("counts: more rows where a model is better than rows compared")
            for name, metric in (("model", model), ("baseline", baseline)):
                counted = int(metric.state.counts[layout.ROWS])
                if counted != rows:
                    raise ValueError(
                        f"counts.rows: {rows} rows compared, but {name} counted {counted}"
                    )
                # The paired pass adds the very s*d terms (and squares) the loss kernels
                # add: a real state has the same bits in both.
                for slot, theirs in (
                    (paired.WEIGHT, layout.DENOMINATOR),
                    (paired.WEIGHT_SQUARED, layout.DENOMINATOR_SQUARED),
                ):
                    if not np.array_equal(values[slot], metric.state.sums[theirs]):
                        raise ValueError(
                            f"sums.{_SUM_NAMES[slot]}: differs from {name}'s "
                            f"sums.{layout.SUM_NAMES[theirs]} (the same rows' weights)"
                        )
        comparison = cls.__new__(cls)
        Stateful.__init__(comparison)
        comparison.model, comparison.baseline = model, baseline
        comparison._sums = values
        comparison._counts = np.array(numbers, dtype=np.int64)
        return comparison

    def _check_loadable(self, other: Comparison) -> None:
        if type(other.model) is not type(self.model):
            raise ValueError(
                f"load_state_dict: the state compares a {type(other.model).__name__}, "
                f"not a {type(self.model).__name__}"
            )
        self.model._check_loadable(other.model)  # configurations (class counts may be open)

    def __repr__(self) -> str:
        kind = type(self.model).__name__
        return f"Comparison({kind}, rows={self.rows_seen}, value={self.value!r})"


def _load_metric(state: Any, key: str, engine: str) -> Metric:
    try:
        return Metric.from_state_dict(state, engine=engine)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


def _build_report(
    sums: np.ndarray, counts: np.ndarray, model: Metric, baseline: Metric
) -> ComparisonReport:
    mean, stderr, z, p_value = paired_statistics(sums, counts)
    ci95 = _interval(mean, stderr)
    weight = sums[paired.WEIGHT]
    has_weight = accumulator.to_float(weight) > 0.0
    hook = model.kind.paired_report
    extra = {} if hook is None else hook(model.state, baseline.state, mean)
    clustered = extra.get("clustered_stderr")
    if clustered is not None and clustered > 0.0 and not math.isnan(mean):
        extra["clustered_ci95"] = _interval(mean, clustered)
        extra["clustered_p_value"] = _two_sided_p(mean / clustered)
    return ComparisonReport(
        difference=mean,
        stderr=stderr,
        ci95=ci95,
        z=z,
        p_value=p_value,
        count=int(counts[paired.PAIRED_ROWS]),
        model_better=accumulator.ratio(sums[paired.A_BETTER], weight) if has_weight else None,
        baseline_better=accumulator.ratio(sums[paired.B_BETTER], weight) if has_weight else None,
        model_better_rows=int(counts[paired.A_BETTER_ROWS]),
        baseline_better_rows=int(counts[paired.B_BETTER_ROWS]),
        model=model.compute(),
        baseline=baseline.compute(),
        **extra,
    )


def _paired_batch(
    losses_a: np.ndarray,
    losses_b: np.ndarray,
    denominators: np.ndarray,
    sample_weight: Any,
    groups: np.ndarray | None,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The paired sums of one batch, per group: ``(n_groups, N_PAIRED_SUMS, N_SLOTS)``."""
    a = np.ascontiguousarray(losses_a, dtype=np.float64).reshape(-1)
    b = np.ascontiguousarray(losses_b, dtype=np.float64).reshape(-1)
    d = np.ascontiguousarray(denominators, dtype=np.float64).reshape(-1)
    n_rows = a.shape[0]
    if sample_weight is None:
        weights = np.empty(0, dtype=np.float64)
    else:
        # Already validated (finite, >= 0, one per row) by the loss kernels.
        weights = np.ascontiguousarray(
            as_array(sample_weight, "sample_weight"), dtype=np.float64
        ).reshape(-1)
    codes = (
        np.empty(0, dtype=np.int64)
        if groups is None
        else np.ascontiguousarray(groups, dtype=np.int64).reshape(-1)
    )
    n_groups = 1 if groups is None else n_groups
    threads = numba.get_num_threads()
    n_blocks = max(1, min(threads * 4, n_rows // _MIN_BLOCK_ROWS))
    n_blocks = max(n_blocks, -(-n_rows // MAX_TERMS_PER_BLOCK))
    block_sums, block_counts = paired.empty_paired(n_blocks, n_groups)
    if n_rows:
        paired.paired_sums(a, b, weights, d, codes, block_sums, block_counts)
    sums = accumulator.empty(n_groups, paired.N_PAIRED_SUMS)
    combine_blocks(
        block_sums.reshape(n_blocks, n_groups * paired.N_PAIRED_SUMS, N_SLOTS),
        sums.reshape(n_groups * paired.N_PAIRED_SUMS, N_SLOTS),
    )
    return sums, block_counts.sum(axis=0)


def load(path: str | os.PathLike[str], *, engine: str = "auto") -> Metric | Comparison:
    """Load a metric (:meth:`Metric.save`) or a comparison (:meth:`Comparison.save`).

    Raises
    ------
    ValueError
        If the file is malformed, of an unknown version, or neither kind of state.

    Examples
    --------
    >>> import tempfile, os, xentstream as xs
    >>> c = xs.Comparison(xs.CrossEntropy()).update([[0.7, 0.3]], [[0.6, 0.4]], [0])
    >>> path = os.path.join(tempfile.mkdtemp(), "comparison.json")
    >>> c.save(path)
    >>> xs.load(path).value == c.value
    True
    """
    data = read_json(path)
    try:
        if data.get("format") == FORMAT:
            return Comparison.from_state_dict(data, engine=engine)
        return Metric.from_state_dict(data, engine=engine)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
