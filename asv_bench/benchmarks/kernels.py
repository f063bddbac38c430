"""The functional API over in-memory arrays: every loss kind x input kind x C x dtype.

Each case holds at most 64 MB of input (16 MB of float32 or 32 MB of float64
predictions, as much again for soft or multi-label targets), fewer rows for larger C.
``peakmem_`` is the process's peak resident memory, data included.
"""

from __future__ import annotations

from . import common


class Functional:
    """``xs.cross_entropy`` / ``binary_cross_entropy`` / ``multilabel_cross_entropy``."""

    params = (common.LOSSES, common.INPUTS, common.CLASS_COUNTS, common.DTYPES)
    param_names = ("loss", "input", "classes", "dtype")

    def setup(self, loss: str, input: str, n_classes: int, dtype: str) -> None:
        # NotImplementedError for binary at C > 10: it has no class axis.
        self.problem = common.kernel_problem(loss, input, n_classes, dtype)
        self.problem.call()  # compile (or load from numba's cache) outside the timing

    def time_loss(self, loss: str, input: str, n_classes: int, dtype: str) -> None:
        self.problem.call()

    def peakmem_loss(self, loss: str, input: str, n_classes: int, dtype: str) -> None:
        self.problem.call()
