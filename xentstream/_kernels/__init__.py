"""Numba kernels: arrays in, exact accumulator arrays out (no Python objects).

numba's on-disk cache keys a compiled kernel by the source file that defines it
(``cpu.py``, ``tokens.py``, ``paired.py``, ``calibration.py``, ``groups.py``) only, so
an edit to a helper module whose code it contains (``rows.py``, ``exact.py``,
``layout.py``, ``fastmath.py``) would silently reuse stale machine code. To prevent
that, the first import compares a hash of all kernel sources with the one recorded
beside the cache and, when they differ, touches the cached modules so numba recompiles.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).parent
_SOURCES = (
    "cpu.py",
    "rows.py",
    "exact.py",
    "layout.py",
    "fastmath.py",
    "tokens.py",
    "paired.py",
    "calibration.py",
    "groups.py",
)
#: Modules with cached kernels that contain code of the other sources.
_CACHED = ("cpu.py", "tokens.py", "paired.py", "calibration.py", "groups.py")
_STAMP = _HERE / "__pycache__" / "kernel_sources.sha256"


def _invalidate_stale_cache() -> None:
    try:
        digest = hashlib.sha256()
        for name in _SOURCES:
            digest.update((_HERE / name).read_bytes())
        current = digest.hexdigest()
        if _STAMP.exists() and _STAMP.read_text() == current:
            return
        for name in _CACHED:
            os.utime(_HERE / name)
        _STAMP.parent.mkdir(exist_ok=True)
        _STAMP.write_text(current)
    except OSError:  # a read-only install cannot hold a stale cache of edited sources
        pass


_invalidate_stale_cache()


def load_cuda():
    """Import the CUDA kernels (:mod:`xentstream._kernels.cuda`) on first use.

    Kept out of ``import xentstream`` because importing ``numba.cuda`` costs time
    and looks for a driver; only ``engine="cuda"`` (or device arrays) needs it.

    Raises
    ------
    ImportError
        If numba-cuda is not installed, naming the extra that installs it.
    """
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        raise ImportError(
            "engine='cuda' needs the numba-cuda package: pip install \"xentstream[cuda]\""
        )
    from xentstream._kernels import cuda

    return cuda
