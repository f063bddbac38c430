"""What a metric reports: the :class:`Report` dataclass and how it is derived from exact sums.

Every field is computed from the exact accumulators at ``compute()`` time; nothing
here is accumulated approximately.

Standard error
--------------
Row ``i`` contributes the per-unit loss ``v_i = L_i / d_i`` with weight
``a_i = s_i d_i`` (``d_i`` is the class weight of the label, 1 otherwise), so
``loss = sum a v / sum a``. The weighted variance ``sigma^2 = sum a v^2 / sum a -
loss^2`` is evaluated exactly from the integer accumulators (``sum s L^2 / d``,
``sum s L``, ``sum s d``) and rounded once. The effective sample size is
``n_eff = (sum a)^2 / sum a^2`` (Kish), and ``stderr = sqrt(sigma^2 / (n_eff - 1))``,
which reduces to the usual ``sample std / sqrt(n)`` when all weights are 1. The 95%
interval is ``loss -/+ z_0.975 * stderr`` (normal approximation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from xentstream import accumulator
from xentstream._kernels import layout
from xentstream.calibration import build_calibration_report

if TYPE_CHECKING:
    import polars as pl

    from xentstream.accumulator import ExactState
    from xentstream.calibration import CalibrationReport
    from xentstream.kinds import Kind

__all__ = ["FLAT_SCALAR_FIELDS", "SCALAR_FIELDS", "Report", "build_report"]

_Z95 = NormalDist().inv_cdf(0.975)
_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Report:
    """The state of a metric, summarized (SPEC section 4). ``None`` where undefined.

    Attributes
    ----------
    loss : float
        Mean loss: ``sum s_i L_i / sum s_i d_i`` (NaN before any counted row).
    loss_sum : float
        ``sum s_i L_i``, exact and correctly rounded.
    weight_sum : float
        ``sum s_i d_i``, exact and correctly rounded.
    count : int
        Rows counted (ignored rows excluded).
    ignored : int
        Rows dropped by ``ignore_index``.
    stderr : float or None
        Standard error of ``loss`` (module docstring); None with fewer than 2 rows.
    ci95 : tuple of float or None
        Normal-approximation 95% interval for the mean loss.
    perplexity : float or None
        ``exp(loss)``, multiclass only (binary and multi-label losses are not the
        log-loss of one distribution over classes).
    bits : float
        ``loss / ln 2``.
    accuracy : float or None
        Weighted top-1 accuracy (multiclass and binary).
    entropy : float or None
        Weighted mean entropy of the predicted distributions.
    kl : float or None
        Weighted mean ``KL(q || p) = CE - H(q)``, for soft (or smoothed) targets: with
        one-hot targets it equals the loss and is None; also None when class or
        positive weights make the loss a weighted cross-entropy.
    normalized_entropy : float or None
        Loss divided by the entropy of the weighted empirical label distribution:
        binary always; multiclass hard labels always (from exact label counts; with
        sample weights, or soft targets, it needs ``per_class``); multi-label with
        ``per_label``.
    window_loss : float or None
        Mean loss over the last ``window`` counted rows, when the metric has a window.
    per_class : polars.DataFrame or None
        Per-class (per-label) statistics when requested.
    documents, document_perplexity, clustered_stderr, units, bits_per_unit, \
bits_per_unit_stderr, per_document, unit
        Language-model fields of :class:`~xentstream.TokenCrossEntropy` (None for the
        other metrics): the number of documents, the mean of the per-document
        perplexities, the standard error of ``loss`` clustered by document, the units'
        total, the bits per unit and its standard error, the per-document table
        (:mod:`xentstream.tokens` gives the formulas); ``unit`` names what the units
        count (``"byte"``: tables say ``bits_per_byte``).
    ece, mce, brier : float or None
        Expected and maximum calibration error and Brier score of the top label
        (multiclass) or positive class (binary, each label), for metrics with
        ``calibration_bins`` (:mod:`xentstream.calibration`).
    calibration : CalibrationReport or None
        The full calibration summary: the Brier score's decomposition, the binned
        log-loss split and the reliability table (``calibration.plot()`` draws it).
    """

    loss: float
    loss_sum: float
    weight_sum: float
    count: int
    ignored: int
    stderr: float | None
    ci95: tuple[float, float] | None
    perplexity: float | None
    bits: float
    accuracy: float | None
    entropy: float | None
    kl: float | None
    normalized_entropy: float | None
    window_loss: float | None
    per_class: pl.DataFrame | None = field(default=None, compare=False)
    ece: float | None = None
    mce: float | None = None
    brier: float | None = None
    calibration: CalibrationReport | None = field(default=None, compare=False)
    documents: int | None = None
    document_perplexity: float | None = None
    clustered_stderr: float | None = None
    units: float | None = None
    bits_per_unit: float | None = None
    bits_per_unit_stderr: float | None = None
    per_document: pl.DataFrame | None = field(default=None, compare=False)
    unit: str | None = None

    def scalars(self, prefix: str = "") -> dict[str, float | int]:
        """The defined scalar fields as one flat dict, for loggers (TensorBoard, W&B,
        Lightning's ``self.log_dict``): no tables, no None, ``ci95`` as two entries.

        Examples
        --------
        >>> import xentstream as xs
        >>> m = xs.CrossEntropy().update([[0.7, 0.3], [0.2, 0.8]], [0, 1])
        >>> sorted(m.compute().scalars("val/"))[:3]
        ['val/accuracy', 'val/bits', 'val/ci95_high']
        """
        out: dict[str, float | int] = {}
        for name in SCALAR_FIELDS:
            value = getattr(self, name)
            if name == "ci95":
                if value is not None:
                    out[f"{prefix}ci95_low"], out[f"{prefix}ci95_high"] = value
            elif value is not None:
                out[f"{prefix}{name}"] = value
        return out

    def __str__(self) -> str:
        """One aligned ``name  value`` line per defined field, then the per-class table."""
        lines = [
            f"{self.label(name):<{self.label_width()}}  {format_value(value)}"
            for name, value in self._shown()
        ]
        text = "\n".join(lines)
        for table in (self.per_class, self.per_document):
            if table is not None:
                import polars as pl

                with pl.Config(tbl_rows=50, tbl_cols=20, tbl_hide_dataframe_shape=True):
                    text += f"\n\n{table}"
        return text

    def _repr_html_(self) -> str:
        """A two-column table in notebooks (and the per-class table below it)."""
        rows = "".join(
            f"<tr><th style='text-align:left'>{self.label(name)}</th>"
            f"<td>{format_value(value)}</td></tr>"
            for name, value in self._shown()
        )
        html = f"<table><caption>xentstream Report</caption>{rows}</table>"
        for table in (self.per_class, self.per_document):
            if table is not None:
                html += table._repr_html_()
        return html

    def label_width(self) -> int:
        """Width of the name column of tables: the longest name shown, and at least the
        common fields' longest (so that their tables keep one layout)."""
        return max(_WIDTH, *(len(self.label(name)) for name, _ in self._shown()))

    def label(self, name: str) -> str:
        """How tables name field ``name``: ``bits_per_unit`` as ``bits_per_byte`` when
        the units count bytes (:attr:`unit`)."""
        if self.unit and name.startswith("bits_per_unit"):
            return name.replace("unit", self.unit, 1)
        return name

    def _shown(self) -> list[tuple[str, Any]]:
        return [
            (name, getattr(self, name)) for name in SCALAR_FIELDS if getattr(self, name) is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-able dict of every field (``per_class`` as a list of row dicts).

        NaN (undefined, e.g. the loss of a class with no rows) becomes ``None``.

        Examples
        --------
        >>> import xentstream as xs
        >>> m = xs.CrossEntropy().update([[0.7, 0.3]], [0])
        >>> data = m.compute().to_dict()
        >>> data["count"], data["ci95"], data["ece"]
        (1, None, None)
        """
        data = {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_dict()
        for name in ("per_class", "per_document"):
            table = getattr(self, name)
            if table is not None:
                data[name] = [
                    {k: _json_value(v) for k, v in row.items()} for row in table.to_dicts()
                ]
        return data


#: Scalar fields in the order people read them: the loss and its uncertainty first.
#: The report's ``str``, ``scalars()``, tables of groups and the command line's
#: table all follow it.
SCALAR_FIELDS = (
    "loss",
    "stderr",
    "ci95",
    "count",
    "ignored",
    "loss_sum",
    "weight_sum",
    "perplexity",
    "bits",
    "accuracy",
    "entropy",
    "kl",
    "normalized_entropy",
    "ece",
    "mce",
    "brier",
    "window_loss",
    "documents",
    "clustered_stderr",
    "document_perplexity",
    "units",
    "bits_per_unit",
    "bits_per_unit_stderr",
)
#: :data:`SCALAR_FIELDS` as flat columns (``ci95`` as two), as ``scalars()`` names them.
FLAT_SCALAR_FIELDS = tuple(
    part
    for name in SCALAR_FIELDS
    for part in (("ci95_low", "ci95_high") if name == "ci95" else (name,))
)
#: The name column's least width: the longest name of the fields every kind shares.
_WIDTH = len("normalized_entropy")


def format_value(value: Any) -> str:
    """A report value as the report's ``str`` shows it (6 significant digits)."""
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    value = accumulator.ratio(numerator, denominator)
    return None if math.isnan(value) and not accumulator.to_float(denominator) else value


def _bernoulli_entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p))


def _exact_variance(sums: np.ndarray) -> float | None:
    """Weighted variance of the per-unit loss, from exact integers, rounded once."""
    rows = (sums[layout.LOSS], sums[layout.LOSS_SQUARED], sums[layout.DENOMINATOR])
    if any(accumulator.is_special(row) for row in rows):
        return None
    loss, squares, denominator = (accumulator.exact_integer(row) for row in rows)
    if denominator <= 0:
        return None
    try:
        variance = (squares * denominator - loss * loss) / (denominator * denominator)
    except OverflowError:  # beyond float64 (sums of huge squares): the variance is inf
        return math.inf
    return max(variance, 0.0)


def _standard_error(sums: np.ndarray) -> float | None:
    variance = _exact_variance(sums)
    if variance is None:
        return None
    total = accumulator.to_float(sums[layout.DENOMINATOR])
    squares = accumulator.to_float(sums[layout.DENOMINATOR_SQUARED])
    stderr, defined = standard_errors(np.float64(variance), np.float64(total), np.float64(squares))
    return float(stderr) if defined else None


def standard_errors(
    variance: np.ndarray, total: np.ndarray, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors (module docstring) from the exact variances rounded once (before
    their clamp at zero) and the rounded ``sum s d`` and ``sum (s d)^2``, elementwise
    (one group's, or every group's at once: the same float operations); and where each
    is defined (an effective sample size above 1)."""
    variance = np.where(0.0 > variance, 0.0, variance)  # max(variance, 0.0), -0.0 kept
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        effective_n = total * total / squares
        stderr = np.sqrt(variance / (effective_n - 1.0))
    return stderr, ~(squares <= 0.0) & ~(effective_n <= 1.0 + 1e-12)


def ci95_bounds(loss: Any, stderr: Any) -> tuple[Any, Any]:
    """The normal-approximation 95% interval ``loss -/+ z stderr`` (floats or arrays)."""
    return loss - _Z95 * stderr, loss + _Z95 * stderr


def bits_of(loss: Any) -> Any:
    """The loss in bits (floats or arrays)."""
    return loss / _LOG2


def build_report(
    *,
    kind: Kind,
    state: ExactState,
    unweighted: bool,
    window_loss: float | None,
    class_sums: np.ndarray | None = None,
    class_counts: np.ndarray | None = None,
) -> Report:
    """Derive every :class:`Report` field from a metric's exact state.

    ``kind``: the :class:`~xentstream.kinds.Kind` (which fields it defines, its
    per-class table). ``unweighted`` says that no class or positive weights scale
    the loss terms, which is when the KL divergence and the normalized entropy are
    defined. ``class_sums`` / ``class_counts`` override the state's (zeros for a
    per-class metric before its first row).
    """
    sums, counts = state.sums, state.counts
    if class_sums is None:
        class_sums, class_counts = state.class_sums, state.class_counts
    loss = accumulator.ratio(sums[layout.LOSS], sums[layout.DENOMINATOR])
    count = int(counts[layout.ROWS])
    stderr = _standard_error(sums) if count > 1 else None
    ci95 = None if stderr is None else ci95_bounds(loss, stderr)
    has_rows = count > 0
    weight = sums[layout.WEIGHT]
    accuracy = _safe_ratio(sums[layout.CORRECT], weight) if has_rows and kind.has_accuracy else None
    entropy = _safe_ratio(sums[layout.ENTROPY], weight) if has_rows else None
    kl = None
    # With one-hot targets H(q) = 0 and the KL divergence is the loss again: not reported.
    soft = bool(np.any(sums[layout.TARGET_ENTROPY]))
    if has_rows and unweighted and soft:
        cross_entropy = accumulator.ratio(sums[layout.LOSS], weight)
        target_entropy = accumulator.ratio(sums[layout.TARGET_ENTROPY], weight)
        kl = cross_entropy - target_entropy
    normalized = None
    if has_rows and unweighted:
        baseline = kind.label_entropy(sums, class_sums, state.label_counts)
        normalized = loss / baseline if baseline is not None and baseline > 0.0 else None
    per_class = None
    if class_sums is not None and class_counts is not None:
        per_class = kind.per_class_frame(class_sums, class_counts, weight)
    bins = None if state.calibration is None else build_calibration_report(state.calibration)
    if bins is not None and bins.per_class is not None and per_class is not None:
        per_class = _with_class_calibration(per_class, bins.per_class)
    return Report(
        loss=loss,
        loss_sum=accumulator.to_float(sums[layout.LOSS]),
        weight_sum=accumulator.to_float(sums[layout.DENOMINATOR]),
        count=count,
        ignored=int(counts[layout.IGNORED]),
        stderr=stderr,
        ci95=ci95,
        perplexity=perplexity_of(loss) if kind.has_perplexity else None,
        bits=bits_of(loss),
        accuracy=accuracy,
        entropy=entropy,
        kl=kl,
        normalized_entropy=normalized,
        window_loss=window_loss,
        per_class=per_class,
        ece=None if bins is None else bins.ece,
        mce=None if bins is None else bins.mce,
        brier=None if bins is None else bins.brier,
        calibration=bins,
    )


def _with_class_calibration(table: pl.DataFrame, classes: pl.DataFrame) -> pl.DataFrame:
    """The per-class table with each class's one-vs-rest ``ece``, ``mce`` and ``brier``."""
    if classes.height != table.height:  # no rows binned yet
        return table
    return table.with_columns(classes.select("ece", "mce", "brier"))


def perplexity_of(loss: float) -> float:
    """``exp(loss)`` (inf beyond float64; NaN for NaN)."""
    return float(perplexities(np.array([loss]))[0])


def perplexities(losses: np.ndarray) -> np.ndarray:
    """:func:`perplexity_of` of every loss: ``math.exp`` (libm's, which numpy's own
    SIMD ``exp`` need not equal to the bit) below 709, inf above, NaN for NaN."""
    out = np.full(losses.shape, np.inf)
    finite = losses < 709.0
    out[finite] = list(map(math.exp, losses[finite].tolist()))
    out[np.isnan(losses)] = np.nan
    return out


# -- the kinds' own quantities (referenced by xentstream.kinds) ---------------------------


def _categorical_entropy(mass: np.ndarray) -> float:
    mass = mass[mass > 0.0]
    return float(-np.sum(mass * np.log(mass)))


def categorical_label_entropy(
    sums: np.ndarray, class_sums: np.ndarray | None, label_counts: np.ndarray | None
) -> float | None:
    """Entropy of the weighted empirical class distribution (multiclass): from
    per-class target mass when kept, else from exact hard-label counts."""
    total = accumulator.to_float(sums[layout.WEIGHT])
    if total <= 0.0:
        return None
    if class_sums is not None:
        return _categorical_entropy(accumulator.to_floats(class_sums[:, layout.CLASS_MASS]) / total)
    if label_counts is None:
        return None
    return _label_count_entropy(label_counts)


def _label_count_entropy(label_counts: np.ndarray) -> float:
    counts = label_counts.astype(np.float64)
    return _categorical_entropy(counts / counts.sum()) if counts.sum() else 0.0


def bernoulli_label_entropy(
    sums: np.ndarray, class_sums: np.ndarray | None, label_counts: np.ndarray | None
) -> float | None:
    """Entropy of the weighted positive rate (binary)."""
    total = accumulator.to_float(sums[layout.WEIGHT])
    if total <= 0.0:
        return None
    return _bernoulli_entropy(accumulator.to_float(sums[layout.POSITIVE]) / total)


def per_label_entropy(
    sums: np.ndarray, class_sums: np.ndarray | None, label_counts: np.ndarray | None
) -> float | None:
    """Sum over labels of each label's Bernoulli entropy (multi-label, per-label sums)."""
    total = accumulator.to_float(sums[layout.WEIGHT])
    if total <= 0.0 or class_sums is None:
        return None
    rates = accumulator.to_floats(class_sums[:, layout.CLASS_MASS]) / total
    return math.fsum(_bernoulli_entropy(float(p)) for p in rates)


def label_entropies(
    label_entropy: Any, weight: np.ndarray, positive: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """``label_entropy`` (one of the kinds' functions above) of many states without
    per-class sums at once: from their rounded weight and positive sums and their exact
    label counts (``labels``: a row each, None where unknown is all rows), each value
    the single state's function's own; and where each is defined. None for another
    function."""
    n = weight.shape[0]
    values = np.full(n, np.nan)
    defined = weight > 0.0  # (to_float(weight) <= 0.0: None)
    if label_entropy is per_label_entropy:  # needs per-label sums
        return values, np.zeros(n, dtype=bool)
    if label_entropy is bernoulli_label_entropy:
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = (positive / weight)[defined]
        values[defined] = list(map(_bernoulli_entropy, rates.tolist()))
        return values, defined
    if label_entropy is not categorical_label_entropy:
        return None
    if labels is None:
        return values, np.zeros(n, dtype=bool)
    rows = np.flatnonzero(defined)
    distinct, inverse = _distinct_rows(labels[rows])
    values[rows] = _label_count_entropies(distinct)[inverse]
    return values, defined


def _label_count_entropies(label_counts: np.ndarray) -> np.ndarray:
    """:func:`_label_count_entropy` of every row of ``label_counts``, by the same numpy
    operations: the rows with ``k`` classes seen as one ``(rows, k)`` matrix of their
    masses (in class order), its ``log`` elementwise and its row sums (numpy reduces
    each contiguous row as it reduces that row alone: the test against one-shot
    reports checks it)."""
    counts = label_counts.astype(np.float64)
    totals = counts.sum(axis=1)  # (exact: integers)
    out = np.zeros(counts.shape[0])
    seen = counts > 0.0
    classes = seen.sum(axis=1)
    for k in np.unique(classes[totals > 0.0]).tolist():
        rows = np.flatnonzero((classes == k) & (totals > 0.0))
        mass = counts[rows] / totals[rows, None]
        mass = np.ascontiguousarray(mass[seen[rows]].reshape(rows.shape[0], k))
        out[rows] = -np.sum(mass * np.log(mass), axis=1)
    return out


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of the int64 matrix ``rows`` and each row's index among them."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if not rows.shape[0]:
        return rows, np.zeros(0, dtype=np.int64)
    # One 64-bit hash a row, then one check that equal hashes are equal rows.
    weights = np.random.default_rng(0).integers(1, 1 << 62, rows.shape[1]).astype(np.uint64)
    with np.errstate(over="ignore"):
        hashes = (rows.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    if not np.array_equal(rows[first][inverse], rows):
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
        return distinct, inverse.reshape(-1)
    return rows[first], inverse.reshape(-1)


def _mean_class_loss(class_sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss_sums = accumulator.to_floats(class_sums[:, layout.CLASS_LOSS])
    weights = accumulator.to_floats(class_sums[:, layout.CLASS_WEIGHT])
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_loss = np.where(weights > 0.0, loss_sums / np.where(weights > 0, weights, 1), np.nan)
    return mean_loss, weights


def class_frame(
    class_sums: np.ndarray, class_counts: np.ndarray, weight: np.ndarray
) -> pl.DataFrame:
    """Per-class table (multiclass): rows, weight and mean loss of each class."""
    import polars as pl

    mean_loss, weights = _mean_class_loss(class_sums)
    return pl.DataFrame(
        {
            "class": np.arange(len(class_counts), dtype=np.int64),
            "count": class_counts.astype(np.int64),
            "weight": weights,
            "loss": mean_loss,
        }
    )


def label_frame(
    class_sums: np.ndarray, class_counts: np.ndarray, weight: np.ndarray
) -> pl.DataFrame:
    """Per-label table (multi-label): positives, weighted positive rate, mean loss."""
    import polars as pl

    mean_loss, _ = _mean_class_loss(class_sums)
    total = accumulator.to_float(weight)
    n_labels = len(class_counts)
    rate = (
        accumulator.to_floats(class_sums[:, layout.CLASS_MASS]) / total
        if total
        else np.full(n_labels, np.nan)
    )
    return pl.DataFrame(
        {
            "label": np.arange(n_labels, dtype=np.int64),
            "positives": class_counts.astype(np.int64),
            "positive_rate": rate,
            "loss": mean_loss,
        }
    )
