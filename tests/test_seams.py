"""The public seams between the layers: ``xs.DataError``, the ``xentstream.evaluation``
module and its run step, the feeders' file helpers.

Rows of bad data are placed by the test, so the expected row is known by
construction; a split run is compared bit for bit with one pass (exact sums), as in
``test_feeders``.
"""

from __future__ import annotations

import importlib
import math
import pickle
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from stream_support import CLASSES, WIDE, assert_same_report, make_data, scalar_frame, write

import xentstream as xs
from xentstream import feeders
from xentstream.evaluation import Evaluation, GroupState


def test_data_error_carries_the_stream_row() -> None:
    preds = np.full((40, 3), 1 / 3)
    preds[27, 2] = math.nan
    with pytest.raises(xs.DataError) as raised:
        xs.cross_entropy(preds, np.zeros(40, dtype=np.int64))
    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.column, error.row, error.position) == ("preds", 27, ", class 2")
    assert str(error) == f"preds: row 27, class 2: {error.rule}"
    assert "NaN" in error.rule


def test_data_error_of_a_later_batch_counts_from_the_stream_start() -> None:
    frame = pl.DataFrame({"p": np.full((50, 2), 0.5), "y": np.zeros(50, dtype=np.int64)})
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 33).then(None).otherwise(pl.col("y")).alias("y")
    )
    with pytest.raises(xs.DataError) as nulls:  # the feeders' null check
        xs.evaluate(bad, xs.CrossEntropy(), preds="p", target="y", batch_rows=10)
    assert (nulls.value.column, nulls.value.row) == ("y", 33)
    labels = frame.with_columns(pl.Series("y", [0] * 41 + [5] + [0] * 8))
    with pytest.raises(xs.DataError) as kernel:  # the kernels' label check
        xs.evaluate(labels, xs.CrossEntropy(), preds="p", target="y", batch_rows=10)
    assert (kernel.value.column, kernel.value.row) == ("y", 41)
    assert kernel.value.position == " (batch row 1)"


def test_data_error_pickles_and_shifts() -> None:
    error = xs.DataError.at("p", 12, "value is null; nulls are not allowed", ", class 1")
    copy = pickle.loads(pickle.dumps(error))  # a Dask worker's result travels pickled
    assert type(copy) is xs.DataError and str(copy) == str(error)
    assert (copy.column, copy.row, copy.position, copy.rule) == (
        "p",
        12,
        ", class 1",
        "value is null; nulls are not allowed",
    )
    moved = copy.shifted(1000, context="partition 3 of 4")
    assert (moved.row, moved.context) == (1012, "partition 3 of 4")
    assert (
        str(moved) == "partition 3 of 4: p: row 1012, class 1: value is null; nulls are not allowed"
    )


def test_data_error_from_its_message_alone_has_no_row() -> None:
    """What ``type(error)(f"{error}; hint")`` (functional's hints) builds."""
    error = xs.DataError("preds: row 3: something; a hint")
    assert isinstance(error, ValueError) and error.row is None
    with pytest.raises(ValueError, match="no row to shift"):
        error.shifted(10)


def test_the_evaluation_module_is_reachable() -> None:
    module = importlib.import_module("xentstream.evaluation")
    assert module.evaluate is xs.evaluate and module.stream is xs.stream
    assert callable(xs.evaluate)  # the package's ``evaluate`` stays the function
    # No module of the function's name: importing one would rebind ``xs.evaluate``.
    # (Not imported here: a development install may find an old copy elsewhere.)
    assert not (Path(xs.__file__).parent / "evaluate.py").exists()


def test_evaluation_parts_merged_equal_one_pass() -> None:
    frame = scalar_frame(make_data(600))
    whole = xs.evaluate(frame, xs.CrossEntropy(), preds=WIDE, target="y", by="g")
    first = Evaluation.of(xs.CrossEntropy(), preds=WIDE, target="y", by="g")
    for _ in first.feed(frame.head(250), batch_rows=100):
        pass
    second = Evaluation.of(xs.CrossEntropy(), preds=WIDE, target="y", by="g")
    for _ in second.feed(frame.tail(350)):
        pass
    first.merge_state_dict(second.state_dict())
    merged = first.report()
    assert isinstance(first.groups, GroupState)
    assert_same_report(merged.overall, whole.overall)
    assert list(merged.groups) == list(whole.groups)
    for key, report in whole.groups.items():
        assert_same_report(merged.groups[key], report)
    ungrouped = Evaluation.of(xs.CrossEntropy(), preds=WIDE, target="y")
    with pytest.raises(ValueError, match="groups"):
        ungrouped.merge_state_dict(second.state_dict())


def test_evaluation_of_checks_the_metric() -> None:
    with pytest.raises(TypeError, match="metric: expected an xentstream metric"):
        Evaluation.of(object(), preds="p", target="y")


def test_feeders_file_helpers(tmp_path: Path) -> None:
    frame = scalar_frame(make_data(300))
    parquet = [
        write(frame.head(120), tmp_path / "a.parquet"),
        write(frame.tail(180), tmp_path / "b.parquet"),
    ]
    paths = feeders.expand_paths(str(tmp_path / "*.parquet"))
    assert paths == parquet
    assert feeders.count_rows(paths) == frame.height
    assert feeders.file_schema(paths) == frame.schema
    npy = tmp_path / "p.npy"
    np.save(npy, frame.select(WIDE).to_numpy())
    assert feeders.file_schema([npy]) is None
    assert feeders.count_rows([npy]) == frame.height
    assert feeders.npy_shape(npy) == (frame.height, len(CLASSES))
    with pytest.raises(FileNotFoundError, match="--target: file"):
        feeders.npy_shape(tmp_path / "absent.npy", "--target")
    assert set(feeders.SPLITTABLE_SUFFIXES) < set(feeders.SUFFIXES)
    assert ".csv" not in feeders.SPLITTABLE_SUFFIXES and ".npy" in feeders.SUFFIXES


def test_dask_raises_a_data_error_at_the_stream_row() -> None:
    dd = pytest.importorskip("dask.dataframe")
    from xentstream import dask as xd

    data = make_data(400)
    table = scalar_frame(data).to_pandas()
    table.loc[317, "y"] = 9
    frame = dd.from_pandas(table, npartitions=4, sort=False)  # 100 rows each
    with pytest.raises(xs.DataError) as raised:
        xd.evaluate(frame, xs.CrossEntropy(), preds=WIDE, target="y", scheduler="sync")
    error = raised.value
    assert (error.column, error.row) == ("y", 317)
    assert error.context == "partition 3 of 4 of the dask DataFrame"
