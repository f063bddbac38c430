"""Feeding a paired comparison: two models' predictions for the same rows of a source.

:func:`compare` reads the two prediction columns of one source -- or the same rows of
two sources, in lockstep -- in bounded batches and feeds them to a
:class:`~xentstream.Comparison`. Two sources are checked to hold the same rows: their
targets must be equal row by row, and so must an optional row-id column.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from xentstream._errors import ColumnNames, show
from xentstream.comparison import Comparison, ComparisonReport
from xentstream.feeders import Batch, ColumnSpec, open_source
from xentstream.metrics import Metric

__all__ = ["GroupedComparison", "compare"]

_CODE = "__xentstream_group_code"


@dataclass(frozen=True)
class GroupedComparison:
    """A paired comparison overall and per group (``compare(..., by=...)``).

    Attributes
    ----------
    overall : ComparisonReport
        Every row, as without ``by``.
    by : tuple of str
        The group columns.
    groups : dict
        Group key (a tuple of the ``by`` values) -> :class:`ComparisonReport`, sorted
        by key (nulls last); without calibration (groups keep no bins).
    """

    overall: ComparisonReport
    by: tuple[str, ...]
    groups: dict[tuple[Any, ...], ComparisonReport] = field(default_factory=dict)

    def to_polars(self) -> pl.DataFrame:
        """One row per group: the key columns, the comparison's scalars, both losses."""
        rows = []
        for key, report in self.groups.items():
            row: dict[str, Any] = dict(zip(self.by, key, strict=True))
            scalars = report.scalars()
            row.update({name: scalars.get(name) for name in _GROUP_COLUMNS})
            rows.append(row)
        if not rows:
            return pl.DataFrame(schema=[*self.by, *_GROUP_COLUMNS])
        return pl.DataFrame(rows, infer_schema_length=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``overall`` and a list of ``groups`` with their keys."""
        return {
            "overall": self.overall.to_dict(),
            "by": list(self.by),
            "groups": [
                {"key": [_json_key(v) for v in key], **report.to_dict()}
                for key, report in self.groups.items()
            ],
        }

    def __str__(self) -> str:
        with pl.Config(tbl_rows=200, tbl_cols=20, tbl_hide_dataframe_shape=True):
            return f"{self.overall}\n\n{self.to_polars()}"


_GROUP_COLUMNS = (
    "count",
    "difference",
    "stderr",
    "ci95_low",
    "ci95_high",
    "p_value",
    "model_better",
    "model/loss",
    "baseline/loss",
)


def _json_key(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, str | int | float | bool | None) else str(value)


class _Groups:
    """Group keys -> codes (first appearance order) and one :class:`Comparison` each."""

    def __init__(self, by: tuple[str, ...], template: Comparison) -> None:
        self.by = by
        self.keys: list[tuple[Any, ...]] = []
        self.comparisons: list[Comparison] = []
        self._known: pl.DataFrame | None = None
        metric = template.model
        config = metric.config
        flag = metric.kind.per_class_field
        if flag is not None and getattr(config, flag):
            config = replace(config, **{flag: False})
        # Groups keep no per-class sums and no reliability bins (as evaluate's groups).
        config = replace(config, calibration_bins=None)
        self._template = type(metric).from_config(config, engine=metric.engine)

    def codes(self, keys: pl.DataFrame) -> np.ndarray:
        """Group code of every row of ``keys`` (new keys get new codes)."""
        on = list(self.by)
        new = keys.unique(subset=on, maintain_order=True)
        if self._known is not None:
            new = new.join(self._known, on=on, how="anti", nulls_equal=True)
        if new.height:
            first = len(self.keys)
            numbered = new.with_columns(
                pl.int_range(first, first + new.height, dtype=pl.Int64).alias(_CODE)
            )
            self._known = numbered if self._known is None else pl.concat([self._known, numbered])
            for row in new.iter_rows():
                self.keys.append(row)
                self.comparisons.append(Comparison(self._template))
        joined = keys.join(self._known, on=on, how="left", nulls_equal=True, maintain_order="left")
        return joined[_CODE].to_numpy()


def _is_batch_iterable(source: Any) -> bool:
    """An iterable of ``(preds, baseline_preds, target[, sample_weight])`` tuples."""
    if isinstance(source, str | bytes | dict | pl.DataFrame | pl.LazyFrame):
        return False
    if isinstance(source, list | tuple):
        return bool(source) and all(isinstance(item, tuple) for item in source)
    return hasattr(source, "__iter__") and not hasattr(source, "__fspath__")


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        preds=batch.preds[start:stop],
        target=batch.target[start:stop],
        sample_weight=None if batch.sample_weight is None else batch.sample_weight[start:stop],
        keys=None if batch.keys is None else batch.keys[start:stop],
        n_rows=stop - start,
    )


def _next_rows(batches: Iterator[Batch]) -> Batch | None:
    for batch in batches:
        if batch.n_rows:
            return batch
    return None


def _lockstep(first: Iterator[Batch], second: Iterator[Batch]) -> Iterator[tuple[Batch, Batch]]:
    """Pairs of batches over the same rows, whatever each source's own batch sizes."""
    left = right = None
    while True:
        left = left or _next_rows(first)
        right = right or _next_rows(second)
        if left is None or right is None:
            if left is not None:
                raise ValueError("baseline_source: has fewer rows than source")
            if right is not None:
                raise ValueError("baseline_source: has more rows than source")
            return
        size = min(left.n_rows, right.n_rows)
        yield _slice(left, 0, size), _slice(right, 0, size)
        left = _slice(left, size, left.n_rows) if left.n_rows > size else None
        right = _slice(right, size, right.n_rows) if right.n_rows > size else None


def _first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return 0
    same = (a == b) | ((a != a) & (b != b))  # NaN equals NaN here: the same value read twice
    if same.all():
        return None
    flat = same.reshape(a.shape[0], -1).all(axis=1)
    return int(np.argmin(flat))


def _check_same_rows(left: Batch, right: Batch, row_id: str | None, target: str, offset: int):
    if row_id is not None:
        ids_a, ids_b = left.keys[row_id].to_numpy(), right.keys[row_id].to_numpy()
        row = _first_difference(ids_a, ids_b)
        if row is not None:
            raise ValueError(
                f"{row_id}: row {offset + row}: id {show(ids_a[row].item())} in source but "
                f"{show(ids_b[row].item())} in baseline_source; the sources must hold the "
                "same rows in the same order"
            )
    row = _first_difference(left.target, right.target)
    if row is not None:
        raise ValueError(
            f"{target}: row {offset + row}: the targets of source and baseline_source differ; "
            "the sources must hold the same rows in the same order"
        )


def compare(
    source: Any,
    metric: Metric | Comparison,
    *,
    preds: Any = None,
    baseline_preds: Any = None,
    target: Any = None,
    sample_weight: Any = None,
    classes: Any = None,
    baseline_source: Any = None,
    row_id: str | None = None,
    by: Any = None,
    batch_rows: int | None = None,
) -> ComparisonReport | GroupedComparison:
    """Compare two models over every row of ``source`` in bounded batches (paired).

    Parameters
    ----------
    source
        As in :func:`xentstream.evaluate` (a polars frame, files, a glob), holding
        ``preds`` (model A) and, without ``baseline_source``, ``baseline_preds``
        (model B) for the same rows; or an iterable of
        ``(preds, baseline_preds, target[, sample_weight])`` tuples.
    metric : Metric or Comparison
        The loss both models are scored with (e.g. ``xs.CrossEntropy()``), or a
        :class:`~xentstream.Comparison` to continue (updated in place).
    preds, baseline_preds : str, list of str or polars selector
        Model A's and model B's prediction columns.
    target, sample_weight, classes
        As in :func:`xentstream.evaluate`, shared by both models.
    baseline_source : optional
        Another source holding ``baseline_preds`` and ``target`` for the same rows in
        the same order, read in lockstep with ``source``; its targets must equal
        ``source``'s row by row.
    row_id : str, optional
        With ``baseline_source``: a column both sources hold, checked to be equal row
        by row.
    by : str or list of str, optional
        Group columns (of ``source``): returns a :class:`GroupedComparison`, computed
        in the same pass.
    batch_rows : int, optional
        Rows per batch.

    Returns
    -------
    ComparisonReport or GroupedComparison

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad sources, columns or data (the message names the column and the row), or
        sources that do not hold the same rows. Each batch is atomic, the run is not.

    Examples
    --------
    >>> import polars as pl, xentstream as xs
    >>> frame = pl.DataFrame({"new": [[0.8, 0.2], [0.3, 0.7]], "old": [[0.6, 0.4], [0.5, 0.5]],
    ...                       "y": [0, 1]})
    >>> report = xs.compare(frame, xs.CrossEntropy(), preds="new", baseline_preds="old",
    ...                     target="y")
    >>> report.count, report.model_better_rows
    (2, 2)
    """
    comparison = metric if isinstance(metric, Comparison) else Comparison(metric)
    by_columns = (by,) if isinstance(by, str) else tuple(by or ())
    if _is_batch_iterable(source) and baseline_source is None:
        if by_columns:
            raise ValueError("by: needs a frame or file source (columns to group by)")
        for item in source:
            if not isinstance(item, tuple) or len(item) not in (3, 4):
                raise TypeError(
                    "source: batches must be (preds, baseline_preds, target[, sample_weight]) "
                    f"tuples, got {type(item).__name__}"
                )
            comparison.update(*item)
        return comparison.compute()
    if baseline_preds is None:
        raise ValueError("baseline_preds: required (the baseline model's prediction column)")
    if row_id is not None and baseline_source is None:
        raise ValueError("row_id: only with baseline_source (one source holds its own rows)")
    keys = () if row_id is None else (row_id,)
    classes = None if classes is None else tuple(classes)
    spec = ColumnSpec(
        preds=preds,
        target=target,
        sample_weight=sample_weight,
        by=tuple(dict.fromkeys((*by_columns, *keys))),
        classes=classes,
    )
    groups = _Groups(by_columns, comparison) if by_columns else None
    baseline_spec = ColumnSpec(
        preds=baseline_preds,
        target=target,
        sample_weight=None if baseline_source is not None else sample_weight,
        by=keys,
        classes=classes,
    )
    names = spec.names()
    baseline_name = baseline_spec.names().preds
    if baseline_name == "preds":
        baseline_name = "baseline_preds"
    first = open_source(source, spec, batch_rows=batch_rows)
    second = open_source(
        source if baseline_source is None else baseline_source, baseline_spec, batch_rows=batch_rows
    )
    start = comparison.rows_seen
    rows = 0
    for left, right in _lockstep(iter(first), iter(second)):
        if baseline_source is not None:
            _check_same_rows(left, right, row_id, names.target, rows)
        codes = None if groups is None else groups.codes(left.keys.select(by_columns))
        n_groups = 1 if groups is None else len(groups.keys)
        batch = comparison.accumulate(
            left.preds,
            right.preds,
            left.target,
            left.sample_weight,
            names=ColumnNames(names.preds, names.target, names.sample_weight),
            baseline_name=baseline_name,
            groups=codes,
            n_groups=n_groups,
            row_offset=comparison.rows_seen - start,
        )
        if groups is not None and batch.model.group_counts is not None:
            labels = comparison.model.group_label_counts(
                left.target, left.sample_weight, codes, n_groups
            )
            for code in np.flatnonzero(batch.model.group_counts.sum(axis=1)):
                groups.comparisons[code].absorb_group(batch, int(code), labels)
        rows += left.n_rows
    overall = comparison.compute()
    if groups is None:
        return overall
    reports = {
        key: group.compute() for key, group in zip(groups.keys, groups.comparisons, strict=True)
    }
    try:  # as evaluate's groups: by key, NaN then null last
        reports = dict(sorted(reports.items(), key=lambda item: _key_order(item[0])))
    except TypeError:  # keys that do not compare (mixed types): first appearance
        pass
    return GroupedComparison(overall=overall, by=by_columns, groups=reports)


def _key_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(
        (2, 0) if v is None else (1, 0) if isinstance(v, float) and math.isnan(v) else (0, v)
        for v in key
    )
