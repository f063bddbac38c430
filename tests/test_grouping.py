"""Group-by at any cardinality: the compact exact group table, the key mapping, and
grouped reports against per-group references.

References: ``fractions.Fraction`` sums of the terms (the exact value), ``math.fsum``
(the rounded one), and a fresh one-shot metric over each group's rows for the
grouped evaluation (the documented per-group reference: the same rows, one update).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_series_equal
from strategies import cut_points, float64_terms
from stream_support import report_bits

import xentstream as xs
from xentstream import accumulator
from xentstream import cli as xs_cli
from xentstream._kernels import layout
from xentstream.evaluation import GroupState, grouped_state_dict, merge_grouped_states
from xentstream.grouping import GroupKeys, GroupTable
from xentstream.report import FLAT_SCALAR_FIELDS

_UNIT = Fraction(1, 2**1075)


def _exact_value(row: np.ndarray) -> Fraction:
    return accumulator.exact_integer(row) * _UNIT


def _fill(table: GroupTable, keys: GroupKeys, codes: np.ndarray, terms: np.ndarray) -> None:
    """Add rows ``terms`` of groups ``codes`` the way a grouped evaluation does."""
    _, order, run_starts, run_codes = keys.codes(pl.DataFrame({"k": codes}))
    table.resize(len(keys))
    table.add_rows(order, run_starts, run_codes, np.ascontiguousarray(terms))


def _terms(values: np.ndarray, ignored: np.ndarray | None = None) -> np.ndarray:
    """Per-row terms: ``values`` in every sum, halved in some, negated in one (ignored
    rows: zero terms, flagged)."""
    terms = np.zeros((values.shape[0], layout.N_ROW_TERMS))
    for slot in range(layout.N_SUMS):
        terms[:, slot] = values / 2.0 ** (slot % 3)
    terms[:, layout.POSITIVE] *= -1.0
    if ignored is not None:
        terms[ignored, : layout.N_SUMS] = 0.0
        terms[ignored, layout.ROW_IGNORED] = 1.0
    return terms


def _check_against_fractions(
    table: GroupTable, keys: GroupKeys, codes: np.ndarray, terms: np.ndarray
) -> np.ndarray:
    """Every group's exported sums equal the exact Fraction sums of its terms."""
    exported = table.sums(np.arange(len(keys)))
    for code, (key,) in enumerate(keys.tuples()):
        rows = terms[codes == key]
        for slot in range(layout.N_SUMS):
            finite = rows[:, slot][np.isfinite(rows[:, slot])]
            row = exported[code, slot]
            assert _exact_value(row) == sum(map(Fraction, finite.tolist()), Fraction(0))
            assert row[-3:].tolist() == [
                int(np.sum(rows[:, slot] == np.inf)),
                int(np.sum(rows[:, slot] == -np.inf)),
                int(np.sum(np.isnan(rows[:, slot]))),
            ]
            if np.all(np.isfinite(rows[:, slot])):
                exact = sum(map(Fraction, rows[:, slot].tolist()), Fraction(0))
                try:  # fsum where it can, else the Fraction rounded once (int / int)
                    rounded = math.fsum(rows[:, slot].tolist())
                except OverflowError:  # an intermediate sum beyond float64
                    try:
                        rounded = exact.numerator / exact.denominator
                    except OverflowError:
                        rounded = math.inf if exact > 0 else -math.inf
                assert accumulator.to_float(row) == rounded
        ignored = int(rows[:, layout.ROW_IGNORED].sum())
        assert table.counts[code].tolist() == [len(rows) - ignored, ignored]
    return exported


def test_windows_and_widened_groups_hold_exact_sums(rng: np.random.Generator) -> None:
    """Ordinary, tiny, huge, negative and non-finite terms: exact in every form, and the
    same bits for any batch split and row order (the canonical export)."""
    n, n_groups = 6000, 200
    codes = rng.integers(0, n_groups, n)
    values = rng.exponential(1.0, n)
    odd = codes < n_groups // 4  # a quarter of the groups get terms no window holds
    values[odd & (rng.random(n) < 0.05)] *= 1e-300  # far below the others
    values[odd & (rng.random(n) < 0.05)] *= 1e250
    values[odd & (rng.random(n) < 0.02)] *= -1.0  # negative sums widen
    values[odd & (rng.random(n) < 0.01)] = np.inf
    values[odd & (rng.random(n) < 0.01)] = np.nan
    ignored = rng.random(n) < 0.05
    terms = _terms(values, ignored)
    runs = []
    for trial in range(3):
        table, keys = GroupTable(counts_labels=False), GroupKeys(("k",))
        order = rng.permutation(n) if trial else np.arange(n)
        cuts = [0, *sorted(rng.integers(0, n, 4).tolist()), n]
        for start, stop in itertools.pairwise(cuts):
            _fill(table, keys, codes[order[start:stop]], terms[order[start:stop]])
        exported = _check_against_fractions(table, keys, codes, terms)
        by_key = {key: exported[code] for code, (key,) in enumerate(keys.tuples())}
        runs.append(by_key)
        assert 0 < table.n_widened() < n_groups  # both forms were exercised
    for other in runs[1:]:
        assert all(np.array_equal(other[key], runs[0][key]) for key in runs[0])


def test_ordinary_losses_stay_compact(rng: np.random.Generator) -> None:
    """Losses of one binade range per group stay in windows: a few hundred bytes a group."""
    n, n_groups = 200_000, 50_000
    codes = rng.integers(0, n_groups, n)
    terms = _terms(rng.uniform(0.01, 20.0, n))
    terms[:, layout.WEIGHT] = 1.0
    table, keys = GroupTable(counts_labels=False), GroupKeys(("k",))
    for start in range(0, n, 50_000):
        _fill(table, keys, codes[start : start + 50_000], terms[start : start + 50_000])
    assert table.n_widened() == 0
    assert table.nbytes / table.n_groups < 1000  # vs 9 x 70 x 8 = 5040 bytes of full sums


@given(
    st.lists(float64_terms, min_size=1, max_size=60),
    st.lists(st.integers(0, 4), min_size=60, max_size=60),
    st.data(),
)
def test_group_sums_are_exact_for_any_split_and_merge(
    values: list[float], group_of: list[int], data: st.DataObject
) -> None:
    """Property: any terms (subnormal to the largest float64), any grouping, any batch
    split, and tables merged in any order give the exact sums, bit for bit."""
    codes = np.array(group_of[: len(values)], dtype=np.int64)
    terms = _terms(np.array(values))
    cuts = data.draw(cut_points(len(values)))
    bounds = [0, *cuts, len(values)]
    one = GroupTable(counts_labels=False), GroupKeys(("k",))
    shards = []
    for start, stop in itertools.pairwise(bounds):
        _fill(*one, codes[start:stop], terms[start:stop])
        shard = GroupTable(counts_labels=False), GroupKeys(("k",))
        _fill(*shard, codes[start:stop], terms[start:stop])
        shards.append(shard)
    exported = _check_against_fractions(*one, codes, terms)
    # merged from the shards' exported sums, in a drawn order
    merged = GroupTable(counts_labels=False), GroupKeys(("k",))
    for table, keys in data.draw(st.permutations(shards)):
        if len(keys):
            codes_here = merged[1].assign(keys.frame)
            merged[0].resize(len(merged[1]))
            present = np.arange(len(keys))
            merged[0].add_sums(codes_here, table.sums(present), table.counts[present])
    position = {key: code for code, (key,) in enumerate(merged[1].tuples())}
    again = merged[0].sums(np.arange(len(merged[1])))
    for code, (key,) in enumerate(one[1].tuples()):
        assert np.array_equal(again[position[key]], exported[code])


def _codes(keys: GroupKeys, frame: pl.DataFrame) -> list[int]:
    """The group code of every row of ``frame``."""
    runs, _, _, run_codes = keys.codes(frame)
    return run_codes[runs].tolist()


def test_keys_in_first_appearance_with_nulls_nan_and_many_types() -> None:
    keys = GroupKeys(("a", "b"))
    day = datetime.date(2024, 5, 1)
    first = pl.DataFrame(
        {
            "a": [1.5, float("nan"), None, 1.5, -0.0],
            "b": [day, day, None, day, day],
        }
    )
    assert _codes(keys, first) == [0, 1, 2, 0, 3]
    second = pl.DataFrame({"a": [0.0, float("nan"), 7.0, None], "b": [day, day, day, None]})
    assert _codes(keys, second) == [3, 1, 4, 2]  # 0.0 == -0.0, NaN is one key, null its own
    assert len(keys) == 5
    assert keys.tuples()[2] == (None, None)
    # a later batch with a wider integer type, categorical strings and booleans
    ints = GroupKeys(("i",))
    ints.codes(pl.DataFrame({"i": pl.Series([1, 2], dtype=pl.Int32)}))
    assert _codes(ints, pl.DataFrame({"i": pl.Series([2, 2**40], dtype=pl.Int64)})) == [1, 2]
    cats = GroupKeys(("c", "t"))
    frame = pl.DataFrame(
        {"c": pl.Series(["x", "y", "x"], dtype=pl.Categorical), "t": [True, False, True]}
    )
    assert _codes(cats, frame) == [0, 1, 0]
    assert cats.assign_tuples([("y", False), ("z", True)]).tolist() == [1, 2]


# -- grouped evaluation against per-group one-shot references --------------------------------


def _grouped_frame(rng: np.random.Generator, n: int, n_groups: int, weights: bool) -> pl.DataFrame:
    logits = rng.normal(0.0, 3.0, (n, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    columns = {
        "p": probs,
        "y": rng.integers(0, 4, n),
        "g": rng.integers(0, n_groups, n),
        "h": pl.Series(rng.choice(["u", "v", None], n).tolist(), dtype=pl.String),
    }
    if weights:
        w = rng.exponential(1.0, n)
        w[rng.random(n) < 0.1] *= 1e-150  # tiny and huge weights widen their groups
        w[rng.random(n) < 0.1] *= 1e150
        columns["w"] = w
    return pl.DataFrame(columns)


def _reference(metric: xs.Metric, frame: pl.DataFrame, weights: bool) -> dict:
    references = {}
    for key, part in frame.group_by(["g", "h"], maintain_order=True):
        fresh = type(metric).from_config(metric.config)
        fresh.update(
            part["p"].to_numpy(), part["y"].to_numpy(), part["w"].to_numpy() if weights else None
        )
        references[tuple(key)] = report_bits(fresh.compute())
    return references


@pytest.mark.parametrize("weights", [False, True])
def test_grouped_reports_equal_per_group_references(
    rng: np.random.Generator, weights: bool
) -> None:
    """Random batch splits and shard merge orders: every group's report is bitwise the
    one-shot report of its rows, and grouped states merge to the one-pass bits."""
    frame = _grouped_frame(rng, 3000, 400, weights)
    metric = xs.CrossEntropy(ignore_index=3)
    options = {"preds": "p", "target": "y", "by": ["g", "h"]}
    if weights:
        options["sample_weight"] = "w"
    references = _reference(metric, frame, weights)
    whole = xs.evaluate(frame, metric, **options)
    assert len(whole.groups) == len(references)
    for key, report in whole.groups.items():
        assert report_bits(report) == references[key]
    if weights:  # the widened path was taken, and gave the same bits
        assert whole.state_size()["widened"] > 0
    for batch_rows in (97, 1000):
        split = xs.evaluate(
            frame, xs.CrossEntropy(ignore_index=3), batch_rows=batch_rows, **options
        )
        assert json.dumps(split.to_dict()) == json.dumps(whole.to_dict())
    cuts = [0, 700, 1900, 3000]
    shards = [
        grouped_state_dict(
            xs.evaluate(frame[a:b], xs.CrossEntropy(ignore_index=3), batch_rows=300, **options)
        )
        for a, b in itertools.pairwise(cuts)
    ]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        merged = merge_grouped_states(json.loads(json.dumps([shards[i] for i in order])))
        assert json.dumps(merged.to_dict()) == json.dumps(whole.to_dict())


def test_sorted_top_and_min_count_follow_the_reference_losses(rng: np.random.Generator) -> None:
    frame = _grouped_frame(rng, 2000, 300, False)
    result = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by=["g", "h"])
    losses = {key: report.loss for key, report in result.groups.items()}
    counts = {key: report.count for key, report in result.groups.items()}
    expected = sorted(losses, key=lambda key: -losses[key])  # stable: key order on ties
    assert list(result.sorted("loss").groups) == expected
    assert list(result.top(7).groups) == expected[:7]
    assert list(result.sorted("loss").sorted("key").groups) == list(result.groups)
    kept = result.filter(min_count=8)
    assert list(kept.groups) == [key for key in result.groups if counts[key] >= 8]
    assert list(kept.top(3).groups) == [key for key in expected if counts[key] >= 8][:3]
    table = result.top(5).to_polars()
    assert table.select(["g", "h"]).rows() == expected[:5]
    for row, key in zip(table.iter_rows(named=True), expected[:5], strict=True):
        report = result.groups[key]
        assert (row["ci95_low"], row["ci95_high"]) == (report.ci95 or (None, None))
        assert row["loss"] == report.loss and row["count"] == report.count
    # a GroupedReport over a plain dict of reports orders and filters the same way
    plain = dataclasses.replace(result, groups=dict(result.groups.items()))
    assert list(plain.sorted("loss").groups) == expected
    assert list(plain.top(7).groups) == expected[:7]
    assert list(plain.filter(min_count=8).groups) == list(kept.groups)
    with pytest.raises(ValueError, match="top: must be a non-negative integer"):
        result.top(-1)
    with pytest.raises(ValueError, match="sort: must be 'key' or 'loss'"):
        result.sorted("count")


def test_cli_top_sort_and_min_count(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    frame = _grouped_frame(rng, 1500, 60, False).with_columns(pl.col("h").fill_null("n"))
    path = tmp_path / "scores.parquet"
    frame.write_parquet(path)
    run = ["evaluate", str(path), "--preds", "p", "--target", "y", "--no-progress"]
    assert xs_cli.main([*run, "--by", "g", "--format", "json", "--top", "4"]) == 0
    shown = json.loads(capsys.readouterr().out)["groups"]
    result = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g")
    worst = sorted(result.groups, key=lambda key: -result.groups[key].loss)
    assert [tuple(g["key"]) for g in shown] == worst[:4]
    assert xs_cli.main([*run, "--by", "g", "--format", "json", "--min-count", "30"]) == 0
    shown = json.loads(capsys.readouterr().out)["groups"]
    assert [tuple(g["key"]) for g in shown] == [
        key for key, report in result.groups.items() if report.count >= 30
    ]
    assert xs_cli.main([*run, "--by", "g", "--format", "csv", "--sort", "loss"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]  # header, overall
    assert [int(row.split(",")[0]) for row in rows] == [key[0] for key in worst]
    assert xs_cli.main([*run, "--top", "3"]) == 2
    assert "apply to grouped runs (--by)" in capsys.readouterr().err


# -- the speed paths: hashed keys, the parallel reduction, columns and states at once ------


def _first_appearance(frames: list[pl.DataFrame], column: str) -> list[int]:
    """Reference codes: polars' own grouping of all batches at once, numbered by first
    appearance (as polars groups: NaN one key, -0.0 == 0.0, null its own key)."""
    whole = pl.concat(frames).with_row_index("row")
    firsts = whole.group_by(column, maintain_order=True).agg(pl.col("row").first())
    code_of = firsts.with_row_index("code").select(["row", "code"])
    joined = whole.join(
        whole.group_by(column, maintain_order=True)
        .agg(pl.col("row").first().alias("first"))
        .join(code_of, left_on="first", right_on="row"),
        on=column,
        how="left",
        nulls_equal=True,
        maintain_order="left",
    )
    return joined["code"].to_list()


@pytest.mark.parametrize(
    "series",
    [
        pl.Series([3, -1, 3, None, 2**40, -1, None, 7] * 3, dtype=pl.Int64),
        pl.Series([250, 1, 250, 0, None, 1, 7, 8] * 3, dtype=pl.UInt8),
        pl.Series([2**64 - 1, 0, 2**63, 2**64 - 1, 5, None, 0, 9] * 3, dtype=pl.UInt64),
        pl.Series([0.0, -0.0, float("nan"), None, 1.5, float("nan"), -1.5, 2.0] * 3),
        pl.Series([0.5, -0.0, float("nan"), None, 1.5, 0.0, -1.5, 0.5] * 3, dtype=pl.Float32),
        pl.Series([True, False, None, True, False, True, None, False] * 3),
        pl.Series([datetime.date(2024, 1, d % 5 + 1) for d in range(24)]),
        pl.Series([datetime.datetime(2024, 1, 1, d % 7) for d in range(24)]).cast(
            pl.Datetime("ms")
        ),
        pl.Series([datetime.timedelta(seconds=d % 6) for d in range(24)]),
    ],
    ids=lambda s: str(s.dtype),
)
def test_hashed_key_columns_number_keys_as_polars_groups_them(series: pl.Series) -> None:
    """One column of integers, floats, booleans or temporal values is coded by the key
    hash table: the same groups, in the same first-appearance order, as polars gives
    the whole column, whatever the batches; keys added from saved states join them."""
    frames = [pl.DataFrame({"k": series[a:b]}) for a, b in ((0, 5), (5, 6), (6, 17), (17, 24))]
    keys = GroupKeys(("k",))
    codes = [code for frame in frames for code in _codes(keys, frame)]
    assert keys._hash is not None  # the hashed path ran
    assert codes == _first_appearance(frames, "k")
    assert keys.frame["k"].dtype == series.dtype
    assert_series_equal(
        keys.frame["k"], pl.DataFrame({"k": series}).unique(maintain_order=True)["k"]
    )
    known = keys.tuples()
    assert keys.assign_tuples(known[::-1]).tolist() == list(range(len(known)))[::-1]


def test_hashed_keys_grow_and_fall_back_to_polars_on_another_type(
    rng: np.random.Generator,
) -> None:
    """Many keys over many batches (the table grows and rehashes), then a batch of
    another key type: codes continue through polars joins, the keys seen before kept."""
    values = rng.integers(0, 40_000, 100_000)
    keys = GroupKeys(("k",))
    reference: dict[int, int] = {}
    got = []
    for start in range(0, values.size, 7_919):
        part = values[start : start + 7_919]
        got += _codes(keys, pl.DataFrame({"k": part}))
    for value in values.tolist():
        reference.setdefault(value, len(reference))
    assert got == [reference[v] for v in values.tolist()]
    wider = pl.DataFrame({"k": pl.Series([int(values[0]), -5], dtype=pl.Int32)})
    assert _codes(keys, wider) == [reference[int(values[0])], len(reference)]
    assert keys._hash is None
    assert _codes(keys, pl.DataFrame({"k": [-5, int(values[1])]})) == [
        len(reference),
        reference[int(values[1])],
    ]


def _threaded_and_serial(
    monkeypatch: pytest.MonkeyPatch, codes: np.ndarray, terms: np.ndarray, batch: int
) -> tuple[GroupTable, GroupTable, GroupKeys]:
    """The same rows reduced in batches of ``batch`` with threads splitting every batch's
    runs and on one thread: both tables (asserted bitwise equal) and the keys."""
    from xentstream import grouping

    tables = []
    for parallel_rows in (1, 10**12):
        monkeypatch.setattr(grouping, "_PARALLEL_ROWS", parallel_rows)
        table, keys = GroupTable(counts_labels=False), GroupKeys(("k",))
        for start in range(0, codes.shape[0], batch):
            _fill(table, keys, codes[start : start + batch], terms[start : start + batch])
        tables.append(table)
    parallel, serial = tables
    everything = np.arange(len(keys))
    assert np.array_equal(parallel.sums(everything), serial.sums(everything))
    assert np.array_equal(parallel.counts[: len(keys)], serial.counts[: len(keys)])
    return parallel, serial, keys


def test_parallel_reduction_gives_the_serial_bits(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of many runs are reduced by threads (groups that widen by the serial
    pass): the same exact sums as one thread, and as the Fractions of the terms."""
    n, n_groups = 60_000, 30_000
    codes = rng.integers(0, n_groups, n)
    values = rng.exponential(1.0, n)
    odd = codes < 500
    values[odd & (rng.random(n) < 0.3)] *= 1e-300
    values[odd & (rng.random(n) < 0.05)] = np.inf
    terms = _terms(values, rng.random(n) < 0.05)
    parallel, _, keys = _threaded_and_serial(monkeypatch, codes, terms, 30_000)
    assert 0 < parallel.n_widened() < n_groups
    sample = np.isin(codes, rng.choice(n_groups, 40))
    small, small_keys = GroupTable(counts_labels=False), GroupKeys(("k",))
    _fill(small, small_keys, codes[sample], terms[sample])
    _check_against_fractions(small, small_keys, codes[sample], terms[sample])
    position = {key: code for code, (key,) in enumerate(keys.tuples())}
    for code, (key,) in enumerate(small_keys.tuples()):
        assert np.array_equal(
            small.sums(np.array([code]))[0], parallel.sums(np.array([position[key]]))[0]
        )


def test_long_runs_of_whole_and_fractional_terms_are_exact(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few groups, long runs (whole-number sums take a count instead of add_terms):
    every sum equals the Fractions of its terms, threads or not, at the edges of the
    count path (2**20 and beyond, negatives, -0.0, one fraction among whole numbers,
    inf and NaN in a column of 0/1)."""
    n, n_groups = 50_000, 6
    codes = rng.integers(0, n_groups, n)
    terms = np.zeros((n, layout.N_ROW_TERMS))
    terms[:, 0] = rng.exponential(2.0, n)
    terms[:, 1] = 1.0
    terms[:, 2] = rng.integers(-5, 6, n)
    terms[:, 3] = rng.integers(0, 1 << 22, n)  # past the count path's bound: add_terms
    terms[:, 4] = rng.integers(0, 2, n)
    terms[codes == 1, 4] = np.where(rng.random(int((codes == 1).sum())) < 0.01, np.inf, 1.0)
    terms[:, 5] = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    terms[:, 6] = rng.integers(0, 3, n)
    terms[np.flatnonzero(codes == 2)[100], 6] = 0.5
    terms[:, 7] = rng.choice([2.0**20, -(2.0**20), 2.0**20 + 1.0], n)
    terms[:, 8] = rng.integers(0, 4, n)
    terms[np.flatnonzero(codes == 3)[:3], 8] = np.nan
    _, serial, keys = _threaded_and_serial(monkeypatch, codes, terms, 20_000)
    _check_against_fractions(serial, keys, codes, terms)


@pytest.mark.parametrize(
    "case",
    ["multiclass", "weighted", "soft", "binary", "multilabel", "smoothing"],
)
def test_columns_and_states_of_all_groups_equal_each_groups_own(
    rng: np.random.Generator, case: str
) -> None:
    """``to_polars()`` and the grouped state come from all groups' exact integers at
    once: equal to each group's :class:`Report` and ``ExactState.to_json`` (the
    per-group path, itself checked against one-shot references above)."""
    n, n_groups = 3000, 500
    frame = {"g": rng.integers(0, n_groups, n), "d": rng.integers(0, 3, n)}
    logits = rng.normal(0.0, 2.0, (n, 4))
    if case == "binary":
        metric = xs.BinaryCrossEntropy(input="logits")
        frame["p"], frame["y"] = logits[:, 0], rng.random(n) < 0.4
    elif case == "multilabel":
        metric = xs.MultiLabelCrossEntropy(input="logits")
        frame["p"], frame["y"] = logits, (rng.random((n, 4)) < 0.3).astype(np.int64)
    elif case == "soft":
        metric = xs.CrossEntropy(input="logits")
        soft = rng.random((n, 4))
        frame["p"], frame["y"] = logits, soft / soft.sum(axis=1, keepdims=True)
    else:
        metric = xs.CrossEntropy(
            input="logits",
            ignore_index=3 if case == "multiclass" else None,
            label_smoothing=0.1 if case == "smoothing" else 0.0,
        )
        frame["p"], frame["y"] = logits, rng.integers(0, 4, n)
    options = {"preds": "p", "target": "y", "by": ["g", "d"], "batch_rows": 700}
    if case == "weighted":
        weights = rng.exponential(1.0, n)
        weights[rng.random(n) < 0.05] *= 1e-200  # widened groups
        frame["w"] = weights
        options["sample_weight"] = "w"
    result = xs.evaluate(pl.DataFrame(frame), metric, **options)
    table = result.to_polars()
    assert table.height == len(result.groups)
    for row, (key, report) in zip(table.iter_rows(named=True), result.groups.items(), strict=True):
        assert (row["g"], row["d"]) == key
        scalars = report.scalars()
        for name in FLAT_SCALAR_FIELDS:
            expected = scalars.get(name)
            got = row[name]
            assert (got == expected) or (
                got is not None and math.isnan(got) and math.isnan(expected)
            ), name
    groups = result._states[1]
    template = groups.group_metric.state_dict()
    each = groups._states_json(template, 0)
    assert groups._entries_json(template) == each  # the per-group entries' fast path
    # The columnar table holds the very same states: loaded back, each group's own.
    loaded = GroupState(groups.by, groups.template)
    loaded.load_json(json.loads(json.dumps(groups.to_json())))
    assert loaded._states_json(template, 0) == each
