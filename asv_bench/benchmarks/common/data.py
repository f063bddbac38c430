"""Seeded data of the benchmarks that are not comparisons (the functional API's grid).

The comparison cases' data, prediction dumps and ``logits_and_labels`` come from
``tests/comparisons.py`` (re-exported by the package), so that a benchmark and the test
of its peers build the same arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import xentstream as xs

from .shared import comparisons, reference
from .sizes import elements

LOSSES = ("hard", "soft", "smoothing", "binary", "multilabel")
INPUTS = ("probs", "logits")
CLASS_COUNTS = (10, 1000, 32000)
DTYPES = ("float32", "float64")


@dataclass
class Problem:
    """One functional-API call on fixed data (``call()``) and the arrays it reads."""

    call: Callable[[], Any]
    arrays: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def kernel_problem(
    loss: str, input: str, n_classes: int, dtype: str, n_elements: int | None = None
) -> Problem:
    """Data and call for ``kernels.Functional``; NotImplementedError where inapplicable.

    ``loss`` is one of :data:`LOSSES`: multiclass with hard labels, soft targets or
    label smoothing (``xs.cross_entropy``), binary (``xs.binary_cross_entropy``,
    1-D predictions: it has no class axis and is measured once, at the first class
    count) or multi-label (``xs.multilabel_cross_entropy``).
    """
    if loss not in LOSSES or input not in INPUTS:
        raise ValueError(f"unknown loss {loss!r} or input {input!r}")
    if loss == "binary" and n_classes != CLASS_COUNTS[0]:
        raise NotImplementedError("binary predictions have no class axis")
    n = elements() if n_elements is None else n_elements
    gen = comparisons.generator("kernel", loss, input, n_classes, dtype)
    dt = np.dtype(dtype)
    sigmoid, softmax = reference.sigmoid, reference.softmax
    if loss == "binary":
        z = gen.standard_normal(n) * 2.0
        preds = (z if input == "logits" else sigmoid(z)).astype(dt)
        target = (gen.random(n) < sigmoid(z)).astype(dt)
        return Problem(lambda: xs.binary_cross_entropy(preds, target, input=input), (preds, target))
    rows = comparisons.rows_for(n_classes, n)
    z = gen.standard_normal((rows, n_classes)) * 2.0
    if loss == "multilabel":
        preds = (z if input == "logits" else sigmoid(z)).astype(dt)
        target = (gen.random(z.shape) < sigmoid(z)).astype(dt)
        return Problem(
            lambda: xs.multilabel_cross_entropy(preds, target, input=input), (preds, target)
        )
    preds = (z if input == "logits" else softmax(z)).astype(dt)
    if loss == "soft":
        target = softmax(gen.standard_normal(z.shape)).astype(dt)
    else:
        target = gen.integers(0, n_classes, rows, dtype=np.int64)
    smoothing = comparisons.LABEL_SMOOTHING if loss == "smoothing" else 0.0
    return Problem(
        lambda: xs.cross_entropy(preds, target, input=input, label_smoothing=smoothing),
        (preds, target),
    )
