"""Feeders: turn a source of any size into bounded batches of numpy arrays.

This is the only module that knows file formats. A source is opened as a
:class:`Feeder`, which yields :class:`Batch` objects of at most ``batch_rows`` rows,
starting after ``skip_rows`` rows (resumed runs). Frame and file sources go through
polars (lazy scans, streaming batches: memory is bounded by the batch, whatever the
file size); ``.npy`` files are memory-mapped; iterables are taken as they come.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import polars.selectors as cs

from xentstream._errors import ColumnNames, DataError, shorten

__all__ = [
    "NPY_SUFFIX",
    "SPLITTABLE_SUFFIXES",
    "SUFFIXES",
    "Batch",
    "ColumnSpec",
    "Feeder",
    "count_rows",
    "expand_paths",
    "file_schema",
    "npy_shape",
    "open_source",
    "scan_files",
]

_PARQUET_SUFFIXES = (".parquet", ".pq")
_IPC_SUFFIXES = (".arrow", ".ipc", ".feather")
_SCANNERS = {
    **dict.fromkeys(_PARQUET_SUFFIXES, pl.scan_parquet),
    **dict.fromkeys(_IPC_SUFFIXES, pl.scan_ipc),
    ".csv": pl.scan_csv,
    ".ndjson": pl.scan_ndjson,
    ".jsonl": pl.scan_ndjson,
}
#: A memory-mapped numpy array of predictions (``target=`` names its labels' file).
NPY_SUFFIX = ".npy"
#: Every file suffix a path source may have (one format per source).
SUFFIXES = (*_SCANNERS, NPY_SUFFIX)
#: Formats whose row ranges are read without reading the rows before them (Parquet
#: row groups, IPC record batches): a file of these splits into partitions
#: (:mod:`xentstream.dask`). CSV and NDJSON must be parsed from their start.
SPLITTABLE_SUFFIXES = (*_PARQUET_SUFFIXES, *_IPC_SUFFIXES)
#: Default batch size aims at this many bytes of predictions per batch: large enough
#: to amortize per-batch costs, small enough to stay in memory many times over.
_TARGET_BATCH_BYTES = 1 << 26
_MIN_BATCH_ROWS = 1024
_MAX_BATCH_ROWS = 1 << 20
#: Largest ``batch_rows=`` taken: polars and the kernels index a batch's rows with
#: 32-bit integers in places.
MAX_BATCH_ROWS = (1 << 31) - 1


def default_batch_rows(row_width: int, itemsize: int = 8) -> int:
    """Rows per batch for predictions of ``row_width`` values of ``itemsize`` bytes."""
    rows = _TARGET_BATCH_BYTES // max(1, row_width * itemsize)
    return int(min(max(rows, _MIN_BATCH_ROWS), _MAX_BATCH_ROWS))


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns hold what (SPEC section 5).

    ``preds``: one Array/List column, a list of column names, or a polars selector.
    ``target``: a column name, or names (multi-label / soft targets).
    ``classes``: class names, mapping string or categorical labels to indices.
    ``document`` / ``units``: per-row side columns of the token kind (document ids, unit
    counts), handed to the metric as ``Batch.extras``; ``target_optional``: the metric
    runs without a target column (the token kind's target is an optional mask).
    """

    preds: Any = None
    target: Any = None
    sample_weight: str | None = None
    by: tuple[str, ...] = ()
    classes: tuple[Any, ...] | None = None
    document: str | None = None
    units: str | None = None
    target_optional: bool = False

    def side_columns(self) -> dict[str, str]:
        """The side columns given: argument name -> column name."""
        named = {"document": self.document, "units": self.units}
        return {key: column for key, column in named.items() if column is not None}

    def names(self) -> ColumnNames:
        """How errors name the columns."""
        preds = self.preds if isinstance(self.preds, str) else "preds"
        target = self.target if isinstance(self.target, str) else "target"
        weights = self.sample_weight if isinstance(self.sample_weight, str) else "sample_weight"
        return ColumnNames(preds=preds, target=target, sample_weight=weights)


@dataclass
class Batch:
    """One batch of a source, as arrays the metrics take."""

    preds: Any
    target: Any
    sample_weight: Any
    keys: pl.DataFrame | None  # the ``by`` columns of these rows
    n_rows: int
    #: Side columns (``ColumnSpec.side_columns``) by argument name: ``document``, ``units``.
    extras: dict[str, Any] = field(default_factory=dict)


class Feeder:
    """Iterate a source in batches; knows its fingerprint and (if cheap) its row count.

    ``fingerprint`` may be a callable: hashing an in-memory frame costs a pass over
    it, paid only when a checkpoint asks (:attr:`fingerprint`). ``columns`` describes
    the columns a frame source resolved (preds, target, classes, ...) without that
    cost; None for other sources.
    """

    def __init__(
        self,
        batches: Iterator[Batch],
        *,
        total_rows: int | None,
        fingerprint: dict | Callable[[], dict],
        columns: dict[str, Any] | None = None,
    ):
        self._batches = batches
        self.total_rows = total_rows
        self._fingerprint = fingerprint
        self.columns = columns

    @property
    def fingerprint(self) -> dict:
        """What identifies the source (``{"kind": "iterable"}``: nothing does)."""
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    def __iter__(self) -> Iterator[Batch]:
        return self._batches


# -- sources -------------------------------------------------------------------------------


def expand_paths(source: Any) -> list[Path] | None:
    """The files of a path / glob / list of paths source, or None if not a path source.

    An existing path means itself, even with glob characters in its name; a path
    that does not exist is a glob pattern, its matches sorted.

    Raises
    ------
    FileNotFoundError
        For a path that does not exist and a pattern that matches nothing.
    ValueError
        For files of an unknown format (not one of :data:`SUFFIXES`) or of several.

    Examples
    --------
    >>> expand_paths(["no-such-dump.parquet"])
    Traceback (most recent call last):
    ...
    FileNotFoundError: source: file 'no-such-dump.parquet' does not exist
    >>> expand_paths(object()) is None
    True
    """
    items = [source] if isinstance(source, str | os.PathLike) else None
    if items is None and isinstance(source, list | tuple) and source:
        if all(isinstance(item, str | os.PathLike) for item in source):
            items = list(source)
    if items is None:
        return None
    paths: list[Path] = []
    for item in items:
        text = os.fspath(item)
        # An existing path always means itself, even with glob characters in its name
        # (``data[1].parquet``); only a path that does not exist is a pattern, and
        # ``glob.escape`` (``data[[]1].parquet``) matches such a name literally.
        if os.path.exists(text):
            matches = [text]
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"source: no file matches {text!r}")
        else:
            raise FileNotFoundError(f"source: file {text!r} does not exist")
        paths.extend(Path(match) for match in matches)
    suffixes = {path.suffix.lower() for path in paths}
    if len(suffixes) > 1:
        raise ValueError(f"source: files of different formats {sorted(suffixes)}")
    suffix = suffixes.pop()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"source: unknown file type {suffix!r}; expected one of {sorted(SUFFIXES)}"
        )
    return paths


def scan_files(paths: Sequence[Path]) -> pl.LazyFrame:
    """A lazy scan of exactly ``paths`` (already expanded: polars must not glob again)."""
    scan = _SCANNERS[paths[0].suffix.lower()]
    if scan is pl.scan_ndjson:  # no ``glob=`` option: escape the names instead
        return scan([glob.escape(str(p)) for p in paths])
    return scan([str(p) for p in paths], glob=False)


def file_schema(paths: Sequence[Path]) -> pl.Schema | None:
    """The columns of files from :func:`expand_paths` (their first file's: one format
    is one schema); None for a ``.npy`` file, which holds an array, not columns."""
    if paths[0].suffix.lower() == NPY_SUFFIX:
        return None
    return scan_files(paths[:1]).collect_schema()


def count_rows(paths: Sequence[Path]) -> int:
    """Rows of files from :func:`expand_paths`: read from file metadata where the
    format keeps it (Parquet, IPC, a ``.npy`` header), else by a streaming pass."""
    if paths[0].suffix.lower() == NPY_SUFFIX:
        return sum(npy_shape(path)[0] for path in paths)
    return int(scan_files(paths).select(pl.len()).collect().item())


def npy_shape(path: str | os.PathLike[str], name: str = "source") -> tuple[int, ...]:
    """The shape of the array in a ``.npy`` file (memory-mapped: only its header is
    read); errors name the file as the argument ``name``."""
    return tuple(int(n) for n in _load_npy(path, name).shape)


def _file_fingerprint(paths: Sequence[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in paths:
        stat = path.stat()
        entries.append(
            {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    return entries


def open_source(
    source: Any,
    spec: ColumnSpec,
    *,
    batch_rows: int | None,
    skip_rows: int = 0,
) -> Feeder:
    """Open ``source`` (SPEC section 5) as a :class:`Feeder` of ``spec``'s columns.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError
        For unknown formats, missing files or columns, and invalid specs; while
        iterating, a :class:`~xentstream.DataError` (a ``ValueError``) for a null, a
        label outside ``classes`` or a ragged list row, naming the row.
    """
    if batch_rows is not None and (
        isinstance(batch_rows, bool)
        or not isinstance(batch_rows, int)
        or not 1 <= batch_rows <= MAX_BATCH_ROWS
    ):
        shown = batch_rows if isinstance(batch_rows, int) and batch_rows < 1 << 64 else "huge"
        raise ValueError(
            f"batch_rows: must be a positive integer of at most {MAX_BATCH_ROWS}, got {shown!r}"
        )
    source = _as_polars_source(source, spec, batch_rows)
    paths = expand_paths(source)
    if paths is not None and paths[0].suffix.lower() == NPY_SUFFIX:
        return _npy_feeder(paths, spec, batch_rows, skip_rows)
    if paths is not None:
        fingerprint = {"kind": "files", "files": _file_fingerprint(paths)}
        try:
            feeder = _frame_feeder(
                scan_files(paths), spec, batch_rows, skip_rows, fingerprint, count_rows=True
            )
        except (pl.exceptions.PolarsError, OSError) as error:
            raise _read_error(paths, error) from None
        return Feeder(
            _naming_files(iter(feeder), paths),
            total_rows=feeder.total_rows,
            fingerprint=feeder.fingerprint,  # with the columns _frame_feeder resolved
            columns=feeder.columns,
        )
    if isinstance(source, pl.DataFrame):
        fingerprint = {"kind": "dataframe"}
        return _frame_feeder(source, spec, batch_rows, skip_rows, fingerprint, False)
    if isinstance(source, pl.LazyFrame):
        return _frame_feeder(source, spec, batch_rows, skip_rows, {"kind": "lazyframe"}, False)
    if isinstance(source, str | bytes | Mapping) or not isinstance(source, Iterable):
        raise TypeError(
            f"source: expected a polars frame, a path or glob, a .npy file or an iterable "
            f"of batches, got {type(source).__name__}"
        )
    return Feeder(
        _iterable_batches(source, spec, skip_rows),
        total_rows=None,
        fingerprint={"kind": "iterable"},
    )


# -- other libraries' tables ---------------------------------------------------------------


def _module(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


def _is_arrow_dataset(value: Any) -> bool:
    return any(
        kind.__name__ == "Dataset" and kind.__module__ == "pyarrow._dataset"
        for kind in type(value).__mro__
    )


def _polars_frame(item: Any) -> Any:
    """A pandas DataFrame or pyarrow Table / RecordBatch as a polars DataFrame (Arrow
    memory is shared, not copied); anything else as it is."""
    module, name = _module(item), type(item).__name__
    if module == "pandas" and name == "DataFrame":
        return pl.from_pandas(item)  # the index is not a column
    if module == "pyarrow" and name in ("Table", "RecordBatch"):
        return pl.from_arrow(item)
    return item


def _reader_frames(reader: Any, batch_rows: int | None) -> Iterator[pl.DataFrame]:
    """A pyarrow RecordBatchReader as DataFrames of at most ``batch_rows`` rows."""
    for record_batch in reader:
        frame = pl.from_arrow(record_batch)
        yield from frame.iter_slices(batch_rows) if batch_rows else [frame]


def _is_row_dicts(source: Any, spec: ColumnSpec) -> bool:
    """A list of records (``[{"p": [...], "y": 3}, ...]``), told apart from a list of
    batch dicts by its target: one value per record, not an array."""
    if not isinstance(source, list) or not source or not isinstance(source[0], Mapping):
        return False
    if not isinstance(spec.target, str) or spec.target not in source[0]:
        return False
    return isinstance(source[0][spec.target], int | float | str | bool | np.generic)


def _as_polars_source(source: Any, spec: ColumnSpec, batch_rows: int | None) -> Any:
    """Tables of pandas, pyarrow and DuckDB, and lists of records, as polars sources;
    any other source as it is. Nothing is imported: objects are known by their module."""
    source = _polars_frame(source)
    module, name = _module(source), type(source).__name__
    if module == "pyarrow" and name == "RecordBatchReader":
        return _reader_frames(source, batch_rows)
    if module == "pyarrow" and _is_arrow_dataset(source):
        return pl.scan_pyarrow_dataset(source)  # lazy: read batch by batch
    if module == "duckdb" and hasattr(source, "pl"):
        try:
            return source.pl(lazy=True)  # duckdb >= 1.4 streams into a LazyFrame
        except TypeError:
            return _reader_frames(source.fetch_record_batch(batch_rows or 1 << 16), batch_rows)
    if _is_row_dicts(source, spec):
        return pl.DataFrame(source, infer_schema_length=None)
    return source


# -- polars frames and files ---------------------------------------------------------------


def _naming_files(batches: Iterator[Batch], paths: Sequence[Path]) -> Iterator[Batch]:
    """``batches``, with polars' read errors turned into ``ValueError``s naming the file."""
    try:
        yield from batches
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _read_error(paths, error) from None


def _read_error(paths: Sequence[Path], error: Exception) -> ValueError:
    """A ``ValueError`` naming the first of ``paths`` that polars cannot read.

    polars' own messages rarely name the file of a scan of many; each file is read
    again on its own (schema, row count, then every value, streamed: bounded
    memory), only now that something failed.
    """
    detail = shorten(" ".join(str(error).split()) or type(error).__name__, 200)
    for path in paths:
        scan = scan_files([path])
        try:
            scan.collect_schema()
            scan.select(pl.len()).collect()
            scan.select(pl.all().null_count()).collect(engine="streaming")
        except (pl.exceptions.PolarsError, OSError) as own:
            own_detail = shorten(" ".join(str(own).split()) or type(own).__name__, 200)
            return ValueError(f"source: {path}: cannot be read ({own_detail})")
    if len(paths) == 1:
        return ValueError(f"source: {paths[0]}: cannot be read ({detail})")
    return ValueError(f"source: the {len(paths)} files cannot be read together ({detail})")


def _resolve_columns(schema: pl.Schema, spec: ColumnSpec) -> tuple[list[str], list[str]]:
    """(prediction columns, target columns) named by the spec, checked against the schema."""
    if spec.preds is None or (spec.target is None and not spec.target_optional):
        raise ValueError("preds and target: column names are required for frame and file sources")
    if cs.is_selector(spec.preds):
        pred_columns = cs.expand_selector(schema, spec.preds)
        if not pred_columns:
            raise ValueError("preds: the selector matches no column")
        pred_columns = list(pred_columns)
    elif isinstance(spec.preds, str):
        pred_columns = [spec.preds]
    else:
        pred_columns = list(spec.preds)
    if spec.target is None:
        target_columns = []
    else:
        target_columns = [spec.target] if isinstance(spec.target, str) else list(spec.target)
    needed = [*pred_columns, *target_columns, *([spec.sample_weight] if spec.sample_weight else [])]
    needed += list(spec.by) + list(spec.side_columns().values())
    missing = [name for name in needed if name not in schema]
    if missing:
        raise ValueError(
            f"{missing[0]}: no such column; the source has {list(schema.names())[:20]}"
        )
    both = sorted(set(pred_columns) & set(target_columns))
    if both:
        raise ValueError(f"{both[0]}: named as both a prediction and a target column")
    for name in spec.by:
        if schema[name].is_nested() or schema[name] == pl.Object:
            raise ValueError(
                f"by: column {name!r} holds {schema[name]} values; group keys must be "
                "scalars (numbers, strings, dates, ...)"
            )
    return pred_columns, target_columns


def _classes(
    schema: pl.Schema, spec: ColumnSpec, pred_columns: list[str], target_columns: list[str]
) -> tuple[Any, ...] | None:
    """``spec.classes``, else the wide prediction column names for string labels."""
    if spec.classes is not None or len(pred_columns) < 2 or len(target_columns) != 1:
        return spec.classes
    dtype = schema[target_columns[0]]
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return tuple(pred_columns)  # wide columns named after the classes
    return None


def _prediction_width(schema: pl.Schema, pred_columns: list[str]) -> int:
    if len(pred_columns) > 1:
        return len(pred_columns)
    dtype = schema[pred_columns[0]]
    return int(dtype.shape[0]) if isinstance(dtype, pl.Array) else 1


def _frame_feeder(
    frame: pl.LazyFrame | pl.DataFrame,
    spec: ColumnSpec,
    batch_rows: int | None,
    skip_rows: int,
    fingerprint: dict[str, Any],
    count_rows: bool,
) -> Feeder:
    eager = isinstance(frame, pl.DataFrame)
    schema = frame.schema if eager else frame.collect_schema()
    pred_columns, target_columns = _resolve_columns(schema, spec)
    classes = _classes(schema, spec, pred_columns, target_columns)
    width = _prediction_width(schema, pred_columns)
    if classes is not None and len(set(map(str, classes))) != len(classes):
        raise ValueError("classes: names repeat; each class needs its own name")
    if classes is not None and width > 1 and len(classes) != width:
        raise ValueError(
            f"classes: {len(classes)} names for {width} prediction columns "
            "(one name per class, in the order of the predictions)"
        )
    if batch_rows is None:
        batch_rows = default_batch_rows(_prediction_width(schema, pred_columns))
    columns = list(
        dict.fromkeys([*pred_columns, *target_columns, *spec.by, *spec.side_columns().values()])
    )
    if spec.sample_weight:
        columns.append(spec.sample_weight)
    total = frame.height if eager else None
    if total is None and count_rows:
        total = frame.select(pl.len()).collect().item()
    kind = fingerprint["kind"]
    fingerprint = {
        **fingerprint,
        "columns": {
            "preds": pred_columns,
            "target": target_columns,
            "sample_weight": spec.sample_weight,
            "by": list(spec.by),
            "classes": None if classes is None else [str(c) for c in classes],
            **spec.side_columns(),
        },
    }
    described_columns = fingerprint["columns"]
    selected = frame.select(columns)
    if kind in ("dataframe", "lazyframe"):
        described = fingerprint
        fingerprint = lambda: {**described, **_frame_fingerprint(selected)}  # noqa: E731
    if skip_rows:
        selected = selected.slice(skip_rows)

    # An in-memory frame is sliced (zero-copy); a lazy one streams through polars.
    chunks = (
        selected.iter_slices(batch_rows)
        if eager
        else selected.collect_batches(chunk_size=batch_rows)
    )

    def batches() -> Iterator[Batch]:
        offset = skip_rows
        for chunk in chunks:
            for part in chunk.iter_slices(batch_rows) if chunk.height > batch_rows else [chunk]:
                if part.height == 0:
                    continue
                yield _frame_batch(part, pred_columns, target_columns, spec, classes, offset)
                offset += part.height

    return Feeder(batches(), total_rows=total, fingerprint=fingerprint, columns=described_columns)


def _frame_fingerprint(frame: pl.LazyFrame | pl.DataFrame) -> dict[str, Any]:
    """What identifies an in-memory frame (its contents) or a lazy one (its plan).

    A DataFrame: a SHA-256 of its row hashes (one pass over the columns read). A
    LazyFrame: a SHA-256 of its serialized plan, which holds any in-memory data but
    not the contents of the files it scans. polars' row hashes and plan format may
    change between its versions, so its version is part of the fingerprint.
    """
    digest = hashlib.sha256()
    schema = frame.schema if isinstance(frame, pl.DataFrame) else frame.collect_schema()
    if isinstance(frame, pl.DataFrame):
        for part in frame.iter_slices(1 << 20):
            digest.update(part.hash_rows(seed=0x5EED).to_numpy().tobytes())
        rows = frame.height
    else:
        try:
            digest.update(frame.serialize(format="binary"))
        except Exception as error:  # polars raises several kinds for unserializable plans
            raise ValueError(
                "checkpoint: this LazyFrame's plan cannot be serialized, so a checkpoint "
                "cannot tell whether a rerun reads the same data "
                f"({type(error).__name__}); pass checkpoint_key= to name the source"
            ) from None
        rows = None
    return {
        "schema": {name: str(dtype) for name, dtype in schema.items()},
        "rows": rows,
        "sha256": digest.hexdigest(),
        "polars": pl.__version__,
    }


def _check_nulls(frame: pl.DataFrame, columns: Sequence[str], offset: int) -> None:
    counts = frame.select(pl.col(columns).null_count()).row(0)
    for name, count in zip(columns, counts, strict=True):
        if count:
            row = int(frame[name].is_null().arg_max())
            raise DataError.at(name, offset + row, "value is null; nulls are not allowed")


def _matrix(frame: pl.DataFrame, columns: list[str], offset: int) -> np.ndarray:
    if len(columns) == 1:
        series = frame[columns[0]]
        if isinstance(series.dtype, pl.List):
            widths = series.list.len()
            if widths.n_unique() > 1:
                row = int((widths != widths[0]).arg_max())
                raise DataError.at(
                    columns[0],
                    offset + row,
                    f"list of length {widths[row]} where earlier rows have {widths[0]}; "
                    "every row needs one value per class",
                )
            series = series.list.to_array(int(widths[0]))
        return series.to_numpy()
    return frame.select(columns).to_numpy(order="c")


def _labels(series: pl.Series, classes: tuple[Any, ...] | None, offset: int) -> np.ndarray:
    if series.dtype in (pl.String, pl.Categorical) or isinstance(series.dtype, pl.Enum):
        if classes is None:
            raise ValueError(
                f"{series.name}: string labels need classes= (the class names in the order "
                "of the prediction columns)"
            )
        names = [str(c) for c in classes]
        codes = series.cast(pl.String).replace_strict(
            names, list(range(len(names))), default=None, return_dtype=pl.Int64
        )
        if codes.null_count():
            row = int(codes.is_null().arg_max())
            raise DataError.at(
                series.name,
                offset + row,
                f"label {series[row]!r} is not one of the classes {names[:10]}",
            )
        return codes.to_numpy()
    if classes is not None and series.dtype.is_integer() is False:
        raise TypeError(f"{series.name}: labels of dtype {series.dtype} cannot use classes=")
    return series.to_numpy()


def _frame_batch(
    frame: pl.DataFrame,
    pred_columns: list[str],
    target_columns: list[str],
    spec: ColumnSpec,
    classes: tuple[Any, ...] | None,
    offset: int,
) -> Batch:
    needed = [*pred_columns, *target_columns, *spec.side_columns().values()]
    if spec.sample_weight:
        needed.append(spec.sample_weight)
    _check_nulls(frame, needed, offset)
    preds = _matrix(frame, pred_columns, offset)
    if not target_columns:  # an optional target (the token kind's mask) not given
        target = None
    elif len(target_columns) == 1 and not isinstance(
        frame[target_columns[0]].dtype, pl.Array | pl.List
    ):
        target = _labels(frame[target_columns[0]], classes, offset)
    else:
        target = _matrix(frame, target_columns, offset)
    weights = frame[spec.sample_weight].to_numpy() if spec.sample_weight else None
    keys = frame.select(spec.by) if spec.by else None
    extras = {name: frame[column] for name, column in spec.side_columns().items()}
    if "units" in extras:
        extras["units"] = extras["units"].to_numpy()
    return Batch(preds, target, weights, keys, frame.height, extras)


# -- .npy files -----------------------------------------------------------------------------


def _load_npy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, str | os.PathLike):
        try:
            return np.load(value, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"{name}: file {os.fspath(value)!r} does not exist") from None
        except (ValueError, OSError) as error:  # not a .npy file, object arrays, no access
            detail = shorten(" ".join(str(error).split()), 200)
            raise ValueError(f"{name}: {os.fspath(value)}: cannot be read ({detail})") from None
    return np.asarray(value)


def _npy_feeder(
    paths: list[Path], spec: ColumnSpec, batch_rows: int | None, skip_rows: int
) -> Feeder:
    if len(paths) != 1:
        raise ValueError("source: give one .npy file of predictions (and target= its labels)")
    if spec.target is None:
        raise ValueError("target: a .npy source needs target= (a .npy path or an array)")
    if spec.by:
        raise ValueError("by: grouping needs a frame or file source with group columns")
    if spec.side_columns():
        name = next(iter(spec.side_columns()))
        raise ValueError(f"{name}: a side column needs a frame or file source that holds it")
    preds = _load_npy(paths[0], "preds")
    target = _load_npy(spec.target, "target")
    weights = None if spec.sample_weight is None else _load_npy(spec.sample_weight, "sample_weight")
    for name, array in (("preds", preds), ("target", target), ("sample_weight", weights)):
        if array is not None and array.ndim == 0:
            raise ValueError(f"{name}: a 0-d array (a single value); expected one entry per row")
    if target.shape[0] != preds.shape[0]:
        raise ValueError(
            f"target: {target.shape[0]} rows but the predictions {paths[0].name} have "
            f"{preds.shape[0]}"
        )
    width = int(np.prod(preds.shape[1:])) if preds.ndim > 1 else 1
    rows = batch_rows or default_batch_rows(width, preds.dtype.itemsize)
    total = preds.shape[0]
    files = [paths[0]] + [
        Path(v) for v in (spec.target, spec.sample_weight) if isinstance(v, str | os.PathLike)
    ]
    fingerprint = {"kind": "npy", "files": _file_fingerprint(files)}

    def batches() -> Iterator[Batch]:
        for start in range(skip_rows, total, rows):
            stop = min(start + rows, total)
            yield Batch(
                preds[start:stop],
                target[start:stop],
                None if weights is None else weights[start:stop],
                None,
                stop - start,
            )

    return Feeder(batches(), total_rows=total, fingerprint=fingerprint)


# -- iterables ------------------------------------------------------------------------------


def _iterable_batches(source: Iterable[Any], spec: ColumnSpec, skip_rows: int) -> Iterator[Batch]:
    offset = 0
    pred_columns = target_columns = classes = None
    for item in source:
        item = _polars_frame(item)
        if isinstance(item, pl.DataFrame):
            if pred_columns is None:
                pred_columns, target_columns = _resolve_columns(item.schema, spec)
                classes = _classes(item.schema, spec, pred_columns, target_columns)
            batch = _frame_batch(item, pred_columns, target_columns, spec, classes, offset)
        elif isinstance(item, Mapping):
            preds = item[_key(item, spec.preds, "preds")]
            if spec.target_optional and _key_name(spec.target, "target") not in item:
                target = None
            else:
                target = item[_key(item, spec.target, "target")]
            weight_key = spec.sample_weight or "sample_weight"
            weights = item.get(weight_key)
            extras = {
                name: item[_key(item, column, name)] for name, column in spec.side_columns().items()
            }
            batch = Batch(preds, target, weights, None, _length(preds), extras)
        elif isinstance(item, tuple) and len(item) in (2, 3):
            if spec.side_columns():
                name = next(iter(spec.side_columns()))
                raise ValueError(f"{name}: tuple batches have no side columns; use dicts or frames")
            weights = item[2] if len(item) == 3 else None
            batch = Batch(item[0], item[1], weights, None, _length(item[0]))
        else:
            raise TypeError(
                f"source: batch at row {offset} is a {type(item).__name__}; expected a "
                "(preds, target[, sample_weight]) tuple, a dict or a polars DataFrame"
            )
        if spec.by and batch.keys is None:
            raise ValueError("by: grouping needs DataFrame batches with the group columns")
        start = offset
        offset += batch.n_rows
        if offset <= skip_rows:
            continue
        if start < skip_rows:  # resume inside this batch
            batch = _tail(batch, skip_rows - start)
        yield batch


def _key_name(name: Any, default: str) -> str:
    return name if isinstance(name, str) else default


def _key(item: Mapping, name: Any, default: str) -> str:
    key = _key_name(name, default)
    if key not in item:
        raise ValueError(f"source: batch dict has no {key!r} entry (keys: {list(item)[:10]})")
    return key


def _length(preds: Any) -> int:
    shape = getattr(preds, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    return len(preds)


def _tail(batch: Batch, start: int) -> Batch:
    def cut(value: Any) -> Any:
        if value is None:
            return None
        return value[start:] if hasattr(value, "__getitem__") else value

    keys = None if batch.keys is None else batch.keys.slice(start)
    preds = np.asarray(batch.preds) if isinstance(batch.preds, list) else batch.preds
    target = np.asarray(batch.target) if isinstance(batch.target, list) else batch.target
    extras = {name: cut(value) for name, value in batch.extras.items()}
    return Batch(
        cut(preds), cut(target), cut(batch.sample_weight), keys, batch.n_rows - start, extras
    )
