"""Evaluate a metric over a source of any size: ``evaluate`` / ``stream`` (SPEC section 5).

(The module is ``xentstream.evaluation``: ``xentstream.evaluate`` is the function.)

The loop: a background thread pulls batches from a :class:`~xentstream.feeders.Feeder`
(polars and numpy release the GIL while reading, so reading batch k+1 overlaps
computing batch k), the metric absorbs each batch in one kernel pass, per-group
metrics take their group's share of the same pass, a progress bar shows rows/s and
the running loss, and a checkpoint file records the exact state and the rows
consumed every few seconds and on SIGINT / SIGTERM so that a stopped run resumes
where it stopped, ending bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import decimal
import glob
import hashlib
import json
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xentstream._errors import shorten, show
from xentstream._kernels import layout
from xentstream.accumulator import ExactState
from xentstream.calibration import FORECASTS, MAX_GROUP_BINS, GroupBins, group_batch_bins
from xentstream.calibration import SCALARS as CALIBRATION_SCALARS
from xentstream.comparing import GroupedComparison, PairedRows, open_pair
from xentstream.comparison import Comparison, ComparisonReport
from xentstream.feeders import Batch, ColumnSpec, Feeder, open_source
from xentstream.grouping import (
    GroupColumns,
    GroupKeys,
    GroupReports,
    GroupTable,
    canonical_key,
    keys_from_json,
    keys_to_json,
)
from xentstream.metrics import Metric
from xentstream.report import FLAT_SCALAR_FIELDS, Report
from xentstream.state import read_json, write_json_atomic

__all__ = [
    "Evaluation",
    "GroupState",
    "GroupedReport",
    "Interrupted",
    "compare",
    "compile_notice",
    "evaluate",
    "grouped_state_dict",
    "merge_grouped_states",
    "stream",
]

CHECKPOINT_FORMAT = "xentstream.checkpoint"
#: 2: with base_rows and metric_rows_per_row, which make a checkpoint self-checking;
#: 3: groups as a columnar table (``GroupState.to_json``). Version 2 is still read.
CHECKPOINT_VERSION = 3
_CHECKPOINT_VERSIONS_READ = (2, 3)
#: Seconds between checkpoint writes: often enough to lose little on a kill, rarely
#: enough that writing the JSON never shows in the throughput.
CHECKPOINT_INTERVAL_S = 5.0
_PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class GroupedReport:
    """Reports of a grouped evaluation: the overall one and one per group.

    Attributes
    ----------
    overall : Report
        Every row, as without ``by``.
    by : tuple of str
        The group columns.
    groups : Mapping
        Group key (a tuple of the ``by`` values) -> :class:`Report`, sorted by key
        (nulls last) unless :meth:`sorted` or :meth:`top` ordered them otherwise. Each
        report is built when read, so that millions of groups cost nothing unread.

    Examples
    --------
    >>> import polars as pl, xentstream as xs
    >>> frame = pl.DataFrame(
    ...     {"p": [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], "y": [0, 0, 1], "g": ["a", "b", "b"]}
    ... )
    >>> result = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g")
    >>> [key for key in result.groups]
    [('a',), ('b',)]
    >>> [key for key in result.top(1).groups], result.filter(min_count=2).groups[("b",)].count
    ([('b',)], 2)
    """

    overall: Report
    by: tuple[str, ...]
    groups: Mapping[tuple[Any, ...], Report] = field(default_factory=dict)
    # The exact states behind the reports (for grouped state files), not a result.
    _states: Any = field(default=None, compare=False, repr=False)

    def to_polars(self) -> pl.DataFrame:
        """One row per group: key columns, then the scalar report fields as
        :meth:`Report.scalars` names them (``ci95`` as ``ci95_low`` / ``ci95_high``).

        With ``calibration_bins``, each group's ``ece``, ``mce`` and ``brier``, then its
        calibration's other scalars (:data:`CALIBRATION_COLUMNS`: the Brier score's
        decomposition and the binned log-loss split)."""
        if isinstance(self.groups, GroupReports):
            keys = self.groups.keys.frame[self.groups.codes]
        else:
            keys = pl.DataFrame(
                [list(column) for column in zip(*self.groups, strict=True)] or None,
                schema=list(self.by),
                orient="col",
            )
        columns = None
        if isinstance(self.groups, GroupReports):  # every group at once, no Report each
            columns = self.groups.scalar_columns()
        if columns is None:
            columns = {name: [] for name in FLAT_SCALAR_FIELDS}
            for report in self.groups.values():
                scalars = report.scalars()
                for name, values in columns.items():
                    values.append(scalars.get(name))
        extra: dict[str, Any] = {}
        if self.overall.calibration is not None:
            if isinstance(self.groups, GroupReports):
                extra = self.groups.calibration_columns() or {}
            else:
                extra = {
                    name: [
                        None if r.calibration is None else getattr(r.calibration, name)
                        for r in self.groups.values()
                    ]
                    for name in CALIBRATION_COLUMNS
                }
            extra = {name: extra[name] for name in CALIBRATION_COLUMNS if name in extra}
        if not keys.height:  # no row read: still the key and report columns
            schema = {name: pl.Float64 for name in extra}
            return pl.DataFrame(schema=[*self.by, *FLAT_SCALAR_FIELDS, *schema])
        return keys.hstack(
            [
                values if isinstance(values, pl.Series) else pl.Series(name, values, strict=False)
                for name, values in {**columns, **extra}.items()
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: ``overall`` and a list of ``groups`` with their keys."""
        return {
            "overall": self.overall.to_dict(),
            "by": list(self.by),
            "groups": [
                {"key": [_plain_key(v) for v in key], **report.to_dict()}
                for key, report in self.groups.items()
            ],
        }

    def state_size(self) -> dict[str, int]:
        """The exact group state behind these reports: ``bytes`` of its table in use and
        the groups ``widened`` to full accumulators (their terms left the group's compact
        window). Empty for a report built without one (merged from other reports).

        Examples
        --------
        >>> import polars as pl, xentstream as xs
        >>> frame = pl.DataFrame({"p": [[0.9, 0.1], [0.4, 0.6]], "y": [0, 1], "g": [1, 2]})
        >>> size = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g").state_size()
        >>> size["bytes"] > 0, size["widened"]
        (True, 0)
        """
        if self._states is None:
            return {}
        table = self._states[1].table
        return {"bytes": table.nbytes, "widened": table.n_widened()}

    def sorted(self, by: str = "key") -> GroupedReport:
        """The groups ordered by key (``"key"``) or by mean loss, highest first
        (``"loss"``; groups without a counted row last)."""
        if by not in ("key", "loss"):
            raise ValueError(f"sort: must be 'key' or 'loss', got {by!r}")
        reports = self._reports()
        if reports is None:  # a mapping built elsewhere: its reports are at hand
            if by == "key":
                return self
            return replace(self, groups=dict(sorted(self.groups.items(), key=_worst_first)))
        if by == "key":
            return replace(self, groups=reports.subset(_key_sorted(self._states[1], reports.codes)))
        return replace(self, groups=reports.subset(reports.by_loss()))

    def top(self, k: int) -> GroupedReport:
        """The ``k`` groups of highest mean loss (the worst), highest first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"top: must be a non-negative integer, got {k!r}")
        reports = self._reports()
        if reports is None:
            return replace(self, groups=dict(list(self.sorted("loss").groups.items())[:k]))
        return replace(self, groups=reports.subset(reports.by_loss()[:k]))

    def filter(self, *, min_count: int = 0) -> GroupedReport:
        """Only the groups with at least ``min_count`` counted rows (order kept)."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
            raise ValueError(f"min_count: must be a non-negative integer, got {min_count!r}")
        reports = self._reports()
        if reports is None:
            kept = {key: r for key, r in self.groups.items() if r.count >= min_count}
            return replace(self, groups=kept)
        return replace(self, groups=reports.subset(reports.codes[reports.counts() >= min_count]))

    def _reports(self) -> GroupReports | None:
        return self.groups if isinstance(self.groups, GroupReports) else None


#: The calibration scalars :meth:`GroupedReport.to_polars` adds after the report fields
#: (``ece`` / ``mce`` / ``brier`` are report fields already).
CALIBRATION_COLUMNS = tuple(
    name for name in CALIBRATION_SCALARS if name not in ("count", *FLAT_SCALAR_FIELDS)
)

_KEY_TYPES = {
    "datetime": (datetime.datetime, datetime.datetime.isoformat, datetime.datetime.fromisoformat),
    "date": (datetime.date, datetime.date.isoformat, datetime.date.fromisoformat),
    "time": (datetime.time, datetime.time.isoformat, datetime.time.fromisoformat),
    "timedelta": (
        datetime.timedelta,
        lambda v: [v.days, v.seconds, v.microseconds],
        lambda v: datetime.timedelta(*v),
    ),
    "decimal": (decimal.Decimal, str, decimal.Decimal),
}


def _key_to_json(value: Any) -> Any:
    """A group key value as JSON: temporal and decimal values tagged with their type."""
    for tag, (kind, encode, _) in _KEY_TYPES.items():  # datetime before its base class date
        if isinstance(value, kind):
            return {tag: encode(value)}
    return value


def _plain_key(value: Any) -> Any:
    """A group key value for output: temporal values as ISO strings, decimals as text."""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta | decimal.Decimal):
        return str(value)
    return value


def _key_from_json(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _KEY_TYPES:
        tag, encoded = next(iter(value.items()))
        return _KEY_TYPES[tag][2](encoded)
    return value


def _entry_key(entry: Any, width: int, strict: bool) -> tuple[Any, ...]:
    """The key of a saved group (``{key: [...], state: ...}``), its shape checked when
    ``strict``."""
    if strict and not (
        isinstance(entry, dict)
        and set(entry) == {"key", "state"}
        and isinstance(entry["key"], list)
        and len(entry["key"]) == width
    ):
        raise ValueError(f"a group must be {{key: [{width} values], state: ...}}")
    return canonical_key(tuple(_key_from_json(v) for v in entry["key"]))


class GroupState:
    """Group keys -> codes (first appearance order) and every group's exact state.

    What a grouped evaluation (``by=``) holds beside its overall metric: each batch's
    key columns become the batch's own group numbers (:meth:`codes`) that the kernels
    sum by, and each group's share of the batch goes to its exact state in arrays
    (:mod:`xentstream.grouping`: a few hundred bytes a group, a batch's cost its rows
    plus its groups, whatever the number of groups; :meth:`absorb`). The groups'
    states travel as JSON (:meth:`to_json`, :meth:`load_json`): checkpoints, grouped
    state files and :mod:`xentstream.dask`'s partition states. With
    ``calibration_bins``, every group keeps its reliability bins too
    (:class:`~xentstream.calibration.GroupBins`, at most
    :data:`~xentstream.calibration.MAX_GROUP_BINS` groups times bins), each group's
    under its state's ``calibration`` key.

    Parameters
    ----------
    by : tuple of str
        The group columns.
    template : Metric
        Every group's metric has its class and config (without per-class sums) and
        engine.
    """

    #: Whether the groups keep reliability bins when the template does (not the
    #: groups kept as a metric each: their kinds and comparisons report none).
    _keeps_bins = True

    def __new__(cls, by: tuple[str, ...], template: Metric) -> GroupState:
        # A kind whose state is more than an ExactState (the token kind's documents)
        # keeps one metric per group (_MetricGroups).
        if cls is GroupState and type(template.state) is not ExactState:
            cls = _MetricGroups
        return super().__new__(cls)

    def __init__(self, by: tuple[str, ...], template: Metric) -> None:
        self.by = by
        self.template = template
        self._keys = GroupKeys(by)
        self.table = GroupTable(counts_labels=template.kind.counts_labels)
        self.group_metric = self._new_metric()  # config of every group (no per-class)
        self._scratch = self._new_metric()
        n_bins = self.group_metric.config.calibration_bins
        self.bins = None if n_bins is None else GroupBins(n_bins)
        # The last batch's groups: each row's run, where runs start, each run's code;
        # and the rows in run order (the groups' reliability bins read them so).
        self._runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._order: np.ndarray | None = None

    def _new_metric(self) -> Metric:
        config = self.template.config
        flag = self.template.kind.per_class_field
        if flag is not None and getattr(config, flag):
            config = replace(config, **{flag: False})
        if config.calibration_bins is not None and not self._keeps_bins:
            config = replace(config, calibration_bins=None)
        return type(self.template).from_config(config, engine=self.template.engine, window=None)

    @property
    def keys(self) -> list[tuple[Any, ...]]:
        """Every group's key, in code order (first appearance)."""
        return self._keys.tuples()

    @property
    def n_groups(self) -> int:
        return len(self._keys)

    @property
    def rows_seen(self) -> int:
        return self.table.rows_seen

    @property
    def batch_groups(self) -> int:
        """Groups of the batch :meth:`codes` numbered last."""
        return 0 if self._runs is None else int(self._runs[2].shape[0])

    def codes(self, keys: pl.DataFrame) -> np.ndarray:
        """Codes of the rows of ``keys`` for the kernels: the batch's own numbering of
        its groups, ``[0, batch_groups)`` (new keys get new groups).

        Raises
        ------
        ValueError
            With reliability bins, where the batch's new keys would pass
            :data:`~xentstream.calibration.MAX_GROUP_BINS` (nothing changes).
        """
        if self.bins is not None:
            self._check_bins_room(keys)
        runs, order, run_starts, run_codes = self._keys.codes(keys)
        self.table.resize(len(self._keys))
        if self.bins is not None:
            self.bins.resize(len(self._keys))
        self._runs = (runs, run_starts, run_codes)
        self._order = order
        return runs

    def _check_bins_room(self, keys: pl.DataFrame) -> None:
        """Refuse keys whose new groups' bins would pass the cap (before any is added)."""
        limit = MAX_GROUP_BINS // self.bins.n_bins
        if self.n_groups + keys.height <= limit:
            return  # the common case: no look at the keys
        distinct = keys.select(self.by).unique()
        if self.n_groups:
            known = self._keys.frame
            schema = pl.concat([known.head(0), distinct.head(0)], how="vertical_relaxed").schema
            distinct = distinct.cast(dict(schema)).join(
                known.cast(dict(schema)), on=list(self.by), how="anti", nulls_equal=True
            )
        self.bins.check_groups(self.n_groups + distinct.height, self.by)

    def absorb(
        self, metric: Metric, result: Any, target: Any, sample_weight: Any, preds: Any = None
    ) -> None:
        """Add the groups' shares of a batch that :meth:`codes` numbered (``result``:
        what ``metric.accumulate`` returned for it; ``preds``: its inputs, for the
        groups' reliability bins)."""
        runs, run_starts, run_codes = self._runs
        if result.row_terms is not None:  # many groups on the CPU: every row's terms
            self.table.add_grouped_rows(run_starts, run_codes, result.row_terms)
        else:  # few groups, or the CUDA engine: the kernel's sums of each of them
            self.table.add_sums(run_codes, result.group_sums, result.group_counts)
        if run_codes.size:
            labels = metric.group_label_counts(
                target, sample_weight, runs, run_codes.shape[0], batch=result
            )
            self.table.add_label_counts(run_codes, labels)
        if self.bins is not None and run_codes.size and result.n_rows:
            self._add_bins(metric, preds, target, sample_weight, run_starts, run_codes, result)

    def _add_bins(
        self,
        metric: Metric,
        preds: Any,
        target: Any,
        sample_weight: Any,
        run_starts: np.ndarray,
        run_codes: np.ndarray,
        result: Any,
    ) -> None:
        """The batch's rows binned by group (inputs the metric's kernels validated; the
        forecasts its kernel wrote, where it wrote them)."""
        if preds is None:
            raise ValueError("calibration_bins: the groups' reliability bins need the preds")
        config = metric.config
        group_batch_bins(
            FORECASTS[metric.kind.class_axis],
            preds,
            target,
            sample_weight,
            self._order,
            run_starts,
            run_codes,
            self.bins,
            input=config.input,
            ignore_index=getattr(config, "ignore_index", None),
            sum_tol=config.resolve_sum_tol(np.dtype(np.float64)),
            forecasts=result.row_forecasts,
        )

    def _with_bins(self, code: int, state: dict[str, Any]) -> dict[str, Any]:
        """A group's state dict with its reliability bins (its own ``calibration`` key)."""
        if self.bins is not None:
            state["calibration"] = self.bins.state(code).to_json()
        return state

    def to_json(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The groups as JSON: a columnar table (:data:`GROUPS_FORMAT`; keys as lists,
        every group's exact sums as base64 arrays,
        :class:`~xentstream.grouping.GroupColumns`), in code order (first appearance);
        per-group entries ``{key, state}`` (the format before it, which
        :meth:`load_json` still reads) only for keys of a type without a columnar form
        (decimals, nested values) and groups with per-class sums or reliability bins.

        The table is a function of the groups' keys, order and exact states: the
        same groups give the same text whatever the batches and merges that made them.
        """
        # The groups' config as the overall metric's is now (its class count inferred
        # by the first batch): one run and merged shards write the same.
        template = self._new_metric().state_dict()
        keys = keys_to_json(self._keys.frame)
        # Groups of per-class sums or of reliability bins (a few thousand at most, capped
        # by MAX_GROUP_BINS) are written as entries: the table holds loss sums only.
        if template["class_sums"] is not None or keys is None or self.bins is not None:
            return self._entries_json(template)
        columns = self.table.columns(np.arange(self.n_groups, dtype=np.int64))
        return {
            "format": GROUPS_FORMAT,
            "version": GROUPS_VERSION,
            "metric": template,
            "sum_names": list(layout.SUM_NAMES),
            "count_names": list(layout.COUNT_NAMES),
            "n_groups": self.n_groups,
            "keys": keys,
            **columns.to_json(),
        }

    def _entries_json(self, template: dict[str, Any]) -> list[dict[str, Any]]:
        zero_classes = template["n_classes"] if template["class_sums"] is not None else None
        if zero_classes:  # per-class zeros in every group: each state as it writes itself
            return self._states_json(template, zero_classes)
        keys = self.keys
        # Keys _key_to_json would write as they are: no per-value type tests.
        plain = all(
            not dtype.is_temporal() and dtype not in (pl.Decimal, pl.Object)
            for dtype in self._keys.frame.dtypes
        )
        entries = []
        for start in range(0, len(keys), _JSON_GROUPS):
            codes = np.arange(start, min(start + _JSON_GROUPS, len(keys)))
            states = self.table.states_json(codes)
            for code, state in zip(codes.tolist(), states, strict=True):
                key = list(keys[code]) if plain else [_key_to_json(v) for v in keys[code]]
                entries.append({"key": key, "state": self._with_bins(code, {**template, **state})})
        return entries

    def _states_json(self, template: dict[str, Any], zero_classes: int) -> list[dict[str, Any]]:
        keys = self.keys
        entries = []
        for start in range(0, len(keys), _JSON_GROUPS):
            codes = np.arange(start, min(start + _JSON_GROUPS, len(keys)))
            sums = self.table.sums(codes)
            for code, group_sums in zip(codes.tolist(), sums, strict=True):
                state = self.table.state(code, group_sums).to_json(zero_classes)
                entries.append(
                    {
                        "key": [_key_to_json(v) for v in keys[code]],
                        "state": self._with_bins(code, {**template, **state}),
                    }
                )
        return entries

    def load_json(self, entries: Any, *, strict: bool = False) -> None:
        """Add saved groups (:meth:`to_json`: a columnar table, or per-group entries):
        a known key's state is merged into its group, a new key is appended. Loading
        the groups of consecutive parts of a stream in order thus keeps the keys in
        order of first appearance.

        A table's groups must be of this grouping and of this metric's kind and
        config, with distinct keys; ``strict`` (one saved stream, a checkpoint) asks
        the same of entries. Nothing changes when a group is refused.

        Raises
        ------
        ValueError
            For a malformed table or entry (naming the part and, for a refused
            group's numbers, its key), a group of another config, a repeated key.
        """
        if isinstance(entries, dict):
            self._load_columns(entries)
            return
        if not isinstance(entries, list):
            raise ValueError("groups: must be a table of groups or a list of entries")
        states: dict[tuple[Any, ...], ExactState] = {}
        for entry in entries:
            key = _entry_key(entry, len(self.by), strict)
            if strict:
                if key in states:
                    raise ValueError(f"group key {show(list(key))} appears twice")
                # Of this grouping's kind and config, or it raises.
                state = self._scratch.load_state_dict(entry["state"]).state.copy()
            else:
                state = Metric.from_state_dict(entry["state"]).state
            if self.bins is not None and (
                state.calibration is None or state.calibration.n_bins != self.bins.n_bins
            ):
                raise ValueError(
                    f"group key {show(list(key))}: its state keeps no reliability bins of "
                    f"{self.bins.n_bins} calibration_bins, as this grouping's groups do (a "
                    "state saved before grouped runs kept them, or of another config)"
                )
            if key in states:
                states[key].merge(state)
            else:
                states[key] = state
        if not states:
            return
        if self.bins is not None:
            known = set(self.keys)
            self.bins.check_groups(self.n_groups + sum(key not in known for key in states), self.by)
        codes = self._keys.assign_tuples(list(states))
        self.table.resize(len(self._keys))
        loaded = list(states.values())
        if self.bins is not None:
            self.bins.resize(len(self._keys))
            self.bins.add(
                codes,
                np.stack([state.calibration.sums for state in loaded]),
                np.stack([state.calibration.counts for state in loaded]),
            )
        self.table.add_sums(
            codes,
            np.stack([state.sums for state in loaded]),
            np.stack([state.counts for state in loaded]),
        )
        if self.table.counts_labels:
            known = np.array([state.label_counts is not None for state in loaded])
            self.table.add_label_counts(codes[~known], None)
            counted = [state.label_counts for state in loaded if state.label_counts is not None]
            if counted:
                labels = np.zeros((len(counted), max(map(len, counted))), dtype=np.int64)
                for row, label_counts in enumerate(counted):
                    labels[row, : len(label_counts)] = label_counts
                self.table.add_label_counts(codes[known], labels)

    def _load_columns(self, data: dict[str, Any]) -> None:
        """:meth:`load_json` of a columnar table: its form checked array by array, the
        groups' numbers screened at once (``GroupColumns.check``) and only the groups
        the screen doubts checked one by one, as a metric state; then added into the
        table a few thousand at a time."""
        if self.bins is not None:  # to_json writes groups with bins as entries
            raise ValueError(
                "groups: a table of groups keeps no reliability bins, as this grouping's "
                f"groups do ({self.bins.n_bins} calibration_bins)"
            )
        fields = set(_GROUPS_KEYS)
        if set(data) != fields:
            extra = sorted(set(data) - fields)[:3] or sorted(fields - set(data))[:3]
            raise ValueError(f"groups: not a table of groups (keys {', '.join(map(repr, extra))})")
        version = data["version"]
        if data["format"] != GROUPS_FORMAT or not _is_version(version, (GROUPS_VERSION,)):
            raise ValueError(
                f"groups: format {show(data['format'])} version {show(version)} is not "
                f"supported (expected {GROUPS_FORMAT!r} version {GROUPS_VERSION})"
            )
        for name, names in (("sum_names", layout.SUM_NAMES), ("count_names", layout.COUNT_NAMES)):
            if data[name] != list(names):
                raise ValueError(f"groups.{name}: {show(data[name], 80)}, expected {list(names)}")
        n_groups = data["n_groups"]
        if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups < 0:
            raise ValueError(f"groups.n_groups: {show(n_groups)} is not a number of groups")
        try:
            # Of this grouping's kind and config, or it raises.
            self._scratch.load_state_dict(data["metric"])
        except ValueError as error:
            raise ValueError(f"groups.metric: {error}") from None
        try:
            columns = GroupColumns.from_json(data, counts_labels=self.table.counts_labels)
            if columns.n_groups != n_groups:
                raise ValueError(f"counts: {columns.n_groups} groups, n_groups says {n_groups}")
            config = self.group_metric.config
            doubtful = columns.check(
                validate=bool(config.validate),
                unit_denominators=bool(self.group_metric.kind.unit_denominators(config)),
            )
            keys = keys_from_json(data["keys"], self.by, n_groups)
        except ValueError as error:
            raise ValueError(f"groups.{error}") from None
        repeated = keys.is_duplicated()
        if repeated.any():
            key = keys.filter(repeated).row(0)
            raise ValueError(f"group key {show(list(key))} appears twice")
        template = data["metric"]
        for group in doubtful.tolist():
            try:
                self._scratch.load_state_dict({**template, **columns.state_json(group)})
            except ValueError as error:
                raise ValueError(f"group key {show(list(keys.row(group)))}: {error}") from None
        self._scratch.reset()
        if not n_groups:
            return
        codes = self._keys.assign(keys)
        self.table.resize(len(self._keys))
        self.table.add_columns(codes, columns)

    def packed(self) -> dict[str, Any] | None:
        """The groups as arrays, for merging in memory (:mod:`xentstream.dask`'s
        partition states; not a file format): the keys frame and the table's rows, a
        few hundred bytes a group, where :meth:`to_json` takes kilobytes. None for
        groups kept as one metric each."""
        bins = None if self.bins is None else self.bins.packed()
        return {"keys": self._keys.frame, "table": self.table.packed(), "bins": bins}

    def merge_packed(self, packed: dict[str, Any]) -> None:
        """Add groups :meth:`packed` by a grouping of the same metric and config (the
        caller's check), exactly as :meth:`load_json` of their states would: a known
        key's sums are merged into its group, a new key is appended; a few thousand
        groups at a time, so merging needs little memory beyond the two tables."""
        other = GroupTable.from_packed(packed["table"])
        if not other.n_groups:
            return
        bins = packed.get("bins")
        if (bins is None) != (self.bins is None):
            raise ValueError("calibration_bins: groups with reliability bins and groups without")
        if self.bins is not None:
            self._check_bins_room(packed["keys"])
        codes = self._keys.assign(packed["keys"])
        self.table.resize(len(self._keys))
        if self.bins is not None:
            self.bins.resize(len(self._keys))
        for start in range(0, other.n_groups, _JSON_GROUPS):
            chunk = np.arange(start, min(start + _JSON_GROUPS, other.n_groups))
            into = codes[chunk]
            self.table.add_sums(into, other.sums(chunk), other.counts[chunk])
            if self.table.counts_labels:
                known = other.labels_known[chunk]
                self.table.add_label_counts(into[~known], None)
                if known.any():
                    self.table.add_label_counts(into[known], other.labels[chunk[known]])
            if self.bins is not None:
                self.bins.add(into, bins["sums"][chunk], bins["counts"][chunk])

    def sorted_codes(self) -> np.ndarray:
        """Codes in key order: values ascending, then NaN, then null (as polars sorts)."""
        frame = self._keys.frame.with_row_index(_CODE_COLUMN)
        try:
            ordered = frame.sort(list(self.by), nulls_last=True, maintain_order=True)
        except pl.exceptions.PolarsError:  # keys that do not compare: first appearance
            return np.arange(self.n_groups, dtype=np.int64)
        return ordered[_CODE_COLUMN].to_numpy().astype(np.int64)

    def reports(self, codes: np.ndarray | None = None) -> GroupReports:
        """Reports of groups ``codes`` (default: all, in first appearance), built on access."""
        if codes is None:
            codes = np.arange(self.n_groups, dtype=np.int64)
        metric = self.group_metric
        return GroupReports(
            self.table, self._keys, metric.report_of, codes, metric, calibration=self.bins
        )


class _MetricGroups(GroupState):
    """Groups as one metric each, for kinds whose state is more than an
    :class:`ExactState` (the token kind's per-document sums): what every kind used
    before :class:`~xentstream.grouping.GroupTable`, memory and time per group. They
    keep no reliability bins (comparisons report none; the token kind has none)."""

    _keeps_bins = False

    def __init__(self, by: tuple[str, ...], template: Metric) -> None:
        self.by = by
        self.template = template
        self.group_metric = self._new_metric()
        self._scratch = self._new_metric()
        self._keys = GroupKeys(by)
        self.metrics: list[Metric] = []
        self._runs = None
        self.bins = None

    @property
    def rows_seen(self) -> int:
        return sum(m.rows_seen for m in self.metrics)

    def _grow(self) -> None:
        while len(self.metrics) < len(self._keys):
            self.metrics.append(self._new_metric())

    @property
    def batch_groups(self) -> int:
        return self.n_groups

    def codes(self, keys: pl.DataFrame) -> np.ndarray:
        """Group code of every row of ``keys`` (new keys get new codes)."""
        runs, _, run_starts, run_codes = self._keys.codes(keys)
        self._grow()
        self._runs = (run_codes[runs], run_starts, run_codes)
        return self._runs[0]

    def absorb(
        self, metric: Metric, result: Any, target: Any, sample_weight: Any, preds: Any = None
    ) -> None:
        codes = self._runs[0]
        labels = metric.group_label_counts(
            target, sample_weight, codes, self.n_groups, batch=result
        )
        # Per-document sums per group: only token batches with documents have them.
        documents = getattr(result, "group_documents", None)
        for code in np.flatnonzero(result.group_counts.sum(axis=1)):
            group_labels = None if labels is None else labels[code]
            extra = {} if documents is None else {"documents": documents[int(code)]}
            self.metrics[code].state.add(
                result.group_sums[code],
                result.group_counts[code],
                label_counts=group_labels,
                **extra,
            )

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"key": [_key_to_json(v) for v in key], "state": m.state_dict()}
            for key, m in zip(self.keys, self.metrics, strict=True)
        ]

    def load_json(self, entries: Any, *, strict: bool = False) -> None:
        if not isinstance(entries, list):
            raise ValueError(
                "groups: must be a list of entries (groups of this metric are kept one metric each)"
            )
        loaded: dict[tuple[Any, ...], Metric] = {}
        for entry in entries:
            key = _entry_key(entry, len(self.by), strict)
            metric = type(self.group_metric).from_state_dict(entry["state"])
            if strict:
                if key in loaded:
                    raise ValueError(f"group key {show(list(key))} appears twice")
                self._scratch.load_state_dict(entry["state"])  # same kind and config
            if key in loaded:
                loaded[key].merge(metric)
            else:
                loaded[key] = metric
        if not loaded:
            return
        codes = self._keys.assign_tuples(list(loaded))
        self._grow()
        for code, metric in zip(codes.tolist(), loaded.values(), strict=True):
            self.metrics[code].merge(metric)

    def packed(self) -> None:
        return None

    def reports(self, codes: np.ndarray | None = None) -> dict[tuple[Any, ...], Report]:
        if codes is None:
            codes = np.arange(self.n_groups, dtype=np.int64)
        keys = self.keys
        return {keys[c]: self.metrics[c].compute() for c in codes.tolist()}


class _ComparisonGroups(_MetricGroups):
    """One :class:`~xentstream.Comparison` per group (a grouped comparison): each
    takes its group's share of the models' and the paired sums of every batch."""

    def __init__(self, by: tuple[str, ...], template: Comparison) -> None:
        super().__init__(by, template.model)

    def _new_metric(self) -> Comparison:  # type: ignore[override]
        return Comparison(super()._new_metric())

    def absorb(
        self, metric: Any, result: Any, target: Any, sample_weight: Any, preds: Any = None
    ) -> None:
        if result.model.group_counts is None:  # no row
            return
        codes = self._runs[0]
        labels = metric.model.group_label_counts(
            target, sample_weight, codes, self.n_groups, batch=result.model
        )
        for code in np.flatnonzero(result.model.group_counts.sum(axis=1)):
            self.metrics[code].absorb_group(result, int(code), labels)


#: Groups whose accumulators one step of :meth:`GroupState.to_json` widens at once.
_JSON_GROUPS = 4096
#: The columnar table of groups that :meth:`GroupState.to_json` writes.
GROUPS_FORMAT = "xentstream.groups"
GROUPS_VERSION = 1
_GROUPS_KEYS = (
    "format", "version", "metric", "sum_names", "count_names", "n_groups", "keys",
    "counts", "spans", "digits", "special", "special_sums", "label_counts", "labels_known",
)  # fmt: skip


def _is_version(value: Any, versions: tuple[int, ...]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in versions


_CODE_COLUMN = "__xentstream_code"


def _prefetch(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Read ahead in a background thread; exceptions are re-raised in the consumer."""
    pipe: queue.Queue = queue.Queue(maxsize=_PREFETCH_BATCHES)
    done = object()
    stop = threading.Event()

    def reader() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        pipe.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            pipe.put(done)
        except BaseException as error:  # handed to the consumer
            pipe.put(error)

    thread = threading.Thread(target=reader, name="xentstream-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = pipe.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _kernels_compiled() -> bool:
    """Whether the CPU kernels are compiled in this process or in numba's disk cache
    (best effort: the cache next to the kernels, or under ``NUMBA_CACHE_DIR``)."""
    from xentstream._kernels import cpu

    if any(getattr(kernel, "signatures", None) for kernel in vars(cpu).values()):
        return True
    root = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(cpu.__file__).parent / "__pycache__")
    try:
        return any(root.rglob("cpu.*.nbi"))
    except OSError:
        return True  # unknown: say nothing rather than something wrong


#: What the user is told while kernels compile (a cold cache: seconds of silence).
COMPILING = "xentstream: compiling kernels (first run only)"


@contextlib.contextmanager
def compile_notice(stream: Any = None, *, enabled: bool | None = None) -> Iterator[None]:
    """Say once, on ``stream`` (stderr), when a kernel of xentstream starts compiling.

    For steps outside a progress bar (the bar says it itself): a grouped report's
    ``top`` and a state file's load compile kernels of their own on a fresh machine,
    ~5-12 s without a word. numba's ``numba:compile`` event fires only for a real
    compile, not for a disk-cache load, so a warm run says nothing. ``enabled``:
    default, whether ``stream`` is a terminal.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with compile_notice(out, enabled=True):
    ...     pass  # nothing compiled here: nothing said
    >>> out.getvalue()
    ''
    """
    stream = sys.stderr if stream is None else stream
    if enabled is None:
        enabled = bool(getattr(stream, "isatty", lambda: False)())
    if not enabled:
        yield
        return
    from numba.core import event

    class _Notice(event.Listener):
        said = False

        def on_start(self, ev: Any) -> None:
            dispatcher = (ev.data or {}).get("dispatcher")
            module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
            if not self.said and module.split(".")[0] == "xentstream":
                self.said = True
                print(f"{COMPILING}...", file=stream, flush=True)

        def on_end(self, ev: Any) -> None:
            pass

    with event.install_listener("numba:compile", _Notice()):
        yield


class _Progress:
    """A tqdm bar with rows/s and the running loss +- stderr; off when not wanted.

    Until the first batch is done it says when the kernels are being compiled (the
    first run on a machine waits ~10 s there, which would otherwise look like a hang).
    The postfix is short so that the bar keeps its width in an 80-column terminal, and
    it shows the final loss when the bar closes.
    """

    def __init__(self, enabled: bool | None, total: int | None, initial: int) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        self._last = 0.0
        self._metric: Metric | None = None
        if enabled:
            from tqdm.auto import tqdm

            compiling = not _kernels_compiled()
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="rows",
                unit_scale=True,
                dynamic_ncols=True,
                desc=COMPILING if compiling else "xentstream",
            )
            self._compiling = compiling

    def update(self, rows: int, metric: Metric) -> None:
        if self.bar is None:
            return
        self._metric = metric
        if self._compiling:
            self._compiling = False
            self.bar.set_description_str("xentstream", refresh=False)
        self.bar.update(rows)
        now = time.monotonic()
        if now - self._last > 0.5:  # the report costs a little; refresh it twice a second
            self._last = now
            self._show_loss(metric)

    def _show_loss(self, metric: Metric) -> None:
        report = metric.compute()
        text = f"loss {report.loss:.4g}"
        if report.stderr is not None:
            text += f"±{report.stderr:.2g}"
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            if self._metric is not None:
                self._show_loss(self._metric)  # the final loss, not the last refresh's
            self.bar.close()


class Interrupted(KeyboardInterrupt):
    """A run with a checkpoint stopped by Ctrl-C (SIGINT) or SIGTERM.

    The checkpoint was written first (unless a second signal forced an immediate stop
    in the middle of a batch, when the previous checkpoint is kept), so rerunning with
    the same arguments resumes after ``rows`` rows.

    Attributes
    ----------
    signal : int
        The signal that stopped the run.
    rows : int or None
        Rows consumed and saved in ``checkpoint``; None when a forced stop came before
        any checkpoint was written.
    total_rows : int or None
        Rows of the source, when known.
    checkpoint : pathlib.Path
        The checkpoint file.
    """

    def __init__(
        self, signum: int, rows: int | None, total_rows: int | None, checkpoint: Path
    ) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signal = signum
        self.rows = rows
        self.total_rows = total_rows
        self.checkpoint = checkpoint


class _StopSignals:
    """SIGINT / SIGTERM handling while a checkpointed run is inside ``evaluate``.

    A signal outside a batch stops the run at once; inside one (the metric and the
    group states being updated) it stops the run when the batch is done, so that the
    flushed checkpoint is consistent. A second signal inside a batch stops at once and
    the checkpoint is not rewritten. Handlers are installed only in the main thread,
    only over the default handlers (an application's own SIGTERM handler is kept), and
    only while the run's code executes (not while ``stream`` is suspended at a yield).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.forced = False
        self._in_batch = False
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for signum, default in defaults.items():
            if signal.getsignal(signum) is default:
                self._saved[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._in_batch and self.signum is None:
            self.signum = signum  # stop when the batch is done
            return
        self.forced = self._in_batch
        self.signum = signum
        raise KeyboardInterrupt

    def begin_batch(self) -> None:
        self._in_batch = True

    def end_batch(self) -> None:
        self._in_batch = False
        if self.signum is not None:
            raise KeyboardInterrupt


def _fingerprint(feeder_fingerprint: dict[str, Any], metric: Metric | Comparison) -> dict[str, Any]:
    source = dict(feeder_fingerprint)
    columns = source.pop("columns", None)  # an argument, not a property of the files
    return {
        "source": source,
        "columns": columns,
        "metric": type(metric).__name__,
        "config": metric.merge_key(),
    }


def _read_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved checkpoint at ``path`` (None if there is none), checked for this run."""
    if not path.exists():
        return None
    data = read_json(path)
    if data.get("format") != CHECKPOINT_FORMAT or not _is_version(
        data.get("version"), _CHECKPOINT_VERSIONS_READ
    ):
        raise ValueError(
            f"checkpoint {path}: not an xentstream checkpoint of version "
            f"{' or '.join(map(str, _CHECKPOINT_VERSIONS_READ))}"
        )
    missing = sorted(set(_CHECKPOINT_KEYS) - set(data))
    if missing:
        raise ValueError(f"checkpoint {path}: malformed (no {', '.join(missing)})")
    if data["sha256"] != _digest(data):
        raise ValueError(
            f"checkpoint {path}: its content does not match its sha256 (edited or "
            "corrupted); delete it to start over"
        )
    saved = data["fingerprint"]
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {path}: malformed (fingerprint is not a JSON object)")
    expected = json.loads(json.dumps(fingerprint))
    if saved != expected:
        differing = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        files = expected.get("source", {}).get("kind") in ("files", "npy")
        what = f"the source {'files ' if files else ''}changed"
        what = what if "source" in differing else "the arguments differ"
        shown = ", ".join(shorten(str(k), 40) for k in differing[:5])
        raise ValueError(
            f"checkpoint {path}: written for another run ({what}: {shown}); delete it to start over"
        )
    return data


#: Every key a checkpoint holds; ``metric_rows_per_row`` relates the saved metric's
#: rows to the rows consumed (1, or the positions per row of (N, T, C) batches).
_CHECKPOINT_KEYS = (
    "format",
    "version",
    "fingerprint",
    "rows_consumed",
    "base_rows",
    "metric_rows_per_row",
    "metric",
    "groups",
    "sha256",
)


def _load_checkpoint(path: Path, saved: dict[str, Any], run: Evaluation) -> int:
    """Load a checkpoint's state into ``metric`` (and ``groups``); return the rows consumed.

    A checkpoint must be self-consistent: the saved metric holds exactly the rows
    consumed (times ``metric_rows_per_row``, after ``base_rows`` it held before the
    run), and groups are there exactly with ``by=``, with distinct keys, adding up to
    the same rows. Nothing is changed if it is not.
    """

    def bad(rule: str) -> ValueError:
        return ValueError(f"checkpoint {path}: inconsistent ({rule}); delete it to start over")

    consumed, base, per_row = (
        saved["rows_consumed"],
        saved["base_rows"],
        saved["metric_rows_per_row"],
    )
    for name, value in (("rows_consumed", consumed), ("base_rows", base)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
            raise bad(f"{name} must be an integer in [0, 2**63), got {show(value)}")
    if per_row is not None and (
        not isinstance(per_row, int) or isinstance(per_row, bool) or not 0 <= per_row < 1 << 63
    ):
        raise bad(
            f"metric_rows_per_row must be null or a non-negative integer, got {show(per_row)}"
        )
    metric, groups = run.metric, run.groups
    try:
        state = type(metric).from_state_dict(saved["metric"])
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: {error}") from None
    held = state.rows_seen - base
    if held < 0 or (per_row is not None and held != consumed * per_row):
        raise bad(
            f"rows_consumed is {consumed} but the saved metric holds {state.rows_seen} rows"
            + ("" if per_row in (None, 1) else f" ({per_row} per row)")
            + (f" after {base} it held before" if base else "")
        )
    entries = saved["groups"]
    loaded = None
    if groups is None:
        if entries is not None:
            raise bad("it holds groups, but this run has no by=")
    else:
        if not isinstance(entries, list | dict):
            raise bad("this run groups by= but the checkpoint holds no groups")
        loaded = run._new_groups()
        try:
            loaded.load_json(entries, strict=True)
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise bad(f"groups: {show(str(error), 200)}") from None
        in_groups = loaded.rows_seen
        if in_groups != held:
            raise bad(f"the groups hold {in_groups} rows, the metric {held} from this source")
    metric.load_state_dict(saved["metric"])
    if loaded is not None:
        packed = loaded.packed()  # the checked groups' arrays: no second parse
        if packed is None:
            groups.load_json(entries)
        else:
            groups.merge_packed(packed)
    return consumed


def _write_checkpoint(
    path: Path,
    fingerprint: dict[str, Any],
    rows: int,
    counters: tuple[int, int | None],
    metric: Metric | Comparison,
    groups: GroupState | None,
) -> None:
    base, per_row = counters
    data = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "rows_consumed": rows,
        "base_rows": base,
        "metric_rows_per_row": per_row,
        "metric": metric.state_dict(),
        "groups": None if groups is None else groups.to_json(),
    }
    write_json_atomic(path, {**data, "sha256": _digest(data)})


def _digest(data: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (canonical JSON, without the digest itself).

    Any change to a checkpoint (a corrupted byte, an edited count or sum) is refused;
    it is a checksum, not a signature: whoever recomputes it meets the consistency
    checks of :func:`_load_checkpoint` next.
    """
    canonical = json.dumps(
        {k: v for k, v in data.items() if k != "sha256"}, sort_keys=True, allow_nan=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _remove_stale_temp_files(path: Path) -> None:
    """Temporary files of ``path`` left by a writer killed before its rename."""
    pattern = f".{glob.escape(path.name)}.*.tmp"  # write_json_atomic's temp names
    for stale in path.parent.glob(pattern):
        stale.unlink(missing_ok=True)


#: :meth:`Evaluation.fresh`'s default: the comparison's own baseline source.
_SAME: Any = object()


class Evaluation:
    """One evaluation in progress: a metric (or a comparison), the columns it reads
    and its groups.

    The steps :func:`evaluate` and :func:`stream` take, public so that another driver
    runs the very same path: :mod:`xentstream.dask` runs one evaluation per partition
    on its workers (:meth:`feed`, then :meth:`state_dict`), merges their states in
    stream order (:meth:`merge_state_dict`) and reports on the client
    (:meth:`report`).

    Parameters
    ----------
    metric : Metric
        Updated in place by :meth:`feed` and :meth:`merge_state_dict`. (A
        :class:`~xentstream.Comparison` is fed by the evaluation :meth:`of` builds for
        it.)
    spec : ColumnSpec
        The columns (see :meth:`of` to build one from :func:`evaluate`'s arguments).

    Attributes
    ----------
    metric : Metric or Comparison
    spec : ColumnSpec
    groups : GroupState or None
        One metric per group of ``spec.by`` (None without ``by``).
    class_names : list of str or None
        Names of the per-class table's rows: the source's (its resolved columns) once
        :meth:`feed` opened it, until then what the arguments name.

    Examples
    --------
    >>> import polars as pl, xentstream as xs
    >>> from xentstream.evaluation import Evaluation
    >>> frame = pl.DataFrame({"p": [[0.7, 0.3], [0.4, 0.6]], "y": [0, 1], "g": [1, 2]})
    >>> part = Evaluation.of(xs.CrossEntropy(), preds="p", target="y", by="g")
    >>> for _ in part.feed(frame.head(1)):
    ...     pass
    >>> whole = Evaluation.of(xs.CrossEntropy(), preds="p", target="y", by="g")
    >>> for _ in whole.feed(frame.tail(1)):
    ...     pass
    >>> whole.merge_state_dict(part.state_dict())
    >>> report = whole.report()
    >>> report.overall.count, list(report.groups)
    (2, [(1,), (2,)])
    """

    def __init__(self, metric: Metric, spec: ColumnSpec) -> None:
        if not isinstance(metric, Metric):
            raise TypeError(f"metric: expected an xentstream metric, got {type(metric).__name__}")
        self._hold(metric, spec)

    def _hold(self, metric: Metric | Comparison, spec: ColumnSpec) -> None:
        self.metric: Metric | Comparison = metric
        self.spec = spec
        self.groups = self._new_groups()
        self.class_names = _spec_class_names(spec)

    @classmethod
    def of(
        cls,
        metric: Metric | Comparison,
        *,
        preds: Any = None,
        target: Any = None,
        sample_weight: Any = None,
        by: Any = None,
        classes: Any = None,
        document: str | None = None,
        units: str | None = None,
        baseline_preds: Any = None,
        baseline_source: Any = None,
        row_id: str | None = None,
    ) -> Evaluation:
        """An evaluation of ``metric`` from :func:`evaluate`'s column arguments; of a
        :class:`~xentstream.Comparison`, with :func:`compare`'s (``baseline_preds``,
        ``baseline_source``, ``row_id``).

        Raises
        ------
        TypeError
            If ``metric`` is not an xentstream metric or comparison.
        ValueError
            For ``document`` / ``units`` given to a metric that takes no such column,
            comparison arguments without a comparison, or a comparison without
            ``baseline_preds``.
        """
        by_columns = (by,) if isinstance(by, str) else tuple(by or ())
        classes = None if classes is None else tuple(classes)
        if isinstance(metric, Comparison):
            return _ComparisonEvaluation.of_columns(
                metric,
                ColumnSpec(
                    preds=preds, target=target, sample_weight=sample_weight, classes=classes
                ),
                baseline_preds=baseline_preds,
                baseline_source=baseline_source,
                row_id=row_id,
                by=by_columns,
                side={"document": document, "units": units},
            )
        if not isinstance(metric, Metric):
            raise TypeError(f"metric: expected an xentstream metric, got {type(metric).__name__}")
        for name, value in (
            ("baseline_preds", baseline_preds),
            ("baseline_source", baseline_source),
            ("row_id", row_id),
        ):
            if value is not None:
                raise ValueError(
                    f"{name}: only for a comparison (xs.compare, or xs.Comparison(metric) "
                    f"as the metric), not a {type(metric).__name__}"
                )
        _check_side_columns(metric, document=document, units=units)
        spec = ColumnSpec(
            preds=preds,
            target=target,
            sample_weight=sample_weight,
            by=by_columns,
            classes=classes,
            document=document,
            units=units,
            target_optional=metric.kind.target_optional,
        )
        return cls(metric, spec)

    def fresh(
        self, *, engine: str | None = None, groups: bool = True, baseline_source: Any = _SAME
    ) -> Evaluation:
        """A new evaluation of the same columns with an empty metric (or comparison) of
        the same configuration, on ``engine`` (default: this metric's): what each of
        :mod:`xentstream.dask`'s tasks and merges starts from.

        ``groups=False``: without the (empty) group state, to be sent to other
        processes as a template (a group state is not pickled; its ``fresh()`` has
        one again). ``baseline_source``: a comparison's baseline rows from this source
        instead (a Dask partition's; None: the comparison reads one source); a
        metric's evaluation takes None only.

        Raises
        ------
        ValueError
            For a ``baseline_source`` given to a metric's evaluation.
        """
        comparing = isinstance(self, _ComparisonEvaluation)
        if baseline_source is not _SAME and baseline_source is not None and not comparing:
            raise ValueError("baseline_source: only for a comparison's evaluation")
        metric = self.metric
        engine = metric.engine if engine is None else engine
        blank = type(metric).from_state_dict(metric.state_dict(), engine=engine)
        run = copy.copy(self)
        run.metric = blank.reset()
        run.groups = run._new_groups() if groups else None
        if comparing and baseline_source is not _SAME:
            run.baseline_source = baseline_source
        return run

    def feed(
        self,
        source: Any,
        *,
        batch_rows: int | None = None,
        progress: bool | None = False,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_key: str | None = None,
    ) -> Iterator[None]:
        """Feed every batch of ``source`` to the metric (and the groups); yield after
        each batch. The arguments are :func:`evaluate`'s (``progress`` off unless
        asked); so are the errors raised, and a bad batch changes nothing.
        """
        return _run(
            source,
            self,
            batch_rows=batch_rows,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_key=checkpoint_key,
        )

    def open(self, source: Any, *, batch_rows: int | None, skip_rows: int = 0) -> Feeder:
        """``source``'s batches of this evaluation's columns (what :meth:`feed` reads;
        opening checks the columns)."""
        return open_source(source, self.spec, batch_rows=batch_rows, skip_rows=skip_rows)

    def report(self) -> Report | GroupedReport:
        """The report of what was fed and merged: a :class:`GroupedReport` with ``by``."""
        return _report(self.metric, self.groups, self.class_names)

    def state_dict(self) -> dict[str, Any]:
        """The exact state as a JSON-able dict: ``{"metric": ..., "groups": ...}`` (the
        metric's :meth:`~xentstream.Metric.state_dict`, and :meth:`GroupState.to_json`
        or None)."""
        groups = None if self.groups is None else self.groups.to_json()
        return {"metric": self.metric.state_dict(), "groups": groups}

    def merge_state_dict(self, state: dict[str, Any]) -> None:
        """Add a :meth:`state_dict` of the same metric and columns, exactly: the metric's
        sums, and each group's by key (new keys after the known ones, so merging the
        states of consecutive parts of a stream in order keeps first appearance).

        Raises
        ------
        ValueError
            For a state of another metric or config, or with groups where this
            evaluation has none (and the other way round).
        """
        if (state["groups"] is None) != (self.groups is None):
            raise ValueError("state: groups where this evaluation has no by=, or none where it has")
        metric = self.metric
        metric.merge(type(metric).from_state_dict(state["metric"], engine=metric.engine))
        if self.groups is not None:
            self.groups.load_json(state["groups"])

    # -- the steps of _run, which a comparison's evaluation takes its own way ------------

    def _new_groups(self) -> GroupState | None:
        return GroupState(self.spec.by, self.metric) if self.spec.by else None

    def _progress_metric(self) -> Metric:
        """The metric whose running loss the progress bar shows."""
        return self.metric

    def _absorb(self, batch: Batch, row_offset: int, first: bool) -> int:
        """Add one batch to the metric and the groups; return the metric's rows of it.
        ``row_offset``: the batch's first row in the source, for messages."""
        metric, spec, groups = self.metric, self.spec, self.groups
        codes = None if groups is None else groups.codes(batch.keys)
        n_groups = 1 if groups is None else groups.batch_groups
        if first:
            _warn_if_probabilities(batch.preds, metric)
        result = metric.accumulate(
            batch.preds,
            batch.target,
            batch.sample_weight,
            names=spec.names(),
            groups=codes,
            n_groups=n_groups,
            row_offset=row_offset,
            **_side_arguments(batch, spec),
        )
        if groups is not None:
            groups.absorb(metric, result, batch.target, batch.sample_weight, batch.preds)
        return result.n_rows


def _check_side_columns(metric: Metric, **columns: Any) -> None:
    """Side columns (the token kind's documents and units) go to metrics that take them."""
    takes = metric.kind.side_columns
    for name, column in columns.items():
        if column is not None and (name not in takes or not isinstance(column, str)):
            raise ValueError(
                f"{name}: a column name, for a metric that takes it (TokenCrossEntropy); "
                f"got {show(column)} for a {type(metric).__name__}"
            )


def _side_arguments(batch: Batch, spec: ColumnSpec) -> dict[str, Any]:
    """A batch's side columns as the metric's keyword arguments, with their column
    names (``document_name``) for its messages."""
    if not batch.extras:
        return {}
    names_of = {f"{key}_name": column for key, column in spec.side_columns().items()}
    return {**batch.extras, **names_of}


class _ComparisonEvaluation(Evaluation):
    """The evaluation of a :class:`~xentstream.Comparison`: both models' columns read
    in lockstep (:func:`xentstream.comparing.open_pair`), one comparison per group."""

    def __init__(
        self,
        comparison: Comparison,
        spec: ColumnSpec,
        baseline_spec: ColumnSpec,
        *,
        by: tuple[str, ...],
        baseline_source: Any = None,
        row_id: str | None = None,
    ) -> None:
        self.baseline_spec = baseline_spec
        self.by = by
        self.baseline_source = baseline_source
        self.row_id = row_id
        self._hold(comparison, spec)

    @classmethod
    def of_columns(
        cls,
        comparison: Comparison,
        columns: ColumnSpec,
        *,
        baseline_preds: Any,
        baseline_source: Any,
        row_id: str | None,
        by: tuple[str, ...],
        side: dict[str, Any],
    ) -> _ComparisonEvaluation:
        _check_side_columns(comparison.model, **side)
        if row_id is not None and baseline_source is None:
            raise ValueError("row_id: only with baseline_source (one source holds its own rows)")
        keys = () if row_id is None else (row_id,)
        optional = comparison.model.kind.target_optional
        spec = replace(
            columns, by=tuple(dict.fromkeys((*by, *keys))), target_optional=optional, **side
        )
        baseline_spec = ColumnSpec(
            preds=baseline_preds,
            target=columns.target,
            # One source: the weights (and side columns) are read once, with model A's.
            sample_weight=None if baseline_source is None else columns.sample_weight,
            by=keys,
            classes=columns.classes,
            target_optional=optional,
        )
        return cls(
            comparison,
            spec,
            baseline_spec,
            by=by,
            baseline_source=baseline_source,
            row_id=row_id,
        )

    def open(self, source: Any, *, batch_rows: int | None, skip_rows: int = 0) -> Feeder:
        return open_pair(
            source,
            self.baseline_source,
            self.spec,
            self.baseline_spec,
            row_id=self.row_id,
            batch_rows=batch_rows,
            skip_rows=skip_rows,
        )

    def report(self) -> ComparisonReport | GroupedComparison:  # type: ignore[override]
        """The comparison's report; a :class:`~xentstream.GroupedComparison` with ``by``."""
        overall = self.metric.compute()
        if self.groups is None:
            return overall
        reports = self.groups.reports(self.groups.sorted_codes())
        return GroupedComparison(overall=overall, by=self.by, groups=reports)

    def _new_groups(self) -> GroupState | None:
        return _ComparisonGroups(self.by, self.metric) if self.by else None

    def _progress_metric(self) -> Metric:
        return self.metric.model

    def _absorb(self, batch: PairedRows, row_offset: int, first: bool) -> int:  # type: ignore[override]
        comparison, groups = self.metric, self.groups
        rows, names = batch.model, self.spec.names()
        codes = None if groups is None else groups.codes(rows.keys)
        n_groups = 1 if groups is None else groups.batch_groups
        if first:
            _warn_if_probabilities(rows.preds, comparison.model)
        baseline_name = self.baseline_spec.names().preds
        result = comparison.accumulate(
            rows.preds,
            batch.baseline.preds,
            rows.target,
            rows.sample_weight,
            names=names,
            baseline_name="baseline_preds" if baseline_name == "preds" else baseline_name,
            groups=codes,
            n_groups=n_groups,
            row_offset=row_offset,
            **_side_arguments(rows, self.spec),
        )
        if groups is not None:
            groups.absorb(comparison, result, rows.target, rows.sample_weight)
        return result.model.n_rows


def _run(
    source: Any,
    run: Evaluation,
    *,
    batch_rows: int | None,
    progress: bool | None,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_key: str | None = None,
) -> Iterator[None]:
    """Feed every batch of ``source`` to ``run``'s metric (and groups); yield after each.

    Sets ``run.class_names`` (for the per-class tables) once the source is open.
    """
    metric, groups = run.metric, run.groups
    path = None if checkpoint is None else Path(checkpoint)
    if checkpoint_key is not None and not isinstance(checkpoint_key, str):
        raise TypeError(f"checkpoint_key: must be a string, got {type(checkpoint_key).__name__}")
    skip = 0
    # Open once without skipping to learn the fingerprint, then resume if it matches.
    feeder = run.open(source, batch_rows=batch_rows)
    # From the resolved columns: no fingerprint (a pass over a frame).
    run.class_names = _class_names({"columns": feeder.columns or {}})
    base, per_row = metric.rows_seen, 1
    if path is not None:
        source_print = dict(feeder.fingerprint)
        if source_print["kind"] == "iterable" and checkpoint_key is None:
            raise ValueError(
                "checkpoint: an iterable of batches cannot be fingerprinted, so a rerun "
                "could resume on other data; pass checkpoint_key= (a name for this "
                "stream, changed whenever its data change) to checkpoint it"
            )
        if checkpoint_key is not None:
            source_print["key"] = checkpoint_key
        fingerprint = _fingerprint(source_print, metric)
        _remove_stale_temp_files(path)
        saved = _read_checkpoint(path, fingerprint)
        if saved is not None:
            skip = _load_checkpoint(path, saved, run)
            base, per_row = saved["base_rows"], saved["metric_rows_per_row"]
            feeder = run.open(source, batch_rows=batch_rows, skip_rows=skip)
    bar = _Progress(progress, feeder.total_rows, skip)
    rows = skip
    last_save = time.monotonic()
    stops = _StopSignals()
    saved_rows = skip if path is not None and path.exists() else None  # rows in the file
    if path is not None:
        stops.install()
    try:
        for batch in _prefetch(iter(feeder)):
            stops.begin_batch()
            # Rows of this source, as the feeders' own errors (nulls) count them,
            # whatever the metric held before.
            metric_rows = run._absorb(batch, metric.rows_seen - base, rows == 0)
            if batch.n_rows:
                # Metric rows per source row: 1, or T for (N, T, C) batches; None once
                # it varies (then only the saved metric's own counts are checked).
                ratio, exact = divmod(metric_rows, batch.n_rows)
                if per_row is not None and (exact or (rows > 0 and ratio != per_row)):
                    per_row = None
                elif per_row is not None:
                    per_row = ratio
            rows += batch.n_rows
            bar.update(batch.n_rows, run._progress_metric())
            if path is not None and time.monotonic() - last_save > CHECKPOINT_INTERVAL_S:
                _write_checkpoint(path, fingerprint, rows, (base, per_row), metric, groups)
                last_save, saved_rows = time.monotonic(), rows
            stops.end_batch()
            if path is not None:
                stops.restore()  # the caller's handlers while ``stream`` is suspended
            yield
            if path is not None:
                stops.install()
        if path is not None:
            _write_checkpoint(path, fingerprint, rows, (base, per_row), metric, groups)
    except KeyboardInterrupt:
        if path is None or stops.signum is None:
            raise  # no checkpoint, or not our handler's doing: a plain interrupt
        stops.restore()
        if not stops.forced:
            _write_checkpoint(path, fingerprint, rows, (base, per_row), metric, groups)
            saved_rows = rows
        raise Interrupted(stops.signum, saved_rows, feeder.total_rows, path) from None
    finally:
        stops.restore()
        bar.close()


def _class_names(fingerprint: dict[str, Any]) -> list[str] | None:
    """Class (label) names a frame source knows: ``classes``, else wide column names."""
    columns = fingerprint.get("columns") or {}
    if columns.get("classes"):
        return list(columns["classes"])
    preds = columns.get("preds") or []
    return list(preds) if len(preds) > 1 else None


def _spec_class_names(spec: ColumnSpec) -> list[str] | None:
    """:func:`_class_names` from the arguments alone (sources opened elsewhere: Dask)."""
    preds = list(spec.preds) if isinstance(spec.preds, list | tuple) else []
    columns = {"classes": None if spec.classes is None else [str(c) for c in spec.classes]}
    return _class_names({"columns": {**columns, "preds": preds}})


def _named(report: Report, names: list[str] | None) -> Report:
    """``report`` with its per-class table's class (label) column holding ``names``."""
    table = report.per_class
    if table is None or not names or len(names) != table.height:
        return report
    column = table.columns[0]
    return replace(report, per_class=table.with_columns(pl.Series(column, names, pl.String)))


def _warn_if_probabilities(preds: Any, metric: Metric) -> None:
    """Warn when ``input="logits"`` rows look like probabilities (a plausible, wrong loss).

    Looked at on the first batch only: every value in [0, 1] and every row summing
    to 1 is what probabilities look like and logits almost never do.
    """
    # Rows of one distribution over classes (not per-label, one-value or token rows).
    if getattr(metric.config, "input", None) != "logits" or metric.kind.class_axis != "class":
        return
    if not isinstance(preds, np.ndarray) or preds.ndim < 2 or preds.shape[-1] < 2:
        return
    if preds.size == 0 or preds.dtype.kind != "f":
        return
    rows = preds.reshape(-1, preds.shape[-1])
    if (rows.min() >= 0.0 and rows.max() <= 1.0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6):
        warnings.warn(
            'input="logits", but every prediction row of the first batch lies in [0, 1] '
            'and sums to 1: these look like probabilities (use input="probs")',
            UserWarning,
            stacklevel=4,
        )


def _report(
    metric: Metric, groups: GroupState | None, class_names: list[str] | None = None
) -> Report | GroupedReport:
    overall = _named(metric.compute(), class_names)
    if groups is None:
        return overall
    reports = groups.reports(groups.sorted_codes())
    return GroupedReport(overall=overall, by=groups.by, groups=reports, _states=(metric, groups))


def _worst_first(item: tuple[tuple[Any, ...], Report]) -> tuple[bool, float]:
    loss = item[1].loss
    return (loss != loss, 0.0 if loss != loss else -loss)  # NaN (no counted row) last


def _key_sorted(groups: GroupState, codes: np.ndarray) -> np.ndarray:
    """``codes`` in key order."""
    rank = np.empty(groups.n_groups, dtype=np.int64)
    rank[groups.sorted_codes()] = np.arange(groups.n_groups)
    return codes[np.argsort(rank[codes], kind="stable")]


GROUPED_FORMAT = "xentstream.grouped"
#: 2: the groups as a columnar table (``GroupState.to_json``); version 1 files (a list
#: of per-group entries) are still read.
GROUPED_VERSION = 2
_GROUPED_VERSIONS_READ = (1, 2)


def grouped_state_dict(result: GroupedReport) -> dict[str, Any]:
    """The exact states of a grouped evaluation (overall and per group) as one JSON-able
    dict: what ``xentstream evaluate --by ... --save-state`` writes and ``merge`` reads."""
    metric, groups = result._states
    return {
        "format": GROUPED_FORMAT,
        "version": GROUPED_VERSION,
        "by": list(groups.by),
        "overall": metric.state_dict(),
        "groups": groups.to_json(),
    }


def merge_grouped_states(
    states: list[dict[str, Any]], names: list[str] | None = None
) -> GroupedReport:
    """Merge :func:`grouped_state_dict` outputs (shards of one run): the overall states,
    and each group's states by key. ``names``: what messages call each state (their
    files; default ``state 0``, ``state 1``, ...).

    Raises
    ------
    ValueError
        For states of another format or version, grouped by other columns, or
        malformed (the message names the state and what is wrong in it).
    """
    metric: Metric | None = None
    groups: GroupState | None = None
    for index, state in enumerate(states):
        name = f"state {index}" if names is None else names[index]
        if (
            not isinstance(state, dict)
            or state.get("format") != GROUPED_FORMAT
            or not _is_version(state.get("version"), _GROUPED_VERSIONS_READ)
        ):
            raise ValueError(
                f"{name}: not a grouped state of version "
                f"{' or '.join(map(str, _GROUPED_VERSIONS_READ))}"
            )
        missing = sorted({"by", "overall", "groups"} - set(state))
        if missing or not isinstance(state["by"], list):
            raise ValueError(f"{name}: malformed grouped state (no {', '.join(missing) or 'by'})")
        by = tuple(state["by"])
        try:
            overall = Metric.from_state_dict(state["overall"])
            if metric is None:
                metric, groups = overall, GroupState(by, overall)
            else:
                if by != groups.by:
                    raise ValueError(f"grouped by {list(by)}, not {list(groups.by)}")
                metric.merge(overall)
            groups.load_json(state["groups"])
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if metric is None:
        raise ValueError("merge: no states")
    return _report(metric, groups)


def _start(
    source: Any,
    metric: Metric | Comparison,
    *,
    batch_rows: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
    **columns: Any,
) -> tuple[Evaluation, Iterator[None]]:
    """The one path of :func:`evaluate`, :func:`stream` and :func:`compare`: the
    evaluation of ``columns`` (:meth:`Evaluation.of`) and its :meth:`~Evaluation.feed`."""
    run = Evaluation.of(metric, **columns)
    steps = run.feed(
        source,
        batch_rows=batch_rows,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
    )
    return run, steps


def evaluate(
    source: Any,
    metric: Metric | Comparison,
    *,
    preds: Any = None,
    target: Any = None,
    sample_weight: Any = None,
    by: Any = None,
    classes: Any = None,
    batch_rows: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_key: str | None = None,
    document: str | None = None,
    units: str | None = None,
    baseline_preds: Any = None,
    baseline_source: Any = None,
    row_id: str | None = None,
) -> Report | GroupedReport | ComparisonReport | GroupedComparison:
    """Run ``metric`` over every row of ``source`` in bounded batches; return its report.

    Parameters
    ----------
    source
        A polars LazyFrame or DataFrame; a path, glob or list of Parquet, Arrow
        IPC/Feather, CSV or NDJSON files; a ``.npy`` file of predictions (memory-mapped;
        ``target`` is then a ``.npy`` path or an array); or an iterable of batches:
        ``(preds, target[, sample_weight])`` tuples, dicts or DataFrames.
    metric : Metric or Comparison
        Updated in place (``CrossEntropy``, ``BinaryCrossEntropy``, ...). A
        :class:`~xentstream.Comparison` compares two models' predictions for the same
        rows, as :func:`compare` does (which builds one from a metric).
    preds, target : str, list of str or polars selector
        Columns of frame and file sources (unused for tuples). ``preds``: one Array /
        List column or several scalar columns; ``target``: one column, or several for
        multi-label and soft targets.
    sample_weight : str, optional
        Column of row weights.
    by : str or list of str, optional
        Group columns: returns a :class:`GroupedReport`, computed in the same pass.
    classes : sequence, optional
        Class names for string / categorical labels, in the order of the prediction
        columns (inferred from wide column names).
    batch_rows : int, optional
        Rows per batch (default: about 64 MiB of predictions).
    progress : bool, optional
        Progress bar (default: on when stderr is a terminal).
    checkpoint : path, optional
        Save the state and rows consumed here every few seconds, at the end, and on
        Ctrl-C / SIGTERM in the main thread (then :class:`Interrupted` is raised); a
        rerun with the same arguments resumes and ends bitwise equal to an
        uninterrupted run. A checkpoint is used only for the source it was written
        for: files by path, size and modification time; a DataFrame by a hash of its
        contents; a LazyFrame by its serialized plan (holding its in-memory data, not
        the contents of the files it scans). An iterable of batches cannot be
        fingerprinted: it needs ``checkpoint_key``. A checkpoint that is not
        self-consistent is refused.
    checkpoint_key : str, optional
        A name for the source, stored in the checkpoint and compared on resume:
        required to checkpoint an iterable of batches (change it whenever the data
        change), an extra guard for other sources.
    document, units : str, optional
        For :class:`~xentstream.TokenCrossEntropy`: the column of document ids (any
        order of rows) and of per-row unit counts (bytes, characters, words). Its
        ``target`` is the optional mask column.
    baseline_preds, baseline_source, row_id : optional
        For a :class:`~xentstream.Comparison`: as in :func:`compare`.

    Returns
    -------
    Report or GroupedReport
        (:class:`~xentstream.ComparisonReport` or :class:`~xentstream.GroupedComparison`
        for a comparison.)

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        Bad sources, columns, data (the message names the column and the row offset in
        the whole source), or a checkpoint written for another run. Each batch is
        atomic, the run is not: after a bad batch the metric holds the batches before
        it (as does the checkpoint, so that a fixed rerun resumes there).
    Interrupted
        A checkpointed run stopped by SIGINT or SIGTERM, after saving the checkpoint.

    Warns
    -----
    UserWarning
        With ``input="logits"``, when the first batch's rows look like probabilities.

    Examples
    --------
    >>> import polars as pl, xentstream as xs
    >>> frame = pl.DataFrame({"p": [[0.7, 0.3], [0.4, 0.6]], "y": [0, 1]})
    >>> report = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y")
    >>> report.count
    2
    """
    run, steps = _start(
        source,
        metric,
        preds=preds,
        target=target,
        sample_weight=sample_weight,
        by=by,
        classes=classes,
        batch_rows=batch_rows,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_key=checkpoint_key,
        document=document,
        units=units,
        baseline_preds=baseline_preds,
        baseline_source=baseline_source,
        row_id=row_id,
    )
    for _ in steps:
        pass
    return run.report()


def stream(
    source: Any, metric: Metric | Comparison, **options: Any
) -> Iterator[Report | GroupedReport | ComparisonReport | GroupedComparison]:
    """Like :func:`evaluate` (the same arguments), but yield the running report after
    each batch.

    Examples
    --------
    >>> import numpy as np, xentstream as xs
    >>> batches = [(np.array([[0.7, 0.3]]), np.array([0])), (np.array([[0.2, 0.8]]), [1])]
    >>> [r.count for r in xs.stream(batches, xs.CrossEntropy())]
    [1, 2]

    A comparison's running report (model A's predictions, model B's, the target):

    >>> pairs = [([[0.7, 0.3]], [[0.6, 0.4]], [0]), ([[0.2, 0.8]], [[0.3, 0.7]], [1])]
    >>> [r.model_better_rows for r in xs.stream(pairs, xs.Comparison(xs.CrossEntropy()))]
    [1, 2]
    """
    run, steps = _start(source, metric, **options)
    for _ in steps:
        yield run.report()


def compare(
    source: Any,
    metric: Metric | Comparison,
    *,
    baseline_preds: Any = None,
    baseline_source: Any = None,
    row_id: str | None = None,
    **options: Any,
) -> ComparisonReport | GroupedComparison:
    """Compare two models over every row of ``source`` in bounded batches (paired).

    :func:`evaluate` of ``xs.Comparison(metric)``: the same arguments, checkpoints,
    progress bar and errors.

    Parameters
    ----------
    source
        As in :func:`evaluate` (a polars frame, files, a glob), holding ``preds``
        (model A) and, without ``baseline_source``, ``baseline_preds`` (model B) for
        the same rows; or an iterable of ``(preds, baseline_preds, target[,
        sample_weight])`` tuples.
    metric : Metric or Comparison
        The loss both models are scored with (e.g. ``xs.CrossEntropy()``), or a
        :class:`~xentstream.Comparison` to continue (updated in place).
    baseline_preds : str, list of str or polars selector
        Model B's prediction columns (``preds``: model A's).
    baseline_source : optional
        Another source holding ``baseline_preds`` and ``target`` for the same rows in
        the same order, read in lockstep with ``source``; its targets must equal
        ``source``'s row by row.
    row_id : str, optional
        With ``baseline_source``: a column both sources hold, checked to be equal row
        by row.
    **options
        :func:`evaluate`'s: ``preds``, ``target``, ``sample_weight``, ``classes``,
        ``by`` (group columns of ``source``: returns a :class:`GroupedComparison`),
        ``batch_rows``, ``progress``, ``checkpoint``, ``checkpoint_key``.

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
    return evaluate(
        source,
        comparison,
        baseline_preds=baseline_preds,
        baseline_source=baseline_source,
        row_id=row_id,
        **options,
    )
