"""Agreement with torch.nn.functional (the semantics SPEC section 2 follows).

torch computes float32 inputs in float32, so for float32 the comparison is made
twice: against torch on the same values widened to float64, at SPEC section 3's
tolerance, and against torch's own float32 result at float32 precision.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import softmax

import xentstream as xs

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
SPEC_TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
#: Error of torch's own float32 arithmetic (a few ulps of float32, summed over classes).
TORCH_FLOAT32_TOLERANCE = 1e-5
IGNORE = -100
REDUCTIONS = ["none", "mean", "sum"]


def assert_close(actual: Any, expected: Any, tolerance: float) -> None:
    """Relative error <= tolerance, absolute where |expected| < 1."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.isfinite(expected).all()
    worst = float(
        np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0), initial=0.0)
    )
    assert worst <= tolerance, f"relative error {worst:.3g}"


def compare(ours: Any, torch_call: Any, arrays: list[np.ndarray], dtype: Any) -> None:
    """Check ``ours`` against ``torch_call(*tensors)`` at float64 and, if float32, float32."""
    wide = torch_call(*[torch.from_numpy(np.asarray(a, dtype=_wide(a))) for a in arrays])
    assert_close(ours, wide.numpy(), SPEC_TOLERANCE[np.dtype(dtype)])
    if np.dtype(dtype) == np.float32:
        narrow = torch_call(*[torch.from_numpy(np.asarray(a)) for a in arrays])
        assert_close(ours, narrow.numpy(), TORCH_FLOAT32_TOLERANCE)


def _wide(array: np.ndarray) -> Any:
    return np.float64 if array.dtype.kind == "f" else array.dtype


HARD_OPTIONS = {
    "plain": {},
    "weight": {"class_weight": [0.5, 2.0, 1.0, 3.0, 0.25]},
    "ignore_index": {"ignore_index": IGNORE},
    "label_smoothing": {"label_smoothing": 0.2},
    "everything": {
        "class_weight": [0.5, 2.0, 1.0, 3.0, 0.25],
        "ignore_index": IGNORE,
        "label_smoothing": 0.1,
    },
}


def _torch_options(options: dict[str, Any], dtype: Any) -> dict[str, Any]:
    converted = {}
    if "class_weight" in options:
        converted["weight"] = np.asarray(options["class_weight"], dtype=dtype)
    converted["ignore_index"] = options.get("ignore_index", IGNORE)
    if "label_smoothing" in options:
        converted["label_smoothing"] = options["label_smoothing"]
    return converted


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("options", HARD_OPTIONS.values(), ids=HARD_OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_hard_targets(
    rng: np.random.Generator, dtype: Any, options: dict[str, Any], reduction: str
) -> None:
    logits = rng.normal(scale=3.0, size=(60, 5)).astype(dtype)
    labels = rng.integers(0, 5, size=60)
    if "ignore_index" in options:
        labels[rng.random(60) < 0.3] = IGNORE
    ours = xs.cross_entropy(logits, labels, input="logits", reduction=reduction, **options)
    extra = _torch_options(options, dtype)
    weight = extra.pop("weight", None)
    arrays = [logits, labels] + ([weight] if weight is not None else [])

    def call(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(x, y, weight=w, reduction=reduction, **extra)

    compare(ours, call, arrays, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("input", ["probs", "logprobs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probabilities_against_nll_loss(
    rng: np.random.Generator, dtype: Any, input: str, reduction: str
) -> None:
    probs = softmax(rng.normal(scale=2.0, size=(50, 4)))
    preds = (probs if input == "probs" else np.log(probs)).astype(dtype)
    labels = rng.integers(0, 4, size=50)
    labels[:5] = IGNORE
    weight = np.array([1.0, 0.5, 2.0, 1.5], dtype=dtype)
    log_p = np.log(preds) if input == "probs" else preds
    ours = xs.cross_entropy(
        preds, labels, input=input, class_weight=weight, ignore_index=IGNORE, reduction=reduction
    )

    def call(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(x, y, weight=w, ignore_index=IGNORE, reduction=reduction)

    compare(ours, call, [log_p, labels, weight], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_soft_targets(
    rng: np.random.Generator, dtype: Any, label_smoothing: float, reduction: str
) -> None:
    logits = rng.normal(scale=3.0, size=(40, 6)).astype(dtype)
    target = rng.dirichlet(np.full(6, 0.5), size=40).astype(dtype)
    weight = rng.uniform(0.2, 2.0, size=6).astype(dtype)
    ours = xs.cross_entropy(
        logits,
        target,
        input="logits",
        class_weight=weight,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )

    def call(x: torch.Tensor, q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x, q, weight=w, label_smoothing=label_smoothing, reduction=reduction)

    compare(ours, call, [logits, target, weight], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_token_logits_with_padding(rng: np.random.Generator, dtype: Any, reduction: str) -> None:
    logits = rng.normal(scale=2.0, size=(4, 9, 13)).astype(dtype)
    labels = rng.integers(0, 13, size=(4, 9))
    for b, length in enumerate([9, 6, 2, 0]):
        labels[b, length:] = IGNORE
    ours = xs.cross_entropy(
        logits,
        labels,
        input="logits",
        ignore_index=IGNORE,
        label_smoothing=0.1,
        reduction=reduction,
    )

    def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # torch wants the classes in dimension 1: (batch, C, seq).
        return F.cross_entropy(
            x.permute(0, 2, 1), y, ignore_index=IGNORE, label_smoothing=0.1, reduction=reduction
        )

    compare(ours, call, [logits, labels], dtype)


def test_means_over_no_rows_are_nan_like_torch() -> None:
    empty = F.cross_entropy(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    ignored = F.cross_entropy(torch.zeros(2, 3), torch.full((2,), IGNORE))
    assert math.isnan(empty.item())
    assert math.isnan(ignored.item())
    assert math.isnan(xs.cross_entropy(np.empty((0, 3)), np.empty(0, dtype=np.int64)))
    assert math.isnan(
        xs.cross_entropy(np.zeros((2, 3)), np.full(2, IGNORE), input="logits", ignore_index=IGNORE)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_from_probabilities(
    rng: np.random.Generator, dtype: Any, reduction: str
) -> None:
    p = rng.uniform(0.01, 0.99, size=70).astype(dtype)
    t = rng.integers(0, 2, size=70).astype(dtype)
    t[:10] = rng.uniform(size=10)  # soft targets are allowed by both
    ours = xs.binary_cross_entropy(p, t, reduction=reduction)

    def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(x, y, reduction=reduction)

    compare(ours, call, [p, t], dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_binary_sample_weight_sum_is_torch_weighted_sum(
    rng: np.random.Generator, dtype: Any
) -> None:
    p = rng.uniform(0.01, 0.99, size=70).astype(dtype)
    t = rng.integers(0, 2, size=70).astype(dtype)
    weights = rng.uniform(0.0, 2.0, size=70).astype(dtype)
    ours = xs.binary_cross_entropy(p, t, sample_weight=weights.astype(np.float64), reduction="sum")
    compare(
        ours,
        lambda x, y, w: F.binary_cross_entropy(x, y, weight=w, reduction="sum"),
        [p, t, weights],
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("pos_weight", [None, 0.3, 4.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits(
    rng: np.random.Generator, dtype: Any, pos_weight: float | None, reduction: str
) -> None:
    x = rng.normal(scale=6.0, size=70).astype(dtype)
    x[:4] = [80.0, -80.0, 30.0, -30.0]  # saturated on the wrong side: the softplus form
    t = rng.integers(0, 2, size=70).astype(dtype)
    t[:4] = [0.0, 1.0, 0.0, 1.0]
    pw = [] if pos_weight is None else [np.array([pos_weight], dtype=dtype)]
    ours = xs.binary_cross_entropy(x, t, input="logits", pos_weight=pos_weight, reduction=reduction)

    def call(z: torch.Tensor, y: torch.Tensor, *w: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            z, y, pos_weight=w[0] if w else None, reduction=reduction
        )

    compare(ours, call, [x, t, *pw], dtype)


def test_pos_weight_from_probabilities_matches_torch_on_logits(rng: np.random.Generator) -> None:
    p = rng.uniform(0.02, 0.98, size=50)
    t = rng.integers(0, 2, size=50).astype(np.float64)
    ours = xs.binary_cross_entropy(p, t, pos_weight=2.5, reduction="none")
    logits = torch.from_numpy(np.log(p) - np.log1p(-p))
    expected = F.binary_cross_entropy_with_logits(
        logits,
        torch.from_numpy(t),
        pos_weight=torch.tensor([2.5], dtype=torch.float64),
        reduction="none",
    )
    assert_close(ours, expected.numpy(), 1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_multilabel_is_torch_mean_times_labels(rng: np.random.Generator, dtype: Any) -> None:
    n_labels = 5
    x = rng.normal(scale=3.0, size=(40, n_labels)).astype(dtype)
    t = rng.integers(0, 2, size=(40, n_labels)).astype(dtype)
    pos_weight = rng.uniform(0.5, 3.0, size=n_labels).astype(dtype)
    ours_rows = xs.multilabel_cross_entropy(
        x, t, input="logits", pos_weight=pos_weight, reduction="none"
    )
    compare(
        ours_rows,
        lambda z, y, w: F.binary_cross_entropy_with_logits(
            z, y, pos_weight=w, reduction="none"
        ).sum(dim=1),
        [x, t, pos_weight],
        dtype,
    )
    ours_mean = xs.multilabel_cross_entropy(x, t, input="logits", pos_weight=pos_weight)
    compare(
        ours_mean,
        lambda z, y, w: F.binary_cross_entropy_with_logits(z, y, pos_weight=w) * n_labels,
        [x, t, pos_weight],
        dtype,
    )
    p = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).clip(0.01, 0.99).astype(dtype)
    compare(
        xs.multilabel_cross_entropy(p, t),
        lambda q, y: F.binary_cross_entropy(q, y) * n_labels,
        [p, t],
        dtype,
    )
