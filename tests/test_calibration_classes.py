"""Per-class (one-vs-rest) reliability bins: ``calibration_bins`` with ``per_class`` /
``per_label``, against scikit-learn, torchmetrics and plain numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from reference import reliability_bins
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

import xentstream as xs


def _multiclass(rng, n=6000, classes=4):
    logits = rng.normal(scale=2.0, size=(n, classes))
    labels = np.array([rng.choice(classes, p=row) for row in special.softmax(logits * 0.7, 1)])
    return logits, labels


@pytest.mark.parametrize("input", ["probs", "logprobs", "logits"])
def test_each_class_against_scikit_learn(rng, input):
    logits, labels = _multiclass(rng)
    probs = special.softmax(logits, axis=1)
    preds = {"probs": probs, "logprobs": special.log_softmax(logits, 1), "logits": logits}[input]
    metric = xs.CrossEntropy(input=input, per_class=True, calibration_bins=10)
    report = metric.update(preds, labels).compute()
    classes = report.calibration.classes
    assert len(classes) == 4 and report.calibration.per_class.height == 4
    for c, bins in enumerate(classes):
        outcome = labels == c
        prob_true, prob_pred = calibration_curve(outcome, probs[:, c], n_bins=10)
        table = bins.table.filter(bins.table["count"] > 0)
        np.testing.assert_allclose(table["accuracy"].to_numpy(), prob_true, rtol=1e-12)
        np.testing.assert_allclose(table["confidence"].to_numpy(), prob_pred, rtol=1e-9)
        counts = np.histogram(probs[:, c], bins=10, range=(0, 1))[0]
        assert table["count"].to_list() == counts[counts > 0].tolist()
        assert math.isclose(bins.brier, brier_score_loss(outcome, probs[:, c]), rel_tol=1e-9)
        expected = reliability_bins(probs[:, c], outcome.astype(float), 10)
        row = report.calibration.per_class.row(c, named=True)
        for name in ("ece", "mce", "brier"):
            assert math.isclose(row[name], expected[name], rel_tol=1e-9), (c, name)
            assert report.per_class[name][c] == row[name]  # the loss's per-class table too
    # The top-label bins are still there, unchanged by per_class.
    top = xs.CrossEntropy(input=input, calibration_bins=10).update(preds, labels).compute()
    assert report.calibration.to_dict()["ece"] == top.calibration.to_dict()["ece"]
    assert report.ece == top.ece and report.brier == top.brier


def test_each_class_against_torchmetrics(rng):
    torch = pytest.importorskip("torch")
    torchmetrics = pytest.importorskip("torchmetrics")
    logits, labels = _multiclass(rng, 4000, 3)
    probs = special.softmax(logits, axis=1)
    report = xs.CrossEntropy(per_class=True, calibration_bins=15).update(probs, labels).compute()
    for c in range(3):
        for norm, name in (("l1", "ece"), ("max", "mce")):
            metric = torchmetrics.classification.BinaryCalibrationError(n_bins=15, norm=norm)
            expected = float(metric(torch.tensor(probs[:, c]), torch.tensor(labels == c)))
            # torchmetrics works in float32.
            value = report.calibration.per_class[name][c]
            assert math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-6), (c, name)


def test_soft_targets_weights_and_ignored_rows(rng):
    n, classes = 3000, 3
    probs = rng.dirichlet(np.ones(classes), n)
    target = rng.dirichlet(np.ones(classes) * 2, n)
    weights = rng.uniform(0.0, 3.0, n)
    soft = xs.CrossEntropy(per_class=True, calibration_bins=8).update(probs, target, weights)
    for c in range(classes):
        expected = reliability_bins(probs[:, c], target[:, c], 8, weights)
        bins = soft.compute().calibration.classes[c]
        assert bins.table["count"].to_list() == expected["counts"].tolist()
        for name in ("ece", "mce", "brier"):
            assert math.isclose(getattr(bins, name), expected[name], rel_tol=1e-9), name
    labels = rng.integers(0, classes, n)
    labels[::4] = -1
    hard = xs.CrossEntropy(per_class=True, calibration_bins=8, ignore_index=-1)
    report = hard.update(probs, labels, weights).compute()
    kept = labels != -1
    for c in range(classes):
        outcome = (labels[kept] == c).astype(float)
        expected = reliability_bins(probs[kept, c], outcome, 8, weights[kept])
        bins = report.calibration.classes[c]
        assert bins.count == kept.sum()
        assert math.isclose(
            bins.brier,
            brier_score_loss(outcome, probs[kept, c], sample_weight=weights[kept]),
            rel_tol=1e-9,
        )
        assert math.isclose(bins.ece, expected["ece"], rel_tol=1e-9)


def test_each_label_against_scikit_learn(rng):
    p = rng.uniform(size=(4000, 3))
    y = (rng.uniform(size=(4000, 3)) < p**1.2).astype(np.int64)
    report = xs.MultiLabelCrossEntropy(per_label=True, calibration_bins=10).update(p, y).compute()
    for label in range(3):
        bins = report.calibration.classes[label]
        prob_true, prob_pred = calibration_curve(y[:, label], p[:, label], n_bins=10)
        table = bins.table.filter(bins.table["count"] > 0)
        np.testing.assert_allclose(table["accuracy"].to_numpy(), prob_true, rtol=1e-12)
        np.testing.assert_allclose(table["confidence"].to_numpy(), prob_pred, rtol=1e-12)
        assert math.isclose(bins.brier, brier_score_loss(y[:, label], p[:, label]), rel_tol=1e-12)
    # Pooled over labels as before, beside the per-label bins.
    assert report.calibration.count == p.size


def test_float32_logits(rng):
    logits = rng.normal(scale=2.0, size=(5000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 5000)
    report = xs.CrossEntropy(input="logits", per_class=True, calibration_bins=15)
    report = report.update(logits, labels).compute()
    probs = special.softmax(logits.astype(np.float64), axis=1)
    for c in (0, 9):
        expected = reliability_bins(probs[:, c], (labels == c).astype(float), 15)
        bins = report.calibration.classes[c]
        # float32 exponentials, as the loss kernels use for float32 logits.
        assert math.isclose(bins.brier, expected["brier"], rel_tol=1e-5)
        assert math.isclose(bins.ece, expected["ece"], rel_tol=1e-4, abs_tol=1e-6)


def test_bitwise_for_any_split_merge_and_state_file(rng, tmp_path):
    logits, labels = _multiclass(rng, 40_000, 3)  # several row splits per class
    weights = rng.uniform(0.5, 2.0, len(labels))

    def metric():
        return xs.CrossEntropy(input="logits", per_class=True, calibration_bins=12)

    whole = metric().update(logits, labels, weights)
    parts = [
        metric().update(logits[a:b], labels[a:b], weights[a:b])
        for a, b in ((0, 7), (7, 25_000), (25_000, 40_000))
    ]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.state_dict() == whole.state_dict()
    whole.save(tmp_path / "state.json")
    loaded = xs.load(tmp_path / "state.json")
    assert loaded.state_dict() == whole.state_dict()
    assert loaded.compute().calibration.to_dict() == whole.compute().calibration.to_dict()
    assert merged.merge(metric()).state_dict() == whole.state_dict()  # merge with empty
    empty = metric()
    assert empty.compute().calibration.per_class.height == 0
    assert xs.Metric.from_state_dict(empty.state_dict()).state_dict() == empty.state_dict()


def test_state_files_refused(rng):
    probs = rng.dirichlet(np.ones(3), 400)
    labels = rng.integers(0, 3, 400)
    state = xs.CrossEntropy(per_class=True, calibration_bins=5).update(probs, labels).state_dict()
    assert "per_class" in state["calibration"]
    top_only = xs.CrossEntropy(per_class=True).update(probs, labels).state_dict()
    assert "calibration" not in top_only
    plain = xs.CrossEntropy(calibration_bins=5).update(probs, labels).state_dict()
    assert "per_class" not in plain["calibration"]  # files without per_class unchanged

    def refused(edit, match):
        bad = json.loads(json.dumps(state))
        edit(bad)
        with pytest.raises(ValueError, match=match):
            xs.Metric.from_state_dict(bad)

    refused(lambda s: s["calibration"].pop("per_class"), r"calibration\.per_class: missing")
    refused(
        lambda s: s["calibration"]["per_class"]["counts"][1].__setitem__(0, 10**6),
        r"calibration\.per_class\.counts: class 1",
    )
    refused(
        lambda s: s["calibration"]["per_class"]["counts"].pop(),
        r"calibration\.per_class\.sums\.weight: accumulator: expected a list of 2",
    )
    refused(
        lambda s: s["calibration"]["per_class"]["sums"]["weight"][2][0].__setitem__(0, "0"),
        r"calibration\.per_class\.sums\.weight",
    )
    refused(
        lambda s: s["calibration"]["per_class"]["sums"].pop("product"),
        r"calibration\.per_class\.sums",
    )

    grafted = json.loads(json.dumps(plain))
    grafted["calibration"]["per_class"] = state["calibration"]["per_class"]
    with pytest.raises(ValueError, match=r"calibration\.per_class: given"):
        xs.Metric.from_state_dict(grafted)


def test_too_many_class_bins_is_a_clear_error(rng):
    metric = xs.CrossEntropy(per_class=True, calibration_bins=4096)
    probs = rng.dirichlet(np.ones(5), 10)
    with pytest.raises(ValueError, match=r"calibration_bins: per-class bins for 5 classes"):
        metric.update(probs, rng.integers(0, 5, 10))
    assert metric.rows_seen == 0


def test_evaluate_and_command_line(rng, tmp_path, capsys):
    from xentstream import cli

    probs = rng.dirichlet(np.ones(3), 2500)
    labels = rng.integers(0, 3, 2500)
    frame = pl.DataFrame({"a": probs[:, 0], "b": probs[:, 1], "c": probs[:, 2], "y": labels})
    metric = xs.CrossEntropy(per_class=True, calibration_bins=10)
    result = xs.evaluate(frame, metric, preds=["a", "b", "c"], target="y", batch_rows=600)
    direct = xs.CrossEntropy(per_class=True, calibration_bins=10).update(probs, labels)
    assert result.calibration.to_dict() == direct.compute().calibration.to_dict()
    assert result.per_class["class"].to_list() == ["a", "b", "c"]
    assert result.per_class["ece"].to_list() == direct.compute().per_class["ece"].to_list()
    path = tmp_path / "p.parquet"
    frame.write_parquet(path)
    argv = [str(path), "--preds", "a", "b", "c", "--target", "y", "--per-class"]
    assert cli.main(["evaluate", *argv, "--calibration-bins", "10", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["ece"] for row in data["per_class"]] == direct.compute().per_class["ece"].to_list()
    assert len(data["calibration"]["per_class"]) == 3


def test_command_line_plot_draws_a_reliability_curve_per_class(rng, tmp_path, monkeypatch):
    """`--plot` with --per-class and --calibration-bins: beside the top-label diagram, a
    panel of one reliability curve per class, named as the per-class table names the
    classes, each through its used bins' (mean forecast, mean outcome) of numpy's
    one-vs-rest bins, labelled with its ECE; drawn for real (Agg) and written as a PNG."""
    matplotlib = pytest.importorskip("matplotlib")
    from xentstream import cli

    matplotlib.use("Agg")
    names = ["ant", "bee", "cat"]
    probs = rng.dirichlet(np.ones(3), 1500)
    labels = np.array([rng.choice(3, p=row) for row in probs**0.7 / (probs**0.7).sum(1)[:, None]])
    path = tmp_path / "preds.parquet"
    pl.DataFrame({**{n: probs[:, c] for c, n in enumerate(names)}, "y": labels}).write_parquet(path)
    drawn = {}

    def capture(output, history, result):
        drawn["figure"] = cli._figure(history, result)
        drawn["figure"].savefig(output)

    monkeypatch.setattr(cli, "_plot", capture)
    png = tmp_path / "plot.png"
    argv = ["evaluate", str(path), "--preds", *names, "--target", "y", "--per-class"]
    argv += ["--calibration-bins", "8", "--plot", str(png), "--no-progress"]
    assert cli.main([*argv, "--output", str(tmp_path / "out.txt")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    running, per_class_bars, diagram, curves = drawn["figure"].axes
    assert "running loss" in [line.get_label() for line in running.get_lines()]
    assert per_class_bars.get_title() == "mean loss per class"
    assert diagram.get_title().startswith("reliability (ECE")
    assert curves.get_title() == "reliability per class"
    assert curves.get_xlabel() == "mean forecast of the class"
    lines = curves.get_lines()
    assert [line.get_label().split(" ")[0] for line in lines] == [*names, "calibrated"]
    for c, line in enumerate(lines[:3]):
        expected = reliability_bins(probs[:, c], (labels == c).astype(float), 8)
        np.testing.assert_allclose(line.get_xdata(), expected["confidence"], rtol=1e-9)
        np.testing.assert_allclose(line.get_ydata(), expected["accuracy"], rtol=1e-12)
        shown_ece = float(line.get_label().split("ECE ")[1].rstrip(")"))
        assert math.isclose(shown_ece, expected["ece"], abs_tol=5e-4)  # printed to 3 places
    # Many classes: the most=K worst calibrated (highest ECE) only, said in the title.
    report = xs.CrossEntropy(per_class=True, calibration_bins=8).update(probs, labels).compute()
    ax = report.calibration.plot(per_class=True, most=2)
    eces = [classes.ece for classes in report.calibration.classes]
    worst = sorted(np.argsort(eces)[::-1][:2].tolist())
    assert [line.get_label().split(" ")[0] for line in ax.get_lines()] == [
        *map(str, worst),
        "calibrated",
    ]
    assert ax.get_title() == "reliability per class (2 of 3, highest ECE)"
    top = xs.CrossEntropy(calibration_bins=8).update(probs, labels).compute()
    with pytest.raises(ValueError, match=r"^per_class: this report has no per-class bins"):
        top.calibration.plot(per_class=True)
