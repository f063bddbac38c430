"""The test suite's comparison registry and float64 reference, importable by asv.

asv imports the benchmarks from ``asv_bench/benchmarks`` of the working tree (beside
``tests/``), in an environment that has the package installed but not the tests on its
path: this puts ``tests/`` there, once, so that the benchmarks time the very callables
that ``tests/test_peers.py`` checks.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import comparisons  # noqa: E402
import reference  # noqa: E402

__all__ = ["TESTS", "comparisons", "reference"]
