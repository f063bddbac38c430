"""Feeding a paired comparison: two models' predictions for the same rows of a source.

:func:`compare` reads the two prediction columns of one source -- or the same rows of
two sources, in lockstep -- in bounded batches and feeds them to a
:class:`~xentstream.Comparison`. Two sources are checked to hold the same rows: their
targets must be equal row by row, and so must an optional row-id column.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from xentstream._errors import ColumnNames, show
from xentstream.comparison import Comparison, ComparisonReport
from xentstream.feeders import Batch, ColumnSpec, open_source
from xentstream.metrics import Metric

__all__ = ["compare"]


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
    batch_rows: int | None = None,
) -> ComparisonReport:
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
    batch_rows : int, optional
        Rows per batch.

    Returns
    -------
    ComparisonReport

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
    if _is_batch_iterable(source) and baseline_source is None:
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
        preds=preds, target=target, sample_weight=sample_weight, by=keys, classes=classes
    )
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
        comparison.accumulate(
            left.preds,
            right.preds,
            left.target,
            left.sample_weight,
            names=ColumnNames(names.preds, names.target, names.sample_weight),
            baseline_name=baseline_name,
            row_offset=comparison.rows_seen - start,
        )
        rows += left.n_rows
    return comparison.compute()
