"""Per-metric-class case factory shared by the metric conformance tests.

Every public metric class (found by introspection) has a few configurations here,
each able to make seeded random batches ``(preds, target, sample_weight)`` and to
compute the one-shot functional result on any concatenation of them. The
conformance harness (``test_conformance.py``) runs one set of checks over all of
them; ``test_threads.py`` and ``test_inputs.py`` reuse the same batches.

Dtypes are kept to float64 predictions, int64 labels and float64 targets and
weights, so the whole module needs one compiled kernel signature per loss kind.
"""

from __future__ import annotations

import inspect
import math
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy.special import log_softmax, softmax

import xentstream as xs

N_CLASSES = 4

#: Metric-only constructor arguments that the one-shot functions do not take.
_METRIC_ONLY = {
    "num_classes",
    "num_labels",
    "per_class",
    "per_label",
    "window",
    "engine",
    "per_document",
    "unit",
}

FUNCTIONAL = {
    xs.CrossEntropy: xs.cross_entropy,
    xs.BinaryCrossEntropy: xs.binary_cross_entropy,
    xs.MultiLabelCrossEntropy: xs.multilabel_cross_entropy,
    xs.TokenCrossEntropy: xs.token_cross_entropy,
}


class Batch(NamedTuple):
    preds: np.ndarray
    target: np.ndarray
    sample_weight: np.ndarray | None


def all_metric_classes() -> list[type[xs.Metric]]:
    """Every concrete metric class, found by walking ``Metric.__subclasses__()``."""
    found: list[type[xs.Metric]] = []
    stack = list(xs.Metric.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in found:
            found.append(cls)
            stack.extend(cls.__subclasses__())
    return sorted((c for c in found if not c.__name__.startswith("_")), key=lambda c: c.__name__)


@dataclass(frozen=True)
class Case:
    """One metric configuration and the kind of batches it is fed."""

    cls: type[xs.Metric]
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: str = "hard"  # "hard" labels or "soft" targets
    leading: tuple[int, ...] = ()  # extra leading dimensions, e.g. (seq,) for tokens
    n_classes: int = N_CLASSES

    @property
    def id(self) -> str:
        return f"{self.cls.__name__}-{self.name}"

    @property
    def kind(self) -> str:
        return self.cls.kind.name

    @property
    def input(self) -> str:
        return self.kwargs.get("input", "probs")

    @property
    def window(self) -> int | None:
        return self.kwargs.get("window")

    @property
    def ignore_index(self) -> int | None:
        return self.kwargs.get("ignore_index")

    def other_config(self) -> dict[str, Any]:
        """Constructor overrides that make another config of the same metric class."""
        return {"unit": "word"} if self.kind == "tokens" else {"sum_tol": 1e-3}

    def rows(self, batch: Batch) -> int:
        """Rows of ``batch`` as the metric counts them (leading dimensions flattened)."""
        if self.kind in ("binary", "tokens"):
            return int(batch.preds.size)
        return int(np.prod(batch.preds.shape[:-1]))

    def metric(self, **overrides: Any) -> xs.Metric:
        return self.cls(**{**self.kwargs, **overrides})

    def functional_kwargs(self) -> dict[str, Any]:
        accepted = inspect.signature(FUNCTIONAL[self.cls]).parameters
        kwargs = {k: v for k, v in self.kwargs.items() if k not in _METRIC_ONLY}
        assert set(kwargs) <= set(accepted), (self.id, set(kwargs) - set(accepted))
        return kwargs

    def functional(self, batch: Batch, **extra: Any) -> float:
        """The one-shot functional result on ``batch`` (exact, correctly rounded)."""
        return FUNCTIONAL[self.cls](
            batch.preds,
            batch.target,
            sample_weight=batch.sample_weight,
            **self.functional_kwargs(),
            **extra,
        )

    # -- data ----------------------------------------------------------------------------

    def batch(self, rng: np.random.Generator, n: int, *, weighted: bool = True) -> Batch:
        """A valid random batch of ``n`` outer rows."""
        shape = (n, *self.leading)
        if self.kind == "multiclass":
            preds = _class_predictions(rng, shape, self.n_classes, self.input)
            if self.target == "soft":
                target = rng.dirichlet(np.full(self.n_classes, 0.7), size=shape)
            else:
                target = rng.integers(0, self.n_classes, size=shape, dtype=np.int64)
                if self.ignore_index is not None:
                    target[rng.random(shape) < 0.2] = self.ignore_index
        elif self.kind == "binary":
            preds = _binary_predictions(rng, shape, self.input)
            target = _binary_targets(rng, shape, self.target)
        elif self.kind == "tokens":
            # Target log-probabilities (or NLLs) and a 0/1 mask in the target's place.
            logprobs = log_softmax(rng.normal(scale=2.5, size=(*shape, 50)), axis=-1)[..., 0]
            preds = -logprobs if self.input == "nll" else logprobs
            target = (rng.random(shape) > 0.15).astype(np.int64)
            # The rejection rules corrupt early rows, and a masked row is never checked.
            target.reshape(-1)[:8] = 1
        else:
            shape = (*shape, self.n_classes)
            preds = _binary_predictions(rng, shape, self.input)
            target = _binary_targets(rng, shape, self.target)
        weights = None
        if weighted:
            weights = rng.uniform(0.0, 2.0, size=(n, *self.leading))
            weights[rng.random(weights.shape) < 0.1] = 0.0
        return Batch(preds, target, weights)

    def batches(
        self, rng: np.random.Generator, sizes: list[int], *, weighted: bool = True
    ) -> list[Batch]:
        return [self.batch(rng, n, weighted=weighted) for n in sizes]


def concat(batches: list[Batch]) -> Batch:
    weights = None
    if batches[0].sample_weight is not None:
        weights = np.concatenate([b.sample_weight for b in batches])
    return Batch(
        np.concatenate([b.preds for b in batches]),
        np.concatenate([b.target for b in batches]),
        weights,
    )


def _class_predictions(
    rng: np.random.Generator, shape: tuple[int, ...], n_classes: int, kind: str
) -> np.ndarray:
    logits = rng.normal(scale=2.5, size=(*shape, n_classes))
    if kind == "logits":
        return logits
    if kind == "logprobs":
        return log_softmax(logits, axis=-1)
    probs = softmax(logits, axis=-1)
    # a few one-hot rows exercise the clipping of zero probabilities
    one_hot = rng.random(shape) < 0.1
    probs[one_hot] = np.eye(n_classes)[rng.integers(0, n_classes, size=int(one_hot.sum()))]
    return probs


def _binary_predictions(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "logits":
        return rng.normal(scale=3.0, size=shape)
    probs = rng.uniform(0.0, 1.0, size=shape)
    if kind == "logprobs":
        return np.log(probs)  # used as given (not clipped): keep p away from 0 and 1
    # exact 0 and 1 exercise the clipping of probabilities
    edges = rng.random(shape)
    probs[edges < 0.05] = 0.0
    probs[edges > 0.95] = 1.0
    return probs


def _binary_targets(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "soft":
        return rng.uniform(0.0, 1.0, size=shape)
    return rng.integers(0, 2, size=shape).astype(np.float64)


CE, BCE, MLCE = xs.CrossEntropy, xs.BinaryCrossEntropy, xs.MultiLabelCrossEntropy
TCE = xs.TokenCrossEntropy

CASES: list[Case] = [
    Case(CE, "probs"),
    Case(CE, "logits-per_class-window", {"input": "logits", "per_class": True, "window": 7}),
    Case(
        CE,
        "logprobs-class_weight",
        {"input": "logprobs", "class_weight": [0.5, 1.0, 2.0, 1.5], "per_class": True},
    ),
    Case(CE, "logits-ignore_index", {"input": "logits", "ignore_index": 2, "per_class": True}),
    Case(CE, "probs-smoothing", {"label_smoothing": 0.1, "num_classes": N_CLASSES}),
    Case(CE, "soft-logits", {"input": "logits", "per_class": True}, target="soft"),
    Case(CE, "soft-probs-smoothing", {"label_smoothing": 0.2, "window": 5}, target="soft"),
    # logits with soft targets and no per-class sums take the kernel's SIMD-only path
    Case(CE, "soft-logits-smoothing", {"input": "logits", "label_smoothing": 0.1}, target="soft"),
    Case(
        CE,
        "tokens-logits",
        {
            "input": "logits",
            "ignore_index": -100,
            "class_weight": [1.0, 2.0, 0.5, 1.0],
            "window": 10,
        },
        leading=(3,),
    ),
    Case(BCE, "probs"),
    Case(BCE, "logits-pos_weight-window", {"input": "logits", "pos_weight": 2.5, "window": 6}),
    Case(BCE, "logprobs", {"input": "logprobs"}),
    Case(BCE, "soft-probs-eps", {"eps": 1e-7}, target="soft"),
    Case(MLCE, "probs-per_label", {"per_label": True}),
    Case(
        MLCE,
        "logits-pos_weight-window",
        {"input": "logits", "pos_weight": [0.5, 1.0, 2.0, 3.0], "per_label": True, "window": 5},
    ),
    Case(MLCE, "soft-logprobs", {"input": "logprobs", "pos_weight": 1.5}, target="soft"),
    Case(MLCE, "soft-logits", {"input": "logits"}, target="soft"),
    Case(TCE, "logprobs", {"input": "logprobs"}),
    Case(TCE, "nll-window", {"input": "nll", "window": 5, "unit": "byte"}, leading=(3,)),
]

CASE_IDS = [case.id for case in CASES]


def case_for(cls: type[xs.Metric]) -> Case:
    """The first case of ``cls``."""
    return next(case for case in CASES if case.cls is cls)


# -- bitwise comparison helpers ----------------------------------------------------------


def float_bits(value: float) -> str:
    """An exact, NaN-safe identity of a float (``-0.0`` and ``0.0`` differ)."""
    return struct.pack("<d", value).hex()


def bits(value: Any) -> Any:
    """``value`` with every float replaced by its bits, recursively."""
    if isinstance(value, float | np.floating):
        return float_bits(float(value))
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bits(v) for v in value]
    return value


def report_bits(report: xs.Report) -> dict[str, Any]:
    """Every field of a report (``per_class`` included), floats as bits."""
    return bits(report.to_dict())


def same_float(a: float, b: float) -> bool:
    return float_bits(a) == float_bits(b) or (math.isnan(a) and math.isnan(b))
