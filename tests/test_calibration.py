"""Reliability bins (xentstream.calibration) against scikit-learn, torchmetrics and numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from xentstream.calibration import CalibrationState, batch_bins


def _binary(rng, n=20_000):
    p = rng.uniform(0.0, 1.0, n)
    y = (rng.uniform(0.0, 1.0, n) < p**1.3).astype(np.int64)  # over-confident forecasts
    return p, y


def _reference(confidence, outcome, n_bins, weights=None):
    """Plain numpy: equal-width bins [k/n, (k+1)/n), the last one closed."""
    weights = np.ones_like(confidence) if weights is None else weights
    index = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    w = np.bincount(index, weights, n_bins)
    f = np.bincount(index, weights * confidence, n_bins)
    o = np.bincount(index, weights * outcome, n_bins)
    used = w > 0
    fbar, obar = f[used] / w[used], o[used] / w[used]
    total = w.sum()
    base = (weights * outcome).sum() / total
    return {
        "ece": float(np.sum(w[used] / total * np.abs(obar - fbar))),
        "mce": float(np.max(np.abs(obar - fbar))),
        "brier": float(np.sum(weights * (confidence - outcome) ** 2) / total),
        "reliability": float(np.sum(w[used] * (fbar - obar) ** 2) / total),
        "resolution": float(np.sum(w[used] * (obar - base) ** 2) / total),
        "uncertainty": float(base * (1 - base)),
        "counts": np.bincount(index, minlength=n_bins),
        "confidence": fbar,
        "accuracy": obar,
    }


def test_binary_against_scikit_learn(rng):
    p, y = _binary(rng)
    report = batch_bins("binary", p, y, None, n_bins=10, input="probs").report()
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
    report = batch_bins("binary", p, y, weights, n_bins=15, input="probs").report()
    assert math.isclose(report.brier, brier_score_loss(y, p, sample_weight=weights), rel_tol=1e-12)
    expected = _reference(p, y, 15, weights)
    for name in ("ece", "mce", "reliability", "resolution", "uncertainty"):
        assert math.isclose(getattr(report, name), expected[name], rel_tol=1e-10), name


@pytest.mark.parametrize("input", ["probs", "logprobs", "logits"])
def test_multiclass_top_label_against_numpy(rng, input):
    n, classes = 8000, 5
    logits = rng.normal(scale=2.0, size=(n, classes))
    probs = special.softmax(logits, axis=1)
    labels = np.array([rng.choice(classes, p=row) for row in special.softmax(logits * 0.7, 1)])
    preds = {"probs": probs, "logprobs": special.log_softmax(logits, 1), "logits": logits}[input]
    report = batch_bins("multiclass", preds, labels, None, n_bins=15, input=input).report()
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    expected = _reference(confidence, correct, 15)
    assert report.table["count"].to_list() == expected["counts"].tolist()
    for name in ("ece", "mce", "brier", "reliability", "resolution", "uncertainty"):
        assert math.isclose(getattr(report, name), expected[name], rel_tol=1e-9), name
    parts = report.reliability - report.resolution + report.uncertainty + report.within_bin
    assert math.isclose(report.brier, parts, rel_tol=1e-12)


def test_soft_targets_use_the_mass_on_the_top_label(rng):
    n, classes = 2000, 3
    probs = rng.dirichlet(np.ones(classes), n)
    target = rng.dirichlet(np.ones(classes) * 2, n)
    report = batch_bins("multiclass", probs, target, None, n_bins=10, input="probs").report()
    outcome = target[np.arange(n), probs.argmax(axis=1)]
    expected = _reference(probs.max(axis=1), outcome, 10)
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)
    assert math.isclose(report.brier, expected["brier"], rel_tol=1e-10)


def test_ignored_rows_are_not_binned(rng):
    probs = rng.dirichlet(np.ones(4), 500)
    labels = rng.integers(0, 4, 500)
    labels[::5] = -100
    report = batch_bins(
        "multiclass", probs, labels, None, n_bins=10, input="probs", ignore_index=-100
    ).report()
    kept = labels != -100
    expected = _reference(
        probs[kept].max(1), (probs[kept].argmax(1) == labels[kept]).astype(float), 10
    )
    assert report.count == int(kept.sum())
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)


def test_multilabel_pools_every_label(rng):
    p = rng.uniform(size=(1000, 3))
    y = (rng.uniform(size=(1000, 3)) < p).astype(np.int64)
    weights = rng.uniform(0.5, 1.5, 1000)
    report = batch_bins("multilabel", p, y, weights, n_bins=10, input="probs").report()
    expected = _reference(p.reshape(-1), y.reshape(-1), 10, np.repeat(weights, 3))
    assert report.count == 3000
    assert math.isclose(report.ece, expected["ece"], rel_tol=1e-10)
    assert math.isclose(report.brier, expected["brier"], rel_tol=1e-10)


def test_binary_predict_proba_and_logits(rng):
    p, y = _binary(rng, 3000)
    proba = np.column_stack([1 - p, p])
    direct = batch_bins("binary", p, y, None, n_bins=10, input="probs").report()
    from_proba = batch_bins("binary", proba, y, None, n_bins=10, input="probs").report()
    assert from_proba.to_dict() == direct.to_dict()
    logits = special.logit(p)
    from_logits = batch_bins("binary", logits, y, None, n_bins=10, input="logits").report()
    assert math.isclose(from_logits.brier, direct.brier, rel_tol=1e-9)


def test_decomposition_is_exact_when_bins_hold_one_forecast(rng):
    """Forecasts at bin centres only: no within-bin variance, Murphy's identity holds and
    the binned log-loss split adds up to the log loss itself."""
    n_bins = 10
    p = (rng.integers(0, n_bins, 5000) + 0.5) / n_bins
    y = (rng.uniform(size=5000) < p**0.8).astype(np.int64)
    report = batch_bins("binary", p, y, None, n_bins=n_bins, input="probs").report()
    assert abs(report.within_bin) < 1e-15
    assert math.isclose(report.brier, brier_score_loss(y, p), rel_tol=1e-12)
    total = report.log_loss_calibration + report.log_loss_refinement
    assert math.isclose(total, log_loss(y, p), rel_tol=1e-10)


def test_bins_are_bitwise_identical_for_any_split(rng):
    p, y = _binary(rng, 50_000)
    weights = rng.uniform(0.0, 2.0, len(p))
    whole = batch_bins("binary", p, y, weights, n_bins=15, input="probs")
    cuts = np.sort(rng.choice(np.arange(1, len(p)), size=9, replace=False))
    parts = [
        batch_bins("binary", p[a:b], y[a:b], weights[a:b], n_bins=15, input="probs")
        for a, b in zip([0, *cuts], [*cuts, len(p)], strict=True)
    ]
    merged = CalibrationState(15)
    for index in rng.permutation(len(parts)):
        merged.merge(parts[index])
    assert merged.to_json() == whole.to_json()
    assert merged.report().to_dict() == whole.report().to_dict()


def test_state_round_trip_and_malformed(rng):
    p, y = _binary(rng, 1000)
    state = batch_bins("binary", p, y, None, n_bins=8, input="probs")
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
    report = CalibrationState(5).report()
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
    report = batch_bins("multiclass", probs, labels, None, n_bins=15, input="probs").report()
    # torchmetrics works in float32.
    assert math.isclose(report.ece, expected, rel_tol=1e-5, abs_tol=1e-6)
