"""The one-shot functions against the float64 reference of SPEC section 2.

Tolerance (SPEC section 3): per-row relative error at most 1e-6 for float32 input and
1e-12 for float64 input, absolute where the loss is below 1. Reductions are held to
the same bound. Expected values come from ``tests/reference.py`` or ``math``.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import reference as ref
import torch
from scipy.special import logsumexp

import xentstream as xs

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
INPUTS = ["probs", "logprobs", "logits"]
TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
IGNORE = -100


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def assert_close(actual: Any, expected: Any, dtype: Any) -> None:
    """SPEC section 3: relative error <= tol, absolute where |expected| < 1; infs equal."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert not np.isnan(expected).any(), "reference produced NaN"
    infinite = np.isinf(expected)
    assert np.array_equal(actual[infinite], expected[infinite])
    error = np.abs(actual[~infinite] - expected[~infinite])
    scale = np.maximum(np.abs(expected[~infinite]), 1.0)
    worst = float(np.max(error / scale, initial=0.0))
    assert worst <= TOLERANCE[np.dtype(dtype)], f"relative error {worst:.3g}"


def as_input(logits: np.ndarray, input: str, dtype: Any) -> np.ndarray:
    """Float64 logits turned into what ``input`` names, then cast to ``dtype``."""
    if input == "logits":
        values = logits
    elif input == "probs":
        values = ref.softmax(logits)
    else:
        values = ref.log_probabilities(logits, "logits")
    return values.astype(dtype)


def multiclass_data(
    rng: np.random.Generator, input: str, dtype: Any, *, soft: bool, n: int = 64, n_classes: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    preds = as_input(rng.normal(scale=3.0, size=(n, n_classes)), input, dtype)
    if input == "probs":
        # Exact zeros and ones exercise the clipping to [eps, 1 - eps].
        preds[0] = 0.0
        preds[0, 1] = 1.0
        preds[1] = preds[0]
    if soft:
        target = rng.dirichlet(np.full(n_classes, 0.7), size=n).astype(dtype)
        target[2] = 0.0
        target[2, 3] = 1.0
        return preds, target
    labels = rng.integers(0, n_classes, size=n)
    labels[0], labels[1] = 0, 1  # row 0: target probability 0; row 1: probability 1
    return preds, labels


MULTICLASS_OPTIONS = {
    "plain": {},
    "class_weight": {"class_weight": [0.5, 1.0, 2.0, 0.25, 3.0]},
    "label_smoothing": {"label_smoothing": 0.1},
    "ignore_index": {"ignore_index": IGNORE},
    "sample_weight": {"sample_weight": True},
    "eps": {"eps": 1e-3},
    "everything": {
        "class_weight": [0.5, 1.0, 2.0, 0.0, 3.0],
        "label_smoothing": 0.25,
        "ignore_index": IGNORE,
        "sample_weight": True,
    },
}
MULTICLASS_CASES = [
    pytest.param(dtype, input, soft, options, id=f"{dtype_id}-{input}-{kind}-{name}")
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS, strict=True)
    for input in INPUTS
    for soft, kind in [(False, "hard"), (True, "soft")]
    for name, options in MULTICLASS_OPTIONS.items()
    if not (soft and "ignore_index" in options)
]


@pytest.mark.parametrize(("dtype", "input", "soft", "options"), MULTICLASS_CASES)
def test_cross_entropy_matches_reference(
    rng: np.random.Generator, dtype: Any, input: str, soft: bool, options: dict[str, Any]
) -> None:
    preds, target = multiclass_data(rng, input, dtype, soft=soft)
    options = dict(options)
    weights = rng.uniform(0.0, 3.0, size=len(preds)) if options.pop("sample_weight", 0) else None
    if weights is not None:
        weights[5] = 0.0
    if "ignore_index" in options:
        target[rng.random(len(target)) < 0.25] = IGNORE
        target[3] = IGNORE
    rows = ref.multiclass_rows(preds, target, input=input, **options)

    losses = xs.cross_entropy(preds, target, input=input, reduction="none", **options)
    assert losses.dtype == np.float64
    assert_close(losses, rows.losses, dtype)
    total = xs.cross_entropy(
        preds, target, input=input, sample_weight=weights, reduction="sum", **options
    )
    assert_close(total, ref.total(rows, weights), dtype)
    mean = xs.cross_entropy(preds, target, input=input, sample_weight=weights, **options)
    assert_close(mean, ref.mean(rows, weights), dtype)


BINARY_OPTIONS = {
    "plain": {},
    "pos_weight": {"pos_weight": 2.5},
    "sample_weight": {"sample_weight": True},
    "soft_targets": {"soft_targets": True},
    "eps": {"eps": 1e-3},
    "everything": {"pos_weight": 0.4, "sample_weight": True, "soft_targets": True},
}


def binary_data(
    rng: np.random.Generator, input: str, dtype: Any, shape: tuple[int, ...], soft: bool
) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(scale=4.0, size=shape)
    target = rng.uniform(size=shape) if soft else rng.integers(0, 2, size=shape).astype(float)
    flat_logits, flat_target = logits.reshape(-1), target.reshape(-1)
    # Saturated predictions on the wrong side: clipping for probabilities, precision of
    # log(1 - p) near p = 1 for log-probabilities, softplus for logits.
    flat_logits[:4] = [40.0, -40.0, 23.0, -23.0]
    flat_target[:4] = [0.0, 1.0, 0.0, 1.0]
    if input == "logits":
        preds = logits
    elif input == "probs":
        preds = 1.0 / (1.0 + np.exp(-logits))
        preds.reshape(-1)[4:6] = [0.0, 1.0]
    else:
        preds = -np.logaddexp(0.0, -logits)
    return preds.astype(dtype), target.astype(dtype)


BINARY_CASES = [
    pytest.param(dtype, input, options, id=f"{dtype_id}-{input}-{name}")
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS, strict=True)
    for input in INPUTS
    for name, options in BINARY_OPTIONS.items()
]


@pytest.mark.parametrize(("dtype", "input", "options"), BINARY_CASES)
def test_binary_cross_entropy_matches_reference(
    rng: np.random.Generator, dtype: Any, input: str, options: dict[str, Any]
) -> None:
    options = dict(options)
    soft = options.pop("soft_targets", False)
    preds, target = binary_data(rng, input, dtype, (80,), soft)
    weights = rng.uniform(0.0, 3.0, size=80) if options.pop("sample_weight", 0) else None
    rows = ref.binary_rows(preds, target, input=input, **options)

    losses = xs.binary_cross_entropy(preds, target, input=input, reduction="none", **options)
    assert losses.dtype == np.float64
    assert_close(losses, rows.losses, dtype)
    total = xs.binary_cross_entropy(
        preds, target, input=input, sample_weight=weights, reduction="sum", **options
    )
    assert_close(total, ref.total(rows, weights), dtype)
    mean = xs.binary_cross_entropy(preds, target, input=input, sample_weight=weights, **options)
    assert_close(mean, ref.mean(rows, weights), dtype)


MULTILABEL_OPTIONS = {
    "plain": {},
    "pos_weight": {"pos_weight": 2.0},
    "pos_weight_per_label": {"pos_weight": [0.5, 1.0, 3.0, 0.0]},
    "sample_weight": {"sample_weight": True},
    "soft_targets": {"soft_targets": True},
}
MULTILABEL_CASES = [
    pytest.param(dtype, input, options, id=f"{dtype_id}-{input}-{name}")
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS, strict=True)
    for input in INPUTS
    for name, options in MULTILABEL_OPTIONS.items()
]


@pytest.mark.parametrize(("dtype", "input", "options"), MULTILABEL_CASES)
def test_multilabel_cross_entropy_matches_reference(
    rng: np.random.Generator, dtype: Any, input: str, options: dict[str, Any]
) -> None:
    options = dict(options)
    soft = options.pop("soft_targets", False)
    preds, target = binary_data(rng, input, dtype, (40, 4), soft)
    weights = rng.uniform(0.0, 3.0, size=40) if options.pop("sample_weight", 0) else None
    rows = ref.multilabel_rows(preds, target, input=input, **options)

    losses = xs.multilabel_cross_entropy(preds, target, input=input, reduction="none", **options)
    assert losses.shape == (40,)
    assert_close(losses, rows.losses, dtype)
    total = xs.multilabel_cross_entropy(
        preds, target, input=input, sample_weight=weights, reduction="sum", **options
    )
    assert_close(total, ref.total(rows, weights), dtype)
    mean = xs.multilabel_cross_entropy(preds, target, input=input, sample_weight=weights, **options)
    assert_close(mean, ref.mean(rows, weights), dtype)


def test_multilabel_is_the_sum_of_binary_losses_over_labels(rng: np.random.Generator) -> None:
    preds, target = binary_data(rng, "logits", np.float64, (30, 3), soft=False)
    pos_weight = [0.5, 2.0, 1.0]
    rows = xs.multilabel_cross_entropy(
        preds, target, input="logits", pos_weight=pos_weight, reduction="none"
    )
    per_label = [
        xs.binary_cross_entropy(
            preds[:, c], target[:, c], input="logits", pos_weight=pos_weight[c], reduction="none"
        )
        for c in range(3)
    ]
    assert_close(rows, np.sum(per_label, axis=0), np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("input", INPUTS)
def test_entropy_matches_reference(rng: np.random.Generator, dtype: Any, input: str) -> None:
    preds = as_input(rng.normal(scale=3.0, size=(50, 6)), input, dtype)
    if input == "probs":
        preds[0] = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # 0 log 0 = 0, no clipping
        preds[1] = [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    expected = ref.entropy_rows(preds, input=input)
    assert_close(xs.entropy(preds, input=input, reduction="none"), expected, dtype)
    assert_close(xs.entropy(preds, input=input), float(np.mean(expected)), dtype)
    assert_close(xs.entropy(preds, input=input, reduction="sum"), math.fsum(expected), dtype)


# --- the seed articles' worked numbers ---------------------------------------------


def test_worked_example_cross_entropy_of_one_prediction() -> None:
    loss = xs.cross_entropy([[0.7, 0.2, 0.1]], [0])
    assert math.isclose(loss, -math.log(0.7), rel_tol=1e-15)


def test_worked_example_entropy() -> None:
    p = [0.2, 0.3, 0.5]
    assert math.isclose(xs.entropy([p]), -sum(x * math.log(x) for x in p), rel_tol=1e-15)


def test_worked_example_surprisal_of_an_unlikely_class() -> None:
    loss = xs.cross_entropy([[0.001, 0.999]], [0])
    assert math.isclose(loss, -math.log(0.001), rel_tol=1e-15)
    assert math.isclose(loss / math.log(2), -math.log2(0.001), rel_tol=1e-15)  # in bits


def test_worked_example_binary() -> None:
    assert math.isclose(xs.binary_cross_entropy([0.6], [1.0]), -math.log(0.6), rel_tol=1e-15)
    assert math.isclose(xs.binary_cross_entropy([0.6], [0.0]), -math.log(0.4), rel_tol=1e-15)


def test_perfect_soft_prediction_costs_its_entropy() -> None:
    # Cross-entropy of p against itself is H(p): the KL part vanishes.
    p = [[0.2, 0.3, 0.5]]
    assert math.isclose(xs.cross_entropy(p, p), xs.entropy(p), rel_tol=1e-15)


# --- eps ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_eps_auto_is_the_machine_epsilon_of_the_dtype(dtype: Any) -> None:
    eps = float(np.finfo(dtype).eps)
    preds = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    losses = xs.cross_entropy(preds, np.array([1, 0]), reduction="none")
    assert losses[0] == -math.log(eps)
    assert math.isclose(losses[1], -math.log1p(-eps), rel_tol=1e-12)
    assert losses[1] > 0.0  # p = 1 is clipped to 1 - eps too
    binary = xs.binary_cross_entropy(
        np.array([0.0, 1.0], dtype=dtype), np.array([1.0, 0.0], dtype=dtype), reduction="none"
    )
    assert binary[0] == -math.log(eps)
    assert math.isclose(binary[1], -math.log(eps), rel_tol=1e-15)


def test_eps_zero_disables_clipping() -> None:
    preds = np.array([[1.0, 0.0], [0.5, 0.5]])
    losses = xs.cross_entropy(preds, np.array([1, 0]), eps=0.0, reduction="none")
    assert losses[0] == math.inf
    assert losses[1] == -math.log(0.5)
    assert xs.cross_entropy(preds, np.array([1, 0]), eps=0.0) == math.inf
    assert xs.cross_entropy(preds, np.array([0, 0]), eps=0.0, reduction="none")[0] == 0.0
    assert xs.binary_cross_entropy([0.0, 1.0], [1.0, 0.0], eps=0.0) == math.inf


def test_explicit_eps_clips_probabilities_only() -> None:
    probs = np.array([[1.0, 0.0]])
    assert xs.cross_entropy(probs, [1], eps=1e-3) == -math.log(1e-3)
    logprobs = np.array([[0.0, -50.0]])
    assert xs.cross_entropy(logprobs, [1], input="logprobs", eps=1e-3, sum_tol=1e-6) == 50.0


# --- logits far from zero ----------------------------------------------------------


@pytest.mark.parametrize("scale", [1e4, 1e8, 1e30])
def test_large_logits_keep_full_precision(rng: np.random.Generator, scale: float) -> None:
    logits = np.round(rng.normal(size=(40, 4)), 1) * scale
    logits[0] = [scale, scale, -scale, 0.0]  # a tie at the top: each loses log 2
    labels = rng.integers(0, 4, size=40)
    labels[0] = 0
    losses = xs.cross_entropy(logits, labels, input="logits", reduction="none")
    assert math.isclose(losses[0], math.log(2.0), rel_tol=1e-15)
    assert_close(losses, ref.multiclass_rows(logits, labels, input="logits").losses, np.float64)
    soft = ref.softmax(rng.normal(size=(40, 4)))
    assert_close(
        xs.cross_entropy(logits, soft, input="logits", reduction="none"),
        ref.multiclass_rows(logits, soft, input="logits").losses,
        np.float64,
    )
    assert_close(
        xs.entropy(logits, input="logits", reduction="none"),
        ref.entropy_rows(logits, input="logits"),
        np.float64,
    )


# --- shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_token_logits_with_padding(rng: np.random.Generator, dtype: Any) -> None:
    batch, seq, n_classes = 3, 7, 11
    logits = rng.normal(scale=2.0, size=(batch, seq, n_classes)).astype(dtype)
    labels = rng.integers(0, n_classes, size=(batch, seq))
    lengths = [7, 4, 1]
    for b, length in enumerate(lengths):
        labels[b, length:] = IGNORE
    losses = xs.cross_entropy(logits, labels, input="logits", ignore_index=IGNORE, reduction="none")
    assert losses.shape == (batch, seq)
    expected = ref.multiclass_rows(logits, labels, input="logits", ignore_index=IGNORE)
    assert_close(losses, expected.losses, dtype)
    assert (losses[labels == IGNORE] == 0.0).all()
    mean = xs.cross_entropy(logits, labels, input="logits", ignore_index=IGNORE)
    assert_close(mean, ref.mean(expected), dtype)
    # Padding is dropped exactly: the same bits as the real tokens alone.
    kept = labels != IGNORE
    assert bits(mean) == bits(xs.cross_entropy(logits[kept], labels[kept], input="logits"))
    assert math.isclose(math.exp(mean), math.exp(ref.mean(expected)), rel_tol=1e-5)
    weights = rng.uniform(size=(batch, seq))
    weighted = xs.cross_entropy(
        logits, labels, input="logits", ignore_index=IGNORE, sample_weight=weights
    )
    assert_close(weighted, ref.mean(expected, weights), dtype)


def test_leading_dimensions_for_every_loss(rng: np.random.Generator) -> None:
    preds, target = binary_data(rng, "logits", np.float64, (2, 3, 4), soft=False)
    ml = xs.multilabel_cross_entropy(preds, target, input="logits", reduction="none")
    assert ml.shape == (2, 3)
    assert_close(ml, ref.multilabel_rows(preds, target, input="logits").losses, np.float64)
    binary = xs.binary_cross_entropy(preds, target, input="logits", reduction="none")
    assert binary.shape == (2, 3, 4)
    assert_close(binary, ref.binary_rows(preds, target, input="logits").losses, np.float64)
    soft = ref.softmax(rng.normal(size=(2, 3, 4)))
    ce = xs.cross_entropy(preds, soft, input="logits", reduction="none")
    assert ce.shape == (2, 3)
    assert_close(ce, ref.multiclass_rows(preds, soft, input="logits").losses, np.float64)
    entropy = xs.entropy(preds, input="logits", reduction="none")
    assert entropy.shape == (2, 3)
    assert_close(entropy, ref.entropy_rows(preds, input="logits"), np.float64)


def test_all_rows_ignored_gives_nan_mean_and_zero_sum() -> None:
    preds = np.array([[0.5, 0.5], [0.1, 0.9]])
    labels = np.array([IGNORE, IGNORE])
    # torch also returns NaN (0 / 0) for a mean over no rows.
    assert math.isnan(xs.cross_entropy(preds, labels, ignore_index=IGNORE))
    assert xs.cross_entropy(preds, labels, ignore_index=IGNORE, reduction="sum") == 0.0
    none = xs.cross_entropy(preds, labels, ignore_index=IGNORE, reduction="none")
    assert np.array_equal(none, [0.0, 0.0])


EMPTY_CASES = {
    "multiclass-hard": (xs.cross_entropy, np.empty((0, 3)), np.empty(0, dtype=np.int64)),
    "multiclass-soft": (xs.cross_entropy, np.empty((0, 3)), np.empty((0, 3))),
    "binary": (xs.binary_cross_entropy, np.empty(0), np.empty(0)),
    "multilabel": (xs.multilabel_cross_entropy, np.empty((0, 3)), np.empty((0, 3))),
    "tokens": (xs.cross_entropy, np.empty((2, 0, 3)), np.empty((2, 0), dtype=np.int64)),
}


@pytest.mark.parametrize(("function", "preds", "target"), EMPTY_CASES.values(), ids=EMPTY_CASES)
def test_empty_batches(function: Any, preds: np.ndarray, target: np.ndarray) -> None:
    weights = np.empty(preds.shape if function is xs.binary_cross_entropy else preds.shape[:-1])
    assert math.isnan(function(preds, target))
    assert function(preds, target, sample_weight=weights, reduction="sum") == 0.0
    none = function(preds, target, reduction="none")
    assert none.dtype == np.float64
    assert none.shape == weights.shape


def test_empty_entropy() -> None:
    assert math.isnan(xs.entropy(np.empty((0, 4))))
    assert xs.entropy(np.empty((0, 4)), reduction="sum") == 0.0
    assert xs.entropy(np.empty((0, 4)), reduction="none").shape == (0,)


# --- memory layouts, label dtypes, input types -------------------------------------


def layouts(array: np.ndarray) -> dict[str, np.ndarray]:
    """The same values as ``array`` in other memory layouts."""
    doubled = np.repeat(array, 2, axis=0)
    wide = np.zeros((array.shape[0], array.shape[1] * 3), dtype=array.dtype)
    wide[:, ::3] = array
    reversed_rows = array[::-1].copy()[::-1]
    return {
        "fortran": np.asfortranarray(array),
        "strided-rows": doubled[::2],
        "strided-classes": wide[:, ::3],
        "negative-strides": reversed_rows,
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "layout", ["fortran", "strided-rows", "strided-classes", "negative-strides"]
)
def test_memory_layouts_give_identical_bits(
    rng: np.random.Generator, dtype: Any, layout: str
) -> None:
    preds, labels = multiclass_data(rng, "logits", dtype, soft=False, n=300)
    soft = ref.softmax(rng.normal(size=preds.shape)).astype(dtype)
    weights = rng.uniform(size=len(preds))
    variant = layouts(preds)[layout]
    assert not variant.flags.c_contiguous
    assert np.array_equal(variant, preds)
    strided_labels = np.repeat(labels, 2)[::2]
    for target, other_target in [(labels, strided_labels), (soft, layouts(soft)[layout])]:
        expected = xs.cross_entropy(preds, target, input="logits", reduction="none")
        got = xs.cross_entropy(variant, other_target, input="logits", reduction="none")
        assert np.array_equal(got, expected)
        mean = xs.cross_entropy(preds, target, input="logits", sample_weight=weights)
        strided_weights = np.repeat(weights, 2)[::2]
        got_mean = xs.cross_entropy(
            variant, other_target, input="logits", sample_weight=strided_weights
        )
        assert bits(got_mean) == bits(mean)
    multilabel = xs.multilabel_cross_entropy(variant, soft, input="logits", reduction="none")
    assert np.array_equal(
        multilabel, xs.multilabel_cross_entropy(preds, soft, input="logits", reduction="none")
    )
    assert bits(xs.entropy(variant, input="logits")) == bits(xs.entropy(preds, input="logits"))
    column = variant[:, 0]
    assert bits(xs.binary_cross_entropy(column, soft[:, 0], input="logits")) == bits(
        xs.binary_cross_entropy(np.ascontiguousarray(column), soft[:, 0], input="logits")
    )


@pytest.mark.parametrize("label_dtype", [np.int32, np.uint8])
def test_label_dtypes_give_identical_bits(rng: np.random.Generator, label_dtype: Any) -> None:
    preds, labels = multiclass_data(rng, "probs", np.float64, soft=False)
    expected = xs.cross_entropy(preds, labels, reduction="none")
    narrow = labels.astype(label_dtype)
    assert np.array_equal(xs.cross_entropy(preds, narrow, reduction="none"), expected)
    weights = rng.uniform(size=len(labels))
    assert bits(
        xs.cross_entropy(preds, narrow, sample_weight=weights, label_smoothing=0.1)
    ) == bits(xs.cross_entropy(preds, labels, sample_weight=weights, label_smoothing=0.1))
    # The ignore label in each dtype's own range.
    ignore = 255 if label_dtype == np.uint8 else IGNORE
    narrow[::3] = ignore
    wide = np.where(narrow == ignore, IGNORE, narrow.astype(np.int64))
    assert bits(xs.cross_entropy(preds, narrow, ignore_index=ignore)) == bits(
        xs.cross_entropy(preds, wide, ignore_index=IGNORE)
    )


def test_bool_and_integer_binary_targets(rng: np.random.Generator) -> None:
    preds, target = binary_data(rng, "probs", np.float64, (50,), soft=False)
    expected = xs.binary_cross_entropy(preds, target, reduction="none")
    for other in (target.astype(bool), target.astype(np.int64)):
        assert np.array_equal(xs.binary_cross_entropy(preds, other, reduction="none"), expected)
    multi_preds, multi_target = binary_data(rng, "probs", np.float64, (20, 3), soft=False)
    assert np.array_equal(
        xs.multilabel_cross_entropy(multi_preds, multi_target.astype(bool), reduction="none"),
        xs.multilabel_cross_entropy(multi_preds, multi_target, reduction="none"),
    )


def test_lists_are_accepted() -> None:
    preds = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
    array = np.array(preds)
    assert bits(xs.cross_entropy(preds, [0, 2])) == bits(xs.cross_entropy(array, np.array([0, 2])))
    assert bits(xs.cross_entropy([[1, 0], [0, 1]], [0, 1], eps=0.0)) == bits(0.0)
    assert bits(xs.binary_cross_entropy([0.6, 0.1], [1, 0])) == bits(
        xs.binary_cross_entropy(np.array([0.6, 0.1]), np.array([1.0, 0.0]))
    )
    assert bits(xs.multilabel_cross_entropy(preds, [[1, 0, 0], [0, 1, 1]])) == bits(
        xs.multilabel_cross_entropy(array, np.array([[1.0, 0, 0], [0, 1, 1]]))
    )
    assert bits(xs.entropy(preds)) == bits(xs.entropy(array))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_polars_inputs(rng: np.random.Generator, dtype: Any) -> None:
    preds, labels = multiclass_data(rng, "probs", dtype, soft=False)
    expected = xs.cross_entropy(preds, labels, reduction="none")
    polars_dtype = pl.Float32 if dtype == np.float32 else pl.Float64
    column = pl.Series("p", preds, dtype=pl.Array(polars_dtype, preds.shape[1]))
    assert np.array_equal(xs.cross_entropy(column, pl.Series(labels), reduction="none"), expected)
    wide = pl.DataFrame(preds, schema=[f"c{i}" for i in range(preds.shape[1])])
    assert np.array_equal(xs.cross_entropy(wide, labels, reduction="none"), expected)
    weights = rng.uniform(size=len(labels))
    assert bits(xs.cross_entropy(column, pl.Series(labels), sample_weight=pl.Series(weights))) == (
        bits(xs.cross_entropy(preds, labels, sample_weight=weights))
    )
    p = preds[:, 0]
    t = (labels == 0).astype(dtype)
    assert np.array_equal(
        xs.binary_cross_entropy(pl.Series(p), pl.Series(t), reduction="none"),
        xs.binary_cross_entropy(p, t, reduction="none"),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pyarrow_inputs(rng: np.random.Generator, dtype: Any) -> None:
    preds, labels = multiclass_data(rng, "probs", dtype, soft=False)
    expected = xs.cross_entropy(preds, labels, reduction="none")
    assert np.array_equal(xs.cross_entropy(preds, pa.array(labels), reduction="none"), expected)
    chunked = pa.chunked_array([labels[:10], labels[10:]])
    assert np.array_equal(xs.cross_entropy(preds, chunked, reduction="none"), expected)
    arrow_type = pa.float32() if dtype == np.float32 else pa.float64()
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(preds.ravel(), arrow_type), preds.shape[1])
    assert np.array_equal(xs.cross_entropy(fixed, pa.array(labels), reduction="none"), expected)
    p = preds[:, 1]
    t = (labels == 1).astype(dtype)
    assert np.array_equal(
        xs.binary_cross_entropy(pa.array(p), pa.array(t), reduction="none"),
        xs.binary_cross_entropy(p, t, reduction="none"),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DTYPE_IDS)
def test_torch_cpu_tensors(rng: np.random.Generator, dtype: torch.dtype) -> None:
    numpy_dtype = np.float32 if dtype == torch.float32 else np.float64
    preds, labels = multiclass_data(rng, "logits", numpy_dtype, soft=False)
    expected = xs.cross_entropy(preds, labels, input="logits", reduction="none")
    tensor = torch.tensor(preds, requires_grad=True)
    got = xs.cross_entropy(tensor, torch.tensor(labels), input="logits", reduction="none")
    assert isinstance(got, np.ndarray)
    assert np.array_equal(got, expected)
    p = torch.sigmoid(torch.tensor(preds[:, 0]))
    t = torch.tensor((labels == 0).astype(numpy_dtype))
    assert np.array_equal(
        xs.binary_cross_entropy(p, t, reduction="none"),
        xs.binary_cross_entropy(p.numpy(), t.numpy(), reduction="none"),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("input", ["logits", "probs"])
@pytest.mark.parametrize("n_classes", [3, 10, 63, 64])
def test_a_rows_loss_does_not_depend_on_its_neighbours(
    rng: np.random.Generator, dtype: Any, input: str, n_classes: int
) -> None:
    """Narrow rows are computed in chunks across rows; a chunk holding an ignored row,
    a row with a -inf logit or a zero probability takes the row-by-row path, and every
    other row must get the same bits either way (split invariance rests on it)."""
    n = 700  # several chunks of narrow rows, the last one partial
    logits = rng.normal(scale=4.0, size=(n, n_classes))
    preds = logits if input == "logits" else np.exp(logits - logsumexp(logits, axis=1)[:, None])
    preds = preds.astype(dtype)
    labels = rng.integers(0, n_classes, n)
    alone = xs.cross_entropy(preds, labels, input=input, ignore_index=-100, reduction="none")
    odd_labels = labels.copy()
    odd_labels[[5, 300]] = -100
    odd_preds = preds.copy()
    odd_preds[600, (labels[600] + 1) % n_classes] = -np.inf if input == "logits" else 0.0
    odd_preds[600] /= 1.0 if input == "logits" else odd_preds[600].sum()
    mixed = xs.cross_entropy(
        odd_preds, odd_labels, input=input, ignore_index=-100, reduction="none"
    )
    untouched = np.setdiff1d(np.arange(n), [5, 300, 600])
    np.testing.assert_array_equal(mixed[untouched], alone[untouched])
    assert mixed[5] == mixed[300] == 0.0
    expected_600 = ref.multiclass_rows(
        odd_preds[600:601].astype(np.float64), odd_labels[600:601], input=input
    ).losses[0]
    assert mixed[600] == pytest.approx(expected_600, rel=TOLERANCE[np.dtype(dtype)])
