"""SPEC section 3's per-row error budget at its edges, for every kernel path.

The kernels take different paths by row width (narrow rows transposed in chunks below
64 classes, float32 SIMD exps for wide float32 rows, binary in chunks) and by variant
(functions compile without entropies, metrics with them). Each path is held here to
the budget against the float64 reference of ``tests/reference.py``: per-row relative
error at most 1e-6 for float32 input, 1e-12 for float64 input, absolute where the
loss is below 1 -- at widths from 2 to 262144 classes, logits up to +-1e30 and
subnormal probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st
from strategies import extreme_logits

import xentstream as xs

TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
#: Both sides of the narrow-row limit (64), a vocabulary, and the widest the issue names.
WIDTHS = [2, 7, 63, 64, 65, 1000, 32768, 262144]


def worst_error(actual: Any, expected: Any) -> float:
    """Largest per-row error: relative, absolute where the expected loss is below 1."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.isfinite(expected).all(), "the reference left the finite range"
    error = np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)
    return float(error.max(initial=0.0))


def within_budget(actual: Any, expected: Any, dtype: Any) -> None:
    worst = worst_error(actual, expected)
    assert worst <= TOLERANCE[np.dtype(dtype)], f"per-row error {worst:.3g}"


def rows_for(n_classes: int) -> int:
    """A few rows of the widest rows, a few hundred narrow ones (several chunks)."""
    return int(min(600, max(3, (1 << 19) // n_classes)))


def predictions(rng: np.random.Generator, input: str, shape: tuple, dtype: Any) -> np.ndarray:
    logits = rng.normal(scale=4.0, size=shape)
    if input == "logits":
        return logits.astype(dtype)
    if input == "logprobs":
        return ref.log_probabilities(logits, "logits").astype(dtype)
    probs = ref.softmax(logits).astype(dtype)
    return probs / probs.sum(axis=-1, keepdims=True, dtype=np.float64).astype(dtype)


@pytest.mark.parametrize("n_classes", WIDTHS)
@pytest.mark.parametrize("input", ["logits", "probs", "logprobs"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_row_width_within_budget(n_classes: int, input: str, dtype: Any) -> None:
    rng = np.random.default_rng([n_classes, len(input), np.dtype(dtype).itemsize])
    preds = predictions(rng, input, (rows_for(n_classes), n_classes), dtype)
    labels = rng.integers(0, n_classes, len(preds))
    expected = ref.multiclass_rows(preds, labels, input=input).losses
    losses = xs.cross_entropy(preds, labels, input=input, reduction="none")
    within_budget(losses, expected, dtype)
    # The metric's variant (entropies on) and its mean, over the same rows.
    report = xs.CrossEntropy(input=input).update(preds, labels).compute()
    within_budget(report.loss, expected.mean(), dtype)


@pytest.mark.parametrize("n_classes", [7, 1000])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_soft_targets_and_smoothing_within_budget(n_classes: int, dtype: Any) -> None:
    rng = np.random.default_rng([n_classes, 2])
    preds = predictions(rng, "logits", (rows_for(n_classes), n_classes), dtype)
    soft = rng.dirichlet(np.full(n_classes, 0.5), len(preds)).astype(dtype)
    within_budget(
        xs.cross_entropy(preds, soft, input="logits", reduction="none"),
        ref.multiclass_rows(preds, soft, input="logits").losses,
        dtype,
    )
    labels = rng.integers(0, n_classes, len(preds))
    within_budget(
        xs.cross_entropy(preds, labels, input="logits", label_smoothing=0.1, reduction="none"),
        ref.multiclass_rows(preds, labels, input="logits", label_smoothing=0.1).losses,
        dtype,
    )


@given(
    data=st.data(),
    n_classes=st.sampled_from([3, 70]),
    dtype=st.sampled_from(DTYPES),
)
def test_extreme_logits_within_budget(data: st.DataObject, n_classes: int, dtype: Any) -> None:
    """Logits up to +-1e30 (and float32's largest) beside ordinary ones, narrow and wide."""
    logits = data.draw(extreme_logits(dtype, n_classes=n_classes, max_rows=300))
    labels = np.array(
        data.draw(
            st.lists(st.integers(0, n_classes - 1), min_size=len(logits), max_size=len(logits))
        )
    )
    expected = ref.multiclass_rows(logits, labels, input="logits").losses
    losses = xs.cross_entropy(logits, labels, input="logits", reduction="none")
    within_budget(losses, expected, dtype)


@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_extreme_binary_and_multilabel_logits_within_budget(
    data: st.DataObject, dtype: Any
) -> None:
    logits = data.draw(extreme_logits(dtype, n_classes=5, max_rows=400))
    rng = np.random.default_rng(len(logits))
    targets = rng.integers(0, 2, logits.shape).astype(dtype)
    within_budget(
        xs.binary_cross_entropy(
            logits.reshape(-1), targets.reshape(-1), input="logits", reduction="none"
        ),
        ref.binary_rows(logits.reshape(-1), targets.reshape(-1), input="logits").losses,
        dtype,
    )
    within_budget(
        xs.multilabel_cross_entropy(logits, targets, input="logits", reduction="none"),
        ref.multilabel_rows(logits, targets, input="logits").losses,
        dtype,
    )


#: Subnormal probabilities of each dtype: the smallest one, and one mid-range.
SUBNORMALS = {
    np.dtype(np.float32): [float(np.float32(1e-45)), float(np.float32(3e-40))],
    np.dtype(np.float64): [5e-324, 2e-310],
}


@pytest.mark.parametrize("n_classes", [4, 100])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_subnormal_probabilities_within_budget(n_classes: int, dtype: Any) -> None:
    """With clipping off (eps=0) a subnormal probability's log is taken as it is."""
    rng = np.random.default_rng([n_classes, 3])
    probs = predictions(rng, "probs", (300, n_classes), dtype)
    tiny = SUBNORMALS[np.dtype(dtype)]
    labels = rng.integers(0, n_classes, len(probs))
    for row in range(0, len(probs), 3):  # the label's probability subnormal, the rest even
        probs[row] = 1.0 / (n_classes - 1)
        probs[row, labels[row]] = tiny[row % 2]
    expected = ref.multiclass_rows(probs, labels, input="probs", eps=0.0).losses
    assert expected.max() > 700 if dtype == np.float64 else expected.max() > 90
    within_budget(
        xs.cross_entropy(probs, labels, input="probs", eps=0.0, reduction="none"), expected, dtype
    )
    flat = probs[:, 0].copy()
    flat[::2] = tiny[0]
    targets = rng.integers(0, 2, flat.shape).astype(dtype)
    within_budget(
        xs.binary_cross_entropy(flat, targets, input="probs", eps=0.0, reduction="none"),
        ref.binary_rows(flat, targets, input="probs", eps=0.0).losses,
        dtype,
    )
