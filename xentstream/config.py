"""What a loss computation is: the configuration shared by functions, metrics and state files.

A config is frozen and compared as a whole: two metrics merge only when their
configs are equal, and a state file records its metric's config.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from xentstream._errors import show
from xentstream._kernels.layout import INPUT_KINDS

__all__ = [
    "MAX_CALIBRATION_BINS",
    "TOKEN_INPUTS",
    "BinaryConfig",
    "LossConfig",
    "MulticlassConfig",
    "MultilabelConfig",
    "TokenConfig",
    "check_calibration_bins",
]

#: Values of ``input=`` of the token kind: target log-probabilities, or their negatives.
TOKEN_INPUTS = ("logprobs", "nll")


@functools.lru_cache(maxsize=64)
def machine_eps(dtype: Any) -> float:
    """``np.finfo(dtype).eps``; also for ``"bfloat16"``, which numpy does not know.

    Cached by dtype: ``str(dtype)`` and ``np.finfo`` took ~15 us, on every batch of
    probabilities (the sum-to-one tolerance) or of any binary input.
    """
    if str(dtype) == "bfloat16":
        return 2.0**-7  # 8 significand bits
    return float(np.finfo(dtype).eps)


def _check_input(value: str) -> str:
    if value not in INPUT_KINDS:
        raise ValueError(f"input: must be one of {sorted(INPUT_KINDS)}, got {value!r}")
    return value


def _check_eps(value: float | str) -> float | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"eps: must be 'auto' or a float, got {value!r}")
    if not 0.0 <= value < 0.5:
        raise ValueError(f"eps: must lie in [0, 0.5), got {value!r}")
    return float(value)


def _check_sum_tol(value: float | None) -> float | None:
    if value is None:
        return None
    if not (isinstance(value, int | float) and value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"sum_tol: must be a finite number >= 0 or None, got {value!r}")
    return float(value)


def _check_flag(name: str, value: Any) -> bool:
    # bool("no") is True: a string or a number here is a mistake, not a yes.
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: must be True or False, got {show(value)}")
    return bool(value)


def _check_count(name: str, value: Any) -> int | None:
    """A positive class / label count (numpy integers too), below 2**31."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: must be a positive integer or None, got {show(value)}")
    if not 1 <= value < 1 << 31:
        raise ValueError(f"{name}: must be a positive integer below 2**31, got {show(value)}")
    return int(value)


def _weight_tuple(name: str, values: Any, *, allow_zero: bool) -> tuple[float, ...] | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D sequence, got shape {array.shape}")
    bad = ~np.isfinite(array) | (array < 0.0) | (~allow_zero & (array == 0.0))
    if bad.any():
        index = int(np.argmax(bad))
        rule = "finite and >= 0" if allow_zero else "finite and > 0"
        value = float(array[index])
        raise ValueError(f"{name}: entry {index} is {value!r}; weights must be {rule}")
    return tuple(float(v) for v in array)


#: Most reliability bins a metric may keep (each is about 1.7 kB of exact state).
MAX_CALIBRATION_BINS = 1 << 12
#: Fields written only when set: files written before they existed stay readable (and
#: equal to what this version writes for the same metric).
_OPTIONAL_FIELDS = ("calibration_bins",)


def check_calibration_bins(value: Any) -> int | None:
    """``calibration_bins=``: None (no calibration) or a bin count in [1, 4096]."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"calibration_bins: must be a positive integer or None, got {show(value)}")
    if not 1 <= value <= MAX_CALIBRATION_BINS:
        raise ValueError(
            f"calibration_bins: must lie in [1, {MAX_CALIBRATION_BINS}], got {show(value)}"
        )
    return int(value)


@dataclass(frozen=True)
class LossConfig:
    """Base of the loss configurations: options common to every loss.

    ``calibration_bins``: also keep that many equal-width reliability bins
    (:mod:`xentstream.calibration`); None keeps none.
    """

    kind: ClassVar[str] = ""
    input: str = "probs"
    eps: float | str = "auto"
    sum_tol: float | None = None
    validate: bool = True
    calibration_bins: int | None = None

    def __post_init__(self) -> None:
        _check_input(self.input)
        object.__setattr__(self, "eps", _check_eps(self.eps))
        object.__setattr__(self, "sum_tol", _check_sum_tol(self.sum_tol))
        object.__setattr__(self, "validate", _check_flag("validate", self.validate))
        bins = check_calibration_bins(self.calibration_bins)
        object.__setattr__(self, "calibration_bins", bins)

    def resolve_eps(self, dtype: np.dtype) -> float:
        """The clipping eps for inputs of ``dtype`` ("auto": machine eps, as scikit-learn).

        Only probabilities are clipped; log-probabilities and logits are used as given
        (SPEC section 2), for every loss kind.
        """
        if self.input != "probs":
            return 0.0
        if self.eps == "auto":
            return machine_eps(dtype)
        return float(self.eps)

    def resolve_sum_tol(self, dtype: np.dtype) -> float:
        """Tolerance of the sum-to-one checks (default sqrt(eps) of ``dtype``)."""
        if self.sum_tol is None:
            return math.sqrt(machine_eps(dtype))
        return self.sum_tol

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (optional ones when set), with the loss kind."""
        data = asdict(self)
        data["kind"] = self.kind
        for name in _OPTIONAL_FIELDS:
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys are a ``ValueError``."""
        if data.get("kind") != cls.kind:
            raise ValueError(f"config: kind {show(data.get('kind'))} is not {cls.kind!r}")
        given = set(data) - {"kind"}
        names = {f.name for f in fields(cls)} - (set(_OPTIONAL_FIELDS) - given)
        if given != names:
            wrong = sorted(map(str, given ^ names))
            shown = ", ".join(show(k) for k in wrong[:5]) + (", ..." if len(wrong) > 5 else "")
            raise ValueError(
                f"config: {len(wrong)} fields ({shown}) do not match a {cls.kind} config"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
        return cls(**values)


@dataclass(frozen=True)
class MulticlassConfig(LossConfig):
    """Configuration of multiclass cross-entropy (SPEC section 2, "Multiclass")."""

    kind: ClassVar[str] = "multiclass"
    num_classes: int | None = None
    class_weight: tuple[float, ...] | None = None
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    per_class: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "num_classes", _check_count("num_classes", self.num_classes))
        weights = _weight_tuple("class_weight", self.class_weight, allow_zero=True)
        object.__setattr__(self, "class_weight", weights)
        if (
            weights is not None
            and self.num_classes is not None
            and len(weights) != self.num_classes
        ):
            raise ValueError(
                f"class_weight: has {len(weights)} entries but num_classes is {self.num_classes}"
            )
        if self.ignore_index is not None and (
            isinstance(self.ignore_index, bool)
            or not isinstance(self.ignore_index, int | np.integer)
        ):
            raise TypeError(f"ignore_index: must be an integer or None, got {self.ignore_index!r}")
        if self.ignore_index is not None:
            if not -(1 << 63) <= self.ignore_index < 1 << 63:  # an int64 in the kernels
                raise ValueError(f"ignore_index: must fit in int64, got {show(self.ignore_index)}")
            object.__setattr__(self, "ignore_index", int(self.ignore_index))
        if not (
            isinstance(self.label_smoothing, int | float)
            and not isinstance(self.label_smoothing, bool)
            and 0.0 <= self.label_smoothing <= 1.0
        ):
            raise ValueError(f"label_smoothing: must lie in [0, 1], got {self.label_smoothing!r}")
        object.__setattr__(self, "label_smoothing", float(self.label_smoothing))
        object.__setattr__(self, "per_class", _check_flag("per_class", self.per_class))

    def resolve_eps(self, dtype: np.dtype) -> float:
        if self.input != "probs":
            return 0.0
        return super().resolve_eps(dtype)


@dataclass(frozen=True)
class BinaryConfig(LossConfig):
    """Configuration of binary cross-entropy (SPEC section 2, "Binary")."""

    kind: ClassVar[str] = "binary"
    pos_weight: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pos_weight is not None:
            value = self.pos_weight
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"pos_weight: must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, "pos_weight", float(value))


@dataclass(frozen=True)
class MultilabelConfig(LossConfig):
    """Configuration of multi-label cross-entropy (SPEC section 2, "Multi-label")."""

    kind: ClassVar[str] = "multilabel"
    num_labels: int | None = None
    pos_weight: float | tuple[float, ...] | None = None
    per_label: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "num_labels", _check_count("num_labels", self.num_labels))
        value = self.pos_weight
        if value is not None and np.ndim(value) == 0:
            value = float(value)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"pos_weight: must be finite and >= 0, got {value!r}")
        elif value is not None:
            value = _weight_tuple("pos_weight", value, allow_zero=True)
            if self.num_labels is not None and len(value) != self.num_labels:
                raise ValueError(
                    f"pos_weight: has {len(value)} entries but num_labels is {self.num_labels}"
                )
        object.__setattr__(self, "pos_weight", value)
        object.__setattr__(self, "per_label", _check_flag("per_label", self.per_label))


@dataclass(frozen=True)
class TokenConfig(LossConfig):
    """Configuration of the token kind (:mod:`xentstream.tokens`): one value a row.

    ``input``: ``"logprobs"`` (target log-probabilities) or ``"nll"``; ``unit``: what
    the units count (``"byte"``, ``"character"``, ``"word"``; a label for reports);
    ``per_document``: keep the per-document table in the report.
    """

    kind: ClassVar[str] = "tokens"
    input: str = "logprobs"
    unit: str | None = None
    per_document: bool = False

    def __post_init__(self) -> None:
        if self.input not in TOKEN_INPUTS:
            raise ValueError(f"input: must be one of {list(TOKEN_INPUTS)}, got {self.input!r}")
        for name, unset in (("eps", self.eps == "auto"), ("sum_tol", self.sum_tol is None)):
            if not unset:
                raise ValueError(f"{name}: token values are not probabilities; leave it unset")
        if self.calibration_bins is not None:
            # One log-probability a row: no forecast distribution to bin.
            raise ValueError(
                "calibration_bins: the tokens kind has no forecasts to calibrate (one "
                "log-probability per row, not a distribution); leave it unset"
            )
        object.__setattr__(self, "validate", _check_flag("validate", self.validate))
        if self.unit is not None and (not isinstance(self.unit, str) or not self.unit.strip()):
            raise ValueError(f"unit: must be a non-empty string or None, got {show(self.unit)}")
        object.__setattr__(self, "per_document", _check_flag("per_document", self.per_document))

    def resolve_eps(self, dtype: np.dtype) -> float:
        return 0.0
