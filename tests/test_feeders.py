"""Feeders (SPEC section 5): every source kind, streamed, equals one pass over all rows.

The one-shot functional API (and a metric updated once with every row) is exact
and correctly rounded, so every streamed result must be BITWISE equal to it,
whatever the file format, the batch size or the way the rows are split.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import polars.selectors as cs
import pytest
from stream_support import (
    BATCH_ROWS,
    CLASSES,
    ML_TARGET_WIDE,
    ML_WIDE,
    N_ROWS,
    WIDE,
    Data,
    assert_same_report,
    float_bits,
    full_frame,
    make_data,
    one_shot,
    report_bits,
    write,
)

import xentstream as xs


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


@pytest.fixture(scope="module")
def frame(data: Data) -> pl.DataFrame:
    return full_frame(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, frame: pl.DataFrame) -> dict[str, Path]:
    """The table in every file format (CSV: scalar columns only)."""
    root = tmp_path_factory.mktemp("feeders")
    paths = {
        suffix: write(frame, root / f"table.{suffix}")
        for suffix in ("parquet", "pq", "arrow", "ipc", "feather", "ndjson", "jsonl")
    }
    paths["csv"] = write(frame.select(scalar_frame_columns(frame)), root / "table.csv")
    return paths


def scalar_frame_columns(frame: pl.DataFrame) -> list[str]:
    return [name for name, dtype in frame.schema.items() if not isinstance(dtype, pl.Array)]


def multiclass_reference(data: Data, **kwargs) -> xs.Report:
    report = one_shot(xs.CrossEntropy(**kwargs), data.probs, data.labels)
    assert float_bits(report.loss) == float_bits(xs.cross_entropy(data.probs, data.labels))
    total = xs.cross_entropy(data.probs, data.labels, reduction="sum")
    assert float_bits(report.loss_sum) == float_bits(total)
    return report


def binary_reference(data: Data, weighted: bool = False) -> xs.Report:
    weights = data.weights if weighted else None
    report = one_shot(xs.BinaryCrossEntropy(), data.binary_probs, data.binary_target, weights)
    expected = xs.binary_cross_entropy(data.binary_probs, data.binary_target, sample_weight=weights)
    assert float_bits(report.loss) == float_bits(expected)
    return report


def multilabel_reference(data: Data) -> xs.Report:
    report = one_shot(xs.MultiLabelCrossEntropy(per_label=True), data.ml_probs, data.ml_target)
    expected = xs.multilabel_cross_entropy(data.ml_probs, data.ml_target)
    assert float_bits(report.loss) == float_bits(expected)
    return report


# -- every file format -------------------------------------------------------------------------

ARRAY_FORMATS = ["parquet", "pq", "arrow", "ipc", "feather", "ndjson", "jsonl"]


@pytest.mark.parametrize("fmt", ARRAY_FORMATS)
def test_file_formats_with_array_columns(fmt: str, files: dict[str, Path], data: Data) -> None:
    path = files[fmt]
    report = xs.evaluate(
        path, xs.CrossEntropy(per_class=True), preds="p", target="y", batch_rows=BATCH_ROWS
    )
    assert_same_report(report, multiclass_reference(data, per_class=True))
    report = xs.evaluate(
        str(path),
        xs.MultiLabelCrossEntropy(per_label=True),
        preds="ml_p",
        target="ml_t",
        batch_rows=BATCH_ROWS,
    )
    assert_same_report(report, multilabel_reference(data))
    report = xs.evaluate(
        path, xs.BinaryCrossEntropy(), preds="b_p", target="b_t", batch_rows=BATCH_ROWS
    )
    assert_same_report(report, binary_reference(data))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrow", "ndjson"])
def test_file_formats_with_wide_columns(fmt: str, files: dict[str, Path], data: Data) -> None:
    path = files[fmt]
    # the per-class table names the classes after the wide columns
    expected = with_class_names(multiclass_reference(data, per_class=True), WIDE)
    # integer labels
    report = xs.evaluate(
        path, xs.CrossEntropy(per_class=True), preds=WIDE, target="y", batch_rows=BATCH_ROWS
    )
    assert_same_report(report, expected)
    # string labels, the classes inferred from the wide column names
    report = xs.evaluate(
        path, xs.CrossEntropy(per_class=True), preds=WIDE, target="label", batch_rows=BATCH_ROWS
    )
    assert_same_report(report, expected)
    # multi-label: wide predictions and wide targets
    report = xs.evaluate(
        path,
        xs.MultiLabelCrossEntropy(per_label=True),
        preds=ML_WIDE,
        target=ML_TARGET_WIDE,
        batch_rows=BATCH_ROWS,
    )
    assert_same_report(report, with_class_names(multilabel_reference(data), ML_WIDE))


def with_class_names(report: xs.Report, names: list[str]) -> xs.Report:
    """``report`` with its per-class table's first column replaced by ``names``."""
    table = report.per_class
    column = table.columns[0]
    return replace(report, per_class=table.with_columns(pl.Series(column, names, pl.String)))


def test_csv_binary_with_sample_weight(files: dict[str, Path], data: Data) -> None:
    report = xs.evaluate(
        files["csv"],
        xs.BinaryCrossEntropy(),
        preds="b_p",
        target="b_t",
        sample_weight="w",
        batch_rows=BATCH_ROWS,
    )
    assert_same_report(report, binary_reference(data, weighted=True))


def test_string_labels_through_classes(tmp_path: Path, data: Data) -> None:
    """Wide columns not named after the classes: ``classes=`` maps the labels."""
    frame = pl.DataFrame(
        {f"score_{i}": data.probs[:, i] for i in range(len(CLASSES))} | {"label": data.names}
    )
    path = write(frame, tmp_path / "renamed.parquet")
    preds = [f"score_{i}" for i in range(len(CLASSES))]
    expected = multiclass_reference(data)
    report = xs.evaluate(
        path, xs.CrossEntropy(), preds=preds, target="label", classes=CLASSES, batch_rows=999
    )
    assert_same_report(report, expected)
    # without classes=, the wide column names are taken as the class names
    with pytest.raises(ValueError, match=r"^label: row 0: label '\w+' is not one of the classes"):
        xs.evaluate(path, xs.CrossEntropy(), preds=preds, target="label")
    with pytest.raises(ValueError, match=r"^label: string labels need classes="):
        xs.evaluate(path, xs.CrossEntropy(), preds=preds[0], target="label")
    # categorical and enum label columns
    for dtype in (pl.Categorical, pl.Enum(list(CLASSES))):
        cast = frame.with_columns(pl.col("label").cast(dtype))
        report = xs.evaluate(
            cast, xs.CrossEntropy(), preds=preds, target="label", classes=CLASSES, batch_rows=999
        )
        assert_same_report(report, expected)
    # an Array column with string labels and classes=
    arrays = pl.DataFrame({"p": data.probs, "label": data.names})
    report = xs.evaluate(
        arrays.lazy(), xs.CrossEntropy(), preds="p", target="label", classes=CLASSES, batch_rows=999
    )
    assert_same_report(report, expected)


def test_label_not_in_classes_names_global_row(data: Data) -> None:
    names = data.names.astype(object)
    names[2_222] = "emu"
    frame = pl.DataFrame({"p": data.probs, "label": names.astype(str)})
    with pytest.raises(ValueError, match=r"label: row 2222: label 'emu' is not one of the classes"):
        xs.evaluate(
            frame, xs.CrossEntropy(), preds="p", target="label", classes=CLASSES, batch_rows=500
        )


# -- file sets, frames, selectors ----------------------------------------------------------------


def test_glob_and_list_of_paths(tmp_path: Path, frame: pl.DataFrame, data: Data) -> None:
    bounds = [0, 400, 1_300, 1_301, N_ROWS]  # one file of a single row
    paths = [
        write(frame.slice(start, stop - start), tmp_path / f"part-{i}.parquet")
        for i, (start, stop) in enumerate(itertools.pairwise(bounds))
    ]
    expected = multiclass_reference(data)
    by_glob = xs.evaluate(
        str(tmp_path / "part-*.parquet"), xs.CrossEntropy(), preds="p", target="y", batch_rows=333
    )
    assert_same_report(by_glob, expected)
    # a list of paths, in another order (exact sums do not depend on the order)
    by_list = xs.evaluate(
        [*reversed(paths)], xs.CrossEntropy(), preds="p", target="y", batch_rows=333
    )
    assert_same_report(by_list, expected)
    by_strings = xs.evaluate(
        [str(p) for p in paths], xs.CrossEntropy(), preds="p", target="y", batch_rows=10**6
    )
    assert_same_report(by_strings, expected)


def test_dataframe_and_lazyframe(frame: pl.DataFrame, data: Data) -> None:
    expected = multiclass_reference(data)
    for source in (frame, frame.lazy(), frame.lazy().filter(pl.lit(True))):
        report = xs.evaluate(source, xs.CrossEntropy(), preds="p", target="y", batch_rows=600)
        assert_same_report(report, expected)
    # a selector for the wide columns
    selector = cs.by_name(*WIDE)
    report = xs.evaluate(frame.lazy(), xs.CrossEntropy(), preds=selector, target="y")
    assert_same_report(report, expected)
    # a List (not Array) column
    lists = pl.DataFrame({"p": data.probs.tolist(), "y": data.labels})
    assert isinstance(lists.schema["p"], pl.List)
    report = xs.evaluate(lists, xs.CrossEntropy(), preds="p", target="y", batch_rows=600)
    assert_same_report(report, expected)


@pytest.mark.parametrize("batch_rows", [97, 700, N_ROWS - 1, N_ROWS, 10**6, None])
def test_batch_rows_do_not_change_the_bits(
    batch_rows: int | None, files: dict[str, Path], data: Data
) -> None:
    report = xs.evaluate(
        files["parquet"],
        xs.CrossEntropy(per_class=True),
        preds="p",
        target="y",
        sample_weight="w",
        batch_rows=batch_rows,
    )
    expected = one_shot(xs.CrossEntropy(per_class=True), data.probs, data.labels, data.weights)
    assert_same_report(report, expected)
    loss = xs.cross_entropy(data.probs, data.labels, sample_weight=data.weights)
    assert float_bits(report.loss) == float_bits(loss)


def test_single_row_batches(frame: pl.DataFrame) -> None:
    head = frame.head(150)
    one = xs.evaluate(head, xs.CrossEntropy(), preds="p", target="y", batch_rows=1)
    whole = xs.evaluate(head, xs.CrossEntropy(), preds="p", target="y", batch_rows=150)
    assert report_bits(one) == report_bits(whole)
    assert one.count == 150


# -- .npy -----------------------------------------------------------------------------------------


def test_npy_memory_mapped(tmp_path: Path, data: Data) -> None:
    preds_path, target_path, weights_path = (tmp_path / f"{n}.npy" for n in ("p", "y", "w"))
    np.save(preds_path, data.probs)
    np.save(target_path, data.labels)
    np.save(weights_path, data.weights)
    expected = multiclass_reference(data)
    report = xs.evaluate(
        str(preds_path), xs.CrossEntropy(), target=str(target_path), batch_rows=700
    )
    assert_same_report(report, expected)
    report = xs.evaluate(preds_path, xs.CrossEntropy(), target=data.labels, batch_rows=333)
    assert_same_report(report, expected)
    weighted = xs.evaluate(
        preds_path, xs.CrossEntropy(), target=target_path, sample_weight=str(weights_path)
    )
    expected = one_shot(xs.CrossEntropy(), data.probs, data.labels, data.weights)
    assert_same_report(weighted, expected)
    with pytest.raises(ValueError, match=r"target: 10 rows"):
        xs.evaluate(preds_path, xs.CrossEntropy(), target=data.labels[:10])
    with pytest.raises(ValueError, match=r"target"):
        xs.evaluate(preds_path, xs.CrossEntropy())


def test_npy_token_logits_with_ignore_index(tmp_path: Path) -> None:
    """A (sequences, tokens, vocabulary) dump: leading dimensions become rows."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 3.0, (300, 6, 5))
    target = rng.integers(0, 5, (300, 6))
    target[rng.random((300, 6)) < 0.2] = -100  # padding
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "tokens.npy", target)
    metric = xs.CrossEntropy(input="logits", ignore_index=-100)
    report = xs.evaluate(
        tmp_path / "logits.npy", metric, target=tmp_path / "tokens.npy", batch_rows=37
    )
    expected = one_shot(xs.CrossEntropy(input="logits", ignore_index=-100), logits, target)
    assert_same_report(report, expected)
    loss = xs.cross_entropy(logits, target, input="logits", ignore_index=-100)
    assert float_bits(report.loss) == float_bits(loss)
    assert report.ignored == int((target == -100).sum())


# -- iterables -----------------------------------------------------------------------------------


def _splits(n: int) -> list[tuple[int, int]]:
    bounds = [0, 1, 500, 500, 1_700, n]  # an empty batch too
    return list(itertools.pairwise(bounds))


def test_iterable_of_tuples(data: Data) -> None:
    expected = multiclass_reference(data)
    pairs = ((data.probs[a:b], data.labels[a:b]) for a, b in _splits(N_ROWS))
    assert_same_report(xs.evaluate(pairs, xs.CrossEntropy()), expected)
    triples = [(data.probs[a:b], data.labels[a:b], data.weights[a:b]) for a, b in _splits(N_ROWS)]
    weighted = one_shot(xs.CrossEntropy(), data.probs, data.labels, data.weights)
    assert_same_report(xs.evaluate(triples, xs.CrossEntropy()), weighted)
    # binary and multi-label batches, as lists
    binary = [
        (data.binary_probs[a:b].tolist(), data.binary_target[a:b].tolist())
        for a, b in _splits(N_ROWS)
    ]
    assert_same_report(xs.evaluate(binary, xs.BinaryCrossEntropy()), binary_reference(data))
    multilabel = [(data.ml_probs[a:b], data.ml_target[a:b]) for a, b in _splits(N_ROWS)]
    report = xs.evaluate(multilabel, xs.MultiLabelCrossEntropy(per_label=True))
    assert_same_report(report, multilabel_reference(data))


def test_iterable_of_dicts(data: Data) -> None:
    default_keys = [
        {"preds": data.probs[a:b], "target": data.labels[a:b], "sample_weight": data.weights[a:b]}
        for a, b in _splits(N_ROWS)
    ]
    expected = one_shot(xs.CrossEntropy(), data.probs, data.labels, data.weights)
    assert_same_report(xs.evaluate(default_keys, xs.CrossEntropy()), expected)
    named = [{"p": data.probs[a:b], "y": data.labels[a:b]} for a, b in _splits(N_ROWS)]
    report = xs.evaluate(iter(named), xs.CrossEntropy(), preds="p", target="y")
    assert_same_report(report, multiclass_reference(data))
    with pytest.raises(ValueError, match=r"no 'target' entry"):
        xs.evaluate([{"preds": data.probs}], xs.CrossEntropy())


def test_iterable_of_dataframes(frame: pl.DataFrame, data: Data) -> None:
    batches = [frame.slice(a, b - a) for a, b in _splits(N_ROWS)]
    report = xs.evaluate(batches, xs.CrossEntropy(), preds="p", target="y", sample_weight="w")
    expected = one_shot(xs.CrossEntropy(), data.probs, data.labels, data.weights)
    assert_same_report(report, expected)
    # wide columns named after the classes, string labels: classes inferred as for frames
    report = xs.evaluate(iter(batches), xs.CrossEntropy(), preds=WIDE, target="label")
    assert_same_report(report, multiclass_reference(data))


def test_path_and_iterator_agree(files: dict[str, Path], frame: pl.DataFrame) -> None:
    from_path = xs.evaluate(
        files["parquet"], xs.CrossEntropy(per_class=True), preds="p", target="y", batch_rows=700
    )
    batches = (
        (chunk["p"].to_numpy(), chunk["y"].to_numpy()) for chunk in frame.iter_slices(n_rows=411)
    )
    from_iterator = xs.evaluate(batches, xs.CrossEntropy(per_class=True))
    assert report_bits(from_path) == report_bits(from_iterator)


def test_against_sklearn_and_torch(files: dict[str, Path], data: Data) -> None:
    """Independent implementations agree within rounding."""
    from sklearn.metrics import log_loss

    report = xs.evaluate(files["arrow"], xs.CrossEntropy(), preds=WIDE, target="y", batch_rows=300)
    expected = log_loss(data.labels, data.probs, labels=list(range(len(CLASSES))))
    assert math.isclose(report.loss, expected, rel_tol=1e-12)

    import torch

    report = xs.evaluate(
        files["parquet"], xs.BinaryCrossEntropy(), preds="b_p", target="b_t", batch_rows=300
    )
    expected = torch.nn.functional.binary_cross_entropy(
        torch.from_numpy(data.binary_probs), torch.from_numpy(data.binary_target.astype(np.float64))
    ).item()
    assert math.isclose(report.loss, expected, rel_tol=1e-12)


# -- groups -----------------------------------------------------------------------------------


def _group_reference(frame: pl.DataFrame, by: list[str], key: tuple) -> xs.Report:
    conditions = [
        pl.col(name).is_null() if value is None else pl.col(name) == value
        for name, value in zip(by, key, strict=True)
    ]
    part = frame.filter(*conditions)
    preds, labels = part["p"].to_numpy(), part["y"].to_numpy()
    report = one_shot(xs.CrossEntropy(), preds, labels)
    assert float_bits(report.loss) == float_bits(xs.cross_entropy(preds, labels))
    return report


@pytest.mark.parametrize("by", [["g"], ["g", "h"], ["h"]])
def test_by_groups_equal_filtered_functional(
    by: list[str], files: dict[str, Path], frame: pl.DataFrame, data: Data
) -> None:
    result = xs.evaluate(
        files["parquet"],
        xs.CrossEntropy(per_class=True),
        preds="p",
        target="y",
        by=by[0] if len(by) == 1 else by,
        batch_rows=BATCH_ROWS,
    )
    assert isinstance(result, xs.GroupedReport)
    assert result.by == tuple(by)
    assert_same_report(result.overall, multiclass_reference(data, per_class=True))
    # the groups, sorted by key (nulls last), a null key among them
    expected_keys = frame.select(by).unique().sort(by, nulls_last=True).rows()
    assert list(result.groups) == expected_keys
    if "h" in by:
        assert any(None in key for key in result.groups)
    for key, report in result.groups.items():
        assert_same_report(report, _group_reference(frame, by, key))
    assert sum(r.count for r in result.groups.values()) == N_ROWS

    table = result.to_polars()
    assert table.height == len(expected_keys)
    assert table.columns[: len(by)] == by
    assert table.select(by).rows() == expected_keys
    for row, report in zip(table.iter_rows(named=True), result.groups.values(), strict=True):
        assert float_bits(row["loss"]) == float_bits(report.loss)
        assert row["count"] == report.count
        assert float_bits(row["loss_sum"]) == float_bits(report.loss_sum)

    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["by"] == by
    assert as_dict["overall"]["count"] == N_ROWS
    assert [tuple(g["key"]) for g in as_dict["groups"]] == expected_keys
    for entry, report in zip(as_dict["groups"], result.groups.values(), strict=True):
        assert float_bits(entry["loss"]) == float_bits(report.loss)


def test_by_from_iterable_of_dataframes(frame: pl.DataFrame) -> None:
    batches = [frame.slice(a, b - a) for a, b in _splits(N_ROWS)]
    result = xs.evaluate(batches, xs.CrossEntropy(), preds="p", target="y", by=["h", "g"])
    for key, report in result.groups.items():
        assert_same_report(report, _group_reference(frame, ["h", "g"], key))
    with pytest.raises(ValueError, match=r"by: grouping needs DataFrame batches"):
        xs.evaluate([(frame["p"].to_numpy(), frame["y"].to_numpy())], xs.CrossEntropy(), by="g")


def test_by_float_key_with_nan(frame: pl.DataFrame) -> None:
    """A NaN group key is one group across batches (as polars groups NaN)."""
    keyed = frame.with_columns(
        pl.when(pl.col("y") == 0).then(float("nan")).otherwise(pl.col("y") * 0.5).alias("f")
    )
    result = xs.evaluate(keyed, xs.CrossEntropy(), preds="p", target="y", by="f", batch_rows=500)
    assert len(result.groups) == keyed["f"].n_unique() == len(CLASSES)
    for (value,), report in result.groups.items():
        condition = pl.col("f").is_nan() if math.isnan(value) else pl.col("f") == value
        part = keyed.filter(condition)
        assert_same_report(report, one_shot(xs.CrossEntropy(), part["p"].to_numpy(), part["y"]))


def test_sample_weight_column_with_groups(frame: pl.DataFrame, data: Data) -> None:
    result = xs.evaluate(
        frame.lazy(), xs.BinaryCrossEntropy(), preds="b_p", target="b_t", sample_weight="w", by="g"
    )
    assert_same_report(result.overall, binary_reference(data, weighted=True))
    for (g,), report in result.groups.items():
        mask = data.g == g
        expected = one_shot(
            xs.BinaryCrossEntropy(),
            data.binary_probs[mask],
            data.binary_target[mask],
            data.weights[mask],
        )
        assert_same_report(report, expected)


# -- stream ----------------------------------------------------------------------------------


def test_stream_yields_running_reports(files: dict[str, Path], data: Data) -> None:
    reports = list(
        xs.stream(files["parquet"], xs.CrossEntropy(), preds="p", target="y", batch_rows=700)
    )
    assert [r.count for r in reports] == [700, 1_400, 2_100, N_ROWS]
    for report in reports:  # every running report is the one-shot report of its prefix
        n = report.count
        assert_same_report(report, one_shot(xs.CrossEntropy(), data.probs[:n], data.labels[:n]))
    final = xs.evaluate(files["parquet"], xs.CrossEntropy(), preds="p", target="y")
    assert report_bits(reports[-1]) == report_bits(final)

    grouped = list(xs.stream(files["parquet"], xs.CrossEntropy(), preds="p", target="y", by="g"))
    whole = xs.evaluate(files["parquet"], xs.CrossEntropy(), preds="p", target="y", by="g")
    assert isinstance(grouped[-1], xs.GroupedReport)
    assert json.dumps(grouped[-1].to_dict()) == json.dumps(whole.to_dict())


# -- bad input -------------------------------------------------------------------------------


def _with_null(frame: pl.DataFrame, column: str, row: int) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(None).otherwise(pl.col(column)).alias(column)
    )


@pytest.mark.parametrize(
    ("column", "preds", "target", "weights"),
    [
        ("y", "p", "y", None),
        ("p", "p", "y", None),
        ("bee", WIDE, "y", None),
        ("w", "p", "y", "w"),
        ("label", WIDE, "label", None),
    ],
)
def test_null_names_column_and_row_in_file(
    tmp_path: Path, frame: pl.DataFrame, column: str, preds, target, weights
) -> None:
    path = write(_with_null(frame, column, 2_345), tmp_path / "nulls.parquet")
    with pytest.raises(ValueError, match=rf"^{column}: row 2345: value is null"):
        xs.evaluate(
            path,
            xs.CrossEntropy(),
            preds=preds,
            target=target,
            sample_weight=weights,
            batch_rows=BATCH_ROWS,
        )


def test_null_in_csv_cell(tmp_path: Path, frame: pl.DataFrame) -> None:
    table = _with_null(frame.select(scalar_frame_columns(frame)), "cat", 1_999)
    path = write(table, tmp_path / "nulls.csv")
    with pytest.raises(ValueError, match=r"^cat: row 1999: value is null"):
        xs.evaluate(path, xs.CrossEntropy(), preds=WIDE, target="y", batch_rows=BATCH_ROWS)


def test_bad_values_in_a_later_batch_name_the_global_row(tmp_path: Path, data: Data) -> None:
    probs, labels, weights = data.probs.copy(), data.labels.copy(), data.weights.copy()
    probs[2_100] = [1.5, -0.5, 0.0, 0.0]
    labels[1_500] = 9
    weights[2_499] = -1.0
    cases = [
        ({"p": probs, "y": data.labels}, r"^p: row 2100 .*outside \[0, 1\]"),
        ({"p": data.probs, "y": labels}, r"^y: row 1500 .*label 9 is outside \[0, 4\)"),
        ({"p": data.probs, "y": data.labels, "w": weights}, r"^w: row 2499 .*weight -1.0"),
    ]
    for columns, message in cases:
        path = write(pl.DataFrame(columns), tmp_path / "bad.parquet")
        weight_column = "w" if "w" in columns else None
        with pytest.raises(ValueError, match=message):
            xs.evaluate(
                path,
                xs.CrossEntropy(),
                preds="p",
                target="y",
                sample_weight=weight_column,
                batch_rows=BATCH_ROWS,
            )
    # the same through an iterator of tuples: rows count across batches
    batches = [(probs[a : a + 700], data.labels[a : a + 700]) for a in range(0, N_ROWS, 700)]
    with pytest.raises(ValueError, match=r"^preds: row 2100 \(batch row 0\)"):
        xs.evaluate(batches, xs.CrossEntropy())


def test_ragged_list_column_names_the_global_row(data: Data) -> None:
    rows = data.probs.tolist()
    rows[2_300] = rows[2_300][:3]
    frame = pl.DataFrame({"p": rows, "y": data.labels})
    with pytest.raises(ValueError, match=r"^p: row 2300: list of length 3"):
        xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", batch_rows=BATCH_ROWS)


def test_missing_and_invalid_arguments(files: dict[str, Path], tmp_path: Path) -> None:
    path = files["parquet"]
    with pytest.raises(ValueError, match=r"^nope: no such column; the source has \["):
        xs.evaluate(path, xs.CrossEntropy(), preds="p", target="nope")
    with pytest.raises(ValueError, match=r"^zz: no such column"):
        xs.evaluate(path, xs.CrossEntropy(), preds=["ant", "zz"], target="y")
    with pytest.raises(ValueError, match=r"^weight: no such column"):
        xs.evaluate(path, xs.CrossEntropy(), preds="p", target="y", sample_weight="weight")
    with pytest.raises(ValueError, match=r"^region: no such column"):
        xs.evaluate(path, xs.CrossEntropy(), preds="p", target="y", by="region")
    with pytest.raises(ValueError, match=r"preds and target: column names are required"):
        xs.evaluate(path, xs.CrossEntropy())
    with pytest.raises(ValueError, match=r"preds: the selector matches no column"):
        xs.evaluate(path, xs.CrossEntropy(), preds=cs.starts_with("zzz"), target="y")
    with pytest.raises(ValueError, match=r"batch_rows: must be a positive integer"):
        xs.evaluate(path, xs.CrossEntropy(), preds="p", target="y", batch_rows=0)
    with pytest.raises(TypeError, match=r"metric: expected an xentstream metric"):
        xs.evaluate(path, "cross_entropy", preds="p", target="y")


def test_unknown_and_missing_files(tmp_path: Path, files: dict[str, Path]) -> None:
    text = tmp_path / "table.txt"
    text.write_text("p,y\n")
    with pytest.raises(ValueError, match=r"source: unknown file type '\.txt'"):
        xs.evaluate(text, xs.CrossEntropy(), preds="p", target="y")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        xs.evaluate(tmp_path / "absent.parquet", xs.CrossEntropy(), preds="p", target="y")
    with pytest.raises(FileNotFoundError, match=r"no file matches"):
        xs.evaluate(str(tmp_path / "none-*.parquet"), xs.CrossEntropy(), preds="p", target="y")
    with pytest.raises(ValueError, match=r"files of different formats"):
        xs.evaluate([files["parquet"], files["csv"]], xs.CrossEntropy(), preds="p", target="y")
    with pytest.raises(TypeError, match=r"source: expected"):
        xs.evaluate(42, xs.CrossEntropy())
    with pytest.raises(TypeError, match=r"batch at row 0 is a int"):
        xs.evaluate([7], xs.CrossEntropy())


def test_empty_sources(tmp_path: Path, frame: pl.DataFrame) -> None:
    """No rows: an empty report (not an error), grouped or not."""
    path = write(frame.head(0), tmp_path / "empty.parquet")
    for source in (path, frame.head(0), frame.head(0).lazy(), []):
        options = {} if isinstance(source, list) else {"preds": "p", "target": "y"}
        report = xs.evaluate(source, xs.CrossEntropy(), **options)
        assert report.count == 0 and math.isnan(report.loss)
    grouped = xs.evaluate(path, xs.CrossEntropy(), preds="p", target="y", by=["g", "h"])
    assert grouped.groups == {}
    table = grouped.to_polars()
    assert table.height == 0
    assert table.columns[:3] == ["g", "h", "loss"]
    assert json.loads(json.dumps(grouped.to_dict()))["groups"] == []
    assert list(xs.stream(path, xs.CrossEntropy(), preds="p", target="y")) == []
