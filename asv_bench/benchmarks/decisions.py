"""What deciding costs beside the loss: a paired comparison of two models, reliability bins.

``time_`` benchmarks stream 64k-row batches of float32 predictions (multiclass C=10 as
logits or probabilities; binary as logits or probabilities of the positive class) through

- ``plain``: one ``CrossEntropy`` (one model's loss, the reference);
- ``two_models``: two ``CrossEntropy`` metrics, one per model (what a comparison
  replaces);
- ``comparison``: one ``xs.Comparison`` over both models (two loss passes with per-row
  losses, plus the exact paired sums);
- ``calibration``: one ``CrossEntropy(calibration_bins=15)``;
- ``calibration_per_class``: one ``CrossEntropy(calibration_bins=15, per_class=True)``
  (the top-label bins and each class's one-vs-rest bins, with the per-class loss sums;
  multiclass only).

Binary runs use ``BinaryCrossEntropy`` in place of ``CrossEntropy``: their bins are the
positive class's, which the loss kernel bins block by block after its loss pass
(multiclass bins are a tally of the forecasts the loss kernel writes).

``track_cost_ratio`` is the cost of each relative to its reference, medians of
interleaved rounds in one process: the comparison against two plain metrics (the same
two loss passes; the issue's target is at most 1.3) and against one, calibration
against a plain metric, per-class calibration against a plain metric and against the
top-label bins alone. **Lower is better**; 1.0 costs nothing extra.
"""

from __future__ import annotations

import numpy as np

import xentstream as xs

from . import common

N_CLASSES = 10
BINS = 15
RATIO_UNIT = "cost ratio (lower is better)"
BINARY_INPUTS = ("binary_logits", "binary_probs")
INPUTS = (*common.INPUTS, *BINARY_INPUTS)


def _metric(input: str, **options) -> xs.Metric:
    if input in BINARY_INPUTS:
        return xs.BinaryCrossEntropy(input=input.removeprefix("binary_"), **options)
    return xs.CrossEntropy(num_classes=N_CLASSES, input=input, **options)


def _binary_batches(input: str) -> list[tuple]:
    step = common.batch_rows()
    rows = common.elements()  # one value a row, as many values as the multiclass runs
    gen = np.random.default_rng([19, len(input)])
    logits = (gen.standard_normal((2, rows)) * 2.0).astype("float32")
    labels = (gen.uniform(size=rows) < 1.0 / (1.0 + np.exp(-logits[0]))).astype("int64")
    if input == "binary_probs":
        logits = (1.0 / (1.0 + np.exp(-logits.astype("float64")))).astype("float32")
    preds, other = logits
    return [
        (preds[start : start + step], other[start : start + step], labels[start : start + step])
        for start in range(0, rows, step)
    ]


def batches(input: str) -> list[tuple]:
    """The workload of ``input`` (one of :data:`INPUTS`): 64k-row batches of
    ``(preds, other model's preds, labels)``, as many values as ``common.elements()``
    (``calibration_cost.py`` times the same ones, each side in its own process)."""
    if input in BINARY_INPUTS:
        return _binary_batches(input)
    step = common.batch_rows()
    rows = common.rows_for(N_CLASSES, common.elements())
    logits, labels = common.logits_and_labels(rows, N_CLASSES, "float32", "decisions")
    other, _ = common.logits_and_labels(rows, N_CLASSES, "float32", "decisions", 1)
    if input == "probs":
        logits = common.softmax(logits).astype("float32")
        other = common.softmax(other).astype("float32")
    return [
        (logits[start : start + step], other[start : start + step], labels[start : start + step])
        for start in range(0, rows, step)
    ]


def _plain(batches: list[tuple], input: str) -> float:
    metric = _metric(input)
    for preds, _, labels in batches:
        metric.update(preds, labels)
    return metric.value


def _two_models(batches: list[tuple], input: str) -> float:
    model = _metric(input)
    baseline = _metric(input)
    for preds, other, labels in batches:
        model.update(preds, labels)
        baseline.update(other, labels)
    return model.value - baseline.value


def _comparison(batches: list[tuple], input: str) -> float:
    comparison = xs.Comparison(_metric(input))
    for preds, other, labels in batches:
        comparison.update(preds, other, labels)
    return comparison.value


def _calibration(batches: list[tuple], input: str, per_class: bool = False) -> float:
    options = {"per_class": True} if per_class else {}
    metric = _metric(input, calibration_bins=BINS, **options)
    for preds, _, labels in batches:
        metric.update(preds, labels)
    return metric.value


def _calibration_per_class(batches: list[tuple], input: str) -> float:
    return _calibration(batches, input, per_class=True)


#: run name -> the pass over a workload's batches (``batches, input -> value``)
RUNS = {
    "plain": _plain,
    "two_models": _two_models,
    "comparison": _comparison,
    "calibration": _calibration,
    "calibration_per_class": _calibration_per_class,
}
#: ratio name -> (measured, reference)
_RATIOS = {
    "comparison_vs_two_models": ("comparison", "two_models"),
    "comparison_vs_plain": ("comparison", "plain"),
    "calibration_vs_plain": ("calibration", "plain"),
    "calibration_per_class_vs_plain": ("calibration_per_class", "plain"),
    "calibration_per_class_vs_calibration": ("calibration_per_class", "calibration"),
}


def _check_applies(input: str, run: str) -> None:
    if input in BINARY_INPUTS and run == "calibration_per_class":
        raise NotImplementedError("binary predictions have no classes to bin one by one")


class Decisions:
    """Streaming updates: one metric, two, a comparison, a metric with reliability bins
    (top-label, and per class too)."""

    params = (INPUTS, list(RUNS))
    param_names = ("input", "run")

    def setup(self, input: str, run: str) -> None:
        _check_applies(input, run)
        self.batches = batches(input)
        RUNS[run](self.batches, input)  # JIT warm-up

    def time_update(self, input: str, run: str) -> None:
        RUNS[run](self.batches, input)

    def peakmem_update(self, input: str, run: str) -> None:
        RUNS[run](self.batches, input)


class CostRatio:
    """The cost of a comparison and of reliability bins (top-label, per class)
    relative to plain loss passes."""

    params = (INPUTS, list(_RATIOS))
    param_names = ("input", "ratio")
    timeout = 300.0

    def setup(self, input: str, ratio: str) -> None:
        for name in _RATIOS[ratio]:
            _check_applies(input, name)
        self.batches = batches(input)
        for name in _RATIOS[ratio]:
            RUNS[name](self.batches, input)  # JIT warm-up

    def track_cost_ratio(self, input: str, ratio: str) -> float:
        """Measured time / reference time: lower is better (1.0: no extra cost)."""
        measured, reference = _RATIOS[ratio]
        times = common.medians(
            {
                name: (lambda run=RUNS[name]: run(self.batches, input))
                for name in (measured, reference)
            },
            common.repeats(),
        )
        return times[measured] / times[reference]

    track_cost_ratio.unit = RATIO_UNIT
