"""Measuring inside one process: interleaved medians, the read-bandwidth workload, the machine.

(``asv_bench/compare.py`` runs each side in a process of its own instead; it shares
:func:`machine` and the read-bandwidth workload with the asv suite.)
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import xentstream as xs

from .shared import comparisons


def medians(funcs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable over ``repeats`` rounds, interleaved.

    Every round calls each callable once, starting one further along the list each
    round, so that drifts of the machine (other jobs, clock boost) hit all sides alike.
    """
    names = list(funcs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(max(1, repeats)):
        for i in range(len(names)):
            name = names[(round_ + i) % len(names)]
            start = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def as_words(buffer: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous array (or memory-mapped file) as int64 words.

    Integer sums never warn (float views of arbitrary bytes would meet NaN and inf),
    so ``numpy.sum`` over these words reads the same bytes as fast as numpy can.
    """
    flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    return flat[: flat.size - flat.size % 8].view(np.int64)


def read_reference(words: Iterable[np.ndarray]) -> int:
    """One ``numpy.sum`` over every buffer: this machine's read bandwidth, as a workload."""
    total = 0
    for w in words:
        total += int(np.sum(w))
    return total


def machine() -> str:
    """One line naming this machine: CPU model, logical CPUs, threads each side uses."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = comparisons.threads()
    peers = comparisons.PEERS
    parts = [
        model,
        f"{os.cpu_count()} logical CPUs",
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}",
        f"xentstream {xs.__version__} (numba threads {threads})",
    ]
    if peers["torch"].available():
        parts.append(f"torch threads {threads}")
    if peers["polars"].available():
        import polars as pl

        parts.append(f"polars threads {pl.thread_pool_size()}")
    if peers["duckdb"].available():
        parts.append(f"duckdb threads {threads}")
    return "; ".join(parts)
