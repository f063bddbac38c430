"""Reliability bins (xentstream.calibration) against scikit-learn, torchmetrics and numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from reference import reliability_bins
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

import xentstream as xs
from xentstream import cli
from xentstream.accumulator import CalibrationState
from xentstream.calibration import batch_bins, build_calibration_report


def _binary(rng, n=20_000):
    p = rng.uniform(0.0, 1.0, n)
    y = (rng.uniform(0.0, 1.0, n) < p**1.3).astype(np.int64)  # over-confident forecasts
    return p, y


def test_binary_against_scikit_learn(rng):
    p, y = _binary(rng)
    report = build_calibration_report(
        batch_bins("positive_class", p, y, None, n_bins=10, input="probs")
    )
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    table = report.table.filter(report.table["count"] > 0)
    np.testing.assert_allclose(table["accuracy"].to_numpy(), prob_true, rtol=1e-12)
    np.testing.assert_allclose(table["confidence"].to_numpy(), prob_pred, rtol=1e-12)
    assert math.isclose(report.brier, brier_score_loss(y, p), rel_tol=1e-12)
    counts = np.histogram(p, bins=10, range=(0, 1))[0]
    assert table["count"].to_list() == counts[counts > 0].tolist()
    ece = np.sum(counts[counts > 0] / len(p) * np.abs(prob_true - prob_pred))
    assert math.isclose(report.ece, ece, rel_tol=1e-10)
    assert math.isclose(report.mce, np.max(np.abs(prob_true - prob_pred)), rel_tol=1e-12)
    assert report.count == len(p)


def test_binary_sample_weights_against_scikit_learn(rng):
    p, y = _binary(rng, 5000)
    weights = rng.uniform(0.0, 3.0, len(p))
    report = build_calibration_report(
        batch_bins("positive_class", p, y, weights, n_bins=15, input="probs")
    )
    assert math.isclose(report.brier, brier_score_loss(y, p, sample_weight=weights), rel_tol=1e-12)
    expected = reliability_bins(p, y, 15, weights)
    for name in ("ece", "mce", "reliability", "resolution", "uncertainty"):
        assert math.isclose(getattr(report, name), expected[name], rel_tol=1e-10), name


@pytest.mark.parametrize("input", ["probs", "logprobs", "logits"])
def test_multiclass_top_label_against_numpy(rng, input):
    n, classes = 8000, 5
    logits = rng.normal(scale=2.0, size=(n, classes))
    probs = special.softmax(logits, axis=1)
    labels = np.array([rng.choice(classes, p=row) for row in special.softmax(logits * 0.7, 1)])
    preds = {"probs": probs, "logprobs": special.log_softmax(logits, 1), "logits": logits}[input]
    report = build_calibration_report(
        batch_bins("top_label", preds, labels, None, n_bins=15, input=input)
    )
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    expected = reliability_bins(confidence, correct, 15)
    assert report.table["count"].to_list() == expected["counts"].tolist()
    for name in ("ece", "mce", "brier", "reliability", "resolution", "uncertainty"):
        assert math.isclose(getattr(report, name), expected[name], rel_tol=1e-9), name
    parts = report.reliability - report.resolution + report.uncertainty + report.within_bin
    assert math.isclose(report.brier, parts, rel_tol=1e-12)


def test_soft_targets_use_the_mass_on_the_top_label(rng):
    n, classes = 2000, 3
    probs = rng.dirichlet(np.ones(classes), n)
    target = rng.dirichlet(np.ones(classes) * 2, n)
    report = build_calibration_report(
        batch_bins("top_label", probs, target, None, n_bins=10, input="probs")
    )
    outcome = target[np.arange(n), probs.argmax(axis=1)]
    expected = reliability_bins(probs.max(axis=1), outcome, 10)
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)
    assert math.isclose(report.brier, expected["brier"], rel_tol=1e-10)


def test_ignored_rows_are_not_binned(rng):
    probs = rng.dirichlet(np.ones(4), 500)
    labels = rng.integers(0, 4, 500)
    labels[::5] = -100
    report = build_calibration_report(
        batch_bins("top_label", probs, labels, None, n_bins=10, input="probs", ignore_index=-100)
    )
    kept = labels != -100
    expected = reliability_bins(
        probs[kept].max(1), (probs[kept].argmax(1) == labels[kept]).astype(float), 10
    )
    assert report.count == int(kept.sum())
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)


def test_multilabel_pools_every_label(rng):
    p = rng.uniform(size=(1000, 3))
    y = (rng.uniform(size=(1000, 3)) < p).astype(np.int64)
    weights = rng.uniform(0.5, 1.5, 1000)
    report = build_calibration_report(
        batch_bins("each_label", p, y, weights, n_bins=10, input="probs")
    )
    expected = reliability_bins(p.reshape(-1), y.reshape(-1), 10, np.repeat(weights, 3))
    assert report.count == 3000
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)
    assert math.isclose(report.brier, expected["brier"], rel_tol=1e-10)


def test_binary_predict_proba_and_logits(rng):
    p, y = _binary(rng, 3000)
    proba = np.column_stack([1 - p, p])
    direct = build_calibration_report(
        batch_bins("positive_class", p, y, None, n_bins=10, input="probs")
    )
    from_proba = build_calibration_report(
        batch_bins("positive_class", proba, y, None, n_bins=10, input="probs")
    )
    assert from_proba.to_dict() == direct.to_dict()
    logits = special.logit(p)
    from_logits = build_calibration_report(
        batch_bins("positive_class", logits, y, None, n_bins=10, input="logits")
    )
    assert math.isclose(from_logits.brier, direct.brier, rel_tol=1e-9)


def test_decomposition_is_exact_when_bins_hold_one_forecast(rng):
    """Forecasts at bin centres only: no within-bin variance, Murphy's identity holds and
    the binned log-loss split adds up to the log loss itself."""
    n_bins = 10
    p = (rng.integers(0, n_bins, 5000) + 0.5) / n_bins
    y = (rng.uniform(size=5000) < p**0.8).astype(np.int64)
    report = build_calibration_report(
        batch_bins("positive_class", p, y, None, n_bins=n_bins, input="probs")
    )
    assert abs(report.within_bin) < 1e-15
    assert math.isclose(report.brier, brier_score_loss(y, p), rel_tol=1e-12)
    total = report.log_loss_calibration + report.log_loss_refinement
    assert math.isclose(total, log_loss(y, p), rel_tol=1e-10)


def test_bins_are_bitwise_identical_for_any_split(rng):
    p, y = _binary(rng, 50_000)
    weights = rng.uniform(0.0, 2.0, len(p))
    whole = batch_bins("positive_class", p, y, weights, n_bins=15, input="probs")
    cuts = np.sort(rng.choice(np.arange(1, len(p)), size=9, replace=False))
    parts = [
        batch_bins("positive_class", p[a:b], y[a:b], weights[a:b], n_bins=15, input="probs")
        for a, b in zip([0, *cuts], [*cuts, len(p)], strict=True)
    ]
    merged = CalibrationState(15)
    for index in rng.permutation(len(parts)):
        merged.merge(parts[index])
    assert merged.to_json() == whole.to_json()
    assert build_calibration_report(merged).to_dict() == build_calibration_report(whole).to_dict()


def test_state_round_trip_and_malformed(rng):
    p, y = _binary(rng, 1000)
    state = batch_bins("positive_class", p, y, None, n_bins=8, input="probs")
    data = json.loads(json.dumps(state.to_json()))
    assert CalibrationState.from_json(data, 8).to_json() == state.to_json()
    with pytest.raises(ValueError, match=r"calibration\.bins"):
        CalibrationState.from_json(data, 9)
    bad = json.loads(json.dumps(data))
    bad["counts"][0] = -1
    with pytest.raises(ValueError, match=r"calibration\.counts"):
        CalibrationState.from_json(bad, 8)
    bad = json.loads(json.dumps(data))
    bad["sums"]["product"][0][0] = "1.5"
    with pytest.raises(ValueError, match=r"calibration.sums.product"):
        CalibrationState.from_json(bad, 8)
    bad = json.loads(json.dumps(data))
    del bad["sums"]["weight"]
    with pytest.raises(ValueError, match=r"calibration\.sums"):
        CalibrationState.from_json(bad, 8)
    with pytest.raises(ValueError, match="calibration_bins"):
        state.merge(CalibrationState(9))


def test_empty_bins_report_nothing():
    report = build_calibration_report(CalibrationState(5))
    assert report.count == 0 and report.ece is None and report.brier is None
    assert report.table.height == 5
    json.dumps(report.to_dict(), allow_nan=False)


def test_against_torchmetrics(rng):
    torch = pytest.importorskip("torch")
    torchmetrics = pytest.importorskip("torchmetrics")
    n, classes = 4000, 4
    logits = rng.normal(scale=2.0, size=(n, classes))
    probs = special.softmax(logits, axis=1)
    labels = rng.integers(0, classes, n)
    metric = torchmetrics.classification.MulticlassCalibrationError(
        num_classes=classes, n_bins=15, norm="l1"
    )
    expected = float(metric(torch.tensor(probs), torch.tensor(labels)))
    report = build_calibration_report(
        batch_bins("top_label", probs, labels, None, n_bins=15, input="probs")
    )
    # torchmetrics works in float32.
    assert math.isclose(report.ece, expected, rel_tol=1e-5, abs_tol=1e-6)


# -- calibration_bins on the metrics: one pass gives loss + calibration --------------------


def test_metric_option_matches_thereliability_bins(rng):
    n, classes = 6000, 4
    logits = rng.normal(scale=2.0, size=(n, classes))
    labels = rng.integers(0, classes, n)
    metric = xs.CrossEntropy(input="logits", calibration_bins=12)
    for start in range(0, n, 1700):
        metric.update(logits[start : start + 1700], labels[start : start + 1700])
    report = metric.compute()
    probs = special.softmax(logits, axis=1)
    expected = reliability_bins(probs.max(1), (probs.argmax(1) == labels).astype(float), 12)
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-9)
    assert math.isclose(report.mce, expected["mce"], rel_tol=1e-9)
    assert math.isclose(report.brier, expected["brier"], rel_tol=1e-9)
    assert report.calibration.table["count"].to_list() == expected["counts"].tolist()
    assert math.isclose(report.loss, log_loss(labels, probs), rel_tol=1e-9)
    assert "ece" in str(report) and "ece" in report.scalars()
    json.dumps(report.to_dict(), allow_nan=False)


def test_metric_bins_merge_bitwise_and_round_trip(rng, tmp_path):
    p, y = _binary(rng, 9000)
    whole = xs.BinaryCrossEntropy(calibration_bins=15).update(p, y)
    parts = [
        xs.BinaryCrossEntropy(calibration_bins=15).update(p[a:b], y[a:b])
        for a, b in ((0, 10), (10, 4000), (4000, 9000))
    ]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.state_dict() == whole.state_dict()
    whole.save(tmp_path / "state.json")
    loaded = xs.load(tmp_path / "state.json")
    assert loaded.state_dict() == whole.state_dict()
    assert math.isclose(loaded.compute().brier, brier_score_loss(y, p), rel_tol=1e-12)
    with pytest.raises(ValueError, match="calibration_bins"):
        whole.merge(xs.BinaryCrossEntropy(calibration_bins=10))
    with pytest.raises(ValueError, match="calibration_bins"):
        whole.merge(xs.BinaryCrossEntropy())


def test_metric_state_files_with_and_without_bins(rng, tmp_path):
    p, y = _binary(rng, 500)
    state = xs.BinaryCrossEntropy(calibration_bins=5).update(p, y).state_dict()
    missing = dict(state)
    del missing["calibration"]
    with pytest.raises(ValueError, match="calibration"):
        xs.Metric.from_state_dict(missing)
    plain = xs.BinaryCrossEntropy().update(p, y).state_dict()
    assert "calibration" not in plain and "calibration_bins" not in plain["config"]
    extra = {**plain, "calibration": state["calibration"]}
    with pytest.raises(ValueError, match="calibration"):
        xs.Metric.from_state_dict(extra)
    bad = json.loads(json.dumps(state))
    bad["calibration"]["counts"][0] = "x"
    with pytest.raises(ValueError, match=r"calibration\.counts"):
        xs.Metric.from_state_dict(bad)
    with pytest.raises(ValueError, match="calibration_bins"):
        xs.CrossEntropy(calibration_bins=0)
    with pytest.raises(TypeError, match="calibration_bins"):
        xs.CrossEntropy(calibration_bins=2.5)


def test_bad_batch_leaves_the_bins_unchanged(rng):
    probs = rng.dirichlet(np.ones(3), 100)
    labels = rng.integers(0, 3, 100)
    metric = xs.CrossEntropy(calibration_bins=10).update(probs, labels)
    before = json.dumps(metric.state_dict())
    bad = probs.copy()
    bad[40, 0] = np.nan
    with pytest.raises(ValueError, match="row 140"):
        metric.update(bad, labels)
    assert json.dumps(metric.state_dict()) == before


def test_evaluate_and_groups(rng):
    probs = rng.dirichlet(np.ones(3), 3000)
    labels = rng.integers(0, 3, 3000)
    frame = pl.DataFrame({"p": probs, "y": labels, "g": labels % 2})
    metric = xs.CrossEntropy(calibration_bins=10)
    result = xs.evaluate(frame, metric, preds="p", target="y", by="g", batch_rows=700)
    direct = xs.CrossEntropy(calibration_bins=10).update(probs, labels).compute()
    assert result.overall.ece == direct.ece and result.overall.brier == direct.brier
    # Each group keeps its own bins (tests/test_calibration_groups.py has the rest).
    for (key,), report in result.groups.items():
        rows = labels % 2 == key
        alone = xs.CrossEntropy(calibration_bins=10).update(probs[rows], labels[rows]).compute()
        assert (report.ece, report.brier) == (alone.ece, alone.brier)
    assert result.to_polars()["ece"].to_list() == [r.ece for r in result.groups.values()]


def test_comparison_reports_both_models_calibration(rng):
    p, y = _binary(rng, 2000)
    q = np.clip(p + rng.normal(scale=0.05, size=p.size), 0.0, 1.0)
    report = xs.Comparison(xs.BinaryCrossEntropy(calibration_bins=10)).update(p, q, y).compute()
    assert math.isclose(report.model.brier, brier_score_loss(y, p), rel_tol=1e-12)
    assert math.isclose(report.baseline.brier, brier_score_loss(y, q), rel_tol=1e-12)


def test_command_line_calibration(rng, tmp_path, capsys):
    probs = rng.dirichlet(np.ones(3), 1000)
    labels = rng.integers(0, 3, 1000)
    path = tmp_path / "preds.parquet"
    pl.DataFrame({"p": probs, "y": labels}).write_parquet(path)
    argv = ["evaluate", str(path), "--preds", "p", "--target", "y", "--calibration-bins", "10"]
    assert cli.main([*argv, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = reliability_bins(probs.max(1), (probs.argmax(1) == labels).astype(float), 10)
    assert math.isclose(shown["ece"], expected["ece"], rel_tol=1e-9)
    assert len(shown["calibration"]["table"]) == 10
    assert cli.main(argv) == 0
    assert "brier" in capsys.readouterr().out
    assert cli.main([*argv[:-1], "0"]) == 2
    assert "calibration" in capsys.readouterr().err


def test_command_line_plot_draws_the_reliability_diagram(rng, tmp_path):
    pytest.importorskip("matplotlib")
    probs = rng.dirichlet(np.ones(3), 500)
    labels = rng.integers(0, 3, 500)
    path = tmp_path / "preds.parquet"
    pl.DataFrame({"p": probs, "y": labels}).write_parquet(path)
    plot = tmp_path / "plot.png"
    argv = ["evaluate", str(path), "--preds", "p", "--target", "y", "--calibration-bins", "10"]
    assert cli.main([*argv, "--plot", str(plot), "--no-progress"]) == 0
    assert plot.stat().st_size > 0


def test_state_files_whose_bins_do_not_match_the_rows(rng):
    p = rng.uniform(size=(300, 3))
    y = (rng.uniform(size=(300, 3)) < p).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, 300)
    state = xs.MultiLabelCrossEntropy(calibration_bins=6).update(p, y, weights).state_dict()
    assert xs.Metric.from_state_dict(state).compute().count == 300
    fewer = json.loads(json.dumps(state))
    fewer["calibration"]["counts"][0] -= 1
    with pytest.raises(ValueError, match=r"calibration\.counts"):
        xs.Metric.from_state_dict(fewer)
    lighter = json.loads(json.dumps(state))
    lighter["calibration"]["sums"]["weight"][2][0] = "0"
    with pytest.raises(ValueError, match=r"calibration\.sums\.weight"):
        xs.Metric.from_state_dict(lighter)


def test_float32_logits(rng):
    logits = rng.normal(scale=2.0, size=(5000, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 5000)
    report = build_calibration_report(
        batch_bins("top_label", logits, labels, None, n_bins=15, input="logits")
    )
    probs = special.softmax(logits.astype(np.float64), axis=1)
    expected = reliability_bins(probs.max(1), (probs.argmax(1) == labels).astype(float), 15)
    assert report.table["count"].to_list() == expected["counts"].tolist()
    # float32 exponentials (as the loss kernels use for float32 logits): 1e-6 relative.
    for name in ("ece", "brier", "reliability"):
        assert math.isclose(getattr(report, name), expected[name], rel_tol=1e-5), name


def test_binary_against_torchmetrics(rng):
    torch = pytest.importorskip("torch")
    torchmetrics = pytest.importorskip("torchmetrics")
    p, y = _binary(rng, 4000)
    for norm, field in (("l1", "ece"), ("max", "mce")):
        metric = torchmetrics.classification.BinaryCalibrationError(n_bins=10, norm=norm)
        expected = float(metric(torch.tensor(p), torch.tensor(y)))
        report = build_calibration_report(
            batch_bins("positive_class", p, y, None, n_bins=10, input="probs")
        )
        assert math.isclose(getattr(report, field), expected, rel_tol=1e-5, abs_tol=1e-6)
