"""Reliability bins per group: ``by=`` with ``calibration_bins=``, against plain numpy
(tests/reference.py), scikit-learn and torchmetrics group by group; bitwise for any
batch split and merge order; grouped state files, checkpoints and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from reference import reliability_bins
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from torchmetrics.classification import MulticlassCalibrationError

import xentstream as xs
from xentstream.calibration import MAX_GROUP_BINS
from xentstream.evaluation import Evaluation, GroupState, grouped_state_dict, merge_grouped_states

BINS = 12


def _multiclass(rng, n=5000, classes=4, groups=6):
    logits = rng.normal(scale=2.0, size=(n, classes))
    labels = np.array([rng.choice(classes, p=row) for row in special.softmax(logits * 0.7, 1)])
    keys = rng.integers(0, groups, n)
    return logits, labels, keys


def _frame(preds, target, keys, weights=None):
    columns = {"p": preds, "y": target, "g": keys}
    if weights is not None:
        columns["w"] = weights
    return pl.DataFrame(columns)


def _close(value, expected, rel=1e-9):
    assert math.isclose(value, expected, rel_tol=rel, abs_tol=1e-12), (value, expected)


@pytest.mark.parametrize("input", ["probs", "logits"])
def test_each_group_against_numpy_and_torchmetrics(rng, input):
    logits, labels, keys = _multiclass(rng)
    weights = rng.uniform(0.5, 2.0, labels.shape[0])
    probs = special.softmax(logits, axis=1)
    preds = probs if input == "probs" else logits
    metric = xs.CrossEntropy(input=input, calibration_bins=BINS)
    result = xs.evaluate(
        _frame(preds, labels, keys, weights),
        metric,
        preds="p",
        target="y",
        sample_weight="w",
        by="g",
        batch_rows=777,
    )
    table = result.to_polars()
    assert table["g"].to_list() == sorted(set(keys.tolist()))
    for row, (key, report) in zip(table.iter_rows(named=True), result.groups.items(), strict=True):
        rows = keys == key[0]
        confidence = probs[rows].max(axis=1)
        correct = (probs[rows].argmax(axis=1) == labels[rows]).astype(float)
        expected = reliability_bins(confidence, correct, BINS, weights[rows])
        bins = report.calibration
        for name in ("ece", "mce", "brier", "reliability", "resolution", "uncertainty"):
            _close(getattr(bins, name), expected[name], rel=1e-6 if input == "logits" else 1e-9)
            assert row[name] == getattr(bins, name)  # the table's columns are the reports'
        assert bins.table["count"].to_numpy().tolist() == expected["counts"].tolist()
        assert (report.ece, report.mce, report.brier) == (bins.ece, bins.mce, bins.brier)
        # torchmetrics' top-label ECE of the group's rows (unweighted).
        plain = xs.evaluate(
            _frame(preds[rows], labels[rows], keys[rows]),
            xs.CrossEntropy(input=input, calibration_bins=BINS),
            preds="p",
            target="y",
        )
        ece = MulticlassCalibrationError(num_classes=4, n_bins=BINS, norm="l1")(
            torch.from_numpy(probs[rows]), torch.from_numpy(labels[rows])
        )
        assert math.isclose(plain.ece, float(ece), rel_tol=1e-4, abs_tol=1e-6)


def test_binary_and_multilabel_groups_against_scikit_learn(rng):
    n = 4000
    probs = rng.uniform(0.0, 1.0, n)
    target = (rng.uniform(size=n) < probs**1.3).astype(np.int64)
    keys = rng.choice(["a", "b", "c"], n)
    result = xs.evaluate(
        _frame(probs, target, keys),
        xs.BinaryCrossEntropy(calibration_bins=BINS),
        preds="p",
        target="y",
        by="g",
        batch_rows=999,
    )
    for (key,), report in result.groups.items():
        rows = keys == key
        _close(report.brier, brier_score_loss(target[rows], probs[rows]))
        mean_outcome, mean_forecast = calibration_curve(
            target[rows], probs[rows], n_bins=BINS, strategy="uniform"
        )
        table = report.calibration.table.filter(pl.col("count") > 0)
        np.testing.assert_allclose(table["accuracy"].to_numpy(), mean_outcome, rtol=1e-12)
        np.testing.assert_allclose(table["confidence"].to_numpy(), mean_forecast, rtol=1e-12)

    labels = rng.uniform(size=(n, 3))
    multi = (rng.uniform(size=(n, 3)) < labels).astype(np.int64)
    grouped = xs.evaluate(
        _frame(labels, multi, keys),
        xs.MultiLabelCrossEntropy(calibration_bins=BINS),
        preds="p",
        target="y",
        by="g",
        batch_rows=1300,
    )
    for (key,), report in grouped.groups.items():
        rows = keys == key
        expected = reliability_bins(labels[rows].ravel(), multi[rows].ravel().astype(float), BINS)
        _close(report.calibration.ece, expected["ece"])
        _close(report.brier, expected["brier"])
        assert report.calibration.count == 3 * int(rows.sum())


def _state_of_groups(result):
    """Each group's state dict by key (first-appearance order aside)."""
    return {tuple(e["key"]): e["state"] for e in grouped_state_dict(result)["groups"]}


def test_bitwise_for_any_split_merge_order_and_state_file(rng, tmp_path):
    logits, labels, keys = _multiclass(rng, 6000, 3, 5)
    labels[rng.uniform(size=labels.shape[0]) < 0.05] = -100  # ignored rows
    frame = _frame(logits, labels, keys, rng.uniform(0.5, 2.0, labels.shape[0]))
    columns = {"preds": "p", "target": "y", "sample_weight": "w", "by": "g"}

    def metric():
        return xs.CrossEntropy(input="logits", ignore_index=-100, calibration_bins=BINS)

    whole = xs.evaluate(frame, metric(), **columns)
    expected = _state_of_groups(whole)
    for key, state in expected.items():  # each group as a one-shot metric of its rows
        rows = frame.filter(pl.col("g") == key[0])
        alone = metric().update(rows["p"].to_numpy(), rows["y"].to_numpy(), rows["w"].to_numpy())
        assert state["calibration"] == alone.state_dict()["calibration"]
    for batch_rows in (1, 333, 4096):
        split = xs.evaluate(frame, metric(), batch_rows=batch_rows, **columns)
        assert _state_of_groups(split) == expected
    cuts = sorted(rng.choice(np.arange(1, 6000), 3, replace=False).tolist())
    parts = []
    for start, stop in zip([0, *cuts], [*cuts, 6000], strict=True):
        part = Evaluation.of(metric(), preds="p", target="y", sample_weight="w", by="g")
        for _ in part.feed(frame.slice(start, stop - start), batch_rows=500):
            pass
        parts.append(part.state_dict())
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        merged = Evaluation.of(metric(), preds="p", target="y", sample_weight="w", by="g")
        for index in order:
            merged.merge_state_dict(json.loads(json.dumps(parts[index])))
        assert _state_of_groups(merged.report()) == expected
    # A grouped state file (--save-state) and a checkpoint's strict load.
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps(grouped_state_dict(whole)))
    reloaded = merge_grouped_states([json.loads(path.read_text())])
    # (A merged state's config has the class count inferred: compare the sums.)
    for part in ("calibration", "sums", "counts"):
        assert {k: s[part] for k, s in _state_of_groups(reloaded).items()} == {
            k: s[part] for k, s in expected.items()
        }
    assert reloaded.to_polars().equals(whole.to_polars())
    strict = GroupState(("g",), metric())
    strict.load_json(grouped_state_dict(whole)["groups"], strict=True)
    assert {key: strict.reports()[key].calibration.to_dict() for key in strict.keys} == {
        key: report.calibration.to_dict() for key, report in whole.groups.items()
    }


def test_checkpoint_resume_keeps_the_groups_bins(rng, tmp_path, monkeypatch):
    monkeypatch.setattr("xentstream.evaluation.CHECKPOINT_INTERVAL_S", 0.0)  # every batch
    probs, labels, keys = _multiclass(rng, 3000, 3, 4)
    path = tmp_path / "data.parquet"
    _frame(special.softmax(probs, 1), labels, keys).write_parquet(path)
    columns = {"preds": "p", "target": "y", "by": "g", "batch_rows": 400}
    whole = xs.evaluate(path, xs.CrossEntropy(calibration_bins=BINS), **columns)
    checkpoint = tmp_path / "run.ckpt"
    steps = xs.stream(
        path, xs.CrossEntropy(calibration_bins=BINS), checkpoint=checkpoint, **columns
    )
    for _ in range(3):
        next(steps)
    steps.close()  # a stopped run: the checkpoint holds its batches
    resumed = xs.evaluate(
        path, xs.CrossEntropy(calibration_bins=BINS), checkpoint=checkpoint, **columns
    )
    assert _state_of_groups(resumed) == _state_of_groups(whole)


def test_sort_top_filter_and_empty(rng):
    logits, labels, keys = _multiclass(rng, 2000, 3, 5)
    result = xs.evaluate(
        _frame(logits, labels, keys),
        xs.CrossEntropy(input="logits", calibration_bins=BINS),
        preds="p",
        target="y",
        by="g",
    )
    by_key = dict(zip(result.to_polars()["g"], result.to_polars()["ece"], strict=True))
    top = result.top(2).to_polars()
    assert top["ece"].to_list() == [by_key[g] for g in top["g"]]
    assert top["loss"].to_list() == sorted(top["loss"].to_list(), reverse=True)
    assert result.sorted("loss").to_polars()["ece"].to_list() == [
        r.ece for r in result.sorted("loss").groups.values()
    ]
    empty = xs.evaluate(
        _frame(logits[:0], labels[:0], keys[:0]),
        xs.CrossEntropy(input="logits", calibration_bins=BINS),
        preds="p",
        target="y",
        by="g",
    )
    assert {"ece", "brier", "reliability"} <= set(empty.to_polars().columns)


def test_too_many_group_bins_is_a_clear_error_and_changes_nothing(rng):
    n_bins = 4096
    limit = MAX_GROUP_BINS // n_bins
    probs = rng.dirichlet(np.ones(3), 4 * limit)
    labels = rng.integers(0, 3, 4 * limit)
    keys = np.arange(4 * limit) % (limit + 1)
    frame = _frame(probs, labels, keys)
    run = Evaluation.of(xs.CrossEntropy(calibration_bins=n_bins), preds="p", target="y", by="g")
    first = frame.filter(pl.col("g") < limit)
    for _ in run.feed(first):
        pass
    before = run.state_dict()
    with pytest.raises(ValueError, match=r"calibration_bins: .* 17 groups of by=\['g'\] x 4096"):
        for _ in run.feed(frame):
            pass
    assert run.state_dict() == before
    assert run.groups.n_groups == limit
    with pytest.raises(ValueError, match=r"calibration_bins: .*exceed"):
        merge_grouped_states(
            [grouped_state_dict(run.report()), grouped_state_dict(_one_more_group(n_bins))]
        )


def _one_more_group(n_bins):
    frame = _frame(np.full((1, 3), 1 / 3), np.zeros(1, np.int64), np.array([10**6]))
    return xs.evaluate(
        frame, xs.CrossEntropy(calibration_bins=n_bins), preds="p", target="y", by="g"
    )


def test_group_states_without_bins_are_refused(rng):
    probs = rng.dirichlet(np.ones(3), 300)
    labels = rng.integers(0, 3, 300)
    frame = _frame(probs, labels, rng.integers(0, 3, 300))
    result = xs.evaluate(frame, xs.CrossEntropy(calibration_bins=5), preds="p", target="y", by="g")
    state = grouped_state_dict(result)
    old = json.loads(json.dumps(state))
    for entry in old["groups"]:  # as grouped runs saved them before groups kept bins
        entry["state"].pop("calibration")
        entry["state"]["config"]["calibration_bins"] = None
    with pytest.raises(ValueError, match=r"group key \[\d\]: its state keeps no reliability bins"):
        merge_grouped_states([state, old])
    bad = json.loads(json.dumps(state))
    bad["groups"][0]["state"]["calibration"]["counts"][0] += 1
    strict = GroupState(("g",), xs.CrossEntropy(calibration_bins=5))
    with pytest.raises(ValueError, match=r"calibration\.counts"):
        strict.load_json(bad["groups"], strict=True)
    assert strict.n_groups == 0


def test_groups_with_bins_are_entries_and_a_table_is_refused(rng):
    """The columnar table of groups holds loss sums only: groups with bins are written as
    per-group entries, and a table (of groups without bins) is refused by a grouping whose
    groups keep bins, which stays empty."""
    probs = rng.dirichlet(np.ones(3), 300)
    labels = rng.integers(0, 3, 300)
    frame = _frame(probs, labels, rng.integers(0, 3, 300))
    with_bins = grouped_state_dict(
        xs.evaluate(frame, xs.CrossEntropy(calibration_bins=5), preds="p", target="y", by="g")
    )
    assert isinstance(with_bins["groups"], list)
    assert all("calibration" in entry["state"] for entry in with_bins["groups"])
    table = grouped_state_dict(xs.evaluate(frame, xs.CrossEntropy(), preds="p", target="y", by="g"))
    assert isinstance(table["groups"], dict)  # the columnar table
    grouping = GroupState(("g",), xs.CrossEntropy(calibration_bins=5))
    with pytest.raises(ValueError, match="a table of groups keeps no reliability bins"):
        grouping.load_json(table["groups"])
    assert grouping.n_groups == 0


def test_command_line_on_digits(tmp_path, capsys):
    from xentstream import cli

    data = "examples/data/digits_predictions.parquet"
    argv = ["evaluate", data, "--preds", "probs", "--target", "label", "--by", "ink"]
    assert cli.main([*argv, "--calibration-bins", "15"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "ink" in line and "ece" in line)
    assert "mce" in header and "brier" in header
    # The README shows these lines of this output (its excerpt of the groups' table).
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    excerpt = readme.split("the groups' table gains ece, mce and brier:\n```\n\n```text\n")[1]
    shown = excerpt.split("```")[0].splitlines()
    assert len(shown) == 4 and set(shown) <= set(out.splitlines()), (shown, out)
    frame = pl.read_parquet(data)
    expected = {}
    for ink in frame["ink"].unique().to_list():
        rows = frame.filter(pl.col("ink") == ink)
        probs = rows["probs"].to_numpy()
        correct = (probs.argmax(axis=1) == rows["label"].to_numpy()).astype(float)
        expected[ink] = reliability_bins(probs.max(axis=1), correct, 15)
    state = tmp_path / "state.json"
    assert cli.main([*argv, "--calibration-bins", "15", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for group in report["groups"]:
        _close(group["ece"], expected[group["key"][0]]["ece"])
        _close(group["brier"], expected[group["key"][0]]["brier"])
    assert cli.main([*argv, "--calibration-bins", "15", "--save-state", str(state)]) == 0
    capsys.readouterr()
    assert cli.main(["merge", str(state), str(state), "--format", "json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    for group, twice in zip(report["groups"], merged["groups"], strict=True):
        assert twice["ece"] == group["ece"]  # the same rows twice: the same bins, doubled
        assert (
            twice["calibration"]["table"][3]["count"]
            == 2 * (group["calibration"]["table"][3]["count"])
        )


@pytest.mark.parametrize(("classes", "dtype"), [(5, np.float32), (70, np.float64)])
def test_float32_and_wide_rows_equal_one_shot_metrics(rng, classes, dtype):
    n = 1500
    logits = rng.normal(scale=3.0, size=(n, classes)).astype(dtype)
    labels = rng.integers(0, classes, n)
    keys = rng.integers(0, 4, n)
    result = xs.evaluate(
        _frame(logits, labels, keys),
        xs.CrossEntropy(input="logits", calibration_bins=BINS),
        preds="p",
        target="y",
        by="g",
        batch_rows=600,
    )
    for key, state in _state_of_groups(result).items():
        rows = keys == key[0]
        alone = xs.CrossEntropy(input="logits", calibration_bins=BINS).update(
            logits[rows], labels[rows]
        )
        assert state["calibration"] == alone.state_dict()["calibration"]


def test_command_line_refuses_too_many_group_bins(tmp_path, capsys):
    from xentstream import cli

    groups = MAX_GROUP_BINS // 4096 + 1
    path = tmp_path / "cap.parquet"
    _frame(
        np.full((groups, 3), 1 / 3), np.zeros(groups, np.int64), np.arange(groups)
    ).write_parquet(path)
    argv = ["evaluate", str(path), "--preds", "p", "--target", "y", "--by", "g"]
    assert cli.main([*argv, "--calibration-bins", "4096"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"--calibration-bins: reliability bins per group for {groups} groups" in error
