"""Grouped state files and checkpoints as columnar tables (issue 15).

Every group's exact state is written as arrays (``GroupState.to_json``, a
``xentstream.groups`` table): these tests check that a table round-trips bitwise for
every key type (integers, strings, floats with NaN, dates, several columns, nulls) and
for widened and non-finite sums, that shards of a stream merge to the very bytes of
one run, that files of the format before (per-group entries) still load, and that a
table that was truncated or edited is refused with a message naming the file, the
part and, for a group's numbers, its key.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import cut_points
from stream_support import report_bits

import xentstream as xs
from xentstream import cli as xs_cli
from xentstream._kernels import layout
from xentstream.evaluation import GroupState, grouped_state_dict, merge_grouped_states
from xentstream.grouping import GroupColumns
from xentstream.state import array_from_json, array_to_json, read_json, write_json_atomic

DATA = Path(__file__).parent / "data"
KEY_KINDS = ("int", "str", "float", "date", "multi", "bool")
N_CLASSES = 3


def _nulled(values: list[Any], null: np.ndarray) -> list[Any]:
    return [None if m else v for v, m in zip(values, null.tolist(), strict=True)]


def _keys(rng: np.random.Generator, n: int, kind: str) -> dict[str, pl.Series]:
    """Key columns of ``kind`` for ``n`` rows, a few nulls in each."""
    codes = rng.integers(0, 25, n)
    null = rng.random(n) < 0.05
    listed = codes.tolist()
    if kind == "int":
        return {"g": pl.Series("g", _nulled([c - 5 for c in listed], null), dtype=pl.Int32)}
    if kind == "str":
        return {"g": pl.Series("g", _nulled([f"key-{c}é" for c in listed], null))}
    if kind == "float":  # NaN one group, -0.0 the group of 0.0 (as polars groups them)
        table = [float("nan"), -0.0, 0.0, 1e-300, 2.5, float("inf")]
        return {"g": pl.Series("g", _nulled([table[c % 6] for c in listed], null))}
    if kind == "date":
        day = datetime.date(2024, 2, 28)
        at = datetime.datetime(2024, 3, 1, 12, tzinfo=datetime.UTC)
        days = _nulled([day + datetime.timedelta(days=c) for c in listed], null)
        hours = [at + datetime.timedelta(hours=c % 4) for c in listed]
        return {"g": pl.Series("g", days), "t": pl.Series("t", hours)}
    if kind == "bool":
        return {"g": pl.Series("g", _nulled([bool(c % 2) for c in listed], null))}
    return {  # several columns
        "g": pl.Series("g", _nulled([f"s{c % 7}" for c in listed], null)),
        "h": pl.Series("h", (codes // 7).astype(np.int64)),
    }


def _frame(seed: int, n: int, kind: str) -> pl.DataFrame:
    """Probabilities, labels and weights (some tiny: those groups' sums widen)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, N_CLASSES))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    weights = rng.exponential(1.0, n)
    weights[rng.random(n) < 0.1] *= 1e-200
    keys = _keys(rng, n, kind)
    return pl.DataFrame({"p": probs, "y": rng.integers(0, N_CLASSES, n), "w": weights, **keys})


def _by(kind: str) -> list[str]:
    return {"date": ["g", "t"], "multi": ["g", "h"]}.get(kind, ["g"])


def _evaluate(frame: pl.DataFrame, kind: str, **options: Any) -> xs.GroupedReport:
    return xs.evaluate(
        frame, xs.CrossEntropy(), preds="p", target="y", sample_weight="w", by=_by(kind), **options
    )


def _text(result: xs.GroupedReport) -> str:
    """The grouped state file's text, as ``--save-state`` writes it."""
    return json.dumps(grouped_state_dict(result), indent=1, allow_nan=True)


def _group_bits(result: xs.GroupedReport) -> dict[str, Any]:
    return {repr(key): report_bits(report) for key, report in result.groups.items()}


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KEY_KINDS), seed=st.integers(0, 2**16), data=st.data())
def test_shards_merge_to_the_file_of_one_run(kind: str, seed: int, data: st.DataObject) -> None:
    """Any split of the stream into shards, merged in stream order, writes the bytes of
    one run; loading that file gives every group's report bit for bit."""
    n = 300
    frame = _frame(seed, n, kind)
    whole = _evaluate(frame, kind, batch_rows=data.draw(st.integers(7, n), label="batch_rows"))
    text = _text(whole)
    assert json.loads(text)["version"] == 2 and json.loads(text)["groups"]["n_groups"] == len(
        whole.groups
    )
    cuts = [0, *data.draw(cut_points(n), label="cuts"), n]
    shards = [
        json.loads(_text(_evaluate(frame[a:b], kind, batch_rows=61)))
        for a, b in itertools.pairwise(cuts)
    ]
    merged = merge_grouped_states(shards)
    assert _text(merged) == text
    assert _group_bits(merged) == _group_bits(whole)
    again = merge_grouped_states([json.loads(text)])  # the file read back, written again
    assert _text(again) == text


@pytest.mark.parametrize(
    ("metric", "make"),
    [
        (xs.BinaryCrossEntropy, lambda rng, n: (rng.random(n), rng.random(n) < 0.3)),
        (
            xs.MultiLabelCrossEntropy,
            lambda rng, n: (rng.random((n, 3)), (rng.random((n, 3)) < 0.4).astype(np.int64)),
        ),
    ],
)
def test_other_kinds_round_trip(rng: np.random.Generator, metric: type, make: Any) -> None:
    """Kinds without label counts: the table has none, and round-trips the same."""
    n = 800
    preds, target = make(rng, n)
    frame = pl.DataFrame({"p": preds, "y": target, "g": rng.integers(0, 90, n)})
    whole = xs.evaluate(frame, metric(), preds="p", target="y", by="g")
    saved = grouped_state_dict(whole)
    assert saved["groups"]["label_counts"] is None
    shards = [
        grouped_state_dict(xs.evaluate(frame[a:b], metric(), preds="p", target="y", by="g"))
        for a, b in ((0, 333), (333, n))
    ]
    merged = merge_grouped_states(json.loads(json.dumps(shards)))
    assert json.dumps(grouped_state_dict(merged)) == json.dumps(saved)
    assert _group_bits(merged) == _group_bits(whole)


def test_special_and_widened_sums_round_trip() -> None:
    """Sums a window cannot hold (weights 1e-200 beside 1) and sums with infinite
    terms (``eps=0``: a zero probability on the label) are written whole."""
    rng = np.random.default_rng(7)
    n = 600
    probs = rng.dirichlet(np.ones(N_CLASSES), n)
    labels = rng.integers(0, N_CLASSES, n)
    probs[:40, :] = 0.0
    # the label's probability is 0: an infinite loss
    probs[np.arange(40), (labels[:40] + 1) % N_CLASSES] = 1.0
    weights = np.where(rng.random(n) < 0.2, 1e-200, 1.0)
    frame = pl.DataFrame({"p": probs, "y": labels, "w": weights, "g": rng.integers(0, 50, n)})
    options = {"preds": "p", "target": "y", "sample_weight": "w", "by": "g"}
    whole = xs.evaluate(frame, xs.CrossEntropy(eps=0.0), **options)
    assert whole.state_size()["widened"] > 0
    saved = grouped_state_dict(whole)
    columns = GroupColumns.from_json(saved["groups"], counts_labels=True)
    assert columns.special.shape[0] > 0  # the infinite losses' sums
    shards = [
        grouped_state_dict(xs.evaluate(frame[a:b], xs.CrossEntropy(eps=0.0), **options))
        for a, b in ((0, 250), (250, n))
    ]
    merged = merge_grouped_states(json.loads(json.dumps(shards, allow_nan=True)))
    assert json.dumps(grouped_state_dict(merged)) == json.dumps(saved)
    assert _group_bits(merged) == _group_bits(whole)
    infinite = [key for key, report in whole.groups.items() if report.loss == float("inf")]
    assert infinite and all(merged.groups[key].loss == float("inf") for key in infinite)


def test_keys_of_other_types_fall_back_to_entries(rng: np.random.Generator) -> None:
    """Decimal keys have no columnar form: the groups are written as per-group entries
    (the format before), which load as ever."""
    n = 200
    frame = pl.DataFrame(
        {
            "p": rng.dirichlet(np.ones(2), n),
            "y": rng.integers(0, 2, n),
            "g": pl.Series([str(v / 4) for v in rng.integers(0, 9, n)]).cast(pl.Decimal(6, 2)),
        }
    )
    whole = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g")
    saved = grouped_state_dict(whole)
    assert isinstance(saved["groups"], list)
    merged = merge_grouped_states(json.loads(json.dumps([saved])))
    assert _group_bits(merged) == _group_bits(whole)


# -- files written before the columnar table -----------------------------------------------


def legacy_frame() -> pl.DataFrame:
    """The frame of ``tests/data/grouped_v1.json`` and ``checkpoint_v2.json``, which
    ``xentstream`` before the columnar table (main at de70f46: per-group entries) wrote
    from it."""
    return _frame(2027, 500, "multi")


def test_grouped_state_files_of_version_1_still_load(tmp_path: Path, capsys: Any) -> None:
    old = read_json(DATA / "grouped_v1.json")
    assert old["version"] == 1 and isinstance(old["groups"], list)
    fresh = _evaluate(legacy_frame(), "multi")
    loaded = merge_grouped_states([old])
    assert _group_bits(loaded) == _group_bits(fresh)
    assert report_bits(loaded.overall) == report_bits(fresh.overall)
    # and merged with a file of the new form, as one run
    assert _text(merge_grouped_states([old, json.loads(_text(fresh))])) == _text(
        merge_grouped_states([json.loads(_text(fresh))] * 2)
    )
    out = tmp_path / "new.json"
    status = xs_cli.main(["merge", str(DATA / "grouped_v1.json"), "--save-state", str(out)])
    assert status == 0
    capsys.readouterr()
    assert out.read_text() == _text(fresh) + "\n"


def test_checkpoints_of_version_2_still_resume(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes((DATA / "checkpoint_v2.json").read_bytes())
    assert read_json(path)["version"] == 2
    frame = legacy_frame()
    batches = [frame[a : a + 100] for a in range(0, frame.height, 100)]
    options = {"preds": "p", "target": "y", "sample_weight": "w", "by": ["g", "h"]}
    resumed = xs.evaluate(
        iter(batches), xs.CrossEntropy(), checkpoint=path, checkpoint_key="legacy", **options
    )
    fresh = _evaluate(frame, "multi")
    assert _group_bits(resumed) == _group_bits(fresh)
    assert report_bits(resumed.overall) == report_bits(fresh.overall)


# -- refusals ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A grouped state file of unweighted rows (so with label counts)."""
    path = tmp_path / "shard.json"
    frame = _frame(3, 400, "int")
    result = xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g")
    write_json_atomic(path, grouped_state_dict(result))
    return path


def _merge_fails(capsys: Any, path: Path, edit: Any) -> str:
    data = read_json(path)
    edit(data["groups"])
    path.write_text(json.dumps(data))
    assert xs_cli.main(["merge", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err
    return err


def _set_array(groups: dict[str, Any], name: str, change: Any) -> None:
    array = array_from_json(groups[name], name, groups[name]["dtype"], len(groups[name]["shape"]))
    if name in ("counts", "label_counts"):  # written as narrow as they fit: edit as int64
        array = array.astype(np.int64)
    change(array)
    groups[name] = array_to_json(array)


def test_a_truncated_file_is_refused_naming_it(saved: Path, capsys: Any) -> None:
    text = saved.read_text()
    saved.write_text(text[: len(text) // 2])
    assert xs_cli.main(["merge", str(saved)]) == 2
    err = capsys.readouterr().err
    assert str(saved) in err and "not a valid xentstream state file" in err


def _first_key_twice(groups: dict[str, Any]) -> None:
    values = groups["keys"][0]["values"]
    values[1] = values[0]


def _one_more_row(counts: np.ndarray) -> None:
    counts[0, layout.ROWS] += 1


def _digits(groups: dict[str, Any], text: str) -> None:
    groups["digits"]["base64"] = text


EDITS = [  # (edit of the file's groups, what the message must say)
    (
        lambda g: _digits(g, g["digits"]["base64"][:-8]),
        r"groups\.digits: \d+ bytes of data, but shape \[\d+\] of <u4 takes \d+ \(truncated",
    ),
    (lambda g: _digits(g, "*" + g["digits"]["base64"][1:]), r"groups\.digits: not base64"),
    (
        lambda g: g["counts"].update(dtype="<i4"),
        r"groups\.counts: dtype '<i4', expected '\|u1' or '<u2' or '<u4' or '<i8'",
    ),
    (
        lambda g: g["spans"].update(shape=[1, layout.N_SUMS, 2]),
        r"groups\.spans: shape \[1, 9, 2\], but axis 0",
    ),
    (
        lambda g: g.update(version=2),
        r"groups: format 'xentstream.groups' version 2 is not supported",
    ),
    (lambda g: g.update(sum_names=g["sum_names"][::-1]), r"groups\.sum_names"),
    (lambda g: g.pop("special"), r"groups: not a table of groups \(keys 'special'\)"),
    (
        lambda g: g["keys"][0]["values"].pop(),
        r"groups\.keys\.g: values must be a list of \d+ keys",
    ),
    (lambda g: g["keys"][0].update(dtype="Int99"), r"groups\.keys\.g: unknown dtype 'Int99'"),
    (lambda g: g["keys"][0]["values"].__setitem__(0, "x"), r"groups\.keys\.g: not Int32 keys"),
    (lambda g: g["metric"]["config"].update(input="logits"), r"groups\.metric: "),
    (_first_key_twice, r"group key \[.+\] appears twice"),
    (
        lambda g: _set_array(g, "spans", lambda a: a.__setitem__((0, layout.LOSS, 0), 66)),
        r"groups\.spans: sum loss of group 0 is not written as",
    ),
    (
        lambda g: _set_array(g, "digits", lambda a: a.__setitem__(-1, 0)),
        r"groups\.spans: sum \w+ of group \d+ is not written",
    ),
    (
        lambda g: _set_array(g, "counts", _one_more_row),
        r"group key \[.+\]: state: label_counts: add up to \d+ rows, but counts\.rows is \d+",
    ),
    (
        lambda g: _set_array(g, "labels_known", lambda a: a.__setitem__(slice(None), False)),
        r"groups\.label_counts: nonzero where labels_known is false",
    ),
]


@pytest.mark.parametrize(("edit", "pattern"), EDITS)
def test_edited_tables_are_refused_naming_what(
    saved: Path, capsys: Any, edit: Any, pattern: str
) -> None:
    err = _merge_fails(capsys, saved, edit)
    assert re.search(pattern, err), err


def _table(weighted: bool, n: int = 1500) -> tuple[dict[str, Any], GroupColumns]:
    """A grouped state of ``n`` rows in about ``n / 2`` groups (many of one row)."""
    frame = _frame(5, n, "int").with_columns(
        pl.Series("g", np.random.default_rng(6).integers(0, n // 2, n))
    )
    weights = "w" if weighted else None
    options = {"preds": "p", "target": "y", "by": "g", "sample_weight": weights}
    result = xs.evaluate(frame, xs.CrossEntropy(), **options)
    data = json.loads(json.dumps(grouped_state_dict(result)))
    return data, GroupColumns.from_json(data["groups"], counts_labels=True)


def _exactly_refused(data: dict[str, Any], columns: GroupColumns) -> set[int]:
    """Groups whose state the per-group check (``Metric.from_state_dict``) refuses."""
    template = data["groups"]["metric"]
    refused = set()
    for group in range(columns.n_groups):
        try:
            xs.Metric.from_state_dict({**template, **columns.state_json(group)})
        except ValueError:
            refused.add(group)
    return refused


@settings(max_examples=30, deadline=None)
@given(
    weighted=st.booleans(),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(["rows=1", "rows=0", "rows*2", "loss*", "correct*", "square/"]),
            st.integers(2, 2**31),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_the_screen_sends_every_refusable_group_to_the_exact_check(
    weighted: bool, edits: list[tuple[int, str, int]]
) -> None:
    """The table's numbers are screened at once (``GroupColumns.check``): every group
    the per-group rules refuse must be among those it doubts (which then are checked
    exactly), so a load refuses exactly the tables the per-group check would."""
    data, columns = _table(weighted)
    offsets = columns.digit_offsets()
    for position, what, factor in edits:
        group = position % columns.n_groups
        if what.startswith("rows"):
            rows = columns.counts[group, layout.ROWS]
            columns.counts[group, layout.ROWS] = {"rows=1": 1, "rows=0": 0}.get(what, 2 * rows)
            if columns.labels_known[group]:  # keep label counts consistent with the rows
                columns.labels_known[group] = False
                columns.label_counts[group] = 0
            continue
        slot = {"loss*": layout.LOSS, "correct*": layout.CORRECT, "square/": layout.LOSS_SQUARED}[
            what
        ]
        count = columns.spans[group, slot, 1]
        if count == 0:
            continue
        top = offsets[group, slot] + count - 1
        digit = int(columns.digits[top])
        changed = digit * factor if what != "square/" else digit // factor
        columns.digits[top] = min(max(changed, 1), 2**32 - 1)
    refused = _exactly_refused(data, columns)
    doubted = set(columns.check(validate=True, unit_denominators=True).tolist())
    assert refused <= doubted
    edited = copy.deepcopy(data)
    edited["groups"].update(columns.to_json())
    if refused:
        with pytest.raises(ValueError, match=r"group key \[.+\]: state: "):
            merge_grouped_states([edited])
    else:
        merge_grouped_states([edited])


@pytest.mark.parametrize("weighted", [False, True])
def test_an_untouched_table_needs_no_exact_check(weighted: bool) -> None:
    """What makes loading linear: real groups pass the screen (the tight Cauchy-Schwarz
    bounds of one-row groups included), so no group is checked one by one."""
    _, columns = _table(weighted, n=3000)
    assert (columns.counts[:, layout.ROWS] == 1).sum() > 100
    assert columns.check(validate=True, unit_denominators=True).size == 0


def test_grouped_state_loading_is_atomic(saved: Path) -> None:
    """A refused table changes nothing: the groups held before are as they were."""
    data = read_json(saved)
    groups = GroupState(("g",), xs.CrossEntropy())
    groups.load_json(data["groups"])
    before = json.dumps(groups.to_json())
    bad = copy.deepcopy(data["groups"])
    _set_array(bad, "counts", lambda a: a.__setitem__((-1, layout.ROWS), 0))
    with pytest.raises(ValueError, match=r"group key"):
        groups.load_json(bad)
    assert json.dumps(groups.to_json()) == before
