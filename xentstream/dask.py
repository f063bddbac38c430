"""Evaluate on a Dask cluster (SPEC section 8): one exact state per partition, tree-merged.

Each partition of the source (a slice of a Parquet / Arrow IPC file, or a partition
of a ``dask.dataframe.DataFrame``) is read on a worker and fed through the same path
as :func:`xentstream.evaluate` (an :class:`xentstream.evaluation.Evaluation`:
``feeders`` -> the metric -> the kernels, grouped rows through its
:class:`~xentstream.evaluation.GroupState`). The worker returns only the partition's
exact state (:meth:`Evaluation.state_dict`: about 3 KB of JSON-able integers; its
groups as arrays, a few hundred bytes a group, :meth:`GroupState.packed`);
predictions never leave the worker that read them. The
states are merged by a tree of ``split_every``-way merges that keeps the partitions
in order, so group keys keep their order of first appearance. The sums are exact
integers, so merging is integer addition and the report is bitwise equal to one
process reading the same rows, whatever the partitioning.

Tasks run on the metric's engine (a state does not carry it). Bad data is a task's
result, not its exception, so the merge can keep the first bad partition of the
stream: the error does not depend on which failing task finished first. A
:class:`~xentstream.DataError` comes back whole, its row counted from the start of
its partition, and is raised with the row moved to the whole stream
(:meth:`~xentstream.DataError.shifted`).

dask is an optional dependency (``pip install "xentstream[dask]"``), imported only
when this module's functions run; ``import xentstream`` never imports it.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import polars as pl

from xentstream._errors import DataError
from xentstream.comparing import GroupedComparison
from xentstream.comparison import Comparison, ComparisonReport
from xentstream.evaluation import Evaluation, GroupedReport
from xentstream.feeders import (
    SPLITTABLE_SUFFIXES,
    count_rows,
    expand_paths,
    scan_files,
)
from xentstream.metrics import Metric, check_engine
from xentstream.report import Report

__all__ = ["DEFAULT_PARTITION_ROWS", "evaluate", "require_dask"]

#: Rows per partition of a file source: large enough that a task's fixed cost (a
#: file open, a task round trip) stays small next to reading ~40 MB of float32
#: logits, small enough that a few large files still spread over many workers.
DEFAULT_PARTITION_ROWS = 1 << 20


def require_dask(*, distributed: bool = False) -> Any:
    """``dask``, or an ImportError naming the extra; ``distributed`` too where a run needs
    a cluster (the command line's ``--dask``).

    Raises
    ------
    ImportError
        Without dask (or distributed): ``pip install "xentstream[dask]"``.
    """
    try:
        import dask

        if distributed:
            importlib.import_module("distributed")
    except ImportError as error:
        raise ImportError(
            f"xentstream.dask needs dask and distributed ({error.name} is missing): "
            'pip install "xentstream[dask]"'
        ) from None
    return dask


# -- partitions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    """Rows ``start .. start + rows`` of one file."""

    path: str
    start: int
    rows: int
    stamp: tuple[int, int]  # the file's size and mtime: a rewritten file gets new task keys

    def frame(self) -> pl.LazyFrame:
        return scan_files([Path(self.path)]).slice(self.start, self.rows)


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
    #: A two-source comparison's baseline rows of this partition (the same stream
    #: rows, wherever the baseline's files cut them): spans of its files.
    baseline: tuple[_Span, ...] = ()

    def frame(self) -> pl.LazyFrame:
        return _Span(self.path, self.start, self.rows, self.stamp).frame()

    def baseline_frame(self) -> pl.LazyFrame | None:
        """The baseline's rows of this partition (None: a one-source run)."""
        if not self.baseline:
            return None
        return pl.concat([span.frame() for span in self.baseline], how="vertical")

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


def _file_spans(paths: list[Any]) -> list[_Span]:
    """Every file whole, as a span (absolute paths: workers may run elsewhere, on
    shared storage)."""
    spans = []
    for path in paths:
        name = os.path.abspath(path)
        stat = os.stat(name)
        spans.append(_Span(name, 0, count_rows([Path(name)]), (stat.st_size, stat.st_mtime_ns)))
    return spans


def _file_partitions(
    paths: list[Any], partition_rows: int, baseline_paths: list[Any] | None = None
) -> list[_FilePart]:
    """Partitions of ``partition_rows`` rows of each file (never spanning two); with
    ``baseline_paths``, each with the baseline's spans of the same stream rows."""
    parts: list[tuple[_Span, int]] = []
    offset = 0
    for file in _file_spans(paths):
        parts += [
            (
                _Span(file.path, start, min(partition_rows, file.rows - start), file.stamp),
                offset + start,  # the partition's first row in the whole stream
            )
            for start in range(0, file.rows, partition_rows)
        ]
        offset += file.rows
    baseline = [] if baseline_paths is None else _file_spans(baseline_paths)
    if baseline_paths is not None:
        held = sum(span.rows for span in baseline)
        if held != offset:
            raise ValueError(
                f"baseline_source: holds {held} rows but source holds {offset}; the "
                "sources must hold the same rows in the same order"
            )
    return [
        _FilePart(
            index,
            len(parts),
            span.path,
            span.start,
            span.rows,
            start,
            span.stamp,
            _rows_of(baseline, start, span.rows),
        )
        for index, (span, start) in enumerate(parts)
    ]


def _rows_of(files: list[_Span], start: int, rows: int) -> tuple[_Span, ...]:
    """The spans of ``files`` (whole files, one stream in order) that hold stream rows
    ``start .. start + rows``."""
    out = []
    offset = 0
    for file in files:
        low, high = max(start, offset), min(start + rows, offset + file.rows)
        if low < high:
            out.append(_Span(file.path, low - offset, high - low, file.stamp))
        offset += file.rows
    return tuple(out)


# -- what runs on the workers ------------------------------------------------------------------


def _located(error: dict[str, Any], offset: int) -> Exception:
    """A partition's error with the partition named; a :class:`DataError`'s row
    (numbered from the start of the partition, as the feeders and kernels number
    them) moved to the whole stream (SPEC section 7)."""
    part = error["part"]
    if error["data"] is not None:
        return error["data"].shifted(offset, context=part.where())
    return error["kind"](f"{part.where()}: {error['message']}")


def _bad_data(part: _FilePart | _FramePart, error: Exception) -> dict[str, Any]:
    """A partition's bad data as a value, not an exception, so that the merge can keep
    the first bad partition of the stream: raised, the error dask reports would be
    whichever failing task happened to finish first."""
    if isinstance(error, TypeError):
        kind: type[Exception] = TypeError
    elif isinstance(error, ValueError):
        kind = ValueError
    else:
        kind = type(error)  # polars' own errors: unreadable file, unconvertible frame
    data = error if isinstance(error, DataError) and error.row is not None else None
    return {"error": {"part": part, "kind": kind, "message": str(error), "data": data}}


def _partition_state(
    part: _FilePart | _FramePart,
    data: Any,
    baseline: Any,
    template: Evaluation,
    engine: str,
    threads: int | None,
    batch_rows: int | None,
) -> dict[str, Any]:
    """Exact state of one partition (or its bad data): a pure function of its rows.
    ``data`` / ``baseline``: a DataFrame partition and a two-source comparison's
    partition of its baseline (None: a file partition reads its own).

    A task lost with its worker is simply run again (Dask retries it); since its
    result depends only on its rows, no row is ever counted twice.
    """
    try:
        check_engine(engine)
    except (ImportError, RuntimeError) as error:  # engine="cuda": no numba-cuda, no GPU
        # The worker's machine is at fault, not the data: stop the run at once.
        raise type(error)(f"dask worker on host {socket.gethostname()}: {error}") from None
    if threads is None:
        return _feed(part, data, baseline, template, engine, batch_rows)
    import numba

    # set_num_threads is per calling thread (this task's thread in the worker), so it
    # is safe in any worker and is undone for whatever runs next on the thread.
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        return _feed(part, data, baseline, template, engine, batch_rows)
    finally:
        numba.set_num_threads(before)


def _feed(
    part: _FilePart | _FramePart,
    data: Any,
    baseline: Any,
    template: Evaluation,
    engine: str,
    batch_rows: int | None,
) -> dict[str, Any]:
    if isinstance(part, _FramePart):
        try:
            data = pl.from_pandas(data)
            baseline = None if baseline is None else pl.from_pandas(baseline)
        except (ValueError, TypeError) as error:
            return _bad_data(part, error)
        except Exception as error:  # pyarrow's NotImplementedError (a complex column), ...
            return _bad_data(part, TypeError(f"{type(error).__name__}: {error}"))
    try:
        if isinstance(part, _FilePart):
            data, baseline = part.frame(), part.baseline_frame()
        # The engine is not part of a state: without it here, every task would run on
        # whatever "auto" picks on its worker. A fresh evaluation per task: under the
        # threaded and sync schedulers the tasks share ``template`` itself.
        run = template.fresh(engine=engine, baseline_source=baseline)
        for _ in run.feed(data, batch_rows=batch_rows):
            pass
    except (ValueError, TypeError, pl.exceptions.PolarsError) as error:
        return _bad_data(part, error)
    return _state_of(run)


def _state_of(run: Evaluation) -> dict[str, Any]:
    """``run``'s state for the merge tree: groups as arrays where they can be (a few
    hundred bytes a group instead of kilobytes of JSON objects, merged a few thousand
    groups at a time: :meth:`GroupState.merge_packed`)."""
    packed = None if run.groups is None else run.groups.packed()
    if packed is None:
        return run.state_dict()
    return {"metric": run.metric.state_dict(), "groups": [], "packed_groups": packed}


def _merge_into(run: Evaluation, state: dict[str, Any]) -> None:
    run.merge_state_dict({"metric": state["metric"], "groups": state["groups"]})
    if "packed_groups" in state:
        run.groups.merge_packed(state["packed_groups"])


def _merge_states(template: Evaluation, *states: dict[str, Any]) -> dict[str, Any]:
    """Merge partition states, in partition order (group keys keep first appearance).

    The first bad partition among ``states`` (they are in partition order, and each
    holds the first bad partition of its own subtree) wins and the sums are skipped:
    the run reports the first bad partition of the stream, whatever order the tasks
    finished in.
    """
    for state in states:
        if "error" in state:
            return state
    run = template.fresh(engine="cpu")  # merging runs no kernel: no GPU needed here
    for state in states:
        _merge_into(run, state)
    return _state_of(run)


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
    baseline_source: Any,
    run: Evaluation,
    batch_rows: int | None,
    partition_rows: int,
    task_args: tuple[Any, ...],
) -> list[Any]:
    """One delayed partition state per partition; checks columns on the client first.

    ``baseline_source``: a two-source comparison's baseline, of the same kind as
    ``source`` (files, or a DataFrame whose partitions pair with ``source``'s), or
    None. ``task_args``: what every task gets after its partition and data (the empty
    evaluation, the engine and numba threads; see :func:`_partition_state`).
    """
    from dask import delayed

    task = delayed(_partition_state, pure=True)
    if _is_dask_frame(source):
        baselines = _baseline_partitions(source, baseline_source)
        # ``_meta``, the empty frame of the partitions' dtypes that every dask
        # collection carries: column errors before any task runs.
        empty = None if baseline_source is None else pl.from_pandas(baseline_source._meta)
        checked = run.fresh(baseline_source=empty)
        checked.open(pl.from_pandas(source._meta), batch_rows=batch_rows)
        parts = source.to_delayed()
        return [
            task(_FramePart(index, len(parts)), part, baseline, *task_args, batch_rows)
            for index, (part, baseline) in enumerate(zip(parts, baselines, strict=True))
        ]
    paths = _splittable(source, "source")
    baseline_paths = (
        None if baseline_source is None else _splittable(baseline_source, "baseline_source")
    )
    if (
        isinstance(partition_rows, bool)
        or not isinstance(partition_rows, int)
        or partition_rows < 1
    ):
        raise ValueError(f"partition_rows: must be a positive integer, got {partition_rows!r}")
    empty = None if baseline_paths is None else scan_files(baseline_paths[:1]).head(0)
    run.fresh(baseline_source=empty).open(scan_files(paths[:1]).head(0), batch_rows=batch_rows)
    return [
        task(part, None, None, *task_args, batch_rows)
        for part in _file_partitions(paths, partition_rows, baseline_paths)
    ]


def _splittable(source: Any, name: str) -> list[Path]:
    """The files of a file source, each one that partitions can slice."""
    try:
        paths = expand_paths(source)
    except FileNotFoundError as error:  # expand_paths names its argument "source"
        raise FileNotFoundError(f"{name}: {str(error).removeprefix('source: ')}") from None
    if paths is None:
        raise TypeError(
            f"{name}: expected a path, glob or list of Parquet / Arrow IPC files, or a "
            f"dask.dataframe.DataFrame, got {type(source).__name__}"
        )
    for path in paths:
        if path.suffix.lower() not in SPLITTABLE_SUFFIXES:
            raise ValueError(
                f"{name}: {path} cannot be split into partitions ({path.suffix or 'no'} "
                "suffix); use Parquet or Arrow IPC files, or a dask.dataframe.DataFrame "
                "(dask.dataframe.read_csv, ...)"
            )
    return paths


def _baseline_partitions(source: Any, baseline_source: Any) -> list[Any]:
    """A DataFrame source's baseline partitions, one per partition of ``source`` (each
    checked in its task to hold as many rows); Nones for a one-source run."""
    if baseline_source is None:
        return [None] * source.npartitions
    if not _is_dask_frame(baseline_source):
        raise TypeError(
            "baseline_source: with a dask.dataframe.DataFrame source, a DataFrame whose "
            f"partitions hold the same rows as the source's, got {type(baseline_source).__name__}"
        )
    if baseline_source.npartitions != source.npartitions:
        raise ValueError(
            f"baseline_source: has {baseline_source.npartitions} partitions but source has "
            f"{source.npartitions}; partition i of each must hold the same rows "
            "(repartition one like the other)"
        )
    return baseline_source.to_delayed()


def _raise_bad_data(source: Any, error: dict[str, Any], scheduler: Any) -> NoReturn:
    """Raise the first bad partition's error, its row as an offset in the whole stream.

    A file partition knows where it begins; for a DataFrame partition the earlier
    partitions' lengths are computed here, on this failure path only (one more pass
    over them, reading as few columns as the source allows).
    """
    import dask

    part = error["part"]
    offset = part.offset
    if offset is None and error["data"] is not None:
        offset = 0
        if part.index:
            (lengths,) = dask.compute(
                source.partitions[: part.index].map_partitions(len), scheduler=scheduler
            )
            offset = int(sum(lengths))
    raise _located(error, offset or 0)


def evaluate(
    source: Any,
    metric: Metric | Comparison,
    *,
    batch_rows: int | None = None,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    split_every: int = 8,
    scheduler: Any = None,
    task_threads: int | None = None,
    **columns: Any,
) -> Report | GroupedReport | ComparisonReport | GroupedComparison:
    """:func:`xentstream.evaluate` on a Dask cluster, bitwise equal to one process.

    Every partition becomes an exact metric state on a worker (the same feeders,
    kernels and grouping as :func:`xentstream.evaluate`); only these states, about
    3 KB each (plus a few hundred bytes per group), travel between workers, where they are
    merged by a tree reduction in partition order. The merged state is added to
    ``metric``, whose report is returned.

    A partition's state is a pure function of its rows, so a task lost with a dying
    worker is recomputed by Dask and no row is counted twice. Bad data does not
    fail its task: every partition runs, and the error raised is that of the first
    bad partition of the stream, whatever order the tasks finish in.

    The tasks run on ``metric.engine``: with ``engine="cuda"`` every worker needs a
    usable GPU (and ``pip install "xentstream[cuda]"``), and one without stops the run
    with the no-GPU error. The client builds the metric, so under ``engine="cuda"`` it
    needs numba-cuda and a GPU too.

    Parameters
    ----------
    source
        A path, glob or list of Parquet or Arrow IPC files, read on the workers (use
        absolute paths on storage every worker sees), split into partitions of
        ``partition_rows`` rows; or a ``dask.dataframe.DataFrame``, one task per
        partition.
    metric : Metric or Comparison
        Updated in place, as by :func:`xentstream.evaluate`. A
        :class:`~xentstream.Comparison` compares the ``preds`` and ``baseline_preds``
        columns of the same rows: of one source, or with ``baseline_source`` of two,
        read in step (each partition of ``source`` with the baseline's rows of the same
        stream rows, wherever the baseline's files are cut; two DataFrames pair
        partition by partition).
    batch_rows : int, optional
        As in :func:`xentstream.evaluate`: bounds the memory of each task.
    **columns
        :func:`xentstream.evaluate`'s column arguments: ``preds``, ``target``,
        ``sample_weight``, ``by``, ``classes``, ``document``, ``units`` (a document's
        rows may lie in several partitions: the per-document states merge by
        document id), and a comparison's ``baseline_preds``, ``baseline_source``
        (files like ``source``'s holding as many rows, checked on the client, or a
        DataFrame of as many partitions) and ``row_id`` (checked row by row in
        every partition, as are the targets).
    partition_rows : int
        Rows per partition of a file source (partitions never span two files).
    split_every : int
        Fan-in of the merge tree.
    scheduler : optional
        What runs the graph: a ``distributed.Client`` or a name dask knows
        (``"sync"``, ``"threads"``, ``"processes"``). Default: the current
        ``distributed.Client`` if there is one, else dask's local scheduler.
    task_threads : int, optional
        numba threads each task's kernels use (``numba.set_num_threads`` in the task's
        own thread). Default: numba's, every core of the worker's machine - right for
        one single-threaded worker per machine; with several worker processes on one
        machine, about ``cores // processes`` keeps them from oversubscribing it.

    Returns
    -------
    Report or GroupedReport
        Bitwise equal to :func:`xentstream.evaluate` on the same rows in one process;
        groups sorted by key, as there (a comparison's report for a comparison).

    Raises
    ------
    ImportError
        Without dask (``pip install "xentstream[dask]"``); ``engine="cuda"`` on a
        worker without numba-cuda.
    ValueError, TypeError, FileNotFoundError
        Bad sources, columns or options; bad data, with the message naming the
        first bad partition of the stream, the row (its offset in the whole stream),
        the column and the rule broken.
    RuntimeError
        ``engine="cuda"`` on a worker without a usable GPU (also a ``ValueError``),
        naming the worker's host.

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
    dask = require_dask()
    run = Evaluation.of(metric, **columns)
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise ValueError(f"split_every: must be an integer >= 2, got {split_every!r}")
    if task_threads is not None and (
        isinstance(task_threads, bool) or not isinstance(task_threads, int) or task_threads < 1
    ):
        raise ValueError(f"task_threads: must be a positive integer or None, got {task_threads!r}")
    # The config and columns only: what every task and merge starts from.
    # (A two-source comparison's baseline travels as each partition's own rows.)
    template = run.fresh(groups=False, baseline_source=None)
    level = _leaves(
        source,
        columns.get("baseline_source"),
        template,
        batch_rows,
        partition_rows,
        (template, metric.engine, task_threads),
    )
    merge = dask.delayed(_merge_states, pure=True)
    while len(level) > 1:
        level = [
            merge(template, *level[i : i + split_every]) for i in range(0, len(level), split_every)
        ]
    if level:
        if scheduler is None:
            scheduler = _current_client()
        (state,) = dask.compute(level[0], scheduler=scheduler)
        if "error" in state:
            _raise_bad_data(source, state["error"], scheduler)
        _merge_into(run, state)
    return run.report()
