"""xentstream against its peers, each side in its own process, as a table of ratios.

    python asv_bench/compare.py                       # ~1 GB of predictions a case, 5 rounds
    python asv_bench/compare.py --mb 8 --rounds 2     # a quick look (8 MB a case)
    python asv_bench/compare.py --json run.json --markdown run.md
    python asv_bench/compare.py --cases logits parquet --peers torch jax
    python asv_bench/compare.py --list                # the cases and peers

The method (issue 14): for each case (``tests/comparisons.py: COMPARISONS``, the
registry the asv benchmarks use and ``tests/test_peers.py`` checks) xentstream, each
peer and the read-bandwidth reference (``numpy.sum`` over the same bytes) run in
processes of their own, each building the same seeded data, so that no side's threads
or allocator state is the other's.
Each is called once to warm up (JIT, imports), and its result is checked against
xentstream's (relative tolerance ``--rtol``): a peer that disagrees is not timed and
the run exits 1, as it does when a peer fails. Then rounds interleave the sides, one
call each, the order rotating, so that drifts of the machine hit every side alike,
with a pause before each call (``--pause``) so that the thread pool of the side called
before has stopped spinning; the medians are compared:

- ``peer / ours``: the peer's median time over xentstream's; **> 1 means xentstream
  is faster**;
- ``read-BW fraction``: numpy.sum's time over ours, the fraction of this machine's
  (single-threaded numpy) read bandwidth that xentstream reaches.

The environment is left as it is (no ``OMP_WAIT_POLICY``, default thread counts; torch
and DuckDB get numba's thread count): a user's machine is measured, not a tuned one.
The load average before and after each case is recorded: with other jobs running,
ratios move. The 32-row update case reports times per ``update`` call.

JAX is an optional benchmark dependency (``pip install jax jaxlib``, ~600 MB): when
it is missing its rows say so and the rest runs. ``asv_bench/readme_table.py`` turns
``--json`` files into the README's performance table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import common

DEFAULT_CASES = (
    "logits-hard-C10",
    "logits-hard-C1000",
    "logits-hard-C32000",
    "probs-hard-C10",
    "binary-logits",
    "multilabel-logits-C100",
    "logits-smoothing-C1000",
    "logits-soft-C1000",
    "update-64k-C10",
    "update-32rows-C10",
    "train-step-C10",
    "parquet-logits-C10",
)
#: numpy's float64 formula and scikit-learn are left out by default: at 1 GB their
#: float64 temporaries need several times the data's memory (``--peers`` adds them).
DEFAULT_PEERS = ("torch", "jax", "one-shot", "torch-mean", "no-metric", "polars", "duckdb")
INSTALL_HINTS = {"jax": "pip install jax jaxlib", "torch": "pip install torch==2.13.0"}
HEADER = ("case", "MB read", "peer", "xentstream", "peer time", "peer / ours", "read-BW fraction")


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"


def _row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


# -- one side, in its own process -------------------------------------------------------------


def worker(case: str, side: str, n_elements: int) -> int:
    """Build ``case``'s data, warm ``side`` up, then time one call per "run" line read.

    Replies go, one JSON object a line, to the original stdout; whatever the libraries
    print is sent to stderr, so it cannot be mistaken for a reply.
    """
    with os.fdopen(os.dup(1), "w", buffering=1) as channel:
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        peers = [] if side in ("ours", "read") else [side]
        prepared = common.prepare(case, peers=peers, n_elements=n_elements, warm=False)
        try:
            if side == "ours":
                fn = prepared.ours
            elif side == "read":
                fn = prepared.read
            else:
                fn = prepared.peers[side]
            value = fn()
            ready = {"value": None if side == "read" else float(value), "nbytes": prepared.nbytes}
            channel.write(json.dumps({**ready, "calls": prepared.calls}) + "\n")
            for line in sys.stdin:
                if line.strip() != "run":
                    break
                start = time.perf_counter()
                fn()
                channel.write(json.dumps({"seconds": time.perf_counter() - start}) + "\n")
        finally:
            prepared.close()
    return 0


class Side:
    """A worker process and the pipe to it."""

    def __init__(self, case: str, side: str, n_elements: int, tiny: bool) -> None:
        env = {**os.environ, common.TINY_ENV: "1"} if tiny else None
        command = [sys.executable, __file__, "--worker", case, side, str(n_elements)]
        self.name = side
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.close()
            code = self.process.returncode
            raise RuntimeError(f"the {self.name} worker exited {code} (its stderr is above)")
        return json.loads(line)

    def time_one_call(self) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self._reply()["seconds"])

    def close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process.wait()


# -- the parent: cases, rounds, table ---------------------------------------------------------


def agrees(ours: float, peer: float, rtol: float) -> bool:
    return math.isclose(ours, peer, rel_tol=rtol, abs_tol=rtol * 1e-3)


def measure_case(
    key: str,
    peers: list[str],
    n_elements: int,
    rounds: int,
    rtol: float,
    tiny: bool,
    pause: float = 0.0,
) -> list[dict[str, Any]]:
    """The rows of one case: each peer against xentstream, medians of interleaved rounds."""
    case = common.CASES[key]
    load_before = os.getloadavg()[0]
    sides: list[Side] = []
    rows: list[dict[str, Any]] = []
    try:
        ours = Side(key, "ours", n_elements, tiny)
        sides.append(ours)
        timed = [ours]
        peer_sides: dict[str, Side] = {}
        failed: list[str] = []
        for peer in peers:
            try:
                side = Side(key, peer, n_elements, tiny)
            except RuntimeError:
                failed.append(peer)  # its traceback is on stderr; the other peers go on
                continue
            sides.append(side)
            peer_sides[peer] = side
            if agrees(ours.ready["value"], side.ready["value"], rtol):
                timed.append(side)
            else:
                side.close()
        read = Side(key, "read", n_elements, tiny)
        sides.append(read)
        timed.append(read)
        times: dict[str, list[float]] = {side.name: [] for side in timed}
        for round_ in range(rounds):
            for i in range(len(timed)):
                side = timed[(round_ + i) % len(timed)]
                # The side called before may leave its thread pool spinning (OpenMP
                # waits actively for a while after a parallel region); it is idle
                # again by the end of the pause instead of taking this side's cores.
                time.sleep(pause)
                times[side.name].append(side.time_one_call())
    finally:
        for side in sides:
            side.close()
    calls = ours.ready["calls"]
    median = {name: statistics.median(values) / calls for name, values in times.items()}
    base = {
        "case": key,
        "title": case.title,
        "mb_read": ours.ready["nbytes"] / 1e6,
        "calls": calls,
        "ours_s": median["ours"],
        "ours_value": ours.ready["value"],
        "read_fraction": median["read"] / median["ours"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    for peer, side in peer_sides.items():
        row = {**base, "peer": peer, "peer_value": side.ready["value"]}
        if peer in median:
            row.update(status="ok", peer_s=median[peer], ratio=median[peer] / median["ours"])
        else:
            row.update(status="disagrees", peer_s=None, ratio=None)
        rows.append(row)
    for peer in failed:
        rows.append({**base, "peer": peer, "status": "failed", "peer_s": None, "ratio": None})
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The run as markdown: a header naming the method, then one row per case and peer."""
    settings = result["settings"]
    load = result["load_average"]
    lines = [
        "## xentstream vs peers",
        "",
        f"machine: {result['machine']}",
        "",
        f"sizes: {settings['mb']:g} MB of float32 predictions a case "
        f"({settings['elements']:,} values); each side in its own process; median of "
        f"{settings['rounds']} interleaved rounds; peers agree with xentstream within "
        f"rtol {settings['rtol']:g}; load average (1 min) {load['start']:.2f} at the start, "
        f"{load['end']:.2f} at the end",
        "",
        _row(HEADER),
        _row(tuple("---" for _ in HEADER)),
    ]
    for row in result["rows"]:
        title = row["title"] + (" (per call)" if row.get("calls", 1) > 1 else "")
        if row["status"] == "ok":
            cells = (_seconds(row["peer_s"]), f"{row['ratio']:.2f}")
        elif row["status"] == "disagrees":
            cells = (f"DISAGREES: {row['peer_value']!r} vs ours {row['ours_value']!r}", "")
        else:
            cells = (row["status"], "")
        ours = _seconds(row["ours_s"]) if row.get("ours_s") is not None else ""
        fraction = f"{row['read_fraction']:.2g}" if row.get("read_fraction") else ""
        mb = f"{row['mb_read']:.3g}" if row.get("mb_read") else ""
        lines.append(_row((title, mb, row["peer"], ours, *cells, fraction)))
    lines += ["", "peer / ours > 1: xentstream is faster."]
    lines += [f"note: {note}" for note in result["notes"]]
    lines.append(f"Measured in {result['elapsed_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--mb", type=float, default=1024.0, help="MB of float32 predictions a case (1024)"
    )
    size.add_argument("--tiny", action="store_true", help="a few KB a case: checks it runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (5)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="agreement tolerance (1e-4)")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.5,
        help="seconds between two sides' calls, for the last one's threads to go idle (0.5)",
    )
    parser.add_argument(
        "--cases", nargs="+", metavar="TEXT", help="the case named TEXT, or those whose key has it"
    )
    parser.add_argument("--peers", nargs="+", metavar="NAME", help="peers to time")
    parser.add_argument("--json", type=Path, help="also write the run as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--list", action="store_true", help="list the cases and peers, then exit")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "SIDE", "N"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        case, side, n = args.worker
        return worker(case, side, int(n))
    if args.list:
        for key, case in common.CASES.items():
            default = "default" if key in DEFAULT_CASES else "       "
            print(f"{key:24} {default} {case.title}; peers: {', '.join(case.peers)}")
        print(f"default peers: {', '.join(DEFAULT_PEERS)}")
        return 0
    pool = tuple(common.CASES) if args.cases else DEFAULT_CASES
    # a TEXT that is a whole key names that case alone (logits-hard-C10 is part of
    # logits-hard-C1000's key too); any other TEXT selects every key it is part of
    texts = args.cases or []
    keys = [
        key
        for key in pool
        if not texts
        or any(text == key or (text not in common.CASES and text in key) for text in texts)
    ]
    if not keys:
        print(f"no case matches {args.cases}; see --list", file=sys.stderr)
        return 2
    wanted = tuple(args.peers or DEFAULT_PEERS)
    unknown = [name for name in wanted if name not in common.PEERS]
    if unknown:
        print(f"unknown peers {unknown}; see --list", file=sys.stderr)
        return 2
    n_elements = common.TINY_ELEMENTS if args.tiny else int(args.mb * 2**20 / 4)
    mb = n_elements * 4 / 2**20

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    missing: set[str] = set()
    for key in keys:
        case = common.CASES[key]
        peers = [p for p in case.peers if p in wanted]
        present = [p for p in peers if common.PEERS[p].available()]
        for peer in sorted(set(peers) - set(present)):
            rows.append({"case": key, "title": case.title, "peer": peer, "status": "not installed"})
            missing.add(peer)
        if not present:
            continue
        print(f"{key}: {', '.join(present)} ...", file=sys.stderr, flush=True)
        rows += measure_case(
            key, present, n_elements, args.rounds, args.rtol, args.tiny, args.pause
        )
    for peer in sorted(missing):
        hint = INSTALL_HINTS.get(peer, f"install {common.PEERS[peer].module}")
        notes.append(f"{peer} is not installed, its rows are empty ({hint})")
    result = {
        "tool": "asv_bench/compare.py",
        "format": 1,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": common.machine(),
        "settings": {
            "mb": mb,
            "elements": n_elements,
            "rounds": args.rounds,
            "rtol": args.rtol,
            "pause_s": args.pause,
            "tiny": args.tiny,
        },
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "notes": notes,
        "elapsed_s": time.perf_counter() - started,
        "rows": rows,
    }
    table = markdown(result)
    print(table, end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    return 1 if any(row["status"] in ("disagrees", "failed") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
