"""Shared test setup: the hypothesis ``ci`` profile and a seeded random generator."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import strategies  # noqa: F401  (registers the hypothesis profiles)
from hypothesis import settings

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible, and different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# The CUDA checks run in child processes started by test_cuda.py (the simulator must be
# switched on before numba is imported); collecting them here, for doctests, would load
# numba.cuda into this process. The children name the files, which collects them anyway.
collect_ignore = ["cuda_sim_checks.py", "cuda_lowering_check.py"]
