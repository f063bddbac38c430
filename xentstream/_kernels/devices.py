"""Which arrays live in GPU memory: what picks the engine and what the CUDA launch stages.

Below both of its users: :mod:`xentstream._inputs` (device arrays are left where they
are, or copied to the host when the CPU engine is forced) and
:mod:`xentstream._kernels.cuda` (device inputs are sliced, host inputs staged). It
imports nothing but numpy: torch, CuPy and numba.cuda objects are recognised by
their module or by ``__cuda_array_interface__``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_device_array"]


def is_device_array(value: Any) -> bool:
    """True for arrays in GPU memory (torch CUDA tensors, CuPy, numba device arrays).

    Recognised by ``__cuda_array_interface__``, or as the CUDA simulator's device
    arrays, which are numpy-backed and lack the interface. A torch tensor is asked
    for its device instead: one that requires grad raises on the interface.

    Examples
    --------
    >>> import numpy as np
    >>> is_device_array(np.zeros(3))
    False
    """
    if type(value) is np.ndarray:  # the common case, asked several times a batch
        return False
    module = type(value).__module__
    if module.split(".", 1)[0] == "torch":
        return getattr(getattr(value, "device", None), "type", "cpu") == "cuda"
    if hasattr(value, "__cuda_array_interface__"):
        return True
    return module.startswith("numba.cuda.simulator")
