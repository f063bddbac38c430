"""``xs.evaluate`` end to end on a prediction dump on disk: Parquet, Arrow IPC, ``.npy``.

The dump (float32 predictions, int64 labels; 16 MB of predictions) is written to a
temp dir in ``setup`` and read once there, so the timings see a warm page cache:
what is measured is decoding and computing, not the disk.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import common

FORMATS = ("parquet", "ipc", "npy")


class Evaluate:
    params = (FORMATS, [10, 1000])
    param_names = ("format", "classes")

    def setup(self, fmt: str, n_classes: int) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="xentstream-bench-"))
        rows = common.rows_for(n_classes, common.elements())
        logits, labels = common.logits_and_labels(rows, n_classes, "float32", fmt)
        self.path = common.write_dump(fmt, self.directory, logits, labels)
        common.evaluate_dump(self.path)  # JIT warm-up, page cache

    def teardown(self, fmt: str, n_classes: int) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def time_evaluate(self, fmt: str, n_classes: int) -> None:
        common.evaluate_dump(self.path)

    def peakmem_evaluate(self, fmt: str, n_classes: int) -> None:
        common.evaluate_dump(self.path)


class EvaluateGrouped:
    """``by=`` a group column: per-group reports in the same pass (Parquet, C=10)."""

    params = ([4, 1000],)
    param_names = ("groups",)

    def setup(self, n_groups: int) -> None:
        import polars as pl

        self.directory = Path(tempfile.mkdtemp(prefix="xentstream-bench-"))
        rows = common.rows_for(10, common.elements())
        logits, labels = common.logits_and_labels(rows, 10, "float32", "grouped")
        groups = common.generator("groups", n_groups).integers(0, n_groups, rows, dtype=np.int64)
        self.path = self.directory / "dump.parquet"
        pl.DataFrame({"preds": logits, "label": labels, "group": groups}).write_parquet(self.path)
        common.evaluate_dump(self.path, by="group")

    def teardown(self, n_groups: int) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def time_evaluate_by(self, n_groups: int) -> None:
        common.evaluate_dump(self.path, by="group")
