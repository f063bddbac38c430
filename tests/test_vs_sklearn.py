"""Agreement with sklearn.metrics.log_loss: sample weights and its eps clipping.

scikit-learn clips probabilities to [eps, 1 - eps] with eps the machine epsilon of
the predictions' dtype (what ``eps="auto"`` does) and computes in that dtype, so
float32 results are compared at float32 precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import log_loss

import xentstream as xs

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
#: scikit-learn's own arithmetic error: float64 throughout, or float32 for float32 input.
SKLEARN_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def assert_close(actual: float, expected: float, dtype: Any) -> None:
    tolerance = SKLEARN_TOLERANCE[np.dtype(dtype)]
    assert abs(actual - expected) <= tolerance * max(abs(expected), 1.0)


def probabilities(rng: np.random.Generator, n: int, n_classes: int, dtype: Any) -> np.ndarray:
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(dtype)
    probs[0] = 0.0  # a certain, wrong prediction: clipped to eps by both
    probs[0, 1] = 1.0
    probs[1] = probs[0]
    return probs


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_multiclass_log_loss(rng: np.random.Generator, dtype: Any, weighted: bool) -> None:
    n_classes = 4
    probs = probabilities(rng, 90, n_classes, dtype)
    labels = rng.integers(0, n_classes, size=90)
    labels[0], labels[1] = 0, 1
    weights = rng.uniform(0.0, 3.0, size=90) if weighted else None
    expected = log_loss(labels, y_proba=probs, sample_weight=weights, labels=range(n_classes))
    assert_close(xs.cross_entropy(probs, labels, sample_weight=weights), expected, dtype)
    expected_sum = log_loss(
        labels, y_proba=probs, sample_weight=weights, labels=range(n_classes), normalize=False
    )
    assert_close(
        xs.cross_entropy(probs, labels, sample_weight=weights, reduction="sum"),
        expected_sum,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_binary_log_loss(rng: np.random.Generator, dtype: Any, weighted: bool) -> None:
    p = rng.uniform(size=80).astype(dtype)
    p[:4] = [0.0, 1.0, 0.0, 1.0]  # clipped: two certain mistakes, two certain hits
    t = rng.integers(0, 2, size=80)
    t[:4] = [1, 0, 0, 1]
    weights = rng.uniform(0.0, 3.0, size=80) if weighted else None
    expected = log_loss(t, y_proba=p, sample_weight=weights, labels=[0, 1])
    ours = xs.binary_cross_entropy(p, t.astype(dtype), sample_weight=weights)
    assert_close(ours, expected, dtype)
    # The same data as two-class probabilities through the multiclass function.
    two_class = np.stack([1.0 - p, p], axis=1).astype(dtype)
    assert_close(xs.cross_entropy(two_class, t, sample_weight=weights), expected, dtype)


def test_clipping_dominates_like_sklearn() -> None:
    # One certain mistake costs -log(eps) in both.
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])
    expected = log_loss(labels, y_proba=probs, labels=[0, 1])
    assert_close(xs.cross_entropy(probs, labels), expected, np.float64)
    assert expected > 18.0  # -log(2.2e-16) / 2: the clipping is what is being compared
