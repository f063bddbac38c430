"""xentstream against its peers in one run, printed as a markdown table (no asv needed).

    python asv_bench/compare.py            # 16 MB of predictions a case; < 60 s
    python asv_bench/compare.py --quick    # 2 MB a case; < 15 s
    python asv_bench/compare.py --cases parquet npy

Every case (``benchmarks/common.py: CASES``, the registry the asv ``track_``
benchmarks use too) is built once; xentstream, each installed peer and the
read-bandwidth reference (``numpy.sum`` over the same bytes) are then timed
interleaved, round after round, on the same data, and their medians compared:

- ``peer / ours``: the peer's median time over xentstream's; > 1 means xentstream is
  faster. (asv's ``track_time_ratio`` reports the inverse, ours / peer, so that a
  rise reads as a regression there.)
- ``read-BW fraction``: numpy.sum's time over ours, i.e. the fraction of this
  machine's (single-threaded numpy) read bandwidth that xentstream reaches.

Timings before the first run after an install include no compilation (every side
is called once before timing), but loading numba's cache the first time does: run
it twice for stable numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import common

SIZES = {"default": common.FULL_ELEMENTS, "quick": 1 << 19, "tiny": common.TINY_ELEMENTS}
REPEATS = {"default": 5, "quick": 3, "tiny": 1}
HEADER = ("case", "MB read", "xentstream", "peer", "peer time", "peer / ours", "read-BW fraction")


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 MB of predictions a case")
    size.add_argument("--tiny", action="store_true", help="a few KB a case: checks it runs")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default 5, quick 3)")
    parser.add_argument("--cases", nargs="+", metavar="TEXT", help="only cases whose key has TEXT")
    parser.add_argument("--list", action="store_true", help="list the cases and peers, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for key, case in common.CASES.items():
            print(f"{key:24} {case.title}; peers: {', '.join(case.peers)}")
        return 0
    mode = "tiny" if args.tiny else "quick" if args.quick else "default"
    if args.tiny:
        os.environ[common.TINY_ENV] = "1"  # tiny streaming batches too
    repeats = args.repeats or REPEATS[mode]
    keys = [
        key for key in common.CASES if not args.cases or any(text in key for text in args.cases)
    ]
    if not keys:
        print(f"no case matches {args.cases}; see --list", file=sys.stderr)
        return 2

    started = time.perf_counter()
    lines = [_row(HEADER), _row(tuple("---" for _ in HEADER))]
    for key in keys:
        case = common.CASES[key]
        prepared = common.prepare(key, n_elements=SIZES[mode])
        try:
            funcs = {"ours": prepared.ours, **prepared.peers, "read": prepared.read}
            times = common.medians(funcs, repeats)
            megabytes = f"{prepared.nbytes / 1e6:.3g}"
        finally:
            prepared.close()
        ours = times["ours"]
        fraction = f"{times['read'] / ours:.2g}"
        for peer in case.peers:
            if peer in times:
                cells = (_seconds(times[peer]), f"{times[peer] / ours:.2f}")
            else:
                cells = ("not installed", "")
            lines.append(_row((case.title, megabytes, _seconds(ours), peer, *cells, fraction)))
    elapsed = time.perf_counter() - started

    print("## xentstream vs peers\n")
    print(f"machine: {common.machine()}\n")
    print(
        f"sizes: {mode} ({SIZES[mode]:,} prediction values a case, float32); "
        f"median of {repeats} interleaved rounds per side\n"
    )
    print("\n".join(lines))
    print(f"\npeer / ours > 1: xentstream is faster. Measured in {elapsed:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
