"""Shared numbering of the kernels' outputs: accumulator slots, counters, error codes.

Kernels write into arrays indexed by these constants; the Python layers read them
back by the same names. Nothing here imports numba.
"""

from __future__ import annotations

import functools
import struct
from collections import namedtuple

import numpy as np

# Input kinds (``input=`` in the API).
PROBS = 0
LOGPROBS = 1
LOGITS = 2
INPUT_KINDS = {"probs": PROBS, "logprobs": LOGPROBS, "logits": LOGITS}

# Exact sums every kernel accumulates, one accumulator row each (``sums[slot]``). The
# names are the state files' keys; the slot numbers follow from their order.
SUM_NAMES = (
    "loss",  # sum s_i L_i
    "denominator",  # sum s_i d_i   (d_i = class weight of the label; 1 for soft targets)
    "loss_squared",  # sum s_i L_i**2 / d_i   (second moment of the per-unit loss L/d)
    "weight",  # sum s_i
    "denominator_squared",  # sum (s_i d_i)**2   (effective sample size)
    "entropy",  # sum s_i H(p_i)   (predicted distribution)
    "target_entropy",  # sum s_i H(q_i)   (target distribution, after smoothing)
    "correct",  # sum s_i [top-1 prediction == target]
    "positive",  # sum s_i t_i   (binary: weighted positive mass)
)
(
    LOSS,
    DENOMINATOR,
    LOSS_SQUARED,
    WEIGHT,
    DENOMINATOR_SQUARED,
    ENTROPY,
    TARGET_ENTROPY,
    CORRECT,
    POSITIVE,
) = range(len(SUM_NAMES))
N_SUMS = len(SUM_NAMES)

#: Columns of the per-row terms a kernel writes for grouped reduction (``row_terms[i]``):
#: the row's exact term of each sum of :data:`SUM_NAMES` (what it adds to that sum), then
#: 1.0 for a row dropped by ``ignore_index`` (all its terms 0), 0.0 for a counted row.
ROW_IGNORED = N_SUMS
N_ROW_TERMS = N_SUMS + 1

# Integer counters (``counts[...]``).
COUNT_NAMES = (
    "rows",  # rows counted (not ignored)
    "ignored",  # rows dropped by ignore_index
)
ROWS, IGNORED = range(len(COUNT_NAMES))
N_COUNTS = len(COUNT_NAMES)

#: Relative slack (bits) of a state's Cauchy-Schwarz checks (``metrics._check_consistent``
#: and ``groups.screen_groups``): the kernels add rounded products.
CAUCHY_SCHWARZ_SLACK_BITS = 40
#: Absolute slack a term of a square's sum (units of 2**-1075): a square of a tiny
#: weight or loss underflows (1e-280 squared is 0.0), losing up to one unit a term.
UNDERFLOW_UNITS = 2

# Per-class (multiclass) / per-label (multi-label) exact sums: ``class_sums[c, slot]``.
CLASS_SUM_NAMES = (
    "loss",  # hard: sum s L over rows of label c; soft / labels: sum of c's share of L
    "weight",  # hard: sum s d; soft: sum s q_c; multi-label: sum s
    "mass",  # weighted target mass of c: hard sum s [y = c]; soft / labels sum s q_c
)
CLASS_LOSS, CLASS_WEIGHT, CLASS_MASS = range(len(CLASS_SUM_NAMES))
N_CLASS_SUMS = len(CLASS_SUM_NAMES)

# Error codes written by the fused validation (``errors[block] = row, code, column``).
OK = 0
PRED_NAN = 1
PRED_POS_INF = 2
PRED_NOT_PROBABILITY = 3
PRED_ROW_SUM = 4
PRED_POSITIVE_LOGPROB = 5
PRED_ALL_NEG_INF = 6
LABEL_OUT_OF_RANGE = 7
TARGET_INVALID = 8
TARGET_ROW_SUM = 9
TARGET_NOT_PROBABILITY = 10
SAMPLE_WEIGHT_INVALID = 11
# Token values (one target log-probability or NLL a row, ``_kernels/tokens.py``).
PRED_NEG_INF = 12  # a log-probability of -inf (the token had probability 0)
PRED_NEGATIVE_NLL = 13
UNITS_INVALID = 14  # units (bytes, characters, words) negative or not finite
MASK_INVALID = 15  # a mask value other than 0 / 1

#: Scalar options of one kernel call; a namedtuple so numba passes it by value.
#: Always build it with :func:`kernel_options` so the field types never change
#: (a new type would compile a new specialization).
KernelOptions = namedtuple(
    "KernelOptions",
    [
        "input_kind",  # PROBS / LOGPROBS / LOGITS
        "eps",  # probability clipping (0.0: none)
        "sum_tol",  # tolerance of the sum-to-one checks
        "validate",  # value checks on (shape and label-range checks are never skipped)
        "label_smoothing",
        "ignore_index",
        "has_ignore_index",
        "pos_weight",  # binary only
        "with_entropy",  # also accumulate H(p) and H(q) (costs a log per element)
    ],
)


#: Kernel options read straight from the config field of the same name, where a
#: config has one holding a scalar (None: the default below). A new per-row option
#: is a config field, a field here and its use in the kernels: the batch layer
#: passes it on without naming it.
CONFIG_OPTIONS = ("label_smoothing", "ignore_index", "pos_weight")


def kernel_options(
    *,
    input_kind: int,
    eps: float,
    sum_tol: float,
    validate: bool = True,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    pos_weight: float = 1.0,
    with_entropy: bool = False,
) -> KernelOptions:
    """Build :class:`KernelOptions` with fixed Python types for every field."""
    return KernelOptions(
        int(input_kind),
        float(eps),
        float(sum_tol),
        bool(validate),
        float(label_smoothing),
        int(ignore_index if ignore_index is not None else 0),
        ignore_index is not None,
        float(pos_weight),
        bool(with_entropy),
    )


@functools.lru_cache(maxsize=256)
def packed_options(opts: KernelOptions) -> np.ndarray:
    """``opts`` as a read-only int64 vector, the form the CPU kernels take.

    numba's dispatcher types a namedtuple argument field by field in Python on every
    call (1.75 us for these nine), an array in C (0.2 us): on a small batch that is a
    tenth of the update. Floats travel as their bits (``struct``), so the kernel gets
    the very values back (``cpu._static_fields``); the field order is the namedtuple's.
    """
    words = [
        int(value)
        if isinstance(value, bool | int)
        else struct.unpack("<q", struct.pack("<d", value))[0]
        for value in opts
    ]
    packed = np.array(words, dtype=np.int64)
    packed.flags.writeable = False
    return packed
