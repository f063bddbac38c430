"""How much data the benchmarks build: full sizes, or tiny ones for the tests.

Sizes shrink to a few thousand values when the environment variable
``XENTSTREAM_ASV_TINY`` is set (read at call time): ``tests/test_asv.py`` runs every
benchmark once that way, and ``compare.py --tiny`` passes it to its workers.
"""

from __future__ import annotations

import os

from .shared import comparisons

TINY_ENV = "XENTSTREAM_ASV_TINY"

#: Prediction values per case: 16 MB of float32 or 32 MB of float64. Soft and multi-label
#: targets are as large again, so no case reads more than 64 MB.
FULL_ELEMENTS = 1 << 22
TINY_ELEMENTS = 1 << 12
#: Rows per ``CrossEntropy.update`` call in the streaming benchmarks.
FULL_BATCH_ROWS = 1 << 16
TINY_BATCH_ROWS = 1 << 7
#: ``update`` calls of the small-batch latency case (one timed call makes them all).
SMALL_BATCH_CALLS = 2000
TINY_SMALL_BATCH_CALLS = 20


def tiny() -> bool:
    """Whether ``XENTSTREAM_ASV_TINY`` asks for tiny sizes."""
    return os.environ.get(TINY_ENV, "") not in ("", "0")


def elements() -> int:
    """Prediction values per benchmark case."""
    return TINY_ELEMENTS if tiny() else FULL_ELEMENTS


def batch_rows() -> int:
    """Rows per ``update`` call in the streaming benchmarks."""
    return TINY_BATCH_ROWS if tiny() else FULL_BATCH_ROWS


def repeats(full: int = 7) -> int:
    """Timed repeats of each side inside a ``track_`` benchmark."""
    return 1 if tiny() else full


def sizes(n_elements: int | None = None) -> comparisons.Sizes:
    """The sizes of a comparison case: ``n_elements`` values, or :func:`elements`."""
    return comparisons.Sizes(
        elements=elements() if n_elements is None else n_elements,
        batch_rows=batch_rows(),
        small_batch_calls=TINY_SMALL_BATCH_CALLS if tiny() else SMALL_BATCH_CALLS,
    )
