"""Evaluate on a Dask cluster (SPEC section 8): one exact state per partition, tree-merged.

Each partition of the source (a slice of a Parquet / Arrow IPC file, or a partition
of a ``dask.dataframe.DataFrame``) is read on a worker and fed through the same path
as :func:`xentstream.evaluate` (``feeders`` -> ``Metric.update_batch`` -> the
kernels, grouped rows through ``evaluate._GroupState``). The worker returns only the
partition's exact state (``Metric.state_dict()``: about 3 KB of JSON-able integers,
plus one such state per group); predictions never leave the worker that
read them. The states are merged by a tree of ``split_every``-way merges that keeps
the partitions in order, so group keys keep their order of first appearance. The
sums are exact integers, so merging is integer addition and the report is bitwise
equal to one process reading the same rows, whatever the partitioning.

dask is an optional dependency (``pip install "xentstream[dask]"``), imported only
when this module's functions run; ``import xentstream`` never imports it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from xentstream.evaluate import GroupedReport, _GroupState, _prepare, _report, _run
from xentstream.feeders import _SCANNERS, ColumnSpec, _expand_paths, open_source
from xentstream.metrics import Metric
from xentstream.report import Report

__all__ = ["DEFAULT_PARTITION_ROWS", "evaluate"]

#: Rows per partition of a file source: large enough that a task's fixed cost (a
#: file open, a task round trip) stays small next to reading ~40 MB of float32
#: logits, small enough that a few large files still spread over many workers.
DEFAULT_PARTITION_ROWS = 1 << 20
_SPLITTABLE = (".parquet", ".pq", ".arrow", ".ipc", ".feather")
_FIRST_ROW = re.compile(r"\brow (\d+)")


def _require_dask() -> Any:
    try:
        import dask
    except ImportError:
        raise ImportError(
            'xentstream.dask needs dask and distributed: pip install "xentstream[dask]"'
        ) from None
    return dask


# -- partitions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FilePart:
    """Rows ``start .. start + rows`` of one file: what one worker task reads."""

    index: int
    count: int  # partitions in the run
    path: str
    start: int
    rows: int
    offset: int  # row of the whole stream where this partition begins
    stamp: tuple[int, int]  # the file's size and mtime: a rewritten file gets new task keys

    def frame(self) -> pl.LazyFrame:
        scan = _SCANNERS[os.path.splitext(self.path)[1].lower()](self.path)
        return scan.slice(self.start, self.rows)

    def where(self) -> str:
        stop = self.start + self.rows - 1
        return (
            f"partition {self.index} of {self.count} ({self.path}, file rows {self.start}..{stop})"
        )


@dataclass(frozen=True)
class _FramePart:
    """One partition of a ``dask.dataframe.DataFrame`` (its row offset is not known)."""

    index: int
    count: int
    offset: None = None

    def where(self) -> str:
        return f"partition {self.index} of {self.count} of the dask DataFrame"


def _file_partitions(paths: list[Any], partition_rows: int) -> list[_FilePart]:
    spans: list[tuple[str, int, int, int, tuple[int, int]]] = []
    offset = 0
    for path in paths:
        name = os.path.abspath(path)  # workers may run elsewhere: shared storage, absolute path
        stat = os.stat(name)
        rows = _SCANNERS[path.suffix.lower()](name).select(pl.len()).collect().item()
        spans += [
            (
                name,
                start,
                min(partition_rows, rows - start),
                offset + start,
                (stat.st_size, stat.st_mtime_ns),
            )
            for start in range(0, rows, partition_rows)
        ]
        offset += rows
    return [_FilePart(index, len(spans), *span) for index, span in enumerate(spans)]


# -- what runs on the workers ------------------------------------------------------------------


def _state(metric: Metric, groups: _GroupState | None) -> dict[str, Any]:
    return {"metric": metric.state_dict(), "groups": None if groups is None else groups.to_json()}


class _FramePartitionError(ValueError):
    """Bad data in a DataFrame partition, before its row is a stream offset.

    ``args``: the message, the partition, the message of the original error. Kept
    in ``args`` because that is what survives pickling back from a worker.
    """

    def __str__(self) -> str:
        return str(self.args[0])


def _located(error: Exception, part: _FilePart | _FramePart, offset: int | None) -> Exception:
    """``error`` with the partition named and its row turned into a stream offset.

    The feeders and kernels number rows from the start of what they were given (here
    the partition). A file partition knows where it begins in the whole stream; for a
    DataFrame partition the client works it out after the failure (``offset``), and
    until then the row is the partition's.
    """
    message = str(error)
    if offset is None:
        located = _FIRST_ROW.sub(r"row \1 of the partition", message, count=1)
    else:
        located = _FIRST_ROW.sub(lambda m: f"row {offset + int(m[1])}", message, count=1)
    if isinstance(error, TypeError):
        return TypeError(f"{part.where()}: {located}")
    if offset is None:
        return _FramePartitionError(f"{part.where()}: {located}", part, message)
    return ValueError(f"{part.where()}: {located}")


def _partition_state(
    part: _FilePart | _FramePart,
    data: Any,
    template: dict[str, Any],
    spec: ColumnSpec,
    batch_rows: int | None,
) -> dict[str, Any]:
    """Exact state of one partition: a pure function of the partition's rows.

    A task lost with its worker is simply run again (Dask retries it); since its
    result depends only on its rows, no row is ever counted twice.
    """
    metric = Metric.from_state_dict(template)
    groups = _GroupState(spec.by, metric) if spec.by else None
    frame = part.frame() if isinstance(part, _FilePart) else pl.from_pandas(data)
    try:
        for _ in _run(
            frame, metric, spec, groups, batch_rows=batch_rows, progress=False, checkpoint=None
        ):
            pass
    except (ValueError, TypeError) as error:
        raise _located(error, part, part.offset) from None
    return _state(metric, groups)


def _merge_states(by: tuple[str, ...], *states: dict[str, Any]) -> dict[str, Any]:
    """Merge partition states, in partition order (group keys keep first appearance)."""
    metric = Metric.from_state_dict(states[0]["metric"])
    groups = _GroupState(by, metric) if by else None
    for number, state in enumerate(states):
        if number:
            metric.merge(Metric.from_state_dict(state["metric"]))
        if groups is not None:
            groups.load_json(state["groups"])
    return _state(metric, groups)


# -- the client side ---------------------------------------------------------------------------


def _current_client() -> Any:
    """The current ``distributed.Client``, or None (then dask's local scheduler runs)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _is_dask_frame(source: Any) -> bool:
    if not type(source).__module__.startswith("dask"):
        return False  # no need to import dask.dataframe for file sources
    import dask.dataframe as dd

    return isinstance(source, dd.DataFrame)


def _leaves(
    source: Any,
    spec: ColumnSpec,
    template: dict[str, Any],
    batch_rows: int | None,
    partition_rows: int,
) -> list[Any]:
    """One delayed partition state per partition; checks columns on the client first."""
    from dask import delayed

    task = delayed(_partition_state, pure=True)
    if _is_dask_frame(source):
        # ``_meta``, the empty frame of the partitions' dtypes that every dask
        # collection carries: column errors before any task runs.
        open_source(pl.from_pandas(source._meta), spec, batch_rows=batch_rows)
        parts = source.to_delayed()
        return [
            task(_FramePart(index, len(parts)), part, template, spec, batch_rows)
            for index, part in enumerate(parts)
        ]
    paths = _expand_paths(source)
    if paths is None:
        raise TypeError(
            "source: expected a path, glob or list of Parquet / Arrow IPC files, or a "
            f"dask.dataframe.DataFrame, got {type(source).__name__}"
        )
    suffix = paths[0].suffix.lower()
    if suffix not in _SPLITTABLE:
        raise ValueError(
            f"source: {suffix} files cannot be split into partitions; use Parquet or Arrow "
            "IPC files, or a dask.dataframe.DataFrame (dask.dataframe.read_csv, ...)"
        )
    if (
        isinstance(partition_rows, bool)
        or not isinstance(partition_rows, int)
        or partition_rows < 1
    ):
        raise ValueError(f"partition_rows: must be a positive integer, got {partition_rows!r}")
    open_source(_SCANNERS[suffix](str(paths[0])).head(0), spec, batch_rows=batch_rows)
    return [
        task(part, None, template, spec, batch_rows)
        for part in _file_partitions(paths, partition_rows)
    ]


def _in_stream(source: Any, error: _FramePartitionError, scheduler: Any) -> Exception:
    """A DataFrame partition's ``error`` with its row as an offset in the whole frame.

    Only on this failure path are the earlier partitions' lengths computed (one more
    pass over them, reading as few columns as the source allows).
    """
    import dask

    _, part, message = error.args
    offset = 0
    if part.index:
        (lengths,) = dask.compute(
            source.partitions[: part.index].map_partitions(len), scheduler=scheduler
        )
        offset = int(sum(lengths))
    return _located(ValueError(message), part, offset)


def evaluate(
    source: Any,
    metric: Metric,
    *,
    preds: Any = None,
    target: Any = None,
    sample_weight: Any = None,
    by: Any = None,
    classes: Any = None,
    batch_rows: int | None = None,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    split_every: int = 8,
    scheduler: Any = None,
) -> Report | GroupedReport:
    """:func:`xentstream.evaluate` on a Dask cluster, bitwise equal to one process.

    Every partition becomes an exact metric state on a worker (the same feeders,
    kernels and grouping as :func:`xentstream.evaluate`); only these states, about
    3 KB each (plus as much per group), travel between workers, where they are
    merged by a tree reduction in partition order. The merged state is added to
    ``metric``, whose report is returned.

    A partition's state is a pure function of its rows, so a task lost with a dying
    worker is recomputed by Dask and no row is counted twice.

    Parameters
    ----------
    source
        A path, glob or list of Parquet or Arrow IPC files, read on the workers (use
        absolute paths on storage every worker sees), split into partitions of
        ``partition_rows`` rows; or a ``dask.dataframe.DataFrame``, one task per
        partition.
    metric : Metric
        Updated in place, as by :func:`xentstream.evaluate`.
    preds, target, sample_weight, by, classes, batch_rows
        As in :func:`xentstream.evaluate`; ``batch_rows`` bounds the memory of each
        task.
    partition_rows : int
        Rows per partition of a file source (partitions never span two files).
    split_every : int
        Fan-in of the merge tree.
    scheduler : optional
        What runs the graph: a ``distributed.Client`` or a name dask knows
        (``"sync"``, ``"threads"``, ``"processes"``). Default: the current
        ``distributed.Client`` if there is one, else dask's local scheduler.

    Returns
    -------
    Report or GroupedReport
        Bitwise equal to :func:`xentstream.evaluate` on the same rows in one process;
        groups in order of first appearance in the source.

    Raises
    ------
    ImportError
        Without dask (``pip install "xentstream[dask]"``).
    ValueError, TypeError, FileNotFoundError
        Bad sources, columns or options; bad data, with the message naming the
        partition, the row (its offset in the whole stream), the column and the rule
        broken.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd, polars as pl, xentstream as xs
    >>> from xentstream import dask as xd
    >>> table = pd.DataFrame({"a": [0.7, 0.4, 0.9], "b": [0.3, 0.6, 0.1], "y": [0, 1, 0]})
    >>> frame = dd.from_pandas(table, npartitions=2)
    >>> report = xd.evaluate(
    ...     frame, xs.CrossEntropy(), preds=["a", "b"], target="y", scheduler="sync"
    ... )
    >>> report.count
    3
    >>> one = xs.evaluate(pl.from_pandas(table), xs.CrossEntropy(), preds=["a", "b"], target="y")
    >>> report.loss == one.loss
    True
    """
    dask = _require_dask()
    spec, groups = _prepare(
        metric, preds=preds, target=target, sample_weight=sample_weight, by=by, classes=classes
    )
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every: must be an integer >= 2, got {split_every!r}")
    blank = Metric.from_state_dict(metric.state_dict())
    template = blank.reset().state_dict()  # the config only: what every task starts from
    level = _leaves(source, spec, template, batch_rows, partition_rows)
    merge = dask.delayed(_merge_states, pure=True)
    while len(level) > 1:
        level = [
            merge(spec.by, *level[i : i + split_every]) for i in range(0, len(level), split_every)
        ]
    if level:
        if scheduler is None:
            scheduler = _current_client()
        try:
            (state,) = dask.compute(level[0], scheduler=scheduler)
        except _FramePartitionError as error:
            raise _in_stream(source, error, scheduler) from None
        metric.merge(Metric.from_state_dict(state["metric"], engine=metric.engine))
        if groups is not None:
            groups.load_json(state["groups"])
    return _report(metric, groups)
