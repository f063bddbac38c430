"""Type and lower every CUDA kernel for the real CUDA target, without a GPU.

Run as a script by ``test_cuda.py`` (without the simulator). The simulator runs the
kernels as Python, so it cannot catch what only the CUDA compiler rejects (an
unsupported construct, a type that does not unify, an ``@njit`` function of
``rows.py`` the CUDA target cannot compile). This script runs numba-cuda's front
end - typing and lowering to LLVM IR, the ``rows.py`` calls included - for the
argument types ``_batch`` passes, stopping before NVVM (which, like the driver, is
absent on a machine without a GPU). numba-cuda asks the current device for its
compute capability while compiling device functions; a stand-in answers (8, 0).

Prints one line per kernel and exits 0 when all lowered; exits 3 when the
numba-cuda internals it relies on are missing (the caller then skips).
"""

from __future__ import annotations

import sys

try:
    import numba.cuda.dispatcher as cuda_dispatcher
    from numba.cuda.compiler import compile_cuda
except ImportError as error:  # pragma: no cover - another numba-cuda layout
    print(f"numba-cuda internals unavailable: {error}")
    sys.exit(3)
if not hasattr(cuda_dispatcher, "get_current_device"):  # pragma: no cover
    print("numba-cuda internals unavailable: dispatcher.get_current_device")
    sys.exit(3)

from numba import typeof, types


class _Device:
    compute_capability = (8, 0)


cuda_dispatcher.get_current_device = _Device  # the stand-in device (see module doc)

from xentstream._kernels import cuda, layout  # noqa: E402


def _read_only(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C", readonly=True)


def _writable(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


def main() -> int:
    f32, f64, i64, u8 = types.float32, types.float64, types.int64, types.uint8
    options = typeof(layout.kernel_options(input_kind=layout.LOGITS, eps=0.0, sum_tol=1e-8))
    outputs = (
        _writable(f64, 1),  # row_losses
        _writable(i64, 4),  # sums
        _writable(i64, 3),  # counts
        _writable(i64, 4),  # class_sums
        _writable(i64, 2),  # class_counts
        _writable(i64, 2),  # errors
        _writable(f64, 1),  # error_values
    )
    inputs = {
        "multiclass_hard": (_read_only(f32, 2), _read_only(i64, 1)),
        "multiclass_soft": (_read_only(f64, 2), _read_only(f64, 2)),
        "binary": (_read_only(f64, 1), _read_only(u8, 1)),
        "multilabel": (_read_only(f32, 2), _read_only(f64, 2)),
        "prediction_entropy": (_read_only(f64, 2), _read_only(f64, 1)),
    }
    rest = (_read_only(f64, 1), _read_only(f64, 1), _read_only(i64, 1), options)
    failed = 0
    for name, (preds, target) in inputs.items():
        signature = (preds, target, *rest, *outputs)
        try:
            result = compile_cuda(cuda.KERNELS[name].py_func, types.void, signature, cc=(8, 0))
            atomics = str(result.library.get_llvm_str()).count("atomicrmw")
            print(f"{name}: lowered, {atomics} atomic instructions")
        except Exception as error:  # report every kernel, then fail
            failed += 1
            print(f"{name}: FAILED {type(error).__name__}: {error}")
    # The host side's helpers: zeroing, error reset, float16 widening.
    helpers = {
        "fill_kernel": (cuda.fill_kernel, (_writable(i64, 1), i64)),
        "reset_errors_kernel": (cuda.reset_errors_kernel, (_writable(i64, 2),)),
        "widen_kernel": (
            cuda.widen_kernel,
            (_writable(types.float16, 1), _writable(f32, 1)),
        ),
    }
    for name, (kernel, signature) in helpers.items():
        try:
            compile_cuda(kernel.py_func, types.void, signature, cc=(8, 0))
            print(f"{name}: lowered, helper")
        except Exception as error:
            failed += 1
            print(f"{name}: FAILED {type(error).__name__}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
