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

import dataclasses
import math
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from statistics import NormalDist
from typing import Any

import numba
import numpy as np
import polars as pl

from xentstream import accumulator, calibration
from xentstream import report as reporting
from xentstream._errors import show
from xentstream._kernels import groups as kernels
from xentstream._kernels import layout
from xentstream._kernels.exact import CHUNK_BITS, N_CHUNKS, N_SLOTS, UNIT_EXPONENT
from xentstream.accumulator import ExactState
from xentstream.state import array_from_json, array_to_json

__all__ = [
    "GroupColumns",
    "GroupKeys",
    "GroupReports",
    "GroupTable",
    "canonical_key",
    "keys_from_json",
    "keys_to_json",
]

_CODE = "__xentstream_code"
_NAN = float("nan")
#: Re-chunk the key frame after this many appended chunks (joins slow down on many).
_MAX_KEY_CHUNKS = 32


def canonical_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``row`` with every NaN replaced by one NaN object, so that NaN keys compare equal."""
    return tuple(_NAN if isinstance(v, float) and math.isnan(v) else v for v in row)


#: Key dtypes written as JSON lists of their values (the others by their physical values).
_PLAIN_KEY_DTYPES = {
    str(dtype): dtype
    for dtype in (
        pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
        pl.Float32, pl.Float64, pl.Boolean, pl.String,
    )
}  # fmt: skip
_TEMPORAL_KEY_DTYPES = {
    "Date": pl.Date,
    "Time": pl.Time,
    "Datetime": pl.Datetime,
    "Duration": pl.Duration,
}


def keys_to_json(frame: pl.DataFrame) -> list[dict[str, Any]] | None:
    """The key columns of ``frame`` as JSON: ``{"name", "dtype", "values"}`` each, the
    values a list (temporal ones as their integers, with ``time_unit`` and
    ``time_zone``; categorical keys as strings); None when a column has another type
    (decimal, nested: then only per-group entries can hold the keys).

    Examples
    --------
    >>> import polars as pl
    >>> keys_to_json(pl.DataFrame({"g": ["a", None]}))
    [{'name': 'g', 'dtype': 'String', 'values': ['a', None]}]
    >>> keys_from_json(keys_to_json(pl.DataFrame({"g": [1.5]})), ("g",), 1)["g"].to_list()
    [1.5]
    """
    columns = []
    for series in frame.get_columns():
        dtype = series.dtype
        entry: dict[str, Any] = {"name": series.name}
        if isinstance(dtype, pl.Categorical | pl.Enum):
            series, dtype = series.cast(pl.String), pl.String
        if str(dtype) in _PLAIN_KEY_DTYPES:
            entry["dtype"] = str(dtype)
        elif dtype.base_type() in _TEMPORAL_KEY_DTYPES.values():
            entry["dtype"] = dtype.base_type().__name__
            if isinstance(dtype, pl.Datetime | pl.Duration):
                entry["time_unit"] = dtype.time_unit
            if isinstance(dtype, pl.Datetime):
                entry["time_zone"] = dtype.time_zone
            series = series.to_physical()
        else:
            return None
        entry["values"] = series.to_list()
        columns.append(entry)
    return columns


def keys_from_json(data: Any, by: tuple[str, ...], n_groups: int) -> pl.DataFrame:
    """Inverse of :func:`keys_to_json`, for the group columns ``by`` and ``n_groups`` keys.

    Raises
    ------
    ValueError
        Naming the column and what is wrong.
    """
    if not isinstance(data, list) or len(data) != len(by):
        raise ValueError(f"keys: must be a list of {len(by)} columns ({', '.join(by)})")
    series = []
    for name, column in zip(by, data, strict=True):
        if not isinstance(column, dict) or column.get("name") != name:
            raise ValueError(f"keys: expected the column {name!r}, got {show(column, 60)}")
        dtype_name = column.get("dtype")
        temporal = _TEMPORAL_KEY_DTYPES.get(dtype_name)
        fields = {"name", "dtype", "values"}
        if dtype_name in ("Datetime", "Duration"):
            fields.add("time_unit")
        if dtype_name == "Datetime":
            fields.add("time_zone")
        if set(column) != fields or (temporal is None and dtype_name not in _PLAIN_KEY_DTYPES):
            raise ValueError(f"keys.{name}: unknown dtype {show(dtype_name)} or keys")
        values = column["values"]
        if not isinstance(values, list) or len(values) != n_groups:
            raise ValueError(f"keys.{name}: values must be a list of {n_groups} keys")
        try:
            if temporal is None:
                values = pl.Series(name, values, dtype=_PLAIN_KEY_DTYPES[dtype_name], strict=True)
            else:
                physical = pl.Int32 if temporal is pl.Date else pl.Int64
                values = pl.Series(name, values, dtype=physical, strict=True)
                if dtype_name == "Datetime":
                    temporal = pl.Datetime(column["time_unit"], column["time_zone"])
                elif dtype_name == "Duration":
                    temporal = pl.Duration(column["time_unit"])
                values = values.cast(temporal)
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as error:
            message = show(str(error).splitlines()[0] if str(error) else type(error).__name__, 120)
            raise ValueError(f"keys.{name}: not {dtype_name} keys ({message})") from None
        series.append(values)
    return pl.DataFrame(series) if series else pl.DataFrame()


class GroupKeys:
    """The distinct keys of ``by`` seen so far, numbered in order of first appearance.

    Examples
    --------
    >>> import polars as pl
    >>> keys = GroupKeys(("g",))
    >>> keys.codes(pl.DataFrame({"g": ["b", "a", "b"]}))[-1].tolist()
    [0, 1]
    >>> keys.codes(pl.DataFrame({"g": ["c", "a", "c"]}))[-1].tolist()
    [1, 2]
    >>> keys.tuples()
    [('b',), ('a',), ('c',)]
    """

    def __init__(self, by: tuple[str, ...]) -> None:
        self.by = tuple(by)
        self._known: pl.DataFrame | None = None  # the by columns and the code, in code order
        self._tuples: list[tuple[Any, ...]] | None = []
        # One column of integer, temporal, boolean or float keys: a hash table of our
        # own (no polars call a batch); None once keys of another type came.
        self._hash: _HashTable | None = None
        self._seen = np.zeros(0, dtype=np.int64)  # scratch of kernels.batch_runs

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
            frame = self.frame
            rows = list(frame.iter_rows())
            # Only float (and object) columns hold NaN: the rows with one take the
            # canonical NaN.
            floats = [name for name, dtype in frame.schema.items() if dtype.is_float()]
            if floats:
                nan = frame.select(pl.any_horizontal(pl.col(floats).is_nan()).fill_null(False))
                for row in np.flatnonzero(nan.to_series().to_numpy()).tolist():
                    rows[row] = canonical_key(rows[row])
            if any(dtype == pl.Object for dtype in frame.dtypes):  # of any Python value
                rows = [canonical_key(row) for row in rows]
            self._tuples = rows
        return self._tuples

    def code_of(self, key: tuple[Any, ...]) -> int | None:
        """The code of one key (a canonical tuple), without :meth:`tuples` of them all
        (a scan of the key columns); None if it is not known or cannot be compared so."""
        if self._known is None or len(key) != len(self.by):
            return None
        conditions = []
        for name, value in zip(self.by, key, strict=True):
            column = pl.col(name)
            if value is None:
                conditions.append(column.is_null())
            elif isinstance(value, float) and math.isnan(value):
                conditions.append(column.is_nan())
            else:
                conditions.append(column == pl.lit(value))
        try:
            found = self._known.filter(pl.all_horizontal(conditions).fill_null(False))
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            return None
        return int(found[_CODE][0]) if found.height else None

    def codes(self, keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Codes of one batch's keys; new keys get new codes.

        Returns ``(runs, order, run_starts, run_codes)``: the run of every row, and
        the rows grouped by run (run ``r`` is ``order[run_starts[r]:run_starts[r + 1]]``,
        all of group ``run_codes[r]``), the runs in code order: the batch's own dense
        numbering of its groups, whatever the groups seen before.
        """
        keys = keys.select(self.by)
        if keys.height == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(1, dtype=np.int64), empty
        row_codes = self.row_codes(keys)
        if self._seen.shape[0] < len(self):
            self._seen = np.full(max(len(self), 2 * self._seen.shape[0]), -1, dtype=np.int64)
        return kernels.batch_runs(row_codes, self._seen)

    def row_codes(self, keys: pl.DataFrame) -> np.ndarray:
        """The code of every row of ``keys``; new keys get new codes, in row order."""
        keys = keys.select(self.by)
        if self._hash is not None or self._known is None:
            values = self._hashable(keys)
            if values is not None:
                return self._hash_codes(keys, *values)
            self._hash = None  # another type than the keys so far: polars from here on
        if self._known is None:
            found = np.full(keys.height, -1, dtype=np.int64)
        else:
            keys = self._aligned(keys)
            found = self._join(keys, self._known)
        missing = found < 0
        if missing.any():
            rows = keys.filter(pl.Series(missing)) if self._known is not None else keys
            # Distinct as polars groups (NaN one key, nulls one key), in order of first
            # appearance; then the new rows' codes by the same join.
            distinct = rows.unique(maintain_order=True)
            start = len(self)
            added = distinct.with_columns(
                pl.Series(_CODE, np.arange(start, start + distinct.height, dtype=np.int64))
            )
            self._append(added)
            found[missing] = self._join(rows, added)
        return found

    def assign(self, distinct: pl.DataFrame) -> np.ndarray:
        """Codes of ``distinct`` keys (no key twice), new ones appended in their order."""
        return self.row_codes(distinct)

    def _join(self, keys: pl.DataFrame, known: pl.DataFrame) -> np.ndarray:
        found = keys.join(
            known, on=list(self.by), how="left", nulls_equal=True, maintain_order="left"
        )
        return found[_CODE].fill_null(-1).to_numpy().astype(np.int64)

    def _append(self, added: pl.DataFrame) -> None:
        if self._known is None:
            self._known = added
        else:
            self._known = self._known.vstack(added)
            if self._known.n_chunks() > _MAX_KEY_CHUNKS:
                self._known = self._known.rechunk()
        self._tuples = None

    def _hashable(self, keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """One key column as int64 (equal keys, equal integers, as polars groups them)
        and its validity (empty: no null); None for other keys."""
        if len(self.by) != 1:
            return None
        column = keys.get_column(self.by[0])
        dtype = column.dtype
        if self._known is not None and self._known.schema[self.by[0]] != dtype:
            return None
        if dtype.is_float():
            values = column.cast(pl.Float64).to_numpy()
            # polars groups -0.0 with 0.0 and every NaN together.
            values = np.where(np.isnan(values), np.nan, values + 0.0).view(np.int64)
        elif dtype.is_integer() or dtype.is_temporal() or dtype == pl.Boolean:
            physical = column.to_physical()
            if physical.dtype == pl.Boolean:
                physical = physical.cast(pl.Int8)
            values = physical.to_numpy()
            if values.dtype.kind not in "iu":  # nulls came out as float NaN
                values = physical.fill_null(0).to_numpy()
            values = values.astype(np.int64) if values.dtype != np.uint64 else values.view(np.int64)
        else:
            return None
        valid = column.is_not_null().to_numpy() if column.null_count() else np.zeros(0, bool)
        return np.ascontiguousarray(values, dtype=np.int64), valid

    def _hash_codes(self, keys: pl.DataFrame, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self._hash is None:
            self._hash = _HashTable()
        table = self._hash
        codes = np.empty(values.shape[0], dtype=np.int64)
        new_rows = np.empty(values.shape[0], dtype=np.int64)
        table.state[2] = 0
        row = 0
        while True:
            row = kernels.hash_codes(
                values,
                valid,
                table.keys,
                table.codes,
                table.known,
                table.state,
                codes,
                new_rows,
                row,
            )
            if row == values.shape[0]:
                break
            table.grow()
        n_new = int(table.state[2])
        if n_new:
            start = len(self)
            added = keys[new_rows[:n_new]].with_columns(
                pl.Series(_CODE, np.arange(start, start + n_new, dtype=np.int64))
            )
            self._append(added)
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


class _HashTable:
    """Open-addressing table of int64 keys -> codes (:func:`kernels.hash_codes`)."""

    def __init__(self) -> None:
        self.keys = np.zeros(1024, dtype=np.int64)
        self.codes = np.full(1024, -1, dtype=np.int64)
        self.known = np.zeros(256, dtype=np.int64)
        self.state = np.array([0, -1, 0], dtype=np.int64)

    def grow(self) -> None:
        n_known = int(self.state[0])
        if n_known >= self.known.shape[0]:
            known = np.zeros(2 * self.known.shape[0], dtype=np.int64)
            known[:n_known] = self.known[:n_known]
            self.known = known
        if 2 * (n_known + 1) > self.keys.shape[0]:
            size = 2 * self.keys.shape[0]
            self.keys = np.zeros(size, dtype=np.int64)
            self.codes = np.full(size, -1, dtype=np.int64)
            kernels.rehash(self.known, n_known, self.state[1], self.keys, self.codes)


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
    >>> from xentstream import accumulator, report
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
        self._decimals: dict[int, str] = {}  # decimal text of integers states_json wrote

    @property
    def rows_seen(self) -> int:
        """Rows of every group, ignored rows included."""
        return int(self.counts[: self.n_groups].sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the table's rows in use (the room reserved beyond them is address
        space, never written, hence not resident)."""
        rows = sum(getattr(self, name)[: self.n_groups].nbytes for name in _GROUP_ARRAYS)
        return rows + self.side[: int(self.n_wide[0])].nbytes

    def resize(self, n_groups: int) -> None:
        """Make room for groups ``0 .. n_groups - 1`` (new groups are empty)."""
        if n_groups > self._capacity:
            # Room for far more groups than asked: rows not yet used are never touched
            # (np.empty), so they cost address space, not memory, and each growth
            # copies the table once (a 1e6-group table is ~500 MB).
            capacity = max(2 * n_groups, min(4 * self._capacity, self._capacity + (1 << 23)), 16)
            for name in _GROUP_ARRAYS:
                setattr(self, name, _grown(getattr(self, name), capacity))
            self._capacity = capacity
        if n_groups > self.n_groups:
            # Rows are cleared as groups arrive, not when room is made: the rows beyond
            # stay untouched, hence not resident.
            new = slice(self.n_groups, n_groups)
            for name, fill in _GROUP_ARRAYS.items():
                getattr(self, name)[new] = fill
            self.n_groups = n_groups

    def _grow_side(self) -> None:
        rows = max(16, 2 * self.side.shape[0])
        self.side = _grown(self.side, rows)  # a widened group clears its row

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
        run_starts = np.ascontiguousarray(run_starts, dtype=np.int64)
        run_codes = np.ascontiguousarray(run_codes, dtype=np.int64)
        n_runs = run_codes.shape[0]
        if n_runs >= 2 and terms.shape[0] >= _PARALLEL_ROWS and _parallel_is_safe():
            # The runs' groups are distinct: threads split the runs. Groups that are or
            # become wide (a shared side table) are left to the serial pass.
            added = np.zeros(n_runs, dtype=np.bool_)
            kernels.add_runs_parallel(
                terms,
                run_starts,
                run_codes,
                _run_blocks(run_starts),
                self.base,
                self.window,
                self.wide,
                self.pending,
                self.side,
                self.n_wide,
                self.counts,
                added,
            )
            selected = np.flatnonzero(~added)
        else:
            selected = np.arange(n_runs, dtype=np.int64)
        self._add_all(kernels.add_runs, selected.shape[0], terms, run_starts, run_codes, selected)

    def add_sums(self, codes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        """Add normalized accumulators ``sums[i]`` ``(N_SUMS, N_SLOTS)`` and counters into
        groups ``codes[i]`` (distinct codes)."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        sums = np.ascontiguousarray(sums, dtype=np.int64)
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        self._add_all(kernels.add_full, codes.shape[0], codes, sums, counts)

    def _add_all(self, kernel: Callable[..., int], n: int, *inputs: np.ndarray) -> None:
        """Call ``kernel(*inputs, first, <the table's arrays>)`` (``add_runs``,
        ``add_full``, ``add_encoded``) until all ``n`` items are added, growing the
        side table of widened groups whenever it stops for room."""
        first = 0
        while first < n:
            first = kernel(
                *inputs,
                first,
                self.base,
                self.window,
                self.wide,
                self.pending,
                self.side,
                self.n_wide,
                self.counts,
            )
            if first < n:
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

    def packed(self) -> dict[str, Any]:
        """The table's rows in use, as arrays (for :meth:`from_packed` in another process:
        a few hundred bytes a group, where JSON states take kilobytes)."""
        rows = {name: getattr(self, name)[: self.n_groups].copy() for name in _GROUP_ARRAYS}
        return {
            "counts_labels": self.counts_labels,
            "side": self.side[: int(self.n_wide[0])].copy(),
            **rows,
        }

    @classmethod
    def from_packed(cls, packed: dict[str, Any]) -> GroupTable:
        """The table :meth:`packed` describes."""
        table = cls(counts_labels=bool(packed["counts_labels"]))
        n_groups = int(packed["counts"].shape[0])
        for name in _GROUP_ARRAYS:
            setattr(table, name, np.ascontiguousarray(packed[name]))
        table.side = np.ascontiguousarray(packed["side"])
        table.n_wide = np.array([table.side.shape[0]], dtype=np.int64)
        table.n_groups = table._capacity = n_groups
        return table

    def states_json(self, codes: np.ndarray) -> list[dict[str, Any]]:
        """``ExactState.to_json()`` of groups ``codes`` (no per-class sums), built from
        their exact integers at once (:func:`exact_integers`); an integer met before
        (counts, zeros) is not written to decimal again."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        sums = self.sums(codes)
        ints = exact_integers(sums.reshape(-1, N_SLOTS))
        flags = sums[:, :, N_CHUNKS:].tolist()
        counts = self.counts[codes].tolist()
        known = self.labels_known[codes].tolist() if self.counts_labels else None
        decimal_of = self._decimals
        n_sums = layout.N_SUMS
        states = []
        for i, code in enumerate(codes.tolist()):
            written = {}
            for slot, name in enumerate(layout.SUM_NAMES):
                value = ints[i * n_sums + slot]
                text = decimal_of.get(value)
                if text is None:
                    if len(decimal_of) >= _DECIMALS_KEPT:
                        decimal_of.clear()
                    text = decimal_of[value] = str(value)
                written[name] = [text, *flags[i][slot]]
            labels = None
            if known is not None and known[i]:
                labels = self.labels[code].tolist()
            states.append(
                {
                    "counts": dict(zip(layout.COUNT_NAMES, counts[i], strict=True)),
                    "sums": written,
                    "class_sums": None,
                    "class_counts": None,
                    "label_counts": labels,
                }
            )
        return states

    def columns(self, codes: np.ndarray) -> GroupColumns:
        """The columnar form of groups ``codes`` (:class:`GroupColumns`), vectorized:
        every sum as its normalized integer's nonzero digits, a function of the value
        only (equal groups give equal columns whatever the batches, merges and
        windows that made them)."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        n = codes.shape[0]
        spans = np.empty((n, layout.N_SUMS, 2), dtype=np.uint8)
        special = np.empty((n, layout.N_SUMS), dtype=np.bool_)
        n_wide = int(np.count_nonzero(self.wide[codes] >= 0))
        # The most digits a sum can have: a compact window's chunks and a carry, or a
        # full accumulator's (np.empty: room never written costs no memory).
        room = layout.N_SUMS * ((n - n_wide) * (kernels.WINDOW + 1) + n_wide * (N_CHUNKS - 1))
        digits = np.empty(room, dtype=np.uint32)
        used = kernels.encode_groups(
            codes, self.base, self.window, self.wide, self.side, spans, special, digits
        )
        if used < 0:  # the bound above is what the kernels allow; never less room
            raise AssertionError("GroupTable.columns: digits beyond a window's reach")
        where = np.flatnonzero(special.reshape(-1))
        special_sums = np.zeros((where.shape[0], N_SLOTS), dtype=np.int64)
        if where.shape[0]:
            full = self.sums(codes[where // layout.N_SUMS])
            special_sums = full[np.arange(where.shape[0]), where % layout.N_SUMS]
        labels = known = None
        if self.counts_labels:
            known = self.labels_known[codes].copy()
            # (a group's counts from before its labels became unknown are not state)
            labels = np.where(known[:, None], self.labels[codes], 0)
        return GroupColumns(
            counts=self.counts[codes].copy(),
            spans=spans,
            digits=digits[:used],
            special=where.astype(np.int64),
            special_sums=special_sums,
            label_counts=labels,
            labels_known=known,
        )

    def add_columns(self, codes: np.ndarray, columns: GroupColumns) -> None:
        """Add the groups of checked ``columns`` (:meth:`GroupColumns.check`) into groups
        ``codes`` (distinct), exactly as :meth:`add_sums` of their accumulators: their
        digits straight into the windows (:func:`kernels.add_encoded`), the groups with
        special sums as whole accumulators."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        n = columns.n_groups
        special = np.unique(columns.special // layout.N_SUMS)
        skip = np.zeros(n, dtype=np.bool_)
        skip[special] = True
        offsets = columns.digit_offsets()
        self._add_all(
            kernels.add_encoded,
            n,
            codes,
            columns.spans,
            columns.digits,
            offsets,
            skip,
            columns.counts,
        )
        if special.size:
            sums = np.stack([columns.sums(group, group + 1)[0] for group in special.tolist()])
            self.add_sums(codes[special], sums, columns.counts[special])
        if self.counts_labels:
            known = columns.labels_known
            self.add_label_counts(codes[~known], None)
            if known.any():
                self.add_label_counts(codes[known], columns.label_counts[known])

    def n_widened(self) -> int:
        """Groups held in full accumulators."""
        return int(self.n_wide[0])


#: Dtypes of counts in a table, narrowest first: each array is written in the narrowest
#: that holds it (a function of its values, so the text stays canonical), a table of a
#: million small groups saving ~80 bytes a group against int64.
_COUNT_DTYPES = ("|u1", "<u2", "<u4", "<i8")


def _narrowest(counts: np.ndarray) -> np.ndarray:
    """``counts`` in the narrowest of :data:`_COUNT_DTYPES` that holds every value."""
    if counts.size and counts.min() >= 0:
        top = int(counts.max())
        for dtype in _COUNT_DTYPES[:-1]:
            if top <= np.iinfo(dtype).max:
                return counts.astype(dtype)
    elif not counts.size:
        return counts.astype(_COUNT_DTYPES[0])
    return counts


class GroupColumns:
    """Groups' exact states as columns: what grouped state files and checkpoints hold.

    Attributes
    ----------
    counts : ndarray
        ``(n, N_COUNTS)`` int64, rows counted and ignored.
    spans : ndarray
        ``(n, N_SUMS, 2)`` uint8: each sum's lowest nonzero chunk and digit count
        ((0, 0): zero or special).
    digits : ndarray
        uint32, the 32-bit digits of every sum's normalized integer from its lowest
        nonzero chunk up, group after group, sum after sum.
    special, special_sums : ndarray
        The sums (``N_SUMS * group + sum``, ascending) whose top chunk is nonzero or
        that count non-finite terms, and their whole accumulator rows ``(k, N_SLOTS)``.
    label_counts, labels_known : ndarray or None
        Exact label counts ``(n, width)`` (zero where unknown) and where known, for
        kinds that count labels.

    Examples
    --------
    >>> table = GroupTable(counts_labels=False)
    >>> table.resize(1)
    >>> terms = np.zeros((2, layout.N_ROW_TERMS))
    >>> terms[:, layout.LOSS] = [0.5, 0.25]
    >>> table.add_rows(np.arange(2), np.array([0, 2]), np.array([0]), terms)
    >>> columns = table.columns(np.array([0]))
    >>> # 0.75 is 3 * 2**1073 units of 2**-1075: 3 * 2**17 in chunk 33 (bits 1056..1087)
    >>> columns.spans[0, layout.LOSS].tolist(), columns.digits.tolist() == [3 << 17]
    ([33, 1], True)
    >>> again = GroupColumns.from_json(columns.to_json(), counts_labels=False)
    >>> bool((again.sums(0, 1) == table.sums(np.array([0]))).all())
    True
    """

    _ARRAYS = ("counts", "spans", "digits", "special", "special_sums")

    def __init__(
        self,
        *,
        counts: np.ndarray,
        spans: np.ndarray,
        digits: np.ndarray,
        special: np.ndarray,
        special_sums: np.ndarray,
        label_counts: np.ndarray | None,
        labels_known: np.ndarray | None,
    ) -> None:
        self.counts = counts
        self.spans = spans
        self.digits = digits
        self.special = special
        self.special_sums = special_sums
        self.label_counts = label_counts
        self.labels_known = labels_known
        self._offsets: np.ndarray | None = None

    @property
    def n_groups(self) -> int:
        return int(self.counts.shape[0])

    def to_json(self) -> dict[str, Any]:
        """The columns as JSON (:func:`~xentstream.state.array_to_json` each)."""
        data: dict[str, Any] = {name: array_to_json(getattr(self, name)) for name in self._ARRAYS}
        data["counts"] = array_to_json(_narrowest(self.counts))
        labels = self.label_counts
        data["label_counts"] = None if labels is None else array_to_json(_narrowest(labels))
        known = self.labels_known
        data["labels_known"] = None if known is None else array_to_json(known)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], *, counts_labels: bool) -> GroupColumns:
        """Inverse of :meth:`to_json`, every array's dtype and shape checked (not yet
        the values: :meth:`check`).

        Raises
        ------
        ValueError
            Naming the array and what is wrong.
        """
        n_sums = layout.N_SUMS
        counts = array_from_json(
            data["counts"], "counts", _COUNT_DTYPES, 2, (None, layout.N_COUNTS)
        ).astype(np.int64)
        n = counts.shape[0]
        spans = array_from_json(data["spans"], "spans", "|u1", 3, (n, n_sums, 2))
        digits = array_from_json(data["digits"], "digits", "<u4", 1)
        special = array_from_json(data["special"], "special", "<i8", 1)
        special_sums = array_from_json(
            data["special_sums"], "special_sums", "<i8", 2, (special.shape[0], N_SLOTS)
        )
        labels = known = None
        if counts_labels:
            if data["label_counts"] is None or data["labels_known"] is None:
                raise ValueError("label_counts: missing (this kind counts labels)")
            labels = array_from_json(
                data["label_counts"], "label_counts", _COUNT_DTYPES, 2, (n, None)
            ).astype(np.int64)
            known = array_from_json(data["labels_known"], "labels_known", "|b1", 1, (n,))
        elif data["label_counts"] is not None or data["labels_known"] is not None:
            raise ValueError("label_counts: given, but this kind of state holds none")
        return cls(
            counts=counts,
            spans=spans,
            digits=digits,
            special=special,
            special_sums=special_sums,
            label_counts=labels,
            labels_known=known,
        )

    def check(self, *, validate: bool, unit_denominators: bool) -> np.ndarray:
        """Check the columns' form (canonical spans, every digit used, special sums
        really special and normalized, label counts) and return the groups whose
        numbers must be checked one by one (``Metric.load_state_dict`` of
        :meth:`state_json`): those a state check might refuse, by the rules of
        ``metrics._check_consistent`` (:func:`kernels.screen_groups`); the others
        certainly pass.

        Raises
        ------
        ValueError
            Naming the array, the group and what is wrong.
        """
        n_sums = layout.N_SUMS
        n = self.n_groups
        where = self.special
        if where.shape[0] and (
            (np.diff(where) <= 0).any() or where[0] < 0 or where[-1] >= n * n_sums
        ):
            raise ValueError(f"special: not ascending sums of the {n} groups")
        special = np.zeros((n, n_sums), dtype=np.bool_)
        special.reshape(-1)[where] = True
        rows = self.special_sums
        low = rows[:, : N_CHUNKS - 1]
        if ((low < 0) | (low >= 1 << CHUNK_BITS)).any():
            raise ValueError("special_sums: not normalized (a chunk outside [0, 2**32))")
        if where.shape[0] and not (rows[:, N_CHUNKS - 1 :] != 0).any(axis=1).all():
            raise ValueError("special_sums: a sum that is not special (written as digits)")
        offsets = self.digit_offsets()
        options = np.array(
            [
                validate,
                unit_denominators,
                layout.CAUCHY_SCHWARZ_SLACK_BITS,
                layout.UNDERFLOW_UNITS,
                UNIT_EXPONENT,
            ],
            dtype=np.int64,
        )
        doubtful = np.zeros(n, dtype=np.bool_)
        bad = kernels.screen_groups(
            self.spans, special, self.digits, offsets, self.counts, options, doubtful
        )
        if bad < 0:
            group, slot = divmod(-1 - bad, n_sums)
            raise ValueError(
                f"spans: sum {layout.SUM_NAMES[slot]} of group {group} is not written as "
                "its lowest nonzero chunk and digit count (edited or corrupted)"
            )
        total = int(self.spans[:, :, 1].sum(dtype=np.int64))
        if total != self.digits.shape[0]:
            raise ValueError(
                f"digits: {self.digits.shape[0]} digits, but the spans take {total} "
                "(truncated or edited)"
            )
        if self.label_counts is not None:
            labels, known = self.label_counts, self.labels_known
            if labels[~known].any():
                raise ValueError("label_counts: nonzero where labels_known is false")
            wrong = known & (
                (labels < 0).any(axis=1) | (labels.sum(axis=1) != self.counts[:, layout.ROWS])
            )
            doubtful |= wrong
        return np.flatnonzero(doubtful)

    def digit_offsets(self) -> np.ndarray:
        """Where each sum's digits start: ``(n, N_SUMS)`` int64."""
        if self._offsets is None:
            counts = self.spans[:, :, 1].reshape(-1).astype(np.int64)
            offsets = np.zeros(counts.shape[0], dtype=np.int64)
            np.cumsum(counts[:-1], out=offsets[1:])
            self._offsets = offsets.reshape(self.spans.shape[:2])
        return self._offsets

    def sums(self, start: int, stop: int) -> np.ndarray:
        """Normalized accumulators ``(stop - start, N_SUMS, N_SLOTS)`` of groups
        ``start:stop`` of checked columns."""
        out = np.empty((stop - start, layout.N_SUMS, N_SLOTS), dtype=np.int64)
        if stop == start:
            return out
        first = int(self.digit_offsets()[start, 0])
        kernels.decode_groups(self.spans[start:stop], self.digits, first, out)
        n_sums = layout.N_SUMS
        lo, hi = np.searchsorted(self.special, [start * n_sums, stop * n_sums])
        for index, row in zip(self.special[lo:hi].tolist(), self.special_sums[lo:hi], strict=True):
            out[index // n_sums - start, index % n_sums] = row
        return out

    def state_json(self, group: int) -> dict[str, Any]:
        """Group ``group``'s sections of a state file (``ExactState.to_json``), for the
        full check of one group."""
        state = ExactState(counts_labels=self.label_counts is not None)
        state.sums = self.sums(group, group + 1)[0]
        state.counts = self.counts[group].copy()
        known = self.label_counts is not None and self.labels_known[group]
        state.label_counts = self.label_counts[group].copy() if known else None
        return state.to_json()


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
    metric : Metric, optional
        The groups' metric (``report_of``'s): with it, :meth:`scalar_columns` derives
        every group's scalar fields at once.
    calibration : GroupBins, optional
        The groups' reliability bins (:class:`~xentstream.calibration.GroupBins`): each
        report carries its group's calibration.
    """

    def __init__(
        self,
        table: GroupTable,
        keys: GroupKeys,
        report_of: Callable[[ExactState], Any],
        codes: np.ndarray,
        metric: Any = None,
        *,
        calibration: Any = None,
    ) -> None:
        self.table = table
        self.keys = keys
        self.report_of = report_of
        self.codes = np.asarray(codes, dtype=np.int64)
        self.metric = metric
        self.calibration = calibration
        self._index: dict[tuple[Any, ...], int] | None = None
        self._lookups = 0

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        tuples = self.keys.tuples()
        return (tuples[code] for code in self.codes.tolist())

    def __getitem__(self, key: tuple[Any, ...]) -> Any:
        if self._index is None and self._lookups < _SCANNED_LOOKUPS:
            # A few lookups scan the key columns (milliseconds at a million groups);
            # more build the index of every key (seconds).
            self._lookups += 1
            try:
                wanted = canonical_key(tuple(key))
            except TypeError:
                raise KeyError(key) from None
            code = self.keys.code_of(wanted)
            # (the index's own test of the key found: equal as Python values)
            if code is not None and canonical_key(self.keys.frame.row(code)) == wanted:
                if not (self.codes == code).any():
                    raise KeyError(key)
                return self.report(code)
        if self._index is None:
            tuples = self.keys.tuples()
            self._index = {tuples[code]: code for code in self.codes.tolist()}
        try:
            return self.report(self._index[canonical_key(tuple(key))])
        except (TypeError, KeyError):
            raise KeyError(key) from None

    def report(self, code: int) -> Any:
        """The report of group ``code``."""
        return self.report_of(self._state(code))

    def _state(self, code: int, sums: np.ndarray | None = None) -> ExactState:
        state = self.table.state(code, sums)
        if self.calibration is not None:
            state.calibration = self.calibration.state(code)
        return state

    def items(self) -> _Items:
        return _Items(self)

    def values(self) -> _Values:
        return _Values(self)

    def subset(self, codes: np.ndarray) -> GroupReports:
        """The reports of groups ``codes`` (in that order)."""
        return GroupReports(
            self.table, self.keys, self.report_of, codes, self.metric, calibration=self.calibration
        )

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

    def scalar_columns(self) -> dict[str, pl.Series] | None:
        """Every group's :meth:`Report.scalars` fields as columns (``FLAT_SCALAR_FIELDS``,
        null where a report has no value), equal to the reports' own; None when only
        the reports can give them (no ``metric``, or a kind with fields of its own).

        Computed as whole arrays (:meth:`scalar_arrays`), a few microseconds a group."""
        arrays = self.scalar_arrays(self.codes)
        if arrays is None:
            return None
        columns = {}
        for name, (values, defined) in arrays.items():
            if not defined.any():  # as a column of None: dtype Null
                columns[name] = pl.Series(name, [None] * values.shape[0])
                continue
            series = pl.Series(name, values)
            if not defined.all():
                series = series.scatter(np.flatnonzero(~defined), None)
            columns[name] = series
        bins = self.calibration_columns()
        if bins is not None:  # the reports' own: the same function of the same bins
            for name in ("ece", "mce", "brier"):
                columns[name] = pl.Series(name, bins[name], dtype=pl.Float64, strict=False)
        return columns

    def scalar_arrays(self, codes: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """The scalar fields (``FLAT_SCALAR_FIELDS``) of groups ``codes`` as arrays and
        where each is defined (None in the report), bitwise the reports' values; None
        when only the reports can give them (no ``metric``, or a kind with fields of its
        own). The calibration fields are left undefined.

        Every group's sums are rounded and divided at once (``kernels.group_values``:
        once, as the reports' exact integers are); then one array formula per field,
        the reports' own functions made elementwise (:func:`report.standard_errors`,
        ...). A group whose sums hold an infinite or NaN term, or whose value the
        kernel could not round with certainty (rare: a quotient within 2**-90 of a
        rounding boundary, a value out of the normal range), takes its report's.
        """
        # (inf - inf, 0 / 0 and the like in groups whose field is undefined, or that
        # take their report's values)
        with np.errstate(all="ignore"):
            return self._scalar_arrays(codes)

    def _scalar_arrays(self, codes: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        metric = self.metric
        if metric is None:
            return None
        kind, config = metric.kind, metric.config
        if kind.extra_report is not None or kind.per_class(config):
            return None
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        table = self.table
        n = codes.shape[0]
        n_sums = layout.N_SUMS
        floats = np.empty((n, n_sums))
        ratios = np.empty((n, len(_RATIOS)))
        variance = np.empty(n)
        signs = np.empty((n, n_sums), dtype=np.int8)
        flags = np.zeros(n, dtype=np.uint8)
        # In code order (the table's), then back in display order: a sweep through the
        # table, not a random read per group (3 us a group at 1e6 groups, ~1 in order).
        order = np.argsort(codes, kind="stable")
        parallel = n >= 2 * kernels.VALUES_PER_BLOCK and _parallel_is_safe()
        (kernels.group_values_parallel if parallel else kernels.group_values)(
            codes[order], table.base, table.window, table.wide, table.side, table.counts,
            _RATIO_PAIRS, floats, ratios, variance, signs, flags,
        )  # fmt: skip
        back = np.empty_like(order)
        back[order] = np.arange(n)
        floats, ratios, variance = floats[back], ratios[back], variance[back]
        signs, flags = signs[back], flags[back]
        loss = ratios[:, _RATIOS.index("loss")]
        counts = table.counts[codes]
        count = counts[:, layout.ROWS]
        has_rows = count > 0
        weight = floats[:, layout.WEIGHT]
        # (to_float of the weight 0: the quotient's NaN is None, else a value)
        weightless = weight == 0.0
        stderr, stderr_defined = reporting.standard_errors(
            variance, floats[:, layout.DENOMINATOR], floats[:, layout.DENOMINATOR_SQUARED]
        )
        stderr_defined &= (count > 1) & (signs[:, layout.DENOMINATOR] > 0)
        low, high = reporting.ci95_bounds(loss, stderr)
        unweighted = not kind.loss_weighted(config)
        kl = ratios[:, _RATIOS.index("cross_entropy")] - ratios[:, _RATIOS.index("target")]
        kl_defined = has_rows & (signs[:, layout.TARGET_ENTROPY] != 0) & unweighted
        normalized = np.full(n, np.nan)
        normalized_defined = np.zeros(n, dtype=bool)
        if unweighted:
            labels = None
            if table.counts_labels:
                labels = table.labels[codes]
            baseline = reporting.label_entropies(
                kind.label_entropy, weight, floats[:, layout.POSITIVE], labels
            )
            if baseline is None:
                return None
            values, defined = baseline
            if labels is not None:
                defined &= table.labels_known[codes]
            defined &= has_rows & (values > 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                normalized = loss / values
            normalized_defined = defined
        perplexity = np.full(n, np.nan)
        if kind.has_perplexity:
            perplexity = reporting.perplexities(loss)
        everywhere = np.ones(n, dtype=bool)
        nowhere = np.zeros(n, dtype=bool)
        accuracy = ratios[:, _RATIOS.index("accuracy")]
        entropy = ratios[:, _RATIOS.index("entropy")]
        with np.errstate(invalid="ignore"):
            stats = {
                "loss": (loss, everywhere),
                "stderr": (stderr, stderr_defined),
                "ci95_low": (low, stderr_defined),
                "ci95_high": (high, stderr_defined),
                "count": (count, everywhere),
                "ignored": (counts[:, layout.IGNORED], everywhere),
                "loss_sum": (floats[:, layout.LOSS], everywhere),
                "weight_sum": (floats[:, layout.DENOMINATOR], everywhere),
                "perplexity": (perplexity, everywhere if kind.has_perplexity else nowhere),
                "bits": (reporting.bits_of(loss), everywhere),
                "accuracy": (
                    accuracy,
                    has_rows & kind.has_accuracy & ~(np.isnan(accuracy) & weightless),
                ),
                "entropy": (entropy, has_rows & ~(np.isnan(entropy) & weightless)),
                "kl": (kl, kl_defined),
                "normalized_entropy": (normalized, normalized_defined),
            }
        columns = {}
        for name in reporting.FLAT_SCALAR_FIELDS:
            values, defined = stats.get(name, (None, nowhere))
            if values is None:
                values = np.full(n, np.nan)
            columns[name] = (np.array(values), defined.copy())
        # The groups the kernel leaves to the exact integers (a special sum, or a value
        # it could not round with certainty that a field needs): their reports' values.
        doubtful = np.isnan(floats[:, _FLOAT_SUMS]).any(axis=1)
        denominators = signs[:, _RATIO_PAIRS[:, 1]] != 0
        undecided = np.isnan(ratios) & denominators
        for name, needed in (
            ("loss", everywhere),
            ("accuracy", has_rows & kind.has_accuracy),
            ("entropy", has_rows),
            ("cross_entropy", kl_defined),
            ("target", kl_defined),
        ):
            doubtful |= undecided[:, _RATIOS.index(name)] & needed
        doubtful |= np.isnan(variance) & stderr_defined
        doubtful |= (flags & kernels.SPECIAL) != 0
        for i in np.flatnonzero(doubtful).tolist():
            scalars = self.report(int(codes[i])).scalars()
            for name, (values, defined) in columns.items():
                value = scalars.get(name)
                defined[i] = value is not None
                if value is not None:
                    values[i] = value
        return columns

    def calibration_columns(self) -> dict[str, list[Any]] | None:
        """Every group's calibration scalars (``CalibrationReport`` fields but the
        forecast count: ``ece``, ``mce``, ``brier`` and the decomposition), None where
        a field is undefined; None without reliability bins."""
        if self.calibration is None:
            return None
        names = calibration.SCALARS[1:]
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for code in self.codes.tolist():
            scalars = calibration.bins_scalars(self.calibration.state(code))
            for name in names:
                columns[name].append(scalars[name])
        return columns

    def iter_reports(self) -> Iterator[tuple[int, Any]]:
        """``(code, report)`` of every group in order: built from :meth:`scalar_arrays`
        a chunk of groups at a time where they give every field (no reliability bins),
        else each from its state, the sums exported in chunks."""
        if self.calibration is None and self.metric is not None:
            for start in range(0, len(self), _ARRAY_CHUNK):
                codes = self.codes[start : start + _ARRAY_CHUNK]
                arrays = self.scalar_arrays(codes)
                if arrays is None:
                    break
                yield from zip(codes.tolist(), _reports_of(arrays), strict=True)
            else:
                return
        for start in range(0, len(self), _REPORT_CHUNK):
            codes = self.codes[start : start + _REPORT_CHUNK]
            sums = self.table.sums(codes)
            for code, group_sums in zip(codes.tolist(), sums, strict=True):
                yield code, self.report_of(self._state(code, group_sums))


def _reports_of(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> Iterator[Any]:
    """The :class:`~xentstream.Report` of each group of :meth:`GroupReports.scalar_arrays`
    (reports without tables, calibration or window: the fields are the arrays')."""
    columns = {}
    for name, (values, defined) in arrays.items():
        if not defined.any():
            continue  # None in every report: the template's
        column = values.tolist()
        if not defined.all():
            for i in np.flatnonzero(~defined).tolist():
                column[i] = None
        columns[name] = column
    low, high = columns.pop("ci95_low", None), columns.pop("ci95_high", None)
    if low is not None:
        columns["ci95"] = [None if a is None else (a, b) for a, b in zip(low, high, strict=True)]
    names = list(columns)
    template = dict.fromkeys(f.name for f in dataclasses.fields(reporting.Report))
    new, set_dict = object.__new__, object.__setattr__
    report_class = reporting.Report
    for row in zip(*columns.values(), strict=True):
        report = new(report_class)
        # (a frozen dataclass's __init__ sets each field through object.__setattr__:
        # the same instance, several times slower)
        fields = template.copy()
        fields.update(zip(names, row, strict=True))
        set_dict(report, "__dict__", fields)
        yield report


#: Lookups of one key that scan the key columns before the index of all is built.
_SCANNED_LOOKUPS = 8
#: Groups whose sums one step of iterating over reports exports at once.
_REPORT_CHUNK = 1024
#: Groups whose scalar fields one step of iterating over reports computes at once.
_ARRAY_CHUNK = 1 << 18
#: The sums whose rounded values the scalar fields read.
_FLOAT_SUMS = [
    layout.LOSS, layout.DENOMINATOR, layout.WEIGHT, layout.DENOMINATOR_SQUARED, layout.POSITIVE
]  # fmt: skip
#: The quotients of sums :func:`kernels.group_values` rounds for every group.
_RATIOS = ("loss", "accuracy", "entropy", "cross_entropy", "target")
_RATIO_PAIRS = np.array(
    [
        [layout.LOSS, layout.DENOMINATOR],
        [layout.CORRECT, layout.WEIGHT],
        [layout.ENTROPY, layout.WEIGHT],
        [layout.LOSS, layout.WEIGHT],
        [layout.TARGET_ENTROPY, layout.WEIGHT],
    ],
    dtype=np.int64,
)


#: Distinct integers whose decimal text :meth:`GroupTable.states_json` keeps.
_DECIMALS_KEPT = 1 << 16
#: Rows of a batch from which threads add its runs (below, a parallel launch costs more).
_PARALLEL_ROWS = 1 << 15
#: Rows a thread's block of runs holds, about: blocks of a fixed number of runs left a
#: batch of 1e3 groups (700-row runs) to one thread.
_ROWS_PER_RUN_BLOCK = 1 << 14


def _run_blocks(run_starts: np.ndarray) -> np.ndarray:
    """Run boundaries of blocks of about ``_ROWS_PER_RUN_BLOCK`` rows each (a run is
    never split): ``block_runs`` of :func:`~xentstream._kernels.groups.add_runs_parallel`."""
    n_rows = int(run_starts[-1])
    n_blocks = max(1, n_rows // _ROWS_PER_RUN_BLOCK)
    targets = np.linspace(0, n_rows, n_blocks + 1)[1:-1]
    inner = np.searchsorted(run_starts, targets)
    return np.unique(np.concatenate(([0], inner, [run_starts.shape[0] - 1]))).astype(np.int64)


def _parallel_is_safe() -> bool:
    """Whether a parallel kernel may run now: numba's "workqueue" threading layer aborts
    when two threads run parallel kernels at once (OpenMP and TBB do not)."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # no parallel kernel ran yet: the layer is not chosen
        return False


#: The table's per-group arrays and the value of an empty group in each.
_GROUP_ARRAYS = {
    "base": -1,
    "window": 0,
    "wide": -1,
    "pending": 0,
    "counts": 0,
    "labels": 0,
    "labels_known": True,
}


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


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with room for ``rows`` rows, the new ones not set.

    ``np.empty``, not ``np.zeros``: numpy asks for transparent huge pages on large
    allocations it makes itself, while calloc's zero pages fault one 4 KiB page at a
    time when first written (measured: writing 560 MB of new groups 1.64 s after
    ``np.zeros``, 0.44 s after ``np.empty``).
    """
    grown = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


# -- many groups' reports and states at once ----------------------------------------------

_UNIT_DENOMINATOR = 1 << 1075  # accumulator integers count units of 2**-1075
_Z95 = NormalDist().inv_cdf(0.975)
_LOG2 = math.log(2.0)


def exact_integers(rows: np.ndarray) -> list[int]:
    """:func:`accumulator.exact_integer` of every normalized row of ``rows``
    ``(n, N_SLOTS)``, at once: the 32-bit digits of all rows in one buffer, each row's
    nonzero span read by one ``int.from_bytes`` (zero rows cost a comparison)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    top_chunk = N_CHUNKS - 1
    digits = rows[:, :top_chunk]
    nonzero = digits != 0
    low = np.argmax(nonzero, axis=1)
    high = top_chunk - np.argmax(nonzero[:, ::-1], axis=1)
    has_digits = nonzero.any(axis=1)
    width = 4 * top_chunk
    buffer = digits.astype("<u4").tobytes()
    tops = rows[:, top_chunk].tolist()
    out = []
    for i, (lo, hi, some, top) in enumerate(
        zip(low.tolist(), high.tolist(), has_digits.tolist(), tops, strict=True)
    ):
        value = top << (CHUNK_BITS * top_chunk) if top else 0
        if some:
            start = i * width
            part = int.from_bytes(buffer[start + 4 * lo : start + 4 * hi], "little")
            value += part << (CHUNK_BITS * lo)
        out.append(value)
    return out
