"""The CUDA engine (SPEC sections 4 and 8).

The checks of the kernels themselves live in ``cuda_sim_checks.py`` and run in a
child pytest process: numba's CUDA simulator must be switched on
(``NUMBA_ENABLE_CUDASIM=1``) before numba is first imported, and this process has
imported it already. With a real GPU (``numba.cuda.is_available()`` in a probe
child) the same checks run on the device instead. The tests here need neither: lazy
import, the error without numba-cuda, and the error without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stream_support import child_env, run_python

import xentstream as xs

HERE = Path(__file__).resolve().parent
HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
requires_numba_cuda = pytest.mark.skipif(not HAS_NUMBA_CUDA, reason="numba-cuda not installed")


def _env(simulator: bool) -> dict[str, str]:
    env = child_env()
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


@functools.cache
def _gpu_available() -> bool:
    """Whether numba sees a real GPU, asked in a child (this process stays CUDA-free)."""
    done = subprocess.run(
        [sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(simulator=False),
        check=False,
    )
    return done.stdout.strip().endswith("True")


def test_import_does_not_load_numba_cuda() -> None:
    done = run_python(
        "import sys, xentstream as xs\n"
        "xs.cross_entropy([[0.5, 0.5]], [0])\n"
        "xs.CrossEntropy(engine='auto').update([[0.2, 0.8]], [1])\n"
        "loaded = [m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))]\n"
        "assert not loaded, loaded\n"
    )
    assert done.returncode == 0, done.stderr


def test_unknown_engine() -> None:
    with pytest.raises(ValueError, match="engine: must be one of"):
        xs.CrossEntropy(engine="gpu")
    with pytest.raises(ValueError, match="engine: must be one of"):
        xs.cross_entropy([[0.5, 0.5]], [0], engine="gpu")


def test_missing_numba_cuda_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "numba_cuda" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r'pip install "xentstream\[cuda\]"'):
        xs.BinaryCrossEntropy(engine="cuda")
    with pytest.raises(ImportError, match=r'pip install "xentstream\[cuda\]"'):
        xs.binary_cross_entropy([0.5], [1.0], engine="cuda")


@requires_numba_cuda
def test_no_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if _gpu_available():  # pragma: no cover - machines with a GPU
        pytest.skip("a GPU is present")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import xentstream as xs\n"
            "try:\n"
            "    xs.CrossEntropy(engine='cuda')\n"
            "except RuntimeError as error:\n"
            "    assert isinstance(error, ValueError)\n"
            "    print(error)\n",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(simulator=False),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "engine='cuda': no usable CUDA GPU" in done.stdout
    # The CLI turns it into exit status 2 with one line.
    preds, target = tmp_path / "p.npy", tmp_path / "y.npy"
    np.save(preds, np.full((4, 2), 0.5))
    np.save(target, np.zeros(4, dtype=np.int64))
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "xentstream", "evaluate", str(preds)),
            *("--target", str(target), "--engine", "cuda", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(simulator=False),
        check=False,
    )
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1
    assert cli.stderr.startswith("xentstream: error: --engine cuda: no usable CUDA GPU")


@requires_numba_cuda
def test_cuda_engine_checks() -> None:
    """Every check of ``cuda_sim_checks.py``: on the GPU if there is one, else simulated."""
    simulator = not _gpu_available()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-o", "python_files=cuda_sim_checks.py", str(HERE / "cuda_sim_checks.py")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(simulator=simulator),
        cwd=HERE.parent,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


@requires_numba_cuda
def test_kernels_lower_for_the_real_cuda_target() -> None:
    """Typing and lowering for the hardware target (what the simulator cannot check)."""
    if _gpu_available():  # pragma: no cover - the checks above ran on the device
        pytest.skip("a GPU is present: the kernels ran on it")
    done = subprocess.run(
        [sys.executable, str(HERE / "cuda_lowering_check.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(simulator=False),
        check=False,
    )
    if done.returncode == 3:  # pragma: no cover - another numba-cuda layout
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": lowered,") == 8  # 5 kernels, 3 host-side helpers
