"""Shared by the benchmarks and ``asv_bench/compare.py``: sizes, seeded data, cases, timing.

One module per concern, all re-exported here (the benchmarks say ``common.prepare``):

- :mod:`.shared`: puts ``tests/`` on the path, for the registry and the reference;
- :mod:`.sizes`: full or tiny sizes (``XENTSTREAM_ASV_TINY``);
- :mod:`.data`: the functional API's benchmark grid and its seeded data;
- :mod:`.cases`: the comparison cases of ``tests/comparisons.py: COMPARISONS`` made
  ready to time (:func:`prepare`): the asv ``track_`` benchmarks of ``peers.py`` and
  the table of ``compare.py`` time the very callables ``tests/test_peers.py`` checks;
- :mod:`.measure`: interleaved medians, the read-bandwidth workload, the machine line.

No module here defines ``time_`` / ``peakmem_`` / ``track_`` names, so asv finds no
benchmarks in this package.
"""

from __future__ import annotations

from .cases import CASES, PEERS, Prepared, cases_with, prepare
from .data import CLASS_COUNTS, DTYPES, INPUTS, LOSSES, Problem, kernel_problem
from .measure import machine, medians
from .shared import comparisons, reference
from .sizes import (
    TINY_ELEMENTS,
    TINY_ENV,
    TINY_SMALL_BATCH_CALLS,
    batch_rows,
    elements,
    repeats,
    tiny,
)

evaluate_dump = comparisons.evaluate_dump
generator = comparisons.generator
logits_and_labels = comparisons.logits_and_labels
rows_for = comparisons.rows_for
write_dump = comparisons.write_dump
softmax = reference.softmax

__all__ = [
    "CASES",
    "CLASS_COUNTS",
    "DTYPES",
    "INPUTS",
    "LOSSES",
    "PEERS",
    "TINY_ELEMENTS",
    "TINY_ENV",
    "TINY_SMALL_BATCH_CALLS",
    "Prepared",
    "Problem",
    "batch_rows",
    "cases_with",
    "elements",
    "evaluate_dump",
    "generator",
    "kernel_problem",
    "logits_and_labels",
    "machine",
    "medians",
    "prepare",
    "repeats",
    "rows_for",
    "softmax",
    "tiny",
    "write_dump",
]
