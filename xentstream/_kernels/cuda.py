"""``numba.cuda`` twins of the CPU kernels, exact on the device (SPEC sections 3 and 8).

Each ``<name>_kernel`` takes the arguments of ``cpu.<name>`` in the same order and
with the same meaning::

    kernel(preds, target, <per-class or per-label weights>, sample_weight, groups, opts,
           row_losses, sums, counts, class_sums, class_counts, errors, error_values)

with two differences in the shapes of the outputs, both owed to the GPU:

- ``sums[copy, group]`` (and ``counts``, ``class_sums``, ``class_counts``) has one
  accumulator per *copy*, not per block of rows: CUDA block ``b`` adds into copy
  ``b % n_copies`` with integer atomics (:func:`add_term_atomic`). More copies
  spread the atomic contention; any number gives the same bits, because integer
  addition is associative and the host normalizes the copies with
  :func:`~xentstream._kernels.exact.combine_blocks`, as for the CPU's blocks.
- ``errors`` has one row per thread of the grid plus one: a thread walks its rows
  (grid-stride loop, increasing row numbers) and stops at its first bad row, which
  it writes into its own row ``errors[thread]`` (no race: one writer per row). The
  smallest bad row over all threads is then the smallest bad row of the batch -
  the same row, code and column the CPU reports. The extra last row holds in
  ``errors[-1, 0]`` the smallest bad row found so far (``cuda.atomic.min``), so
  that other threads stop early; it is an optimization only.

The per-row formulas are the ``@njit`` functions of :mod:`~xentstream._kernels.rows`,
called from the kernels: numba-cuda compiles a CPU dispatcher called in a CUDA
kernel as a device function (``CUDATypingContext.resolve_value_type``), so each
formula lives once. The CUDA simulator runs kernels as Python and cannot unbox its
fake device arrays into an ``@njit`` call, so there the functions' ``py_func`` is
called instead (same source).

:func:`add_term_atomic` lives here rather than beside ``exact.add_term`` because
``exact.py`` is imported by the CPU path, which must not import ``numba.cuda``.

:func:`launch` is the host side: row windows of at most :data:`ROWS_PER_LAUNCH`
rows (and :data:`WINDOW_BYTES`), host inputs staged through pinned buffers on two
streams (the copy of one window overlaps the kernel of the other: every copy of a
window is issued on its stream and only that stream is waited for), device inputs
sliced without copying. Device state is allocated and zeroed on the device once per
call: one set of accumulator copies, shared by both streams and read back once at
the end (every :data:`FLUSH_ROWS` rows for huge calls), where the host normalizes
the copies into one exact total. The pinned buffers stay with the thread for its
next call (at most :data:`STAGING_BYTES`) until :func:`release_buffers`.

The launch sizes are module attributes so that tests can shrink them: with 4
threads per block, 3 blocks and 64-row windows, 150 rows cross block boundaries,
every grid-stride loop iterates and host inputs take several transfers.

One thread handles one row (its C classes in sequence, as the CPU does). Large C
would gain from a warp per row with shuffle reductions, and heavy atomic traffic
from per-block shared-memory accumulators flushed once; both are left for when
they can be measured on a GPU.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numba
import numpy as np
from numba import cuda

from xentstream._kernels import rows
from xentstream._kernels.devices import is_device_array
from xentstream._kernels.exact import MAX_TERMS_PER_BLOCK, N_SLOTS, NAN, NEG_INF, POS_INF
from xentstream._kernels.exact import combine_blocks as _combine_blocks
from xentstream._kernels.layout import (
    CLASS_LOSS,
    CLASS_MASS,
    CLASS_WEIGHT,
    CORRECT,
    DENOMINATOR,
    DENOMINATOR_SQUARED,
    ENTROPY,
    IGNORED,
    LABEL_OUT_OF_RANGE,
    LOSS,
    LOSS_SQUARED,
    N_CLASS_SUMS,
    N_COUNTS,
    N_SUMS,
    OK,
    POSITIVE,
    ROWS,
    SAMPLE_WEIGHT_INVALID,
    TARGET_ENTROPY,
    WEIGHT,
)

#: True when numba runs CUDA kernels in its Python simulator (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = bool(getattr(numba.config, "ENABLE_CUDASIM", False))

#: Threads per CUDA block (tests lower it so that small inputs span several blocks).
THREADS_PER_BLOCK = 256
#: Most blocks of one launch; more rows make the grid-stride loops iterate.
MAX_BLOCKS = 1024
#: Accumulator copies per launch (atomic contention falls with more copies).
ACCUMULATOR_COPIES = 32
#: Rows per launch, and per host-to-device transfer for host inputs. A launch adds
#: at most this many terms to one slot of one copy, far below the 2**31 a chunk
#: absorbs without carrying (``exact.MAX_TERMS_PER_BLOCK``).
ROWS_PER_LAUNCH = 1 << 20
#: Bytes of predictions per launch: bounds the pinned staging buffers (two per input)
#: when rows are wide (a language model's vocabulary).
WINDOW_BYTES = 1 << 26
#: Memory cap for the accumulator copies of one launch (per-class sums grow with C).
STATE_BUDGET_BYTES = 1 << 28
#: Above this many groups a launch uses one accumulator copy (see :func:`_copies`).
MANY_GROUPS = 64
#: Most bytes of pinned staging buffers one thread keeps (:func:`release_buffers`).
STAGING_BYTES = 1 << 28
#: Rows added into the device accumulators between two read-backs: a chunk absorbs
#: ``exact.MAX_TERMS_PER_BLOCK`` terms without carrying, and a row adds at most one
#: term to a slot. Tests lower it so that the read-back inside a call runs.
FLUSH_ROWS = MAX_TERMS_PER_BLOCK

_NO_ERROR = np.iinfo(np.int64).max
_LOW32 = 0xFFFFFFFF
_MANTISSA_MASK = (1 << 52) - 1
_HIDDEN_BIT = 1 << 52


def _device(function: Any) -> Any:
    """An ``@njit`` function of ``rows.py`` as a CUDA kernel calls it (see module doc)."""
    return function.py_func if SIMULATOR else function


_scan_prediction_row = _device(rows.scan_prediction_row)
_scan_soft_target_row = _device(rows.scan_soft_target_row)
_log_probability = _device(rows.log_probability)
_check_binary_pair = _device(rows.check_binary_pair)
_binary_log_probabilities = _device(rows.binary_log_probabilities)
_binary_loss = _device(rows.binary_loss)
_binary_entropy = _device(rows.binary_entropy)
_binary_target_entropy = _device(rows.binary_target_entropy)
_binary_predicts_positive = _device(rows.binary_predicts_positive)
_neg_xlogy = _device(rows.neg_xlogy)

if SIMULATOR:

    def _float64_bits(value):
        """The int64 with the bits of the float64 ``value`` (simulator: numpy view)."""
        return np.float64(value).view(np.int64)

else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _float64_bits(value):
        """The int64 with the bits of the float64 ``value`` (a register move, no conversion)."""
        return libdevice.double_as_longlong(value)


@cuda.jit(device=True)
def add_term_atomic(acc, slot, value):
    """Add the float64 ``value`` exactly to ``acc[slot]`` with int64 atomics.

    The bit logic of :func:`xentstream._kernels.exact.add_term`, with each of the
    three 32-bit pieces of the shifted mantissa added by ``cuda.atomic.add``: the
    pieces of concurrent terms may interleave, but integer addition commutes, so the
    chunk values after the launch do not depend on the order.
    """
    if value == 0.0:
        return
    if value - value != 0.0:  # inf or NaN: counted, never mixed into the integer
        if value != value:
            cuda.atomic.add(acc, (slot, NAN), 1)
        elif value > 0.0:
            cuda.atomic.add(acc, (slot, POS_INF), 1)
        else:
            cuda.atomic.add(acc, (slot, NEG_INF), 1)
        return
    bits = _float64_bits(value)
    exponent = (bits >> 52) & 0x7FF
    mantissa = bits & _MANTISSA_MASK
    if exponent == 0:
        exponent = 1  # subnormal: same unit as the smallest normal exponent
    else:
        mantissa |= _HIDDEN_BIT
    chunk = exponent >> 5
    shift = exponent & 31
    # Split mantissa << shift (up to 85 bits) into three 32-bit pieces without
    # ever shifting by 64 or overflowing an int64 (as exact.add_term).
    low = (mantissa & ((1 << (32 - shift)) - 1)) << shift
    mid = (mantissa >> (32 - shift)) & _LOW32
    high = (mantissa >> 32) >> (32 - shift)
    if bits < 0:
        low, mid, high = -low, -mid, -high
    cuda.atomic.add(acc, (slot, chunk), low)
    cuda.atomic.add(acc, (slot, chunk + 1), mid)
    cuda.atomic.add(acc, (slot, chunk + 2), high)


@cuda.jit(device=True)
def _add_row_atomic(acc, s, loss, denominator, entropy, target_entropy, correct):
    """The per-row terms of ``cpu._stage_row``, added with atomics (same slots, same terms)."""
    add_term_atomic(acc, LOSS, s * loss)
    add_term_atomic(acc, DENOMINATOR, s * denominator)
    if denominator > 0.0:
        add_term_atomic(acc, LOSS_SQUARED, s * (loss * loss / denominator))
    add_term_atomic(acc, WEIGHT, s)
    add_term_atomic(acc, DENOMINATOR_SQUARED, (s * denominator) * (s * denominator))
    add_term_atomic(acc, ENTROPY, s * entropy)
    add_term_atomic(acc, TARGET_ENTROPY, s * target_entropy)
    if correct:
        add_term_atomic(acc, CORRECT, s)


@cuda.jit(device=True)
def _record_error(errors, error_values, thread, row, code, column, value):
    """Write this thread's first bad row into its own slot; lower the shared minimum."""
    errors[thread, 0] = row
    errors[thread, 1] = code
    errors[thread, 2] = column
    error_values[thread] = value
    cuda.atomic.min(errors, (errors.shape[0] - 1, 0), row)


@cuda.jit(device=True)
def _past_first_error(errors, row):
    """True when a bad row before ``row`` is known: nothing after it can be reported.

    A plain (possibly stale) read: a stale value only delays the early exit.
    """
    return row > errors[errors.shape[0] - 1, 0]


@cuda.jit(device=True)
def _sample_weight(sample_weight, i, validate):
    """``cpu._sample_weight``: (weight, ok); 1.0 without weights; ok False if invalid."""
    if sample_weight.shape[0] == 0:
        return 1.0, True
    s = np.float64(sample_weight[i])
    if validate and not (s >= 0.0 and s - s == 0.0):  # negative, NaN or inf
        return s, False
    return s, True


@cuda.jit(device=True)
def _group(groups, i):
    if groups.shape[0] == 0:
        return 0
    return groups[i]


@cuda.jit
def multiclass_hard_kernel(
    preds,
    target,
    class_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Twin of ``cpu.multiclass_hard``: (N, C) predictions against N integer labels."""
    n_rows, n_classes = preds.shape
    thread = cuda.grid(1)
    copy = cuda.blockIdx.x % sums.shape[0]
    smoothing = opts.label_smoothing
    keep_rows = row_losses.shape[0] > 0
    per_class = class_sums.shape[1] > 0
    # H of the smoothed one-hot target is the same for every row. The row loss below
    # is composed from the rows.py formulas exactly as in the body of
    # cpu.multiclass_hard (same terms, same order), so that both engines add the same
    # float64 values; a change there must be mirrored here.
    target_entropy = 0.0
    if opts.with_entropy and smoothing > 0.0:
        off = smoothing / n_classes
        on = 1.0 - smoothing + off
        target_entropy = _neg_xlogy(on, math.log(on)) + (n_classes - 1) * _neg_xlogy(
            off, math.log(off)
        )
    for i in range(thread, n_rows, cuda.gridsize(1)):
        if _past_first_error(errors, i):
            break
        code, column, bad, argmax, normalizer, entropy = _scan_prediction_row(preds, i, opts)
        if code != OK:
            _record_error(errors, error_values, thread, i, code, column, bad)
            break
        s, ok = _sample_weight(sample_weight, i, opts.validate)
        if not ok:
            _record_error(errors, error_values, thread, i, SAMPLE_WEIGHT_INVALID, -1, s)
            break
        group = _group(groups, i)
        label = np.int64(target[i])
        if opts.has_ignore_index and label == opts.ignore_index:
            cuda.atomic.add(counts, (copy, group, IGNORED), 1)
            if keep_rows:
                row_losses[i] = 0.0
            continue
        if label < 0 or label >= n_classes:
            _record_error(errors, error_values, thread, i, LABEL_OUT_OF_RANGE, label, 0.0)
            break
        w = class_weight[label]
        loss = _neg_xlogy(
            (1.0 - smoothing) * w, _log_probability(preds, i, label, normalizer, opts)
        )
        if smoothing > 0.0:
            share = smoothing / n_classes
            for c in range(n_classes):
                loss += _neg_xlogy(
                    share * class_weight[c], _log_probability(preds, i, c, normalizer, opts)
                )
        if keep_rows:
            row_losses[i] = loss
        cuda.atomic.add(counts, (copy, group, ROWS), 1)
        _add_row_atomic(sums[copy, group], s, loss, w, entropy, target_entropy, argmax == label)
        if per_class:
            class_acc = class_sums[copy, label]
            add_term_atomic(class_acc, CLASS_LOSS, s * loss)
            add_term_atomic(class_acc, CLASS_WEIGHT, s * w)
            add_term_atomic(class_acc, CLASS_MASS, s)
            cuda.atomic.add(class_counts, (copy, label), 1)


@cuda.jit
def multiclass_soft_kernel(
    preds,
    target,
    class_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Twin of ``cpu.multiclass_soft``: (N, C) predictions against (N, C) distributions."""
    n_rows, n_classes = preds.shape
    thread = cuda.grid(1)
    copy = cuda.blockIdx.x % sums.shape[0]
    smoothing = opts.label_smoothing
    share = smoothing / n_classes
    keep_rows = row_losses.shape[0] > 0
    per_class = class_sums.shape[1] > 0
    for i in range(thread, n_rows, cuda.gridsize(1)):
        if _past_first_error(errors, i):
            break
        code, column, bad, argmax, normalizer, entropy = _scan_prediction_row(preds, i, opts)
        if code != OK:
            _record_error(errors, error_values, thread, i, code, column, bad)
            break
        code, column, bad, target_argmax = _scan_soft_target_row(target, i, opts)
        if code != OK:
            _record_error(errors, error_values, thread, i, code, column, bad)
            break
        s, ok = _sample_weight(sample_weight, i, opts.validate)
        if not ok:
            _record_error(errors, error_values, thread, i, SAMPLE_WEIGHT_INVALID, -1, s)
            break
        group = _group(groups, i)
        # The per-class composition mirrors cpu.multiclass_soft (see multiclass_hard_kernel).
        loss = 0.0
        target_entropy = 0.0
        for c in range(n_classes):
            q = (1.0 - smoothing) * np.float64(target[i, c]) + share
            if q == 0.0:
                continue
            term = _neg_xlogy(class_weight[c] * q, _log_probability(preds, i, c, normalizer, opts))
            loss += term
            if opts.with_entropy:
                target_entropy += _neg_xlogy(q, math.log(q))
            if per_class:
                class_acc = class_sums[copy, c]
                add_term_atomic(class_acc, CLASS_LOSS, s * term)
                add_term_atomic(class_acc, CLASS_WEIGHT, s * q)
                add_term_atomic(class_acc, CLASS_MASS, s * q)
        if per_class:
            cuda.atomic.add(class_counts, (copy, target_argmax), 1)
        if keep_rows:
            row_losses[i] = loss
        cuda.atomic.add(counts, (copy, group, ROWS), 1)
        _add_row_atomic(
            sums[copy, group], s, loss, 1.0, entropy, target_entropy, argmax == target_argmax
        )


@cuda.jit
def binary_kernel(
    preds,
    target,
    unused_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Twin of ``cpu.binary``: N predictions of the positive class against N targets."""
    n_rows = preds.shape[0]
    thread = cuda.grid(1)
    copy = cuda.blockIdx.x % sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    for i in range(thread, n_rows, cuda.gridsize(1)):
        if _past_first_error(errors, i):
            break
        x = np.float64(preds[i])
        t = np.float64(target[i])
        code, which, bad = _check_binary_pair(x, t, opts)
        if code != OK:
            _record_error(errors, error_values, thread, i, code, which, bad)
            break
        s, ok = _sample_weight(sample_weight, i, opts.validate)
        if not ok:
            _record_error(errors, error_values, thread, i, SAMPLE_WEIGHT_INVALID, -1, s)
            break
        group = _group(groups, i)
        log_p, log_1mp = _binary_log_probabilities(x, opts)
        loss = _binary_loss(t, log_p, log_1mp, opts.pos_weight)
        entropy = 0.0
        target_entropy = 0.0
        if opts.with_entropy:
            entropy = _binary_entropy(log_p, log_1mp)
            target_entropy = _binary_target_entropy(t)
        if keep_rows:
            row_losses[i] = loss
        cuda.atomic.add(counts, (copy, group, ROWS), 1)
        correct = _binary_predicts_positive(x, opts) == (t >= 0.5)
        _add_row_atomic(sums[copy, group], s, loss, 1.0, entropy, target_entropy, correct)
        add_term_atomic(sums[copy, group], POSITIVE, s * t)


@cuda.jit
def multilabel_kernel(
    preds,
    target,
    pos_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Twin of ``cpu.multilabel``: per row, the sum over labels of the binary loss."""
    n_rows, n_labels = preds.shape
    thread = cuda.grid(1)
    copy = cuda.blockIdx.x % sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    per_label = class_sums.shape[1] > 0
    for i in range(thread, n_rows, cuda.gridsize(1)):
        if _past_first_error(errors, i):
            break
        failed = False
        for c in range(n_labels):
            code, which, bad = _check_binary_pair(
                np.float64(preds[i, c]), np.float64(target[i, c]), opts
            )
            if code != OK:
                # column encodes the label and which array, as on the CPU.
                _record_error(errors, error_values, thread, i, code, c + which * n_labels, bad)
                failed = True
                break
        if failed:
            break
        s, ok = _sample_weight(sample_weight, i, opts.validate)
        if not ok:
            _record_error(errors, error_values, thread, i, SAMPLE_WEIGHT_INVALID, -1, s)
            break
        group = _group(groups, i)
        loss = 0.0
        entropy = 0.0
        target_entropy = 0.0
        for c in range(n_labels):
            x = np.float64(preds[i, c])
            t = np.float64(target[i, c])
            log_p, log_1mp = _binary_log_probabilities(x, opts)
            term = _binary_loss(t, log_p, log_1mp, pos_weight[c])
            loss += term
            if opts.with_entropy:
                entropy += _binary_entropy(log_p, log_1mp)
                target_entropy += _binary_target_entropy(t)
            if per_label:
                label_acc = class_sums[copy, c]
                add_term_atomic(label_acc, CLASS_LOSS, s * term)
                add_term_atomic(label_acc, CLASS_WEIGHT, s)
                add_term_atomic(label_acc, CLASS_MASS, s * t)
                if t >= 0.5:
                    cuda.atomic.add(class_counts, (copy, c), 1)
        if keep_rows:
            row_losses[i] = loss
        cuda.atomic.add(counts, (copy, group, ROWS), 1)
        _add_row_atomic(sums[copy, group], s, loss, 1.0, entropy, target_entropy, False)


@cuda.jit
def prediction_entropy_kernel(
    preds,
    unused_target,
    unused_weight,
    sample_weight,
    groups,
    opts,
    row_losses,
    sums,
    counts,
    class_sums,
    class_counts,
    errors,
    error_values,
):
    """Twin of ``cpu.prediction_entropy``: entropy of each predicted distribution."""
    n_rows = preds.shape[0]
    thread = cuda.grid(1)
    copy = cuda.blockIdx.x % sums.shape[0]
    keep_rows = row_losses.shape[0] > 0
    for i in range(thread, n_rows, cuda.gridsize(1)):
        if _past_first_error(errors, i):
            break
        code, column, bad, _, _, entropy = _scan_prediction_row(preds, i, opts)
        if code != OK:
            _record_error(errors, error_values, thread, i, code, column, bad)
            break
        s, ok = _sample_weight(sample_weight, i, opts.validate)
        if not ok:
            _record_error(errors, error_values, thread, i, SAMPLE_WEIGHT_INVALID, -1, s)
            break
        group = _group(groups, i)
        if keep_rows:
            row_losses[i] = entropy
        cuda.atomic.add(counts, (copy, group, ROWS), 1)
        _add_row_atomic(sums[copy, group], s, entropy, 1.0, entropy, 0.0, False)


KERNELS = {
    "multiclass_hard": multiclass_hard_kernel,
    "multiclass_soft": multiclass_soft_kernel,
    "binary": binary_kernel,
    "multilabel": multilabel_kernel,
    "prediction_entropy": prediction_entropy_kernel,
}


# -- host side ---------------------------------------------------------------------------


class CudaUnavailableError(RuntimeError, ValueError):
    """``engine="cuda"`` without a usable GPU.

    A ``RuntimeError`` (the machine, not the data, is at fault) that is also a
    ``ValueError`` (an ``engine=`` value this machine cannot honour), so callers
    that report bad arguments - the CLI's exit status 2 - catch it as well.
    """


def ensure_available() -> None:
    """Raise :class:`CudaUnavailableError` unless a GPU (or the simulator) runs kernels."""
    if SIMULATOR:
        return
    if not cuda.is_available():
        raise CudaUnavailableError(
            "engine='cuda': no usable CUDA GPU (numba.cuda.is_available() is False; "
            "check the driver and CUDA_VISIBLE_DEVICES); use engine='cpu' or 'auto'"
        )


def as_device_array(value: Any, name: str) -> Any:
    """A numba device array of the memory of ``value``: no copy, except to widen.

    torch tensors are detached first (one that requires grad refuses
    ``__cuda_array_interface__``). Half precision is widened to float32 on the
    device, as :func:`~xentstream._inputs.as_array` widens it on the host, whatever
    the argument (predictions, soft targets, sample weights): torch ``float16`` and
    ``bfloat16`` tensors with ``.float()``, any other contiguous ``float16`` device
    array with :func:`widen_kernel`. A dtype numba cannot read (``__cuda_array_interface__``
    type ``V``, such as another library's bfloat16) is a ``TypeError`` naming ``name``.
    Contiguity is checked by the caller (a strided float16 array stays as it is).
    """
    if type(value).__module__.split(".", 1)[0] == "torch":
        value = value.detach()
        if str(value.dtype) in ("torch.float16", "torch.bfloat16"):
            value = value.float()
    if hasattr(value, "__cuda_array_interface__"):
        typestr = value.__cuda_array_interface__["typestr"]
        if typestr[1] == "V":
            raise TypeError(
                f"{name}: device array of dtype {typestr!r} (not a numeric type the GPU "
                "kernels can read, e.g. bfloat16); convert it to float32 on the device "
                "first (e.g. .astype('float32'))"
            )
        array = cuda.as_cuda_array(value)
    else:  # the simulator's device arrays are numpy-backed and have no interface
        array = value
    if array.dtype == np.float16 and array.is_c_contiguous():
        array = _widen(array)
    return array


@cuda.jit
def widen_kernel(source, destination):
    """``destination[i] = float32(source[i])``: float16 device inputs to float32."""
    for i in range(cuda.grid(1), source.shape[0], cuda.gridsize(1)):
        destination[i] = np.float32(source[i])


@cuda.jit
def fill_kernel(destination, value):
    """``destination[:] = value`` on the device (zeroes the accumulator copies)."""
    for i in range(cuda.grid(1), destination.shape[0], cuda.gridsize(1)):
        destination[i] = value


@cuda.jit
def reset_errors_kernel(errors):
    """Every thread's error row to ``-1`` (none), the shared minimum to "no bad row"."""
    last = errors.shape[0] - 1
    for i in range(cuda.grid(1), errors.shape[0], cuda.gridsize(1)):
        errors[i, 0] = _NO_ERROR if i == last else -1
        errors[i, 1] = -1
        errors[i, 2] = -1


def _grid(n: int) -> tuple[int, int]:
    """(blocks, threads per block) of a grid-stride loop over ``n`` rows or elements:
    a thread each, up to :data:`MAX_BLOCKS` blocks (read at each call: tests shrink it)."""
    threads = int(THREADS_PER_BLOCK)
    blocks = max(1, min(int(MAX_BLOCKS), -(-n // threads)))
    return blocks, threads


def _widen(array: Any) -> Any:
    flat = array.reshape(array.size)
    wide = cuda.device_array(array.size, dtype=np.float32)
    if array.size:
        blocks, threads = _grid(array.size)
        widen_kernel[blocks, threads](flat, wide)
    return wide.reshape(*array.shape)


def _fill(array: Any, value: int, stream: Any) -> None:
    """Set every element of the contiguous device ``array`` to ``value`` on ``stream``."""
    if array.size:
        blocks, threads = _grid(array.size)
        fill_kernel[blocks, threads, stream](array.reshape(array.size), value)


def to_host(value: Any) -> np.ndarray:
    """Copy a device array (any ``__cuda_array_interface__`` object) to a numpy array."""
    if SIMULATOR and not hasattr(value, "__cuda_array_interface__"):
        return value.copy_to_host()
    return cuda.as_cuda_array(value).copy_to_host()


def to_device(array: np.ndarray) -> Any:
    """Copy a (small) host array to the device."""
    return cuda.to_device(np.ascontiguousarray(array))


def _copies(blocks: int, n_groups: int, class_width: int) -> int:
    """Accumulator copies of a launch: fewer with many groups, whose state dominates.

    Group codes already spread the atomics over ``n_groups`` accumulators, so above
    :data:`MANY_GROUPS` one copy is used (a copy of a group's sums is 5 KiB).
    """
    if n_groups > MANY_GROUPS:
        return 1
    per_copy = 8 * (
        n_groups * (N_SUMS * N_SLOTS + N_COUNTS) + class_width * (N_CLASS_SUMS * N_SLOTS + 1)
    )
    return max(1, min(int(ACCUMULATOR_COPIES), blocks, STATE_BUDGET_BYTES // per_copy))


class _Stager:
    """Two pinned host buffers per row array: window k is staged in buffer k % 2.

    A buffer is refilled only after the stream that last read it finished, so the
    copy of one window overlaps the kernel (and copies) of the other. Pinning memory
    is slow (a driver call per buffer), so each thread keeps its buffers for the next
    batch of the same shape (:func:`_stager`): a stream of batches pins them once.
    :func:`release_buffers` frees them; :data:`STAGING_BYTES` caps their size.
    """

    def __init__(self, arrays: list[Any], rows: int) -> None:
        self.rows = rows
        self.layout = _stager_layout(arrays)
        self.buffers = [
            [
                None
                if array is None
                else cuda.pinned_array((rows, *array.shape[1:]), dtype=array.dtype)
                for array in arrays
            ]
            for _ in range(2)
        ]

    def stage(self, slot: int, index: int, array: np.ndarray, destination: Any, stream: Any) -> Any:
        """Copy ``array`` through pinned buffer ``slot`` into the front of ``destination``."""
        n = array.shape[0]
        buffer = self.buffers[slot][index][:n]
        buffer[...] = array
        window = destination[:n]
        window.copy_to_device(buffer, stream=stream)
        return window


def _stager_layout(arrays: list[Any]) -> tuple:
    return tuple(None if a is None else (a.shape[1:], a.dtype.str) for a in arrays)


# Each thread's staging buffers, keyed by its Thread object (weakly: a finished
# thread's buffers go with it), behind a lock so that release_buffers() can free them
# from any thread.
_STAGERS: weakref.WeakKeyDictionary[threading.Thread, _Stager] = weakref.WeakKeyDictionary()
_STAGERS_LOCK = threading.Lock()


def _stager(arrays: list[Any], rows: int) -> _Stager:
    """This thread's staging buffers, reused when they fit (a thread never shares them)."""
    thread = threading.current_thread()
    layout = _stager_layout(arrays)
    with _STAGERS_LOCK:
        cached = _STAGERS.pop(thread, None)  # dropped first: never two sets pinned
    if cached is None or cached.rows < rows or cached.layout != layout:
        cached = _Stager(arrays, rows)
    with _STAGERS_LOCK:
        _STAGERS[thread] = cached
    return cached


def release_buffers() -> None:
    """Free the pinned host buffers that ``engine="cuda"`` keeps for host inputs.

    Each thread that ran host (numpy) inputs on the GPU keeps two pinned buffers per
    input array, at most :data:`STAGING_BYTES` in all, so that the next batch of the
    same shape need not pin memory again (a slow driver call). Pinned memory cannot
    be swapped out; call this when done with the GPU to return it. Buffers in use by a
    launch in another thread are freed when that launch ends. The next launch pins
    new ones.
    """
    with _STAGERS_LOCK:
        _STAGERS.clear()


def _window_rows(row_arrays: list[Any], on_host: list[bool], n_rows: int) -> int:
    """Rows per launch: :data:`ROWS_PER_LAUNCH`, less for wide rows or large staging."""
    preds = row_arrays[0]
    row_bytes = max(1, int(np.prod(preds.shape[1:], dtype=np.int64)) * preds.dtype.itemsize)
    staged_bytes = sum(
        2 * int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        for array, host in zip(row_arrays, on_host, strict=True)
        if host
    )
    window_rows = min(
        int(ROWS_PER_LAUNCH),
        int(WINDOW_BYTES) // row_bytes,
        int(STAGING_BYTES) // max(1, staged_bytes),
        int(FLUSH_ROWS),
    )
    return max(1, min(window_rows, n_rows))


def launch(
    name: str,
    preds: Any,
    target: Any,
    weights: np.ndarray,
    sample_weight: Any,
    groups: Any,
    opts: Any,
    *,
    n_groups: int,
    class_width: int,
    keep_rows: bool,
) -> tuple[np.ndarray, ...]:
    """Run the CUDA twin of ``cpu.<name>`` over every row; host arrays back.

    Parameters
    ----------
    name
        The CPU kernel's name (``"multiclass_hard"``, ...).
    preds, target, sample_weight, groups
        Row arrays as the CPU kernel takes them, on the host (numpy, copied in
        windows through pinned buffers) or on the device (sliced, never copied);
        length-0 arrays switch the optional ones off.
    weights
        Class or label weights (host; copied once).
    opts
        The :class:`~xentstream._kernels.layout.KernelOptions` of the call.
    n_groups, class_width, keep_rows
        Groups of ``groups``; per-class width (0: off); whether per-row losses are kept.

    Returns
    -------
    tuple of ndarray
        ``(sums, counts, class_sums, class_counts, errors, error_values, row_losses)``
        in the CPU kernels' layout with a single (already normalized) block, so the
        caller treats both engines alike. ``errors`` rows are rows of the whole call.

    Notes
    -----
    Device memory is allocated once per call, not per window: per stream, a window of
    each host input (filled from the pinned buffers); one set of accumulator
    copies shared by every window of both streams (integer atomics commute, so two
    kernels may add into it concurrently), zeroed on the device and read back once
    at the end - or every :data:`FLUSH_ROWS` rows, before a chunk could absorb more
    terms than ``exact.MAX_TERMS_PER_BLOCK`` - and, per stream, the error rows of
    its threads and its window of per-row losses. The error rows are reset only
    once: a window that finds a bad row ends the call. Per window only the shared
    minimum of the bad rows (and the per-row losses, if kept) come back, copied on
    the window's stream, so the other stream's copies and kernel go on meanwhile.
    """
    n_rows = int(preds.shape[0])
    kernel = KERNELS[name]
    row_arrays = [preds, target, sample_weight, groups]
    on_host = [not is_device_array(array) and array.shape[0] > 0 for array in row_arrays]
    window_rows = _window_rows(row_arrays, on_host, n_rows)
    host_arrays = [a if host else None for a, host in zip(row_arrays, on_host, strict=True)]
    stager = _stager(host_arrays, window_rows) if any(on_host) else None
    empty = {}  # length-0 placeholders go to the device once
    for index, array in enumerate(row_arrays):
        if array.shape[0] == 0:
            empty[index] = array if is_device_array(array) else to_device(array)
    device_weights = to_device(weights)
    streams = [cuda.stream(), cuda.stream()]
    # Per stream, device memory for a window of each host array (filled by the stager).
    staged = [
        [
            cuda.device_array((window_rows, *array.shape[1:]), array.dtype) if host else None
            for array, host in zip(row_arrays, on_host, strict=True)
        ]
        for _ in streams
    ]

    # Device state of the whole call (see Notes).
    blocks, threads = _grid(window_rows)
    n_threads = blocks * threads
    copies = _copies(blocks, n_groups, class_width)
    state = [
        cuda.device_array((copies, n_groups, N_SUMS, N_SLOTS), np.int64),
        cuda.device_array((copies, n_groups, N_COUNTS), np.int64),
        cuda.device_array((copies, class_width, N_CLASS_SUMS, N_SLOTS), np.int64),
        cuda.device_array((copies, class_width), np.int64),
    ]
    per_stream = []
    for stream in streams:
        thread_errors = cuda.device_array((n_threads + 1, 3), np.int64)
        blocks_reset, threads_reset = _grid(n_threads + 1)
        reset_errors_kernel[blocks_reset, threads_reset, stream](thread_errors)
        per_stream.append(
            (
                thread_errors,
                cuda.device_array(n_threads + 1, np.float64),  # read only where errors >= 0
                cuda.device_array(window_rows if keep_rows else 0, np.float64),
                cuda.pinned_array((1, 3), np.int64),  # the shared minimum, per window
            )
        )

    def zero_state() -> None:
        for array in state:
            _fill(array, 0, streams[0])
        streams[0].synchronize()  # before a kernel on either stream adds into it

    total_sums = np.zeros((1, n_groups, N_SUMS, N_SLOTS), dtype=np.int64)
    total_counts = np.zeros((1, n_groups, N_COUNTS), dtype=np.int64)
    total_class_sums = np.zeros((1, class_width, N_CLASS_SUMS, N_SLOTS), dtype=np.int64)
    total_class_counts = np.zeros((1, class_width), dtype=np.int64)
    errors = np.full((1, 3), -1, dtype=np.int64)
    error_values = np.zeros(1, dtype=np.float64)
    row_losses = np.empty(n_rows if keep_rows else 0, dtype=np.float64)
    pending: list[Any] = [None, None]

    def flush() -> None:
        """Fold the accumulator copies into the totals (both streams are idle)."""
        stream = streams[0]
        sums, counts, class_sums, class_counts = (a.copy_to_host(stream=stream) for a in state)
        stream.synchronize()
        _combine_blocks(
            sums.reshape(copies, n_groups * N_SUMS, N_SLOTS),
            total_sums[0].reshape(n_groups * N_SUMS, N_SLOTS),
        )
        total_counts[0] += counts.sum(axis=0)
        if class_width:
            _combine_blocks(
                class_sums.reshape(copies, class_width * N_CLASS_SUMS, N_SLOTS),
                total_class_sums[0].reshape(class_width * N_CLASS_SUMS, N_SLOTS),
            )
            total_class_counts[0] += class_counts.sum(axis=0)

    def finish(job: Any) -> bool:
        """Wait for one window; True if it found a bad row (recorded in ``errors``)."""
        start, stop, slot = job
        stream = streams[slot]
        thread_errors, thread_values, window_losses, minimum = per_stream[slot]
        thread_errors[n_threads:].copy_to_host(minimum, stream=stream)
        if keep_rows:
            window_losses[: stop - start].copy_to_host(row_losses[start:stop], stream=stream)
        stream.synchronize()
        # The shared minimum tells whether any thread failed: the per-thread rows
        # (megabytes for a full grid) come back only then.
        if int(minimum[0, 0]) == _NO_ERROR:
            return False
        errs = thread_errors.copy_to_host(stream=stream)[:n_threads]
        values = thread_values.copy_to_host(stream=stream)
        stream.synchronize()
        bad = np.flatnonzero(errs[:, 0] >= 0)
        first = bad[np.argmin(errs[bad, 0])]
        errors[0] = errs[first]
        errors[0, 0] += start
        error_values[0] = values[first]
        return True

    def finish_pending() -> bool:
        """Wait for the windows in flight, oldest first (a later window's bad row must
        not hide an earlier one's); True if one found a bad row."""
        jobs = sorted((job for job in pending if job is not None), key=lambda job: job[0])
        pending[:] = [None, None]
        return any(finish(job) for job in jobs)

    zero_state()
    failed = False
    unflushed = 0  # rows added into the accumulator copies since they were zeroed
    for index, start in enumerate(range(0, n_rows, window_rows)):
        stop = min(start + window_rows, n_rows)
        slot = index % 2
        stream = streams[slot]
        if unflushed + (stop - start) > FLUSH_ROWS:
            failed = finish_pending()
            if failed:
                break
            flush()
            zero_state()
            unflushed = 0
        # Windows finish in order, so the first window with a bad row holds the
        # smallest bad row of the call.
        if pending[slot] is not None:
            failed = finish(pending[slot])
            pending[slot] = None
            if failed:
                break
        inputs = []
        for position, array in enumerate(row_arrays):
            if position in empty:
                inputs.append(empty[position])
            elif on_host[position]:
                window = array[start:stop]
                inputs.append(stager.stage(slot, position, window, staged[slot][position], stream))
            else:
                inputs.append(array[start:stop])
        thread_errors, thread_values, window_losses, _ = per_stream[slot]
        preds_window, target_window, weight_window, groups_window = inputs
        window_blocks, _ = _grid(stop - start)
        kernel[window_blocks, threads, stream](
            preds_window,
            target_window,
            device_weights,
            weight_window,
            groups_window,
            opts,
            window_losses[: stop - start] if keep_rows else window_losses,
            *state,  # sums, counts, class_sums, class_counts
            thread_errors,
            thread_values,
        )
        unflushed += stop - start
        pending[slot] = (start, stop, slot)
    if not failed:
        failed = finish_pending()
    for stream in streams:
        stream.synchronize()  # a failed call may leave a later window running
    if not failed:
        flush()
    return (
        total_sums,
        total_counts,
        total_class_sums,
        total_class_counts,
        errors,
        error_values,
        row_losses,
    )
