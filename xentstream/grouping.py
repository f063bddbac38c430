"""Group-by at any cardinality: group keys to codes, and every group's exact state in arrays.

:class:`GroupKeys` maps the ``by`` columns of each batch to group codes with polars
(one hash ``group_by`` of the batch, one join of its distinct keys against the keys
seen before): codes in order of first appearance, nulls a group of their own, NaN
one group, for every key type polars groups and joins by, one or several columns.

:class:`GroupTable` holds the exact sums and counters of every group in a few
arrays, a few hundred bytes a group (the windows of :mod:`xentstream._kernels.groups`;
a group whose terms span too many binades moves to a full accumulator, still
exact). A batch touches only its own groups: its rows' terms (``BatchSums.row_terms``)
are added run by run, so the cost is its rows plus its groups, never all groups.
A group's state comes out as an :class:`~xentstream.accumulator.ExactState` on
demand (:meth:`GroupTable.state`), canonical, hence bitwise equal to a one-shot
metric over that group's rows whatever the batch splits and merge order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from typing import Any

import numpy as np
import polars as pl

from xentstream import accumulator
from xentstream._kernels import groups as kernels
from xentstream._kernels import layout
from xentstream._kernels.exact import N_SLOTS
from xentstream.accumulator import ExactState

__all__ = ["GroupKeys", "GroupReports", "GroupTable", "canonical_key"]

_CODE = "__xentstream_code"
_ROW = "__xentstream_row"
_NAN = float("nan")
#: Re-chunk the key frame after this many appended chunks (joins slow down on many).
_MAX_KEY_CHUNKS = 32


def canonical_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``row`` with every NaN replaced by one NaN object, so that NaN keys compare equal."""
    return tuple(_NAN if isinstance(v, float) and math.isnan(v) else v for v in row)


class GroupKeys:
    """The distinct keys of ``by`` seen so far, numbered in order of first appearance.

    Examples
    --------
    >>> import polars as pl
    >>> keys = GroupKeys(("g",))
    >>> keys.codes(pl.DataFrame({"g": ["b", "a", "b"]}))[-1].tolist()
    [0, 1]
    >>> keys.codes(pl.DataFrame({"g": ["c", "a", "c"]}))[-1].tolist()
    [2, 1]
    >>> keys.tuples()
    [('b',), ('a',), ('c',)]
    """

    def __init__(self, by: tuple[str, ...]) -> None:
        self.by = tuple(by)
        self._known: pl.DataFrame | None = None  # the by columns and the code, in code order
        self._tuples: list[tuple[Any, ...]] | None = []

    def __len__(self) -> int:
        return 0 if self._known is None else self._known.height

    @property
    def frame(self) -> pl.DataFrame:
        """The known keys in code order (the ``by`` columns)."""
        if self._known is None:
            return pl.DataFrame(schema=list(self.by))
        return self._known.select(self.by)

    def tuples(self) -> list[tuple[Any, ...]]:
        """The known keys as tuples (NaN as one object), in code order."""
        if self._tuples is None:
            self._tuples = [canonical_key(row) for row in self.frame.iter_rows()]
        return self._tuples

    def codes(self, keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Codes of one batch's keys; new keys get new codes.

        Returns ``(runs, order, run_starts, run_codes)``: the run of every row, and
        the rows grouped by run (run ``r`` is ``order[run_starts[r]:run_starts[r + 1]]``,
        all of group ``run_codes[r]``), the runs in order of first appearance: the
        batch's own dense numbering of its groups, whatever the groups seen before.
        """
        keys = keys.select(self.by)
        if keys.height == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(1, dtype=np.int64), empty
        grouped = keys.with_row_index(_ROW).group_by(self.by, maintain_order=True).agg(pl.col(_ROW))
        run_codes = self.assign(grouped.select(self.by))
        rows = grouped[_ROW]
        sizes = rows.list.len().to_numpy().astype(np.int64)
        order = rows.explode().to_numpy().astype(np.int64)
        run_starts = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=run_starts[1:])
        runs = np.empty(keys.height, dtype=np.int64)
        runs[order] = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        return runs, order, run_starts, run_codes

    def assign(self, distinct: pl.DataFrame) -> np.ndarray:
        """Codes of ``distinct`` keys (no key twice), new ones appended in their order."""
        distinct = distinct.select(self.by)
        if self._known is None:
            codes = np.arange(distinct.height, dtype=np.int64)
            self._known = distinct.with_columns(pl.Series(_CODE, codes))
            self._tuples = None
            return codes
        distinct = self._aligned(distinct)
        found = distinct.join(
            self._known, on=list(self.by), how="left", nulls_equal=True, maintain_order="left"
        )[_CODE]
        new = found.is_null().to_numpy()
        codes = found.fill_null(-1).to_numpy().astype(np.int64)
        n_new = int(new.sum())
        if n_new:
            start = self._known.height
            codes[new] = np.arange(start, start + n_new, dtype=np.int64)
            added = distinct.filter(pl.Series(new)).with_columns(pl.Series(_CODE, codes[new]))
            self._known = self._known.vstack(added)
            if self._known.n_chunks() > _MAX_KEY_CHUNKS:
                self._known = self._known.rechunk()
            self._tuples = None
        return codes

    def assign_tuples(self, rows: list[tuple[Any, ...]]) -> np.ndarray:
        """:meth:`assign` for keys given as Python tuples (saved states)."""
        if not rows:
            return np.zeros(0, dtype=np.int64)
        columns = {name: [row[i] for row in rows] for i, name in enumerate(self.by)}
        schema = None if self._known is None else self.frame.schema
        try:
            frame = pl.DataFrame(columns, schema=schema, strict=False)
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            frame = pl.DataFrame(columns)
        return self.assign(frame)

    def _aligned(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` and the known keys with one schema (a batch may bring wider types)."""
        known = self._known.select(self.by)
        if frame.schema == known.schema:
            return frame
        both = pl.concat([known.head(0), frame.head(0)], how="vertical_relaxed").schema
        self._known = self._known.cast(dict(both))
        return frame.cast(dict(both))


class GroupTable:
    """Exact sums, counters and label counts of every group, in arrays.

    Parameters
    ----------
    counts_labels : bool
        Whether states of this kind keep exact label counts (multiclass).

    Examples
    --------
    >>> import math
    >>> import numpy as np
    >>> table = GroupTable(counts_labels=False)
    >>> table.resize(2)
    >>> terms = np.zeros((3, layout.N_ROW_TERMS))
    >>> terms[:, layout.LOSS] = [0.1, 1e-300, 2.0]
    >>> table.add_rows(np.arange(3), np.array([0, 2, 3]), np.array([1, 0]), terms)
    >>> from xentstream import accumulator
    >>> accumulator.to_float(table.state(1).sums[layout.LOSS]) == math.fsum([0.1, 1e-300])
    True
    >>> table.state(0).counts.tolist()
    [1, 0]
    """

    def __init__(self, *, counts_labels: bool) -> None:
        self.counts_labels = counts_labels
        self.n_groups = 0
        self._capacity = 0
        self.base = np.zeros((0, layout.N_SUMS), dtype=np.int16)
        self.window = np.zeros((0, layout.N_SUMS, kernels.WINDOW), dtype=np.int64)
        self.wide = np.zeros(0, dtype=np.int64)
        self.pending = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros((0, layout.N_COUNTS), dtype=np.int64)
        self.side = np.zeros((0, layout.N_SUMS, N_SLOTS), dtype=np.int64)
        self.n_wide = np.zeros(1, dtype=np.int64)
        # Multiclass: exact label counts per group (width grows with the classes seen),
        # and whether each group's are known (rows with sample weights or soft targets
        # make them unknown, as they do a metric's).
        self.labels = np.zeros((0, 0), dtype=np.int64)
        self.labels_known = np.zeros(0, dtype=bool)

    @property
    def rows_seen(self) -> int:
        """Rows of every group, ignored rows included."""
        return int(self.counts[: self.n_groups].sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays."""
        arrays = (self.base, self.window, self.wide, self.pending, self.counts, self.side)
        return sum(a.nbytes for a in (*arrays, self.labels, self.labels_known))

    def resize(self, n_groups: int) -> None:
        """Make room for groups ``0 .. n_groups - 1`` (new groups are empty)."""
        if n_groups > self._capacity:
            capacity = max(n_groups, self._capacity + self._capacity // 2, 16)
            self.base = _grown(self.base, capacity, -1)
            self.window = _grown(self.window, capacity, 0)
            self.wide = _grown(self.wide, capacity, -1)
            self.pending = _grown(self.pending, capacity, 0)
            self.counts = _grown(self.counts, capacity, 0)
            self.labels = _grown(self.labels, capacity, 0)
            self.labels_known = _grown(self.labels_known, capacity, True)
            self._capacity = capacity
        self.n_groups = max(self.n_groups, n_groups)

    def _grow_side(self) -> None:
        rows = max(16, 2 * self.side.shape[0])
        self.side = _grown(self.side, rows, 0)

    def add_rows(
        self, order: np.ndarray, run_starts: np.ndarray, run_codes: np.ndarray, terms: np.ndarray
    ) -> None:
        """Add per-row terms (``(N, N_ROW_TERMS)``), grouped as :meth:`GroupKeys.codes` gives."""
        self.add_grouped_rows(run_starts, run_codes, np.take(terms, order, axis=0))

    def add_grouped_rows(
        self, run_starts: np.ndarray, run_codes: np.ndarray, terms: np.ndarray
    ) -> None:
        """Add per-row terms whose runs lie together: run ``r`` is rows
        ``run_starts[r]:run_starts[r + 1]`` of ``terms``, all of group ``run_codes[r]``."""
        terms = np.ascontiguousarray(terms, dtype=np.float64)
        first = 0
        while first < run_codes.shape[0]:
            first = kernels.add_runs(
                terms,
                run_starts,
                run_codes,
                first,
                self.base,
                self.window,
                self.wide,
                self.pending,
                self.side,
                self.n_wide,
                self.counts,
            )
            if first < run_codes.shape[0]:
                self._grow_side()

    def add_sums(self, codes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        """Add normalized accumulators ``sums[i]`` ``(N_SUMS, N_SLOTS)`` and counters into
        groups ``codes[i]`` (distinct codes)."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        sums = np.ascontiguousarray(sums, dtype=np.int64)
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        first = 0
        while first < codes.shape[0]:
            first = kernels.add_full(
                codes,
                sums,
                counts,
                first,
                self.base,
                self.window,
                self.wide,
                self.pending,
                self.side,
                self.n_wide,
                self.counts,
            )
            if first < codes.shape[0]:
                self._grow_side()

    def add_label_counts(self, codes: np.ndarray, label_counts: np.ndarray | None) -> None:
        """Add exact label counts ``label_counts[i]`` to groups ``codes[i]`` (distinct
        codes); None: these groups' labels become unknown."""
        if not self.counts_labels:
            return
        if label_counts is None:
            self.labels_known[codes] = False
            return
        width = label_counts.shape[1]
        if width > self.labels.shape[1]:
            wider = np.zeros((self.labels.shape[0], width), dtype=np.int64)
            wider[:, : self.labels.shape[1]] = self.labels
            self.labels = wider
        kernels.add_at_rows(self.labels, codes, np.ascontiguousarray(label_counts, np.int64))

    def sums(self, codes: np.ndarray) -> np.ndarray:
        """Normalized full accumulators of groups ``codes``: ``(len(codes), N_SUMS, N_SLOTS)``."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        out = np.empty((codes.shape[0], layout.N_SUMS, N_SLOTS), dtype=np.int64)
        kernels.export_groups(codes, self.base, self.window, self.wide, self.side, out)
        return out

    def state(self, code: int, sums: np.ndarray | None = None) -> ExactState:
        """Group ``code``'s exact state (``sums``: its :meth:`sums`, when already built)."""
        state = ExactState(counts_labels=self.counts_labels)
        state.sums = self.sums(np.array([code]))[0] if sums is None else sums
        state.counts = self.counts[code].copy()
        if self.counts_labels:
            known = bool(self.labels_known[code])
            state.label_counts = self.labels[code].copy() if known else None
        return state

    def n_widened(self) -> int:
        """Groups held in full accumulators."""
        return int(self.n_wide[0])


class GroupReports(Mapping):
    """Group key -> :class:`~xentstream.Report` of groups ``codes``, in that order; each
    report is built when it is asked for (exactly as a one-shot metric's), so a
    million groups cost nothing until they are read.

    Parameters
    ----------
    table, keys
        The groups' states and keys.
    report_of : callable
        ``ExactState -> Report`` under the groups' config (``Metric.report_of``).
    codes : ndarray
        The groups, in display order.
    """

    def __init__(
        self,
        table: GroupTable,
        keys: GroupKeys,
        report_of: Callable[[ExactState], Any],
        codes: np.ndarray,
    ) -> None:
        self.table = table
        self.keys = keys
        self.report_of = report_of
        self.codes = np.asarray(codes, dtype=np.int64)
        self._index: dict[tuple[Any, ...], int] | None = None

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        tuples = self.keys.tuples()
        return (tuples[code] for code in self.codes.tolist())

    def __getitem__(self, key: tuple[Any, ...]) -> Any:
        if self._index is None:
            tuples = self.keys.tuples()
            self._index = {tuples[code]: code for code in self.codes.tolist()}
        try:
            return self.report(self._index[canonical_key(tuple(key))])
        except (TypeError, KeyError):
            raise KeyError(key) from None

    def report(self, code: int) -> Any:
        """The report of group ``code``."""
        return self.report_of(self.table.state(code))

    def items(self) -> _Items:
        return _Items(self)

    def values(self) -> _Values:
        return _Values(self)

    def subset(self, codes: np.ndarray) -> GroupReports:
        """The reports of groups ``codes`` (in that order)."""
        return GroupReports(self.table, self.keys, self.report_of, codes)

    def counts(self) -> np.ndarray:
        """Rows counted of each group, in order."""
        return self.table.counts[self.codes, layout.ROWS]

    def by_loss(self) -> np.ndarray:
        """The codes ordered by mean loss, highest first (NaN last), exactly: ranked by
        float approximations, and where two lie within their error of each other (or
        a sum may cancel) by the exact, once-rounded losses."""
        codes = self.codes
        approx = self._approximate(layout.LOSS, codes)
        denominators = self._approximate(layout.DENOMINATOR, codes)
        with np.errstate(divide="ignore", invalid="ignore"):
            losses = approx[0] / denominators[0]
        losses[denominators[0] == 0.0] = np.nan
        doubtful = approx[1] | denominators[1]
        order = np.argsort(-losses, kind="stable")
        ranked = losses[order]
        # Approximations err by a few ulps: neighbours closer than 2**-40 relative are
        # ordered by their exact values.
        close = np.zeros(ranked.shape[0], dtype=bool)
        if ranked.shape[0] > 1:
            gap = np.abs(np.diff(ranked)) <= 2.0**-40 * np.maximum(
                np.abs(ranked[:-1]), np.abs(ranked[1:])
            )
            close[:-1] |= gap
            close[1:] |= gap
        exact = close | doubtful[order] | ~np.isfinite(ranked)
        for position in np.flatnonzero(exact).tolist():
            sums = self.table.sums(codes[order[position : position + 1]])[0]
            ranked[position] = accumulator.ratio(sums[layout.LOSS], sums[layout.DENOMINATOR])
        final = np.argsort(np.where(np.isnan(ranked), np.inf, -ranked), kind="stable")
        return codes[order[final]]

    def _approximate(self, slot: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(codes.shape[0])
        doubtful = np.empty(codes.shape[0], dtype=bool)
        table = self.table
        kernels.approximate(
            codes, slot, table.base, table.window, table.wide, table.side, values, doubtful
        )
        return values, doubtful

    def iter_reports(self) -> Iterator[tuple[int, Any]]:
        """``(code, report)`` of every group in order, their sums exported in chunks."""
        for start in range(0, len(self), _REPORT_CHUNK):
            codes = self.codes[start : start + _REPORT_CHUNK]
            sums = self.table.sums(codes)
            for code, group_sums in zip(codes.tolist(), sums, strict=True):
                yield code, self.report_of(self.table.state(code, group_sums))


#: Groups whose sums one step of iterating over reports exports at once.
_REPORT_CHUNK = 1024


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[tuple[Any, ...], Any]]:
        reports: GroupReports = self._mapping
        tuples = reports.keys.tuples()
        for code, report in reports.iter_reports():
            yield tuples[code], report


class _Values(ValuesView):
    def __iter__(self) -> Iterator[Any]:
        reports: GroupReports = self._mapping
        for _, report in reports.iter_reports():
            yield report


def _grown(array: np.ndarray, rows: int, fill: Any) -> np.ndarray:
    """``array`` with ``rows`` rows, the new ones ``fill``. Zeros come from calloc: pages
    of groups not yet seen are not touched (nor resident) until a group lands there."""
    if fill == 0:
        grown = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    else:
        grown = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
        grown[array.shape[0] :] = fill
    grown[: array.shape[0]] = array
    return grown
