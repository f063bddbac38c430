"""Metric objects: streaming ``update`` over 64k-row batches, ``merge``, ``compute``,
state round trips (``state_dict`` / ``from_state_dict``, ``save`` / ``load``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import xentstream as xs

from . import common

N_CLASSES = 10
#: Classes of the per-class states merged, computed and saved: large enough that the
#: per-class sums dominate the state.
STATE_CLASSES = 1000


def _metric(input: str = "logits", options: str = "plain", n_classes: int = N_CLASSES):
    return xs.CrossEntropy(
        num_classes=n_classes,
        input=input,
        per_class=options == "per_class",
        window=10_000 if options == "window" else None,
    )


def _filled_metric(per_class: bool, seed: int = 0) -> xs.CrossEntropy:
    rows = common.rows_for(STATE_CLASSES, common.elements() // 16)
    logits, labels = common.logits_and_labels(rows, STATE_CLASSES, "float32", "state", seed)
    metric = xs.CrossEntropy(num_classes=STATE_CLASSES, input="logits", per_class=per_class)
    return metric.update(logits, labels)


class Update:
    """``CrossEntropy.update`` over 64k-row batches (C=10, float32) into one metric."""

    params = (common.INPUTS, ["plain", "per_class", "window"])
    param_names = ("input", "options")

    def setup(self, input: str, options: str) -> None:
        step = common.batch_rows()
        rows = common.rows_for(N_CLASSES, common.elements())
        logits, labels = common.logits_and_labels(rows, N_CLASSES, "float32", "update")
        preds = logits if input == "logits" else common.softmax(logits).astype("float32")
        self.batches = [
            (preds[start : start + step], labels[start : start + step])
            for start in range(0, rows, step)
        ]
        self._run(input, options)  # JIT warm-up

    def _run(self, input: str, options: str) -> float:
        metric = _metric(input, options)
        for preds, labels in self.batches:
            metric.update(preds, labels)
        return metric.value

    def time_update(self, input: str, options: str) -> None:
        self._run(input, options)

    def peakmem_update(self, input: str, options: str) -> None:
        self._run(input, options)


class Merge:
    """Merging per-shard states (C=1000) into one metric."""

    params = ([False, True], [16, 128])
    param_names = ("per_class", "shards")

    def setup(self, per_class: bool, shards: int) -> None:
        # merge leaves its argument as it was, so one shard state can stand for all
        self.shards = [_filled_metric(per_class)] * shards

    def time_merge(self, per_class: bool, shards: int) -> None:
        total = xs.CrossEntropy(num_classes=STATE_CLASSES, input="logits", per_class=per_class)
        for shard in self.shards:
            total.merge(shard)


class Compute:
    """``compute()``: exact sums -> Report (a polars frame with per_class=True)."""

    params = ([False, True],)
    param_names = ("per_class",)

    def setup(self, per_class: bool) -> None:
        self.metric = _filled_metric(per_class)
        self.metric.compute()

    def time_compute(self, per_class: bool) -> None:
        self.metric.compute()


class StateRoundTrip:
    """A metric's state to JSON-able dict and back, and through a file."""

    params = ([False, True],)
    param_names = ("per_class",)

    def setup(self, per_class: bool) -> None:
        self.metric = _filled_metric(per_class)
        self.directory = Path(tempfile.mkdtemp(prefix="xentstream-bench-"))
        self.path = self.directory / "state.json"

    def teardown(self, per_class: bool) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def time_state_dict_round_trip(self, per_class: bool) -> None:
        xs.CrossEntropy.from_state_dict(self.metric.state_dict())

    def time_save_load(self, per_class: bool) -> None:
        self.metric.save(self.path)
        xs.load(self.path)
