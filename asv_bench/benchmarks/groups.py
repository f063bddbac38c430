"""Group-by at any cardinality (issue 15): ``xs.evaluate(..., by=)`` on a polars frame
from 1e2 to 1e6 distinct keys, against polars ``group_by`` of a precomputed loss column
(the same per-group mean, inexact) and against the same evaluation without ``by``.

The frame (float32 logits, C=10, int64 labels and keys) is built in ``setup``; the
JIT is warmed there. Full size: 2**22 rows (4M, as in the issue); tiny: 2**10.
``asv_bench/groups_table.py`` measures the issue's table (time and peak RSS, each case
in its own process).
"""

from __future__ import annotations

import numpy as np

from . import common

KEYS = [100, 10_000, 1_000_000]
N_CLASSES = 10


def frame(n_keys: int):
    """Seeded logits, labels and keys (a polars DataFrame)."""
    import polars as pl

    rows = (1 << 10) if common.tiny() else (1 << 22)
    logits, labels = common.logits_and_labels(rows, N_CLASSES, "float32", "groups")
    keys = common.generator("group-keys", n_keys).integers(0, n_keys, rows, dtype=np.int64)
    return pl.DataFrame({"preds": logits, "label": labels, "key": keys})


def evaluate(data, by: str | None):
    import xentstream as xs

    metric = xs.CrossEntropy(input="logits")
    return xs.evaluate(data, metric, preds="preds", target="label", by=by, progress=False)


def loss_column(data) -> np.ndarray:
    """Per-row cross-entropy of the logits (float64, numpy): polars' precomputed input."""
    logits = data["preds"].to_numpy().astype(np.float64)
    labels = data["label"].to_numpy()
    shift = logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(logits - shift).sum(axis=1)) + shift[:, 0]
    return log_sum - logits[np.arange(labels.size), labels]


class GroupBy:
    """xentstream ``by=`` vs without ``by`` vs polars ``group_by().agg(mean)``."""

    params = (KEYS,)
    param_names = ("keys",)
    timeout = 600

    def setup(self, n_keys: int) -> None:
        import polars as pl

        self.data = frame(n_keys)
        self.losses = pl.DataFrame({"key": self.data["key"], "loss": loss_column(self.data)})
        evaluate(self.data.head(256), "key")  # JIT warm-up

    def time_by(self, n_keys: int) -> None:
        evaluate(self.data, "key")

    def peakmem_by(self, n_keys: int) -> None:
        evaluate(self.data, "key")

    def time_without_by(self, n_keys: int) -> None:
        evaluate(self.data, None)

    def time_polars_group_by_mean(self, n_keys: int) -> None:
        import polars as pl

        self.losses.group_by("key").agg(pl.col("loss").mean())

    def peakmem_polars_group_by_mean(self, n_keys: int) -> None:
        import polars as pl

        self.losses.group_by("key").agg(pl.col("loss").mean())

    def time_top_10(self, n_keys: int) -> None:
        evaluate(self.data, "key").top(10).to_polars()


class GroupOutputs:
    """Every group's scalar fields (``to_polars()``) and the grouped state (JSON-able),
    built from all groups' exact integers at once."""

    params = (KEYS,)
    param_names = ("keys",)
    timeout = 600

    def setup(self, n_keys: int) -> None:
        data = frame(n_keys)
        evaluate(data.head(256), "key")  # JIT warm-up
        self.result = evaluate(data, "key")

    def time_to_polars(self, n_keys: int) -> None:
        self.result.to_polars()

    def time_grouped_state(self, n_keys: int) -> None:
        from xentstream.evaluation import grouped_state_dict

        grouped_state_dict(self.result)
