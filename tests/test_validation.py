"""SPEC section 7 for the one-shot functions: every rejected input names the argument,
the row and the rule broken; the first offending row is the one reported.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import xentstream as xs
from xentstream import _batch

PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
LABELS = np.array([0, 1, 2])


def message(*parts: str) -> str:
    """A regex matching the literal ``parts`` in order."""
    return ".*".join(re.escape(part) for part in parts)


def edited(array: np.ndarray, index: Any, value: Any) -> np.ndarray:
    copy = np.array(array, copy=True)
    copy[index] = value
    return copy


# --- shapes and lengths (never skipped, not even with validate=False) --------------

SHAPE_CASES = {
    "labels-too-short": (
        xs.cross_entropy,
        (PROBS, LABELS[:2]),
        {},
        message("target: shape (2,) matches neither hard labels (3,) nor soft targets (3, 3)"),
    ),
    "soft-target-classes": (
        xs.cross_entropy,
        (PROBS, PROBS[:, :2]),
        {},
        message("target: shape (3, 2) matches neither"),
    ),
    "preds-without-classes": (
        xs.cross_entropy,
        (PROBS[0], LABELS),
        {},
        message("preds: shape (3,) has no class dimension"),
    ),
    "zero-classes": (
        xs.cross_entropy,
        (np.empty((3, 0)), LABELS),
        {},
        message("preds: shape (3, 0) has zero classes"),
    ),
    "class-weight-length": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"class_weight": [1.0, 2.0]},
        message("class_weight: has 2 entries but preds has 3 classes"),
    ),
    "sample-weight-length": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"sample_weight": np.ones(4)},
        message("sample_weight: shape (4,) does not match the rows of the predictions (3,)"),
    ),
    "token-sample-weight-shape": (
        xs.cross_entropy,
        (np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=np.int64)),
        {"sample_weight": np.ones(6), "input": "logits"},
        message("sample_weight: shape (6,) does not match", "(2, 3)"),
    ),
    "binary-length": (
        xs.binary_cross_entropy,
        (np.array([0.2, 0.3]), np.array([0.0, 1.0, 1.0])),
        {},
        message("target: shape (3,) does not match preds shape (2,)"),
    ),
    "multilabel-shape": (
        xs.multilabel_cross_entropy,
        (PROBS, PROBS[:2]),
        {},
        message("target: shape (2, 3) does not match preds shape (3, 3)"),
    ),
    "multilabel-pos-weight-length": (
        xs.multilabel_cross_entropy,
        (PROBS, np.ones((3, 3))),
        {"pos_weight": [1.0, 2.0]},
        message("pos_weight: has 2 entries but preds has 3 labels"),
    ),
    "entropy-without-classes": (
        xs.entropy,
        (PROBS[0],),
        {},
        message("preds: shape (3,) has no class dimension"),
    ),
}


@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-validate"])
@pytest.mark.parametrize(
    ("function", "args", "kwargs", "pattern"), SHAPE_CASES.values(), ids=SHAPE_CASES
)
def test_shape_mismatches(
    function: Any, args: tuple, kwargs: dict[str, Any], pattern: str, validate: bool
) -> None:
    with pytest.raises(ValueError, match=pattern):
        function(*args, validate=validate, **kwargs)


# --- values ------------------------------------------------------------------------

LOGITS = np.log(PROBS)
BINARY = np.array([0.2, 0.9, 0.4])
BINARY_TARGET = np.array([0.0, 1.0, 1.0])

VALUE_CASES = {
    "nan-probability": (
        xs.cross_entropy,
        (edited(PROBS, (1, 2), np.nan), LABELS),
        {},
        message("preds: row 1, class 2: prediction is NaN"),
    ),
    "nan-logit": (
        xs.cross_entropy,
        (edited(LOGITS, (2, 0), np.nan), LABELS),
        {"input": "logits"},
        message("preds: row 2, class 0: prediction is NaN"),
    ),
    "nan-logprob": (
        xs.cross_entropy,
        (edited(LOGITS, (0, 1), np.nan), LABELS),
        {"input": "logprobs"},
        message("preds: row 0, class 1: prediction is NaN"),
    ),
    "positive-infinite-logit": (
        xs.cross_entropy,
        (edited(LOGITS, (1, 1), np.inf), LABELS),
        {"input": "logits"},
        message("preds: row 1, class 1: logit is +inf; logits must be finite"),
    ),
    "all-logits-negative-infinite": (
        xs.cross_entropy,
        (edited(LOGITS, 2, -np.inf), LABELS),
        {"input": "logits"},
        message("preds: row 2: every logit is -inf"),
    ),
    "probability-above-one": (
        xs.cross_entropy,
        (edited(PROBS, (1, 0), 1.5), LABELS),
        {},
        message("preds: row 1, class 0: probability 1.5 is outside [0, 1]"),
    ),
    "probability-below-zero": (
        xs.cross_entropy,
        (edited(PROBS, (2, 2), -0.25), LABELS),
        {},
        message("preds: row 2, class 2: probability -0.25 is outside [0, 1]"),
    ),
    "probabilities-not-summing-to-one": (
        xs.cross_entropy,
        (edited(PROBS, (1, 2), 0.5), LABELS),
        {},
        message("preds: row 1: probabilities sum to 1.1", "not 1 within sum_tol"),
    ),
    "logprobs-not-summing-to-one": (
        xs.cross_entropy,
        (edited(LOGITS, (0, 0), -2.0), LABELS),
        {"input": "logprobs"},
        message("preds: row 0: probabilities sum to", "not 1 within sum_tol"),
    ),
    "positive-logprob": (
        xs.cross_entropy,
        (edited(LOGITS, (2, 1), 0.25), LABELS),
        {"input": "logprobs"},
        message("preds: row 2, class 1: log-probability 0.25 is positive"),
    ),
    "label-too-large": (
        xs.cross_entropy,
        (PROBS, edited(LABELS, 1, 3)),
        {},
        message("target: row 1: label 3 is outside [0, 3) and is not ignore_index"),
    ),
    "label-negative": (
        xs.cross_entropy,
        (PROBS, edited(LABELS, 2, -1)),
        {"ignore_index": -100},
        message("target: row 2: label -1 is outside [0, 3) and is not ignore_index"),
    ),
    "soft-target-negative": (
        xs.cross_entropy,
        (PROBS, edited(PROBS, 1, [0.5, 0.6, -0.1])),
        {},
        message("target: row 1, class 2: target probability -0.1 is negative"),
    ),
    "soft-target-nan": (
        xs.cross_entropy,
        (PROBS, edited(PROBS, (0, 1), np.nan)),
        {},
        message("target: row 0, class 1: target probability nan is negative or NaN"),
    ),
    "soft-target-not-summing-to-one": (
        xs.cross_entropy,
        (PROBS, edited(PROBS, 2, [0.5, 0.6, 0.1])),
        {},
        message("target: row 2: target probabilities sum to 1.2", "not 1 within sum_tol"),
    ),
    "binary-nan": (
        xs.binary_cross_entropy,
        (edited(BINARY, 1, np.nan), BINARY_TARGET),
        {},
        message("preds: row 1: prediction is NaN"),
    ),
    "binary-probability-outside": (
        xs.binary_cross_entropy,
        (edited(BINARY, 2, 1.25), BINARY_TARGET),
        {},
        message("preds: row 2: probability 1.25 is outside [0, 1]"),
    ),
    "binary-infinite-logit": (
        xs.binary_cross_entropy,
        (edited(BINARY, 0, np.inf), BINARY_TARGET),
        {"input": "logits"},
        message("preds: row 0: logit is +inf"),
    ),
    "binary-positive-logprob": (
        xs.binary_cross_entropy,
        (edited(np.log(BINARY), 1, 0.5), BINARY_TARGET),
        {"input": "logprobs"},
        message("preds: row 1: log-probability 0.5 is positive"),
    ),
    "binary-target-above-one": (
        xs.binary_cross_entropy,
        (BINARY, edited(BINARY_TARGET, 1, 1.5)),
        {},
        message("target: row 1: target 1.5 is outside [0, 1]"),
    ),
    "binary-target-negative": (
        xs.binary_cross_entropy,
        (BINARY, edited(BINARY_TARGET, 2, -1.0)),
        {},
        message("target: row 2: target -1.0 is outside [0, 1]"),
    ),
    "multilabel-target-outside": (
        xs.multilabel_cross_entropy,
        (PROBS, edited(np.zeros((3, 3)), (1, 2), 2.0)),
        {},
        message("target: row 1, label 2: target 2.0 is outside [0, 1]"),
    ),
    "multilabel-prediction-outside": (
        xs.multilabel_cross_entropy,
        (edited(PROBS, (2, 1), 1.5), np.zeros((3, 3))),
        {},
        message("preds: row 2, label 1: probability 1.5 is outside [0, 1]"),
    ),
    "multilabel-infinite-logit": (
        xs.multilabel_cross_entropy,
        (edited(LOGITS, (0, 2), np.inf), np.zeros((3, 3))),
        {"input": "logits"},
        message("preds: row 0, label 2: logit is +inf"),
    ),
    "sample-weight-negative": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"sample_weight": np.array([1.0, -1.0, 1.0])},
        message("sample_weight: row 1: weight -1.0 is invalid", "finite and >= 0"),
    ),
    "sample-weight-nan": (
        xs.binary_cross_entropy,
        (BINARY, BINARY_TARGET),
        {"sample_weight": np.array([1.0, 1.0, np.nan])},
        message("sample_weight: row 2: weight nan is invalid"),
    ),
    "sample-weight-infinite": (
        xs.multilabel_cross_entropy,
        (PROBS, np.ones((3, 3))),
        {"sample_weight": np.array([np.inf, 1.0, 1.0])},
        message("sample_weight: row 0: weight inf is invalid"),
    ),
    "entropy-nan": (
        xs.entropy,
        (edited(PROBS, (2, 2), np.nan),),
        {},
        message("preds: row 2, class 2: prediction is NaN"),
    ),
    "entropy-not-summing-to-one": (
        xs.entropy,
        (edited(PROBS, (0, 0), 0.1),),
        {},
        message("preds: row 0: probabilities sum to", "not 1 within sum_tol"),
    ),
    "token-position": (
        xs.cross_entropy,
        (edited(np.zeros((2, 3, 4)), (1, 2, 3), np.nan), np.zeros((2, 3), dtype=np.int64)),
        {"input": "logits"},
        message("preds: row 5 (index (1, 2)), class 3: prediction is NaN"),
    ),
}


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "pattern"), VALUE_CASES.values(), ids=VALUE_CASES
)
def test_invalid_values(function: Any, args: tuple, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        function(*args, **kwargs)


#: Value checks that ``validate=False`` skips (the result is computed anyway).
SKIPPABLE = [
    "probability-above-one",
    "probability-below-zero",
    "probabilities-not-summing-to-one",
    "logprobs-not-summing-to-one",
    "soft-target-not-summing-to-one",
    "binary-probability-outside",
    "sample-weight-negative",
    "entropy-not-summing-to-one",
]


@pytest.mark.parametrize("case", SKIPPABLE)
def test_validate_false_skips_value_checks(case: str) -> None:
    function, args, kwargs, _ = VALUE_CASES[case]
    result = function(*args, validate=False, **kwargs)
    assert isinstance(result, float)


def test_validate_false_still_refuses_labels_out_of_range() -> None:
    # A label outside [0, C) would index outside the predictions: never skipped.
    with pytest.raises(ValueError, match=message("target: row 1: label 3 is outside [0, 3)")):
        xs.cross_entropy(PROBS, edited(LABELS, 1, 3), validate=False)


def test_ignore_index_is_not_out_of_range() -> None:
    labels = edited(LABELS, 1, -100)
    assert xs.cross_entropy(PROBS, labels, ignore_index=-100) > 0.0
    labels = edited(LABELS, 1, 3)
    assert xs.cross_entropy(PROBS, labels, ignore_index=3) > 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_sum_tolerance_is_the_square_root_of_eps(dtype: Any) -> None:
    tolerance = float(np.sqrt(np.finfo(dtype).eps))
    inside = np.array([[0.5, 0.5 + 0.5 * tolerance]], dtype=dtype)
    outside = np.array([[0.5, 0.5 + 4.0 * tolerance]], dtype=dtype)
    assert xs.cross_entropy(inside, [0]) > 0.0
    with pytest.raises(ValueError, match=message("preds: row 0: probabilities sum to")):
        xs.cross_entropy(outside, [0])
    soft_outside = np.array([[0.5, 0.5 + 4.0 * tolerance]], dtype=dtype)
    with pytest.raises(ValueError, match=message("target: row 0: target probabilities sum")):
        xs.cross_entropy(inside, soft_outside)


def test_sum_tol_escape_hatch() -> None:
    preds = edited(PROBS, (1, 2), 0.45)  # the row sums to 1.05
    with pytest.raises(ValueError, match=message("sum_tol=1.49e-08")):
        xs.cross_entropy(preds, LABELS)
    with pytest.raises(ValueError, match=message("probabilities sum to 1.05", "sum_tol=0.01")):
        xs.cross_entropy(preds, LABELS, sum_tol=0.01)
    assert xs.cross_entropy(preds, LABELS, sum_tol=0.1) == xs.cross_entropy(
        preds, LABELS, validate=False
    )
    soft = edited(PROBS, (0, 0), 0.75)  # the target row sums to 1.05
    assert xs.cross_entropy(PROBS, soft, sum_tol=0.1) > 0.0
    assert xs.entropy(preds, sum_tol=0.1) > 0.0


# --- nulls -------------------------------------------------------------------------

NULL_CASES = {
    "polars-preds": (
        xs.binary_cross_entropy,
        (pl.Series([0.2, None, 0.4]), BINARY_TARGET),
        {},
        "preds",
        1,
    ),
    "polars-target": (
        xs.binary_cross_entropy,
        (BINARY, pl.Series([0.0, 1.0, None])),
        {},
        "target",
        2,
    ),
    "polars-labels": (
        xs.cross_entropy,
        (PROBS, pl.Series([0, None, 2])),
        {},
        "target",
        1,
    ),
    "polars-sample-weight": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"sample_weight": pl.Series([None, 1.0, 1.0])},
        "sample_weight",
        0,
    ),
    "polars-array-row": (
        xs.cross_entropy,
        (pl.Series([[0.5, 0.5], None, [0.5, 0.5]], dtype=pl.Array(pl.Float64, 2)), LABELS % 2),
        {},
        "preds",
        1,
    ),
    "polars-array-element": (
        xs.cross_entropy,
        (
            pl.Series([[0.5, 0.5], [0.5, 0.5], [0.5, None]], dtype=pl.Array(pl.Float64, 2)),
            LABELS % 2,
        ),
        {},
        "preds",
        2,
    ),
    "polars-frame": (
        xs.cross_entropy,
        (pl.DataFrame({"a": [0.5, 0.5, 0.5], "b": [0.5, None, 0.5]}), LABELS % 2),
        {},
        "preds",
        1,
    ),
    "pyarrow-preds": (
        xs.binary_cross_entropy,
        (pa.array([0.2, 0.3, None]), BINARY_TARGET),
        {},
        "preds",
        2,
    ),
    "pyarrow-labels": (
        xs.cross_entropy,
        (PROBS, pa.chunked_array([[0], [None, 2]])),
        {},
        "target",
        1,
    ),
    "pyarrow-fixed-size-list-element": (
        xs.cross_entropy,
        (pa.array([[0.5, 0.5], [None, 0.5], [0.5, 0.5]], pa.list_(pa.float64(), 2)), LABELS % 2),
        {},
        "preds",
        1,
    ),
}


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "name", "row"), NULL_CASES.values(), ids=NULL_CASES
)
def test_nulls_are_rejected(
    function: Any, args: tuple, kwargs: dict[str, Any], name: str, row: int
) -> None:
    with pytest.raises(ValueError, match=message(f"{name}: row {row}: value is null")):
        function(*args, **kwargs)
    with pytest.raises(ValueError, match=message(f"{name}: row {row}: value is null")):
        function(*args, validate=False, **kwargs)


# --- types -------------------------------------------------------------------------

TYPE_CASES = {
    "integer-preds": (
        xs.cross_entropy,
        (PROBS.astype(np.int64), LABELS),
        {},
        message("preds: must be floating point", "int64"),
    ),
    "integer-binary-preds": (
        xs.binary_cross_entropy,
        (np.array([0, 1], dtype=np.int32), np.array([0.0, 1.0])),
        {},
        message("preds: must be floating point", "int32"),
    ),
    "float-hard-labels": (
        xs.cross_entropy,
        (PROBS, LABELS.astype(np.float64)),
        {},
        message("target: hard labels must be integers, got float64"),
    ),
    "string-preds": (
        xs.cross_entropy,
        (np.array([["a", "b"]]), [0]),
        {},
        message("preds: must be floating point"),
    ),
    "ragged-preds": (
        xs.cross_entropy,
        (np.array([[0.5, 0.5], [1.0]], dtype=object), [0, 0]),
        {},
        message("preds: ragged or non-numeric"),
    ),
    "string-sample-weight": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"sample_weight": np.array(["a", "b", "c"])},
        message("sample_weight: must be numeric"),
    ),
    "string-binary-target": (
        xs.binary_cross_entropy,
        (BINARY, np.array(["a", "b", "c"])),
        {},
        message("target: must be numeric or bool"),
    ),
    "unsupported-object": (
        xs.binary_cross_entropy,
        (object(), BINARY_TARGET),
        {},
        message("preds: unsupported type object"),
    ),
    "ignore-index-not-integer": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"ignore_index": 1.5},
        message("ignore_index: must be an integer"),
    ),
    "eps-not-a-number": (
        xs.cross_entropy,
        (PROBS, LABELS),
        {"eps": "small"},
        message("eps: must be 'auto' or a float"),
    ),
}


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "pattern"), TYPE_CASES.values(), ids=TYPE_CASES
)
def test_wrong_types(function: Any, args: tuple, kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(TypeError, match=pattern):
        function(*args, **kwargs)


OPTION_CASES = {
    "reduction": ({"reduction": "avg"}, message("reduction: must be one of")),
    "input": ({"input": "scores"}, message("input: must be one of")),
    "eps-negative": ({"eps": -0.1}, message("eps: must lie in [0, 0.5)")),
    "eps-too-large": ({"eps": 0.5}, message("eps: must lie in [0, 0.5)")),
    "label-smoothing": ({"label_smoothing": 1.5}, message("label_smoothing: must lie in [0, 1]")),
    "class-weight-negative": (
        {"class_weight": [1.0, -1.0, 1.0]},
        message("class_weight: entry 1 is -1.0"),
    ),
    "class-weight-nan": (
        {"class_weight": [1.0, 1.0, np.nan]},
        message("class_weight: entry 2 is nan"),
    ),
    "sum-tol-negative": ({"sum_tol": -1.0}, message("sum_tol: must be a finite number >= 0")),
    "soft-targets-with-ignore-index": (
        {"target": PROBS, "ignore_index": 0},
        message("target: soft targets (shape (3, 3)) cannot use ignore_index"),
    ),
}


@pytest.mark.parametrize(("kwargs", "pattern"), OPTION_CASES.values(), ids=OPTION_CASES)
def test_invalid_options(kwargs: dict[str, Any], pattern: str) -> None:
    kwargs = dict(kwargs)
    target = kwargs.pop("target", LABELS)
    with pytest.raises(ValueError, match=pattern):
        xs.cross_entropy(PROBS, target, **kwargs)


@pytest.mark.parametrize(
    ("function", "kwargs", "pattern"),
    [
        (xs.binary_cross_entropy, {"pos_weight": -1.0}, message("pos_weight: must be")),
        (xs.binary_cross_entropy, {"pos_weight": np.inf}, message("pos_weight: must be")),
        (xs.multilabel_cross_entropy, {"pos_weight": -2.0}, message("pos_weight: must be")),
        (
            xs.multilabel_cross_entropy,
            {"pos_weight": [1.0, np.nan, 1.0]},
            message("pos_weight: entry 1 is nan"),
        ),
        (xs.entropy, {"reduction": "mean "}, message("reduction: must be one of")),
    ],
)
def test_invalid_binary_options(function: Any, kwargs: dict[str, Any], pattern: str) -> None:
    args = (PROBS,) if function is xs.entropy else (PROBS, np.ones((3, 3)))
    if function is xs.binary_cross_entropy:
        args = (BINARY, BINARY_TARGET)
    with pytest.raises(ValueError, match=pattern):
        function(*args, **kwargs)


# --- the first offending row of a large batch ---------------------------------------

N_ROWS = 150_000
FIRST = 37_123
LATER = [37_124, 120_000, N_ROWS - 1]


def _large_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(N_ROWS, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return {
        "preds": probs,
        "labels": rng.integers(0, 3, size=N_ROWS),
        "soft": probs[::-1].copy(),
        "weights": rng.uniform(size=N_ROWS),
        "binary": probs[:, 0].copy(),
        "binary_target": (probs[:, 1] > 0.3).astype(np.float64),
    }


def _break_nan(data: dict[str, np.ndarray], row: int) -> None:
    data["preds"][row, 1] = np.nan
    data["binary"][row] = np.nan


def _break_range(data: dict[str, np.ndarray], row: int) -> None:
    data["preds"][row, 0] = 1.5
    data["binary"][row] = 1.5


def _break_sum(data: dict[str, np.ndarray], row: int) -> None:
    data["preds"][row] *= 0.5


def _break_label(data: dict[str, np.ndarray], row: int) -> None:
    data["labels"][row] = 7


def _break_weight(data: dict[str, np.ndarray], row: int) -> None:
    data["weights"][row] = -2.0


def _break_soft(data: dict[str, np.ndarray], row: int) -> None:
    data["soft"][row] = [1.5, -0.25, -0.25]


def _break_binary_target(data: dict[str, np.ndarray], row: int) -> None:
    data["binary_target"][row] = 2.0


def _multiclass(data: dict[str, np.ndarray]) -> Any:
    return xs.cross_entropy(data["preds"], data["labels"], sample_weight=data["weights"])


def _soft(data: dict[str, np.ndarray]) -> Any:
    return xs.cross_entropy(data["preds"], data["soft"], sample_weight=data["weights"])


def _binary(data: dict[str, np.ndarray]) -> Any:
    return xs.binary_cross_entropy(
        data["binary"], data["binary_target"], sample_weight=data["weights"]
    )


LARGE_CASES = {
    "nan": (_multiclass, _break_nan, message(f"preds: row {FIRST}, class 1: prediction is NaN")),
    "range": (_multiclass, _break_range, message(f"preds: row {FIRST}, class 0: probability 1.5")),
    "row-sum": (_multiclass, _break_sum, message(f"preds: row {FIRST}: probabilities sum to")),
    "label": (_multiclass, _break_label, message(f"target: row {FIRST}: label 7 is outside")),
    "weight": (_multiclass, _break_weight, message(f"sample_weight: row {FIRST}: weight -2.0")),
    "soft-target": (_soft, _break_soft, message(f"target: row {FIRST}, class 1: target prob")),
    "binary-nan": (_binary, _break_nan, message(f"preds: row {FIRST}: prediction is NaN")),
    "binary-target": (_binary, _break_binary_target, message(f"target: row {FIRST}: target 2.0")),
}


@pytest.fixture(scope="module")
def large_batch() -> dict[str, np.ndarray]:
    return _large_batch()


@pytest.mark.parametrize(("loss", "breaker", "pattern"), LARGE_CASES.values(), ids=LARGE_CASES)
def test_first_offending_row_is_reported(
    large_batch: dict[str, np.ndarray], loss: Any, breaker: Any, pattern: str
) -> None:
    assert _batch._block_count(N_ROWS, 3, False, 1) > 1  # several parallel blocks
    data = {key: value.copy() for key, value in large_batch.items()}
    assert np.isfinite(loss(data))
    # Later rows break other rules, in the same block and in later blocks.
    for row, other in zip(LATER, [_break_label, _break_nan, _break_weight], strict=True):
        other(data, row)
    breaker(data, FIRST)
    with pytest.raises(ValueError, match=pattern):
        loss(data)
