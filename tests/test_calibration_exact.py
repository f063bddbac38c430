"""The reliability bins' exact sums: the kernels' fixed-point tally of unweighted 0/1
outcomes and their general path against exact fractions, and the same bits for any
split of the rows and any number of threads."""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np
import pytest
from reference import exact_bin_sums

from xentstream import BinaryCrossEntropy, CrossEntropy
from xentstream._kernels.calibration import (
    _CHUNK_ROWS,
    _CHUNK_VALUES,
    _DRAIN_CHUNKS,
    BIN_SUM_NAMES,
    N_BIN_SUMS,
    positive_class_bins,
    top_label_bins,
)
from xentstream._kernels.exact import N_SLOTS
from xentstream._kernels.layout import PROBS
from xentstream.accumulator import CalibrationState, exact_integer, to_floats
from xentstream.calibration import batch_bins, block_bins, forecast_bins

N_BINS = 15
#: One unit of the accumulators' fixed-point integer (``accumulator.exact_integer``).
UNIT = Fraction(1, 2**1075)


def _forecasts(rng, n):
    """Probabilities across the range, with edge values: 0, 1, bin edges, tiny ones whose
    square (or themselves) fall below 2**-31, powers of two."""
    f = rng.uniform(0.0, 1.0, n)
    edges = np.array([0.0, 1.0, 0.5, 1 / 15, 14 / 15, 2.0**-31, 2.0**-15.5, 2.0**-16])
    edges = np.concatenate([edges, [np.nextafter(2.0**-31, 0), np.nextafter(1.0, 0), 5e-324]])
    spots = rng.choice(n, size=n // 10, replace=False)
    f[spots] = rng.choice(edges, size=spots.size)
    tiny = rng.choice(n, size=n // 20, replace=False)
    f[tiny] = 10.0 ** rng.uniform(-30, -4, tiny.size)  # below the fixed range
    return f


def _assert_exact(state, f, o, weights=None):
    sums, counts = exact_bin_sums(f, o, N_BINS, weights)
    assert state.counts.tolist() == counts.tolist()
    for k in range(N_BINS):
        for slot, name in enumerate(BIN_SUM_NAMES):
            row = state.sums[k, slot]
            assert exact_integer(row) * UNIT == sums[k][name], (k, name)
            assert not row[-3:].any()  # no non-finite terms


@pytest.mark.parametrize("weighted", [False, True], ids=["tally", "weighted"])
def test_positive_class_sums_are_exact(rng, weighted):
    n = 20_000
    f = _forecasts(rng, n)
    o = (rng.uniform(size=n) < f).astype(np.int64)
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    state = batch_bins("positive_class", f, o, w, n_bins=N_BINS, input="probs")
    _assert_exact(state, f, o, w)


@pytest.mark.parametrize("weighted", [False, True], ids=["tally", "weighted"])
def test_top_label_sums_are_exact(rng, weighted):
    n, classes = 20_000, 4
    top = _forecasts(rng, n)
    rows = np.empty((n, classes))
    rows[:] = (top * rng.uniform(0.0, 1.0, n))[:, None]  # below the top, any sum: not checked
    where = rng.integers(0, classes, n)
    rows[np.arange(n), where] = top
    labels = rng.integers(0, classes, n)
    labels[rng.choice(n, n // 7, replace=False)] = -100
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    state = batch_bins(
        "top_label", rows, labels, w, n_bins=N_BINS, input="probs", ignore_index=-100
    )
    kept = labels != -100
    best = rows.argmax(axis=1)  # the first maximum
    outcome = (best == labels).astype(np.float64)
    _assert_exact(state, top[kept], outcome[kept], None if w is None else w[kept])


def _split_states(forecast, preds, target, cuts, kwargs):
    merged = CalibrationState(N_BINS)
    for a, b in zip([0, *cuts], [*cuts, len(target)], strict=True):
        merged.merge(batch_bins(forecast, preds[a:b], target[a:b], None, **kwargs))
    return merged.to_json()


@pytest.mark.parametrize("input", ["probs", "logits"])
@pytest.mark.parametrize("forecast", ["top_label", "positive_class"])
def test_tally_bits_do_not_depend_on_splits_or_threads(rng, forecast, input):
    n = 140_000  # enough rows for more blocks on more threads
    if forecast == "top_label":
        preds = rng.standard_normal((n, 3)) * 3.0
        target = rng.integers(0, 3, n)
        if input == "probs":
            preds = np.exp(preds) / np.exp(preds).sum(axis=1, keepdims=True)
    else:
        preds = rng.standard_normal(n) * 8.0  # logits far out: forecasts below 2**-31 too
        if input == "probs":
            preds = _forecasts(rng, n)
        target = (rng.uniform(size=n) < 0.4).astype(np.int64)
    kwargs = {"n_bins": N_BINS, "input": input}
    default = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(batch_bins(forecast, preds, target, None, **kwargs).to_json())
    finally:
        numba.set_num_threads(default)
    cuts = np.sort(rng.choice(np.arange(1, n), size=12, replace=False))
    cuts = np.unique(np.concatenate([cuts, cuts[:3] + 1]))  # one-row batches too
    results.append(_split_states(forecast, preds, target, cuts.tolist(), kwargs))
    assert all(result == results[0] for result in results[1:])


@pytest.mark.parametrize("weighted", [False, True], ids=["tally", "weighted"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_kernel_forecast_sums_are_exact(rng, weighted, soft):
    """The tally of forecasts a loss kernel wrote (confidence, outcome; -1 ignored)."""
    n = 20_000
    f = _forecasts(rng, n)
    o = rng.uniform(size=n) if soft else (rng.uniform(size=n) < f).astype(np.float64)
    if not soft:
        o[rng.choice(n, n // 9, replace=False)] = -1.0
    w = rng.uniform(0.0, 3.0, n) if weighted else None
    state = forecast_bins(np.stack([f, o]), w, n_bins=N_BINS)
    kept = o >= 0.0
    _assert_exact(state, f[kept], o[kept], None if w is None else w[kept])


def _kernel_bins(preds, target, sample_weight=None, cuts=(), **options):
    """The top-label bins a metric's kernel pass gives, batches cut at ``cuts``."""
    metric = CrossEntropy(calibration_bins=N_BINS, **options)
    for a, b in zip([0, *cuts], [*cuts, len(target)], strict=True):
        weights = None if sample_weight is None else sample_weight[a:b]
        metric.update(preds[a:b], target[a:b], sample_weight=weights)
    bins = metric.state.calibration
    return bins.counts.tolist(), bins.sums.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input", ["logits", "probs"])
def test_a_rows_kernel_forecast_does_not_depend_on_its_path(rng, input, dtype):
    """A narrow row's forecast comes from its chunk's SIMD lanes or from the row path
    (a weighted batch, a chunk with an ignored row, one with a -inf logit): the same
    bits either way, for any split of the batches and any number of threads."""
    n, classes = 30_000, 10
    preds = rng.standard_normal((n, classes)) * 3.0
    if input == "probs":
        preds = np.exp(preds) / np.exp(preds).sum(axis=1, keepdims=True)
    preds = preds.astype(dtype)
    target = rng.integers(0, classes, n)
    options = {"input": input, "ignore_index": -100}
    expected = _kernel_bins(preds, target, **options)
    assert sum(expected[0]) == n
    # Unit weights take the row-by-row path, the same forecasts and exact sums.
    assert _kernel_bins(preds, target, np.ones(n), **options) == expected
    cuts = np.unique(rng.choice(np.arange(1, n), size=9, replace=False)).tolist()
    assert _kernel_bins(preds, target, cuts=cuts, **options) == expected
    default = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert _kernel_bins(preds, target, **options) == expected
    finally:
        numba.set_num_threads(default)
    # Ignored rows (and a -inf logit) among them put their chunks on the row path.
    extra = rng.choice(n, size=40, replace=False)
    mixed_preds = np.insert(preds, extra, preds[:40], axis=0)
    mixed_target = np.insert(target, extra, -100)
    assert _kernel_bins(mixed_preds, mixed_target, **options) == expected
    if input == "logits":
        # A -inf logit makes its row unusual: its chunk's other rows take the row path
        # in one batch, whole chunks when that row is a batch of its own.
        odd = preds.copy()
        row = int(extra[0]) + 1
        odd[row, int(np.argmin(odd[row]))] = -np.inf
        alone = _kernel_bins(odd, target, cuts=[row, row + 1], **options)
        assert _kernel_bins(odd, target, **options) == alone


def test_kernel_forecasts_match_a_pass_of_their_own(rng):
    """The kernel's forecasts bin as the separate pass over the predictions does: the
    same bits for probabilities (the top value itself), to rounding for logits."""
    n, classes = 5_000, 7
    logits = rng.standard_normal((n, classes)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = rng.integers(0, classes, n)
    for input, preds in (("probs", probs), ("logits", logits)):
        separate = batch_bins("top_label", preds, target, None, n_bins=N_BINS, input=input)
        counts, sums = _kernel_bins(preds, target, input=input)
        assert counts == separate.counts.tolist()
        if input == "probs":
            assert sums == separate.sums.tolist()
        else:
            fused = to_floats(np.array(sums, dtype=np.int64).reshape(-1, N_SLOTS))
            alone = to_floats(separate.sums.reshape(-1, N_SLOTS))
            np.testing.assert_allclose(fused, alone, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("input", ["probs", "logits"])
def test_binary_kernel_bins_of_mixed_chunks_are_exact(rng, input, dtype):
    """The binary loss kernel bins each chunk after its loss pass: 0/1 chunks take the
    tally, a chunk holding a soft target every term. A block mixing both gives the exact
    sums, the bits of the separate pass and of any split of the batches. float32 logits'
    forecasts come from the loss pass's exps, the separate pass computes its own."""
    n = 9_000
    probs = _forecasts(rng, n)
    probs[probs < 2.0**-40] = 2.0**-40  # logit(f) finite
    probs[probs > 1.0 - 2.0**-40] = 1.0 - 2.0**-40
    preds = (np.log(probs) - np.log1p(-probs) if input == "logits" else probs).astype(dtype)
    probs = preds.astype(np.float64)  # the forecasts of probabilities: the values
    target = (rng.uniform(size=n) < probs).astype(np.float64)
    target[3000:3100] = rng.uniform(size=100)  # soft targets in a few chunks only
    target[7777] = 0.25
    metric = BinaryCrossEntropy(input=input, calibration_bins=N_BINS)
    metric.update(preds, target)
    state = metric.state.calibration
    separate = batch_bins("positive_class", preds, target, None, n_bins=N_BINS, input=input)
    assert state.to_json() == separate.to_json()
    if input == "probs":  # the forecasts are the values themselves
        _assert_exact(state, probs, target)
    weighted = BinaryCrossEntropy(input=input, calibration_bins=N_BINS)
    weighted.update(preds, target, sample_weight=np.ones(n))  # the block path
    assert weighted.state.calibration.to_json() == state.to_json()
    cut = BinaryCrossEntropy(input=input, calibration_bins=N_BINS)
    for a, b in ((0, 1500), (1500, 3050), (3050, 7000), (7000, n)):
        cut.update(preds[a:b], target[a:b])
    assert cut.state.calibration.to_json() == state.to_json()


def _one_block_bins(forecast, preds, target):
    """The bins of one block of every row (the kernel called with a single block)."""
    sums = np.zeros((1, N_BINS, N_BIN_SUMS, N_SLOTS), np.int64)
    counts = np.zeros((1, N_BINS), np.int64)
    if forecast == "top_label":
        no_soft = np.empty((0, preds.shape[1]))
        arguments = (preds, target, no_soft, np.empty(0), PROBS, 0, False, sums, counts)
        top_label_bins(*arguments)
    else:
        positive_class_bins(preds, target.astype(np.float64), np.empty(0), 1, PROBS, sums, counts)
    return block_bins(sums, counts)


@pytest.mark.parametrize("forecast", ["top_label", "positive_class"])
def test_a_block_longer_than_the_tally_drain_is_exact(rng, forecast):
    """A block of more tally chunks than its int64 digit sums hold (``_DRAIN_CHUNKS``)
    adds them to its accumulators on the way: the same bits as batches short enough
    never to (whose sums the tests above hold exact)."""
    chunk = _CHUNK_ROWS if forecast == "top_label" else _CHUNK_VALUES
    n = chunk * (_DRAIN_CHUNKS + 37) + 5
    if forecast == "top_label":
        preds = rng.dirichlet(np.ones(3), n)
        target = rng.integers(0, 3, n)
    else:
        preds = rng.uniform(2.0**-16, 1.0, n)
        target = (rng.uniform(size=n) < preds).astype(np.int64)
    state = _one_block_bins(forecast, preds, target)
    merged = CalibrationState(N_BINS)
    step = chunk * (_DRAIN_CHUNKS // 4)  # one block each: under the drain's chunk count
    for a in range(0, n, step):
        merged.merge(_one_block_bins(forecast, preds[a : a + step], target[a : a + step]))
    assert state.to_json() == merged.to_json()
    assert state.counts.sum() == n
