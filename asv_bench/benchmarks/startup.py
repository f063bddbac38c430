"""Cold start: ``import xentstream`` and the first call, with numba's cache cold and warm.

Each ``timeraw_`` benchmark runs in a fresh interpreter. "Cold" points
``NUMBA_CACHE_DIR`` at a new empty directory, so the first call compiles its kernel
(tens of seconds); "warm" points it at a directory that ``setup_cache`` filled by
making the same call once, so the first call only loads the compiled kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

from . import common

FIRST_CALL = """
import numpy as np
import xentstream as xs
xs.cross_entropy(np.zeros((4, 10), np.float32), np.zeros(4, np.int64), input="logits")
"""

FRESH_CACHE = """
import atexit, os, shutil, tempfile
cache = tempfile.mkdtemp(prefix="xentstream-numba-cache-")
atexit.register(shutil.rmtree, cache, ignore_errors=True)
os.environ["NUMBA_CACHE_DIR"] = cache
"""


def _use_cache(cache: str | None) -> str:
    return "" if cache is None else f"import os\nos.environ['NUMBA_CACHE_DIR'] = {cache!r}\n"


class Startup:
    timeout = 600.0
    warmup_time = 0.0

    def setup_cache(self) -> str | None:
        """A numba cache directory (in asv's working directory) holding the first call's
        compiled kernel. Tiny runs (tests) use numba's default cache instead, which the
        in-process benchmarks have filled, rather than spend a compilation here."""
        if common.tiny():
            return None
        cache = os.path.abspath("numba-cache")
        subprocess.run(
            [sys.executable, "-c", FIRST_CALL],
            env={**os.environ, "NUMBA_CACHE_DIR": cache},
            check=True,
        )
        return cache

    def timeraw_import(self, cache: str | None) -> tuple[str, str]:
        return "import xentstream", _use_cache(cache)

    def timeraw_first_call_warm_cache(self, cache: str | None) -> tuple[str, str]:
        return FIRST_CALL, _use_cache(cache)

    def timeraw_first_call_cold_cache(self, cache: str | None) -> tuple[str, str]:
        return FIRST_CALL, FRESH_CACHE

    # Every sample compiles from scratch: a few samples are plenty.
    timeraw_first_call_cold_cache.repeat = (1, 3, 120.0)
    #: tests/test_asv.py only compiles this code: running it takes tens of seconds.
    timeraw_first_call_cold_cache.compiles_kernels = True
