"""The cost of ``calibration_bins`` against a plain metric, each side in its own process.

``python asv_bench/calibration_cost.py [--rounds 3] [--reps 5] [--cases ...]``

The workload of ``benchmarks/decisions.py`` (``decisions.batches``; its ``plain`` and
``calibration`` runs, 15 bins): 4 Mi float32 prediction values (C=10: ~420k rows;
binary: 4 Mi rows) streamed through ``update`` in 64k-row batches. Every
(case, side) pair runs in a fresh process per round (rounds interleave the sides), which
times ``--reps`` passes after a warm-up pass and reports the median wall time and the
median CPU time (``time.process_time``: all threads of the process, which moves less
than wall time when other processes share the cores). The ratio of a round is
``bins / plain`` of that round; the table gives the median over rounds and each round.
The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import decisions

CASES = decisions.INPUTS
SIDES = {"plain": "plain", "bins": "calibration"}  # side -> decisions.RUNS name


def _worker(case: str, side: str, reps: int) -> None:
    batches = decisions.batches(case)
    run = decisions.RUNS[SIDES[side]]
    run(batches, case)  # compile / load the kernels
    walls, cpus = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        run(batches, case)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    print(json.dumps({"wall": statistics.median(walls), "cpu": statistics.median(cpus)}))


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker, args.reps)
        return
    print(f"load before: {_load()}")
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for case in args.cases:
            for side in SIDES:
                out = subprocess.run(
                    [sys.executable, __file__, "--reps", str(args.reps), "--worker", case, side],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results.setdefault((case, side), []).append(json.loads(out.stdout))
    print(f"load after: {_load()}")
    print("| case | plain wall ms | bins wall ms | ratio wall (rounds) | ratio CPU (rounds) |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        plain, bins = results[(case, "plain")], results[(case, "bins")]
        cells = []
        for key in ("wall", "cpu"):
            ratios = [b[key] / p[key] for p, b in zip(plain, bins, strict=True)]
            rounds = ", ".join(f"{r:.2f}" for r in ratios)
            cells.append(f"{statistics.median(ratios):.2f} ({rounds})")
        plain_ms = statistics.median(p["wall"] for p in plain) * 1e3
        bins_ms = statistics.median(b["wall"] for b in bins) * 1e3
        print(f"| {case} | {plain_ms:.1f} | {bins_ms:.1f} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
