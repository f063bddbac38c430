"""Every input container and memory layout gives the bits of the plain numpy path.

Metrics and one-shot functions are fed the same batch as numpy arrays of other
layouts (Fortran order, strided and reversed views), Python lists, polars Series
(Array columns for 2-D data), pyarrow arrays and torch CPU tensors (also with
``requires_grad=True`` and as float16); state, report and functional result must
be bitwise those of C-contiguous numpy arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from metric_cases import CASES, Batch, Case, case_for, float_bits, report_bits

import xentstream as xs

#: One configuration per metric class, plus soft multiclass targets.
INPUT_CASES = [case_for(cls) for cls in (xs.CrossEntropy, xs.BinaryCrossEntropy)]
INPUT_CASES += [c for c in CASES if c.id in ("MultiLabelCrossEntropy-probs-per_label",)]
SOFT = next(c for c in CASES if c.id == "CrossEntropy-soft-logits")


def _row_strided(array: np.ndarray) -> np.ndarray:
    big = np.zeros((2 * array.shape[0], *array.shape[1:]), dtype=array.dtype)
    big[::2] = array
    view = big[::2]
    assert not view.flags.c_contiguous or array.shape[0] <= 1
    return view


def _column_strided(array: np.ndarray) -> np.ndarray:
    if array.ndim < 2:
        return _row_strided(array)
    wide = np.zeros((array.shape[0], 2 * array.shape[1]), dtype=array.dtype)
    wide[:, ::2] = array
    return wide[:, ::2]


def _polars(array: np.ndarray) -> pl.Series:
    if array.ndim == 2:
        inner = pl.Int64 if array.dtype.kind == "i" else pl.Float64
        return pl.Series("column", array, dtype=pl.Array(inner, array.shape[1]))
    return pl.Series("column", array)


def _pyarrow(array: np.ndarray) -> pa.Array:
    if array.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    return pa.array(array)


def _pyarrow_chunked(array: np.ndarray) -> pa.ChunkedArray:
    half = len(array) // 2
    return pa.chunked_array([_pyarrow(array[:half]), _pyarrow(array[half:])])


def _torch_grad(array: np.ndarray) -> torch.Tensor:
    tensor = torch.tensor(array)
    if tensor.is_floating_point():
        tensor.requires_grad_(True)
    return tensor


CONVERTERS: dict[str, Callable[[np.ndarray], Any]] = {
    "fortran": np.asfortranarray,
    "row-strided": _row_strided,
    "column-strided": _column_strided,
    "reversed": lambda a: a[::-1],  # a permutation of the rows: exact sums do not care
    "list": lambda a: a.tolist(),
    "tuple": lambda a: tuple(a.tolist()),
    "polars": _polars,
    "pyarrow": _pyarrow,
    "pyarrow-chunked": _pyarrow_chunked,
    "torch": torch.from_numpy,
    "torch-requires-grad": _torch_grad,
}
#: Converters that keep numpy memory (no compiled specialization beyond the numpy path).
_NUMPY_ONLY = ("fortran", "row-strided", "column-strided", "reversed", "list")


def _batch(case: Case) -> Batch:
    return case.batch(np.random.default_rng([CASES.index(case), 500]), 23)


def _converted(batch: Batch, convert: Callable[[np.ndarray], Any]) -> tuple[Any, Any, Any]:
    return convert(batch.preds), convert(batch.target), convert(batch.sample_weight)


def _results(case: Case, preds: Any, target: Any, weight: Any) -> tuple[Any, ...]:
    metric = case.metric().update(preds, target, weight)
    functional = case.functional(Batch(preds, target, weight))
    return metric.state_dict(), report_bits(metric.compute()), float_bits(functional)


def _pairs() -> list[tuple[Case, str]]:
    pairs = [(case, name) for case in INPUT_CASES for name in CONVERTERS]
    return pairs + [(SOFT, name) for name in _NUMPY_ONLY]


_PAIRS = _pairs()


@pytest.mark.parametrize(
    ("case", "converter"), _PAIRS, ids=[f"{case.id}-{name}" for case, name in _PAIRS]
)
def test_every_input_kind_gives_the_numpy_bits(case: Case, converter: str) -> None:
    batch = _batch(case)
    expected = _results(case, *batch)
    arguments = _converted(batch, CONVERTERS[converter])
    assert _results(case, *arguments) == expected


@pytest.mark.parametrize("case", INPUT_CASES, ids=[c.id for c in INPUT_CASES])
def test_inputs_are_not_modified(case: Case) -> None:
    batch = _batch(case)
    copies = [a.copy() for a in batch]
    preds = _torch_grad(batch.preds)
    before = preds.detach().clone()
    case.metric().update(*batch).update(preds, torch.from_numpy(batch.target))
    for original, kept in zip(batch, copies, strict=True):
        np.testing.assert_array_equal(original, kept)
    assert torch.equal(preds.detach(), before)
    assert preds.grad is None


#: float16 probabilities rarely sum to 1 within float32's tolerance: logits for multiclass.
HALF_CASES = [
    next(c for c in CASES if c.id == "CrossEntropy-logits-per_class-window"),
    *INPUT_CASES[1:],
]


@pytest.mark.parametrize("case", HALF_CASES, ids=[c.id for c in HALF_CASES])
def test_torch_float16_gives_the_numpy_float16_bits(case: Case) -> None:
    batch = _batch(case)
    half = batch.preds.astype(np.float16)
    numpy_path = _results(case, half, batch.target, batch.sample_weight)
    # The kernels read float16 widened to float32, with float16's eps (scikit-learn's
    # rule: clip at np.finfo(input dtype).eps) and sum tolerance sqrt(eps).
    half_eps = float(np.finfo(np.float16).eps)
    explicit = dataclasses.replace(
        case, kwargs={**case.kwargs, "eps": half_eps, "sum_tol": half_eps**0.5}
    )
    widened = _results(explicit, half.astype(np.float32), batch.target, batch.sample_weight)
    assert numpy_path[0]["sums"] == widened[0]["sums"]
    assert numpy_path[1:] == widened[1:]
    tensor = torch.from_numpy(half)
    assert tensor.dtype == torch.float16
    assert _results(case, tensor, batch.target, batch.sample_weight) == numpy_path
    with_grad = tensor.float().half().requires_grad_(True)
    assert _results(case, with_grad, batch.target, batch.sample_weight) == numpy_path


def test_polars_dataframe_columns_as_classes() -> None:
    case = INPUT_CASES[0]
    batch = _batch(case)
    frame = pl.DataFrame({f"p{c}": batch.preds[:, c] for c in range(batch.preds.shape[1])})
    expected = _results(case, *batch)
    assert _results(case, frame, batch.target, batch.sample_weight) == expected
