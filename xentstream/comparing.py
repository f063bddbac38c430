"""Feeding a paired comparison: two models' predictions for the same rows of a source.

:func:`open_pair` reads the two prediction columns of one source -- or the same rows
of two sources, in lockstep -- as bounded :class:`PairedRows` for a
:class:`~xentstream.Comparison`. Two sources are checked to hold the same rows: their
targets must be equal row by row, and so must an optional row-id column. The drivers
(``xs.compare``, ``xs.evaluate`` / ``xs.stream`` of a comparison, checkpoints,
:mod:`xentstream.dask`) are :mod:`xentstream.evaluation`'s, the same as a metric's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from xentstream._errors import DataError, show
from xentstream.comparison import ComparisonReport
from xentstream.feeders import Batch, ColumnSpec, Feeder, open_source

__all__ = ["GroupedComparison", "PairedRows", "open_pair"]


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


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    def cut(value: Any) -> Any:
        return None if value is None else value[start:stop]

    return Batch(
        preds=batch.preds[start:stop],
        target=cut(batch.target),  # None: the token kind's optional mask left out
        sample_weight=cut(batch.sample_weight),
        keys=cut(batch.keys),
        n_rows=stop - start,
        extras={name: cut(column) for name, column in batch.extras.items()},
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
            raise DataError.at(
                row_id,
                offset + row,
                f"id {show(ids_a[row].item())} in source but {show(ids_b[row].item())} in "
                "baseline_source; the sources must hold the same rows in the same order",
            )
    row = _first_difference(left.target, right.target)
    if row is not None:
        # A DataError: a Dask partition's row moves to the whole stream's.
        raise DataError.at(
            target,
            offset + row,
            "the targets of source and baseline_source differ; the sources must hold "
            "the same rows in the same order",
        )


@dataclass
class PairedRows:
    """The same rows of both models: ``model`` (model A's predictions, the target, the
    weights and the group / row-id keys) and ``baseline`` (model B's predictions)."""

    model: Batch
    baseline: Batch

    @property
    def n_rows(self) -> int:
        return self.model.n_rows


def _is_batch_iterable(source: Any) -> bool:
    """An iterable of batches (tuples, dicts, frames), not a frame or a path."""
    if isinstance(source, str | bytes | dict | pl.DataFrame | pl.LazyFrame):
        return False
    if isinstance(source, list | tuple) and not (
        source and all(isinstance(item, tuple | dict | pl.DataFrame) for item in source)
    ):
        return False  # a list of paths
    return isinstance(source, Iterable) and not hasattr(source, "__fspath__")


def _as_model_item(item: Any) -> Any:
    """A ``(preds, baseline_preds, target[, sample_weight])`` tuple as model A's batch."""
    if not isinstance(item, tuple):
        return item  # dicts and frames: each side picks its columns
    if len(item) not in (3, 4):
        raise TypeError(
            "source: batches must be (preds, baseline_preds, target[, sample_weight]) "
            f"tuples, got a tuple of {len(item)}"
        )
    return {
        "preds": item[0],
        "target": item[2],
        "sample_weight": item[3] if len(item) == 4 else None,
    }


def _as_baseline_item(item: Any) -> Any:
    if not isinstance(item, tuple) or len(item) not in (3, 4):
        return item
    return {"preds": item[1], "target": item[2]}


def open_pair(
    source: Any,
    baseline_source: Any,
    spec: ColumnSpec,
    baseline_spec: ColumnSpec,
    *,
    row_id: str | None,
    batch_rows: int | None,
    skip_rows: int = 0,
) -> Feeder:
    """Open the rows of both models as a :class:`~xentstream.feeders.Feeder` of
    :class:`PairedRows`: ``spec``'s columns of ``source`` and ``baseline_spec``'s of
    ``baseline_source`` (None: ``source`` too), cut to common batches. Its fingerprint
    and columns are ``source``'s, with the baseline's beside them.

    An iterable of batches is read once: each batch goes to both sides (``(preds,
    baseline_preds, target[, sample_weight])`` tuples are split between them).

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        As :func:`~xentstream.feeders.open_source`; while iterating, also for sources
        that do not hold the same rows (their lengths, targets or ``row_id`` differ).
    """
    second_source = source if baseline_source is None else baseline_source
    batches_of_both = baseline_source is None and _is_batch_iterable(source)
    if baseline_spec.preds is None and not batches_of_both:
        raise ValueError("baseline_preds: required (the baseline model's prediction column)")
    if batches_of_both:
        # One pass over a (possibly one-shot) iterable: the two sides read in lockstep,
        # so tee holds at most one batch.
        mine, theirs = itertools.tee(source)
        source, second_source = map(_as_model_item, mine), map(_as_baseline_item, theirs)
    first = open_source(source, spec, batch_rows=batch_rows, skip_rows=skip_rows)
    second = open_source(second_source, baseline_spec, batch_rows=batch_rows, skip_rows=skip_rows)
    names = spec.names()

    def fingerprint() -> dict[str, Any]:
        own, theirs = dict(first.fingerprint), dict(second.fingerprint)
        columns = {"model": own.pop("columns", None), "baseline": theirs.pop("columns", None)}
        if baseline_source is not None:
            own["baseline"] = theirs
        return {**own, "columns": columns}

    def batches() -> Iterator[PairedRows]:
        rows = skip_rows
        for left, right in _lockstep(iter(first), iter(second)):
            if baseline_source is not None:
                _check_same_rows(left, right, row_id, names.target, rows)
            rows += left.n_rows
            yield PairedRows(left, right)

    columns = None
    if first.columns is not None:
        columns = {**first.columns, "baseline": second.columns}
    return Feeder(batches(), total_rows=first.total_rows, fingerprint=fingerprint, columns=columns)
