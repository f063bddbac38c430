"""The table of issue 15, re-measured: grouped evaluation time and peak RSS by key count.

    python asv_bench/groups_table.py                      # 4M rows, C=10, 1e3 .. 1e6 keys
    python asv_bench/groups_table.py --rows 1000000 --keys 1000 100000 --rounds 1

Each measurement runs in a process of its own (peak RSS is a process's high-water
mark, ``resource.getrusage``): the frame is built, the JIT warmed on its first rows,
then one call is timed. Sides: ``xs.evaluate(..., by="key")``, the same without
``by``, and polars ``group_by("key").agg(mean)`` of a precomputed float64 loss column
(inexact, the issue's peer). Medians over ``--rounds``; the load average is printed
with the table (other jobs on the machine move the times).

The grouped state file (``--save-state``: :func:`~xentstream.evaluation.grouped_state_dict`
written by ``write_json_atomic``) is timed written and loaded again (``read_json`` and
``merge_grouped_states``), with its size and the peak of the memory each step allocates
(``tracemalloc``, in a second pass: numpy's arrays are traced too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, os, resource, sys, tempfile, time, tracemalloc
sys.path.insert(0, sys.argv[1])
import numpy as np, polars as pl
from benchmarks import common, groups
import xentstream as xs
from xentstream.evaluation import grouped_state_dict, merge_grouped_states
from xentstream.state import read_json, write_json_atomic
rows, n_keys, side = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(15)
logits = rng.normal(0.0, 2.0, (rows, groups.N_CLASSES)).astype(np.float32)
data = pl.DataFrame({
    "preds": logits,
    "label": rng.integers(0, groups.N_CLASSES, rows),
    "key": rng.integers(0, n_keys, rows),
})
del logits
if side == "polars":
    losses = pl.DataFrame({"key": data["key"], "loss": groups.loss_column(data)})
    del data
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = losses.group_by("key").agg(pl.col("loss").mean())
    n_groups = out.height
else:
    by = "key" if side == "by" else None
    groups.evaluate(data.head(256), by)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = groups.evaluate(data, by)
    n_groups = len(result.groups) if by else 1
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # of the timed call, not what follows
extra = {}
if side == "by":
    size = result.state_size()
    extra = {"table_mb": size["bytes"] / 1e6, "widened": size["widened"]}
    start = time.perf_counter()
    result.top(10).to_polars()
    extra["top10_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result.to_polars()
    extra["to_polars_s"] = time.perf_counter() - start
    path = os.path.join(tempfile.mkdtemp(), "groups.json")
    write = lambda: write_json_atomic(path, grouped_state_dict(result))
    load = lambda: merge_grouped_states([read_json(path)])
    for name, step in (("state_write", write), ("state_load", load)):
        start = time.perf_counter()
        step()
        extra[name + "_s"] = time.perf_counter() - start
        tracemalloc.start()
        step()
        extra[name + "_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    extra["state_mb"] = os.path.getsize(path) / 1e6
    os.remove(path)
print(json.dumps({"seconds": elapsed, "peak_mb": peak / 1024, "setup_mb": before / 1024,
                  "groups": n_groups, **extra}))
"""


def _measure(rows: int, keys: int, side: str) -> dict:
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(HERE), str(rows), str(keys), side],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--keys", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", nargs="+", default=["by", "without", "polars"])
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {}
    for keys in args.keys:
        for _ in range(args.rounds):
            for side in args.sides:
                runs.setdefault(f"{keys}/{side}", []).append(_measure(args.rows, keys, side))
    print(f"rows={args.rows} C=10 rounds={args.rounds} load={os.getloadavg()}")
    print(
        "| keys | by= (s) | without by (s) | polars group_by mean (s) | by= peak RSS (MB) "
        "| top(10) (s) | to_polars() (s) | state write (s) | state load (s) | state (MB) "
        "| write / load peak (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for keys in args.keys:

        def median(side: str, field: str, keys: int = keys) -> str:
            values = [r[field] for r in runs.get(f"{keys}/{side}", []) if field in r]
            return f"{statistics.median(values):.3g}" if values else "-"

        print(
            f"| {keys:.0e} | {median('by', 'seconds')} | {median('without', 'seconds')} | "
            f"{median('polars', 'seconds')} | {median('by', 'peak_mb')} | "
            f"{median('by', 'top10_s')} | {median('by', 'to_polars_s')} | "
            f"{median('by', 'state_write_s')} | {median('by', 'state_load_s')} | "
            f"{median('by', 'state_mb')} | {median('by', 'state_write_peak_mb')} / "
            f"{median('by', 'state_load_peak_mb')} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
