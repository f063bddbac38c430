"""Hypothesis strategies shared by the property tests, and the ``ci`` profile.

Large arrays are not drawn element by element (slow to generate, slow to shrink):
a strategy draws the shape, the options and a seed, and a seeded
``np.random.default_rng`` fills the arrays. Element-level strategies are kept for
what hypothesis is good at: float64 terms across the whole exponent range and
extreme logits.

Everything here uses float64 predictions, int64 labels and float64 weights, so
the property tests add no compiled kernel signature of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "FLOAT32_MAX",
    "Problem",
    "cut_points",
    "extreme_logits",
    "float64_terms",
    "problems",
    "term_lists",
]

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=30,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)

#: Finite float64 values from every part of the range: subnormals, tiny, ordinary, huge.
float64_terms = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True),
    st.floats(min_value=-1e-300, max_value=1e-300, allow_subnormal=True),
    st.sampled_from([5e-324, -5e-324, 2.2250738585072014e-308, FLOAT64_MAX, -FLOAT64_MAX]),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
)


@st.composite
def term_lists(draw: st.DrawFn, max_size: int = 40) -> list[float]:
    """Lists of float64 terms that mix magnitudes and cancel each other in part."""
    base = draw(st.lists(float64_terms, max_size=max_size))
    cancelled = draw(st.lists(st.sampled_from(base), max_size=len(base))) if base else []
    terms = base + [-x for x in cancelled]
    return draw(st.permutations(terms))


@st.composite
def cut_points(draw: st.DrawFn, n_rows: int) -> list[int]:
    """Sorted cut positions splitting ``range(n_rows)`` into batches (empty ones allowed)."""
    cuts = draw(st.lists(st.integers(0, n_rows), max_size=6))
    return sorted(cuts)


@dataclass
class Problem:
    """One random multiclass, binary or multi-label batch and its loss options."""

    kind: str
    preds: np.ndarray
    target: np.ndarray
    sample_weight: np.ndarray | None
    options: dict[str, Any]

    @property
    def n_rows(self) -> int:
        return self.preds.shape[0]

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The batch restricted to rows ``start:stop``."""
        weights = None if self.sample_weight is None else self.sample_weight[start:stop]
        return self.preds[start:stop], self.target[start:stop], weights


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _multiclass(
    rng: np.random.Generator, n: int, n_classes: int, input: str, soft: bool
) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    if input == "logits":
        preds = logits
    elif input == "probs":
        preds = _softmax(logits)
    else:
        preds = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    if soft:
        target = rng.dirichlet(np.ones(n_classes), size=n)
    else:
        target = rng.integers(0, n_classes, size=n)
    return preds, target


def _binary(rng: np.random.Generator, shape: tuple[int, ...], input: str) -> np.ndarray:
    logits = rng.normal(scale=3.0, size=shape)
    if input == "logits":
        return logits
    p = 1.0 / (1.0 + np.exp(-logits))
    return p if input == "probs" else np.log(p)


@st.composite
def problems(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = ("hard", "soft", "binary", "multilabel"),
    max_rows: int = 200,
) -> Problem:
    """A random batch of one of ``kinds`` with random options and maybe sample weights."""
    kind = draw(st.sampled_from(kinds))
    n = draw(st.integers(0, max_rows))
    n_classes = draw(st.integers(1 if kind == "multilabel" else 2, 6))
    input = draw(st.sampled_from(["probs", "logprobs", "logits"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    options: dict[str, Any] = {"input": input}
    if kind in ("hard", "soft"):
        preds, target = _multiclass(rng, n, n_classes, input, soft=kind == "soft")
        if draw(st.booleans()):
            options["class_weight"] = rng.uniform(0.1, 3.0, size=n_classes)
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5]))
        if kind == "hard" and n and draw(st.booleans()):
            options["ignore_index"] = -100
            target[rng.random(n) < 0.2] = -100
    elif kind == "binary":
        preds = _binary(rng, (n,), input)
        target = rng.integers(0, 2, size=n).astype(np.float64)
        if draw(st.booleans()):
            options["pos_weight"] = draw(st.sampled_from([0.5, 2.0, 3.5]))
    else:
        preds = _binary(rng, (n, n_classes), input)
        target = rng.integers(0, 2, size=(n, n_classes)).astype(np.float64)
        if draw(st.booleans()):
            options["pos_weight"] = rng.uniform(0.5, 3.0, size=n_classes)
    weights = rng.uniform(0.0, 4.0, size=n) if draw(st.booleans()) else None
    return Problem(kind, preds, target, weights, options)


def extreme_logits(dtype: Any, n_classes: int = 4, max_rows: int = 8) -> st.SearchStrategy:
    """(N, C) logits of ``dtype`` mixing ordinary values with +-1e30 and +-float32 max."""
    dtype = np.dtype(dtype)
    bound = float(dtype.type(1e30))  # 1e30 as the nearest value of the dtype
    huge = [bound, -bound, FLOAT32_MAX, -FLOAT32_MAX, 0.0]
    elements = st.one_of(
        st.sampled_from(huge),
        st.floats(-bound, bound, width=8 * dtype.itemsize, allow_subnormal=False),
    )
    rows = st.integers(1, max_rows)
    return rows.flatmap(lambda n: hnp.arrays(dtype, (n, n_classes), elements=elements))
