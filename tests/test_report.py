"""Report fields against independent float64 references (numpy, scipy, scikit-learn, torch).

Per-row losses come from ``tests/reference.py`` (checked against torch first); every derived
field (standard error, interval, perplexity, bits, accuracy, entropy, KL, normalized
entropy, per-class frame, windowed loss) is then recomputed here from those rows
with numpy / scipy / scikit-learn, never read back from xentstream.
"""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, dataclass, fields

import numpy as np
import pytest
import reference as ref
import scipy.stats
import torch
import torch.nn.functional as F
from metric_cases import CASE_IDS, CASES, Batch, Case, bits, concat, float_bits
from scipy.special import expit
from sklearn.metrics import accuracy_score, log_loss

import xentstream as xs

RTOL = 1e-10
ATOL = 1e-12


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@dataclass
class Rows:
    """Reference quantities of every (flattened) row of a batch."""

    loss: np.ndarray  # L_i (0 for ignored rows)
    denominator: np.ndarray  # d_i
    weight: np.ndarray  # s_i
    counted: np.ndarray  # not ignored
    terms: np.ndarray  # per class (label) share of L_i, shape (rows, C)
    probs: np.ndarray  # predicted probabilities, (rows, C); binary: positive class (rows, 1)
    target: np.ndarray  # target distribution (rows, C) after smoothing; binary: (rows, 1)
    correct: np.ndarray | None  # top-1 prediction right (multiclass, binary)


def _eps(case: Case) -> float:
    # metric_cases' predictions are float64, so "auto" is float64's machine epsilon
    return ref.resolve_eps(case.kwargs.get("eps", "auto"), np.float64)


def reference_rows(case: Case, batch: Batch) -> Rows:
    n_rows = case.rows(batch)
    weight = np.ones(n_rows) if batch.sample_weight is None else batch.sample_weight.reshape(-1)
    if case.kind == "multiclass":
        return _multiclass_rows(case, batch, weight)
    if case.kind == "tokens":
        return _token_rows(case, batch, weight)
    return _binary_rows(case, batch, weight)


def _token_rows(case: Case, batch: Batch, weight: np.ndarray) -> Rows:
    """One value a row: L = -log p (or the NLL itself); the target is a 0/1 mask."""
    x = batch.preds.reshape(-1)
    counted = batch.target.reshape(-1) == 1
    loss = np.where(counted, x if case.input == "nll" else -x, 0.0)
    n_rows = len(x)
    probs = np.exp(-loss)[:, None]  # the probability of the token that came
    return Rows(loss, np.ones(n_rows), weight, counted, loss[:, None], probs, None, None)


def _multiclass_rows(case: Case, batch: Batch, weight: np.ndarray) -> Rows:
    n_classes = case.n_classes
    x = batch.preds.reshape(-1, n_classes)
    hard = case.target == "hard"
    target = batch.target.reshape(-1) if hard else batch.target.reshape(-1, n_classes)
    split = ref.multiclass_terms(
        x,
        target,
        input=case.input,
        class_weight=case.kwargs.get("class_weight"),
        ignore_index=case.ignore_index,
        label_smoothing=case.kwargs.get("label_smoothing", 0.0),
        eps=case.kwargs.get("eps", "auto"),
    )
    # the predicted distribution as given (probabilities unclipped)
    probs = x if case.input == "probs" else np.exp(ref.log_probabilities(x, case.input))
    if hard:
        correct = np.argmax(x, axis=1) == target
    else:
        correct = np.argmax(x, axis=1) == np.argmax(target, axis=1)
    return Rows(
        split.rows.losses,
        split.denominators,
        weight,
        ~split.ignored,
        split.terms,
        probs,
        split.target,
        correct,
    )


def _binary_rows(case: Case, batch: Batch, weight: np.ndarray) -> Rows:
    width = 1 if case.kind == "binary" else case.n_classes
    x = batch.preds.reshape(-1, width)
    t = batch.target.reshape(-1, width)
    pos_weight = np.broadcast_to(np.asarray(case.kwargs.get("pos_weight") or 1.0), (width,))
    terms = ref.binary_terms(
        x, t, input=case.input, pos_weight=pos_weight, eps=case.kwargs.get("eps", "auto")
    )
    if case.input == "logits":
        probs = expit(x)
        positive = x >= 0.0
    elif case.input == "logprobs":  # used as given, never clipped (SPEC section 2)
        probs = np.exp(x)
        positive = probs >= 0.5
    else:
        probs = np.clip(x, _eps(case), 1.0 - _eps(case))
        positive = x >= 0.5
    n_rows = len(x)
    correct = (positive == (t >= 0.5))[:, 0] if case.kind == "binary" else None
    return Rows(
        terms.sum(axis=1),
        np.ones(n_rows),
        weight,
        np.ones(n_rows, dtype=bool),
        terms,
        probs,
        t,
        correct,
    )


def _data(case: Case, salt: int = 0, *, weighted: bool = True) -> tuple[xs.Metric, Batch, Rows]:
    rng = np.random.default_rng([CASES.index(case), 100 + salt])
    batches = case.batches(rng, [40, 1, 60, 0, 19], weighted=weighted)
    metric = case.metric()
    for batch in batches:
        metric.update(*batch)
    data = concat(batches)
    return metric, data, reference_rows(case, data)


def _close(actual: float, expected: float) -> None:
    assert actual == pytest.approx(expected, rel=RTOL, abs=ATOL)


# -- the reference itself --------------------------------------------------------------


def test_reference_rows_agree_with_torch(case: Case) -> None:
    _, data, rows = _data(case)
    if case.kind == "multiclass":
        x = torch.from_numpy(data.preds.reshape(-1, case.n_classes))
        if case.input == "probs":
            eps = _eps(case)
            x = torch.log(torch.clamp(x, eps, 1.0 - eps))
        target = torch.from_numpy(
            data.target.reshape(-1)
            if case.target == "hard"
            else data.target.reshape(-1, case.n_classes)
        )
        weight = case.kwargs.get("class_weight")
        expected = F.cross_entropy(
            x,
            target,
            weight=None if weight is None else torch.tensor(weight, dtype=torch.float64),
            ignore_index=case.ignore_index if case.ignore_index is not None else -100,
            label_smoothing=case.kwargs.get("label_smoothing", 0.0),
            reduction="none",
        ).numpy()
    elif case.kind == "tokens":  # torch's NLL of a one-column log-probability matrix
        log_p = data.preds.reshape(-1, 1)
        log_p = -log_p if case.input == "nll" else log_p
        expected = F.nll_loss(
            torch.from_numpy(np.ascontiguousarray(log_p)),
            torch.zeros(len(log_p), dtype=torch.long),
            reduction="none",
        ).numpy()
        expected = np.where(rows.counted, expected, 0.0)
    else:
        width = 1 if case.kind == "binary" else case.n_classes
        probs = torch.from_numpy(rows.probs)
        logits = torch.logit(probs) if case.input != "logits" else None
        x = torch.from_numpy(data.preds.reshape(-1, width)) if logits is None else logits
        expected = (
            F.binary_cross_entropy_with_logits(
                x,
                torch.from_numpy(data.target.reshape(-1, width)),
                pos_weight=torch.tensor(
                    np.broadcast_to(case.kwargs.get("pos_weight") or 1.0, (width,)).copy()
                ),
                reduction="none",
            )
            .sum(dim=1)
            .numpy()
        )
    np.testing.assert_allclose(rows.loss, expected, rtol=1e-9, atol=1e-9)


# -- loss, sums, counts -----------------------------------------------------------------


def test_loss_and_sums(case: Case) -> None:
    metric, _, rows = _data(case)
    report = metric.compute()
    s, c = rows.weight, rows.counted
    loss_sum = math.fsum(s[c] * rows.loss[c])
    weight_sum = math.fsum(s[c] * rows.denominator[c])
    _close(report.loss_sum, loss_sum)
    _close(report.weight_sum, weight_sum)
    _close(report.loss, loss_sum / weight_sum)
    assert report.count == int(c.sum())
    assert report.ignored == int((~c).sum())
    assert float_bits(report.loss) == float_bits(metric.value)


def test_perplexity_and_bits(case: Case) -> None:
    metric, _, rows = _data(case)
    report = metric.compute()
    s, c = rows.weight[rows.counted], rows.counted
    expected = np.sum(s * rows.loss[c]) / np.sum(s * rows.denominator[c])
    _close(report.bits, np.log2(np.exp(expected)))
    assert report.bits == report.loss / math.log(2.0)
    if case.kind not in ("multiclass", "tokens"):  # a sum of Bernoulli losses is no perplexity
        assert report.perplexity is None
        return
    _close(report.perplexity, np.exp(expected))
    assert report.perplexity == math.exp(report.loss)


# -- standard error and interval ---------------------------------------------------------


def _reference_stderr(rows: Rows) -> float:
    """Kish effective-n standard error of the weighted mean of L/d with weights s d."""
    c = rows.counted
    a = rows.weight[c] * rows.denominator[c]
    v = rows.loss[c] / rows.denominator[c]
    mean = np.average(v, weights=a)
    variance = np.average((v - mean) ** 2, weights=a)
    n_effective = a.sum() ** 2 / np.sum(a**2)
    return float(np.sqrt(variance / (n_effective - 1.0)))


def test_stderr_and_ci95_weighted(case: Case) -> None:
    metric, _, rows = _data(case)
    report = metric.compute()
    expected = _reference_stderr(rows)
    _close(report.stderr, expected)
    z = scipy.stats.norm.ppf(0.975)
    low, high = report.ci95
    _close(low, report.loss - z * expected)
    _close(high, report.loss + z * expected)


_UNIT_WEIGHTS = [c for c in CASES if "class_weight" not in c.kwargs]


@pytest.mark.parametrize("case", _UNIT_WEIGHTS, ids=[c.id for c in _UNIT_WEIGHTS])
def test_stderr_unweighted_is_sample_std_over_sqrt_n(case: Case) -> None:
    metric, _, rows = _data(case, weighted=False)
    losses = rows.loss[rows.counted]
    expected = np.std(losses, ddof=1) / np.sqrt(len(losses))
    report = metric.compute()
    _close(report.stderr, expected)
    low, high = report.ci95
    mean = np.mean(losses)
    half = scipy.stats.norm.ppf(0.975) * expected
    _close(low, mean - half)
    _close(high, mean + half)


def test_stderr_needs_two_rows(case: Case) -> None:
    rng = np.random.default_rng(7)
    for n in (1, 1, 2, 3, 6):
        report = case.metric().update(*case.batch(rng, n, weighted=False)).compute()
        assert (report.stderr is None) == (report.count < 2), report
        assert (report.ci95 is None) == (report.count < 2), report


# -- accuracy, entropy, KL, normalized entropy -------------------------------------------


def test_accuracy_against_sklearn(case: Case) -> None:
    metric, _, rows = _data(case)
    report = metric.compute()
    if case.kind in ("multilabel", "tokens"):
        assert report.accuracy is None
        return
    c = rows.counted
    expected = accuracy_score(
        np.ones(int(c.sum()), dtype=bool), rows.correct[c], sample_weight=rows.weight[c]
    )
    _close(report.accuracy, expected)


def test_multiclass_accuracy_from_labels_against_sklearn() -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(300, 5))
    labels = rng.integers(0, 5, size=300)
    weights = rng.uniform(0.0, 3.0, size=300)
    metric = xs.CrossEntropy(input="logits").update(logits, labels, weights)
    expected = accuracy_score(labels, logits.argmax(axis=1), sample_weight=weights)
    _close(metric.compute().accuracy, expected)


def test_binary_accuracy_from_labels_against_sklearn() -> None:
    rng = np.random.default_rng(12)
    probs = rng.uniform(size=300)
    labels = rng.integers(0, 2, size=300).astype(np.float64)
    weights = rng.uniform(0.0, 3.0, size=300)
    metric = xs.BinaryCrossEntropy().update(probs, labels, weights)
    expected = accuracy_score(labels, probs >= 0.5, sample_weight=weights)
    _close(metric.compute().accuracy, expected)


def test_entropy_against_scipy(case: Case) -> None:
    metric, _, rows = _data(case)
    c = rows.counted
    if case.kind == "tokens":  # one probability a row: no predicted distribution
        assert metric.compute().entropy is None
        return
    if case.kind == "multiclass":
        per_row = scipy.stats.entropy(rows.probs[c], axis=1)
    else:  # Bernoulli entropy of every label, summed over labels
        p = rows.probs[c]
        per_row = scipy.stats.entropy(np.stack([p, 1.0 - p]), axis=0).sum(axis=1)
    expected = np.average(per_row, weights=rows.weight[c])
    _close(metric.compute().entropy, expected)


def _weighted_loss(case: Case) -> bool:
    return any(case.kwargs.get(k) is not None for k in ("class_weight", "pos_weight"))


def test_kl_against_scipy(case: Case) -> None:
    metric, _, rows = _data(case)
    report = metric.compute()
    one_hot = case.target == "hard" and not case.kwargs.get("label_smoothing")
    if _weighted_loss(case) or one_hot:  # with one-hot targets the KL is the loss again
        assert report.kl is None
        return
    c = rows.counted
    if case.kind == "multiclass":
        # the loss sees clipped probabilities; so does the reference
        probs = rows.probs[c]
        if case.input == "probs":
            probs = np.clip(probs, _eps(case), 1.0 - _eps(case))
        per_row = scipy.stats.entropy(rows.target[c], probs, axis=1)
    else:
        p, t = rows.probs[c], rows.target[c]
        per_row = scipy.stats.entropy(np.stack([t, 1.0 - t]), np.stack([p, 1.0 - p]), axis=0)
        per_row = per_row.sum(axis=1)
    expected = np.average(per_row, weights=rows.weight[c])
    assert report.kl == pytest.approx(expected, rel=1e-9, abs=1e-11)


def _bernoulli_entropy(rate: np.ndarray) -> np.ndarray:
    rate = np.asarray(rate, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(rate * np.log(rate) + (1.0 - rate) * np.log1p(-rate))
    return np.where((rate > 0.0) & (rate < 1.0), h, 0.0)


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
def test_normalized_entropy(case: Case, weighted: bool) -> None:
    metric, _, rows = _data(case, weighted=weighted)
    report = metric.compute()
    per_class = case.kwargs.get("per_class") or case.kwargs.get("per_label")
    # Hard labels without sample weights are counted exactly, per_class or not.
    counted = case.kind == "multiclass" and case.target == "hard" and not weighted
    if _weighted_loss(case) or (case.kind != "binary" and not per_class and not counted):
        assert report.normalized_entropy is None
        return
    c, s = rows.counted, rows.weight[rows.counted]
    loss = np.sum(s * rows.loss[c]) / np.sum(s * rows.denominator[c])
    if case.kind == "binary":
        baseline = _bernoulli_entropy(np.average(rows.target[c, 0], weights=s))
    elif case.kind == "multilabel":
        baseline = _bernoulli_entropy(np.average(rows.target[c], axis=0, weights=s)).sum()
    else:
        raw = rows.target[c]  # class mass: hard labels unsmoothed, soft targets as used
        if case.target == "hard":
            raw = np.eye(case.n_classes)[np.argmax(raw, axis=1)]
        baseline = scipy.stats.entropy(np.average(raw, axis=0, weights=s))
    _close(report.normalized_entropy, loss / baseline)


def test_binary_normalized_entropy_is_log_loss_over_base_rate_entropy() -> None:
    rng = np.random.default_rng(13)
    logits = rng.normal(scale=2.0, size=500)
    labels = (rng.random(500) < expit(logits)).astype(np.float64)
    weights = rng.uniform(0.5, 2.0, size=500)
    metric = xs.BinaryCrossEntropy(input="logits").update(logits, labels, weights)
    rate = np.average(labels, weights=weights)
    base = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    expected = log_loss(labels, expit(logits), sample_weight=weights, labels=[0, 1]) / base
    _close(metric.compute().normalized_entropy, expected)


# -- per-class frame --------------------------------------------------------------------

_PER_CLASS = [c for c in CASES if c.kwargs.get("per_class") or c.kwargs.get("per_label")]


@pytest.mark.parametrize("case", _PER_CLASS, ids=[c.id for c in _PER_CLASS])
def test_per_class_frame_against_numpy_groupby(case: Case) -> None:
    metric, data, rows = _data(case)
    frame = metric.compute().per_class
    c, s = rows.counted, rows.weight[rows.counted]
    terms = rows.terms[c]
    if case.kind == "multilabel":
        t = rows.target[c]
        assert frame.columns == ["label", "positives", "positive_rate", "loss"]
        np.testing.assert_array_equal(frame["label"].to_numpy(), np.arange(case.n_classes))
        np.testing.assert_array_equal(frame["positives"].to_numpy(), (t >= 0.5).sum(axis=0))
        np.testing.assert_allclose(
            frame["positive_rate"].to_numpy(), np.average(t, axis=0, weights=s), rtol=RTOL
        )
        expected_loss = (s[:, None] * terms).sum(axis=0) / s.sum()
        np.testing.assert_allclose(frame["loss"].to_numpy(), expected_loss, rtol=RTOL)
        return
    assert frame.columns == ["class", "count", "weight", "loss"]
    np.testing.assert_array_equal(frame["class"].to_numpy(), np.arange(case.n_classes))
    if case.target == "hard":
        labels = data.target.reshape(-1)[c]
        class_weight = np.asarray(case.kwargs.get("class_weight") or np.ones(case.n_classes))
        counts = np.bincount(labels, minlength=case.n_classes)
        weight = np.bincount(labels, weights=s * class_weight[labels], minlength=case.n_classes)
        loss_sum = np.bincount(labels, weights=s * rows.loss[c], minlength=case.n_classes)
    else:
        soft = data.target.reshape(-1, case.n_classes)
        counts = np.bincount(np.argmax(soft, axis=1), minlength=case.n_classes)
        weight = (s[:, None] * rows.target[c]).sum(axis=0)
        loss_sum = (s[:, None] * terms).sum(axis=0)
    np.testing.assert_array_equal(frame["count"].to_numpy(), counts)
    np.testing.assert_allclose(frame["weight"].to_numpy(), weight, rtol=RTOL)
    with np.errstate(invalid="ignore"):  # a class without rows has no mean loss (NaN)
        expected_loss = loss_sum / weight
    np.testing.assert_allclose(frame["loss"].to_numpy(), expected_loss, rtol=RTOL)


def test_no_per_class_frame_unless_asked(case: Case) -> None:
    metric, _, _ = _data(case)
    wanted = bool(case.kwargs.get("per_class") or case.kwargs.get("per_label"))
    assert (metric.compute().per_class is not None) == wanted


# -- windowed loss -----------------------------------------------------------------------

_WINDOWED = [c for c in CASES if c.window]


@pytest.mark.parametrize("case", _WINDOWED, ids=[c.id for c in _WINDOWED])
def test_window_loss_is_the_one_shot_loss_on_the_last_rows(case: Case) -> None:
    rng = np.random.default_rng([CASES.index(case), 200])
    k = case.window
    batches = case.batches(rng, [3, 2 * k, 2, 1, 0, k + 1, 4])
    metric = case.metric()
    for seen in range(1, len(batches) + 1):
        metric.update(*batches[seen - 1])
        flat = _flatten(case, concat(batches[:seen]))
        rows = reference_rows(case, flat)
        last = np.flatnonzero(rows.counted)[-k:]
        tail = Batch(flat.preds[last], flat.target[last], flat.sample_weight[last])
        window_loss = metric.compute().window_loss
        assert float_bits(window_loss) == float_bits(case.functional(tail)), seen
        s = rows.weight[last]
        expected = math.fsum(s * rows.loss[last]) / math.fsum(s * rows.denominator[last])
        _close(window_loss, expected)


def _flatten(case: Case, batch: Batch) -> Batch:
    if not case.leading:
        return batch
    if case.kind == "tokens":
        return Batch(*(part.reshape(-1) for part in batch))
    n_classes = batch.preds.shape[-1]
    target = batch.target.reshape(-1) if case.target == "hard" else batch.target
    return Batch(batch.preds.reshape(-1, n_classes), target, batch.sample_weight.reshape(-1))


def test_window_loss_is_none_without_a_window(case: Case) -> None:
    metric, _, _ = _data(case)
    assert (metric.compute().window_loss is None) == (case.window is None)


# -- to_dict, immutability, empty reports ------------------------------------------------


def test_to_dict_is_json_and_complete(case: Case) -> None:
    metric, _, _ = _data(case)
    report = metric.compute()
    data = report.to_dict()
    assert set(data) == {f.name for f in fields(xs.Report)}
    # strict JSON: undefined values (NaN) are written as null
    assert bits(json.loads(json.dumps(data, allow_nan=False))) == bits(data)
    for f in fields(xs.Report):
        value = getattr(report, f.name)
        if f.name == "per_class":
            expected = None if value is None else [_nan_to_none(r) for r in value.to_dicts()]
            assert bits(data[f.name]) == bits(expected)
        elif f.name == "ci95":
            assert data[f.name] == (None if value is None else list(value))
        elif isinstance(value, float) and math.isnan(value):
            assert data[f.name] is None
        else:
            assert data[f.name] == value


def _nan_to_none(row: dict) -> dict:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def test_report_is_frozen() -> None:
    report = xs.CrossEntropy().update([[0.25, 0.75]], [1]).compute()
    with pytest.raises(FrozenInstanceError):
        report.loss = 0.0  # type: ignore[misc]


def test_report_before_any_row(case: Case) -> None:
    report = case.metric().compute()
    assert math.isnan(report.loss)
    assert report.count == 0
    assert report.ignored == 0
    assert report.stderr is None
    assert report.ci95 is None
    assert report.accuracy is None
    assert report.entropy is None
    assert report.kl is None
    assert report.normalized_entropy is None
    assert report.window_loss is None
    assert set(json.loads(json.dumps(report.to_dict()))) == {f.name for f in fields(xs.Report)}
