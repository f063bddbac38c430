"""Memory stays bounded by the batch, whatever the file size (SPEC section 5).

A measurement of memory, never a timing: a child interpreter evaluates a Parquet
file and reports its peak resident set size; the file then grows eight-fold at the
same batch size and the peak must not follow it.

The peak is the child's ``VmHWM`` (high-water mark of its own address space), not
``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` across ``execve``, so a child
started from a large pytest process reports the parent's peak (about 500 MiB after
the feeder tests, measured right after the child's imports), which would hide
any growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
from stream_support import child_env

import xentstream as xs

_CHILD = """
import json, resource, sys
import xentstream as xs

def high_water_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

imported = high_water_kib()
report = xs.evaluate(sys.argv[1], xs.CrossEntropy(), preds="p", target="y",
                     batch_rows=int(sys.argv[2]), progress=False)
print(json.dumps({
    "peak_kib": high_water_kib(),
    "imported_kib": imported,
    "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "count": report.count,
    "loss": report.loss.hex(),
}))
"""

N_CLASSES = 16
ROWS = 150_000  # the small file; the large one holds it 8 times
COPIES = 8
BATCH_ROWS = 16_384
ROW_GROUP_ROWS = 8_192  # Parquet decodes whole row groups: keep them below a batch
MIB = 1 << 20


def _peak(path: Path) -> dict:
    env = child_env()
    # Fixed thread pools: polars reads ahead a number of row groups that grows with its
    # thread count, so pinning it makes the peak comparable across machines.
    env.update({"POLARS_MAX_THREADS": "2", "NUMBA_NUM_THREADS": "2"})
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(BATCH_ROWS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(99)
    table = pl.DataFrame(
        {"p": rng.dirichlet(np.ones(N_CLASSES), ROWS), "y": rng.integers(0, N_CLASSES, ROWS)}
    )
    small, large = tmp_path / "small.parquet", tmp_path / "large.parquet"
    table.write_parquet(small, row_group_size=ROW_GROUP_ROWS)
    pl.concat([table.lazy()] * COPIES).sink_parquet(large, row_group_size=ROW_GROUP_ROWS)
    # Compile (or load) the kernels for exactly the arrays the children will see, here:
    # they then load them from numba's disk cache, and compiling never shows in a peak.
    xs.evaluate(small, xs.CrossEntropy(), preds="p", target="y", batch_rows=BATCH_ROWS)
    decompressed = COPIES * table.estimated_size()  # bytes the large file decodes to
    assert decompressed > 150 * MIB

    small_run, large_run = _peak(small), _peak(large)
    assert small_run["count"] == ROWS
    assert large_run["count"] == COPIES * ROWS
    # 8 copies: every exact sum is 8 times larger, so the correctly rounded mean is equal
    assert large_run["loss"] == small_run["loss"]

    growth = (large_run["peak_kib"] - small_run["peak_kib"]) * 1024
    margin = 32 * MIB  # far below what the extra rows decode to
    assert margin < (decompressed - table.estimated_size()) / 4
    # the measure sees the evaluation: more than the imports alone
    assert small_run["peak_kib"] > small_run["imported_kib"]
    assert small_run["ru_maxrss_kib"] >= small_run["peak_kib"]
    message = (
        f"peak RSS {small_run['peak_kib'] / 1024:.0f} MiB for {ROWS} rows, "
        f"{large_run['peak_kib'] / 1024:.0f} MiB for {COPIES * ROWS} rows "
        f"({decompressed / MIB:.0f} MiB decoded; after imports "
        f"{small_run['imported_kib'] / 1024:.0f} MiB; ru_maxrss "
        f"{small_run['ru_maxrss_kib'] / 1024:.0f} / {large_run['ru_maxrss_kib'] / 1024:.0f} MiB)"
    )
    print(message)
    assert growth < margin, message
