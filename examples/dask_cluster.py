"""Evaluate a prediction dump on a Dask cluster and check it against one process.

Writes a small seeded dump (4 Parquet files, 10-class float32 logits, a ``region``
column), starts a ``distributed.LocalCluster`` of 2 worker processes, runs
``xentstream.dask.evaluate`` on it (one exact state per partition, merged by a
tree), and compares every field, bit for bit, with ``xs.evaluate`` in this process.
On real machines, point a ``Client`` at a scheduler instead (see the README,
"Many machines (Dask)").

Run: ``python examples/dask_cluster.py`` (needs ``pip install "xentstream[dask]"``)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from distributed import Client, LocalCluster

import xentstream as xs
from xentstream import dask as xentstream_dask

N_FILES = 4
ROWS_PER_FILE = 50_000
N_CLASSES = 10


def write_dump(folder: Path) -> str:
    rng = np.random.default_rng(2026)
    for number in range(N_FILES):
        labels = rng.integers(0, N_CLASSES, ROWS_PER_FILE)
        logits = rng.normal(0.0, 2.0, (ROWS_PER_FILE, N_CLASSES)).astype(np.float32)
        logits[np.arange(ROWS_PER_FILE), labels] += 2.5  # a model better than chance
        pl.DataFrame(
            {
                "logits": logits,
                "label": labels,
                "region": rng.choice(np.array(["eu", "us", "apac"]), ROWS_PER_FILE),
            }
        ).write_parquet(folder / f"part-{number}.parquet")
    return str(folder / "part-*.parquet")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        dump = write_dump(Path(folder))
        options = {"preds": "logits", "target": "label", "by": "region"}
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster),  # the current client: xentstream.dask.evaluate uses it
        ):
            on_cluster = xentstream_dask.evaluate(
                dump, xs.CrossEntropy(input="logits"), partition_rows=20_000, **options
            )
        one_process = xs.evaluate(dump, xs.CrossEntropy(input="logits"), **options)
    overall = on_cluster.overall
    print(f"rows        {overall.count}")
    low, high = overall.ci95
    print(f"loss        {overall.loss:.6f} nats  (95% CI {low:.6f} .. {high:.6f})")
    print(f"perplexity  {overall.perplexity:.4f}   accuracy {overall.accuracy:.4f}")
    print(on_cluster.to_polars().select("region", "count", "loss", "accuracy"))
    # JSON writes floats as their shortest round-trip repr: equal text, equal bits.
    same = json.dumps(on_cluster.to_dict()) == json.dumps(one_process.to_dict())
    print(f"cluster == one process (bitwise): {same}")


if __name__ == "__main__":
    main()
