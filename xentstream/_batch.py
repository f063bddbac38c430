"""One batch through one kernel: the single update path of functions and metrics.

``multiclass_batch``, ``binary_batch``, ``multilabel_batch`` and
``entropy_batch`` take user inputs and a config, check shapes and dtypes, pick the
engine, call the matching kernel once (``cpu.<name>`` or its CUDA twin
``cuda.<name>_kernel``), and return the batch's exact partial sums
(:class:`BatchSums`) or raise the first validation error.

Engines (``engine=``): ``"auto"`` runs on the GPU when the predictions are a device
array (``__cuda_array_interface__``: torch CUDA tensors, CuPy, numba), read in
place, and on the CPU otherwise; ``"cuda"`` also copies host inputs to the device
(in windows, :func:`xentstream._kernels.cuda.launch`); ``"cpu"`` copies device
inputs to the host. Both engines return the same exact integer sums, so every
step after the kernel call is shared. Nothing here keeps
state: the functional API reduces a ``BatchSums`` immediately, a metric merges it
into its state only after the whole batch passed validation (which is what makes
``update`` atomic).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from xentstream import accumulator
from xentstream._errors import DEFAULT_NAMES, ColumnNames, kernel_error
from xentstream._inputs import (
    as_array,
    binary_columns,
    half_precision,
    squeeze_label_column,
)
from xentstream._kernels import cpu, layout, load_cuda
from xentstream._kernels.calibration import N_BIN_SUMS
from xentstream._kernels.devices import is_device_array
from xentstream._kernels.exact import MAX_TERMS_PER_BLOCK, N_SLOTS, combine_blocks, normalize
from xentstream._kernels.groups import row_positions
from xentstream.config import BinaryConfig, LossConfig, MulticlassConfig, MultilabelConfig

__all__ = [
    "ENGINES",
    "BatchSums",
    "binary_batch",
    "entropy_batch",
    "multiclass_batch",
    "multilabel_batch",
]

#: A block should hold at least this many prediction elements: fewer and the cost of
#: zeroing and combining its accumulators outweighs the parallel speed-up.
_MIN_BLOCK_ELEMENTS = 1 << 15
#: Blocks per thread: a few, so that uneven rows (early validation exits, ignored
#: rows) still balance.
_BLOCKS_PER_THREAD = 4
#: At most this many groups in one call are summed per group inside the CPU kernel
#: (64 x 11 x 70 x 8 B = 394 KB a block; its staging keeps 56 columns a group); more
#: come back as per-row terms (``BatchSums.row_terms``).
_KERNEL_GROUPS = 64
#: Memory cap for the per-block (per-class, per-group) accumulators of one call.
_BLOCK_STATE_BUDGET_BYTES = 1 << 28

_NO_ROWS = np.empty(0, dtype=np.float64)
_NO_FORECASTS = np.empty((2, 0), dtype=np.float64)
#: Values of ``engine=``.
ENGINES = ("auto", "cpu", "cuda")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: numba's "workqueue" threading layer aborts when two threads launch parallel kernels
#: at once; OpenMP and TBB do not. Kernel calls are serialized until a run shows
#: which layer numba picked, and stay serialized if it is workqueue.
_WORKQUEUE_LOCK = threading.Lock()
_threading_layer_is_safe = False
_NO_WEIGHTS = np.empty(0, dtype=np.float64)
_NO_GROUPS = np.empty(0, dtype=np.int64)
_NO_GROUPS.flags.writeable = False  # the same numba type as real group codes


def _start_threads_waiting_passively() -> None:
    """Start numba's thread pool with OpenMP's passive wait policy, unless the user set one.

    libgomp's default is to spin for a while after each parallel region; numba's pool
    then fights torch's own OpenMP pool on the same cores, so a training loop that
    logs its loss with us slowed down (measured: a 4k-row update inside a torch loop
    789 ms under the default policy, 32 ms passive). libgomp reads the variable once,
    when the pool starts, so it is set only around that start and removed again:
    torch, imported later, keeps its own default. An ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` the user set is left alone.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        numba.get_num_threads()
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.get_num_threads()  # public; starts the threading layer on first use
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_start_threads_waiting_passively()


@dataclass
class BatchSums:
    """Exact partial sums of one batch.

    Attributes
    ----------
    sums : ndarray, shape (N_SUMS, N_SLOTS)
        One exact accumulator per quantity of :mod:`xentstream._kernels.layout`.
    counts : ndarray, shape (N_COUNTS,)
        Rows counted and rows ignored.
    class_sums : ndarray or None, shape (C, N_CLASS_SUMS, N_SLOTS)
        Per-class (per-label) sums when requested.
    class_counts : ndarray or None, shape (C,)
        Per-class rows (multi-label: positives) when requested.
    row_losses : ndarray or None
        Per-row losses in the inputs' leading shape when requested.
    n_classes : int
        Number of classes (labels) of the batch; 1 for binary.
    group_sums : ndarray or None, shape (G, N_SUMS, N_SLOTS)
        Per-group sums when group codes were given (``sums`` is their exact total).
    group_counts : ndarray or None, shape (G, N_COUNTS)
        Per-group counters when group codes were given.
    row_terms : ndarray or None, shape (N, N_ROW_TERMS)
        With many group codes on the CPU: every row's exact terms
        (``layout.ROW_IGNORED`` marks ignored rows), the rows in order of their code
        (stable), for a per-group reduction at any number of groups
        (:class:`xentstream.grouping.GroupTable`); ``group_sums`` is then None.
    group_codes : ndarray or None, shape (N,)
        The group code of every row, with ``row_terms``.
    calibration : CalibrationState or None
        The batch's reliability bins, set by a metric with ``calibration_bins``.
    kept_terms : ndarray or None, shape (N, N_ROW_TERMS)
        With ``keep_terms`` on the CPU: every row's exact terms in row order, the
        kernel's own (``s_i L_i``, ``s_i d_i``, ..., ``layout.ROW_IGNORED``), so that
        a metric's window reads each row's denominator ``d_i`` where it is defined.
    target : array or None
        The targets as the kernel read them (converted, flat rows), so that what the
        metric derives from them afterwards (label counts) converts nothing again.
    row_forecasts : ndarray or None, shape (2, N)
        With ``keep_forecasts`` where the kernel makes them (multiclass rows on the
        CPU): every row's top-label confidence and outcome (-1: an ignored row), which
        the reliability bins tally instead of scanning the predictions again.
    bin_blocks : tuple of ndarray or None
        With ``calibration_bins`` where the kernel bins its rows itself (binary rows on
        the CPU): the per-block reliability bins ``(sums, counts)``, shapes
        (blocks, n_bins, N_BIN_SUMS, N_SLOTS) and (blocks, n_bins), each block
        normalized (:func:`xentstream.calibration.block_bins` combines them).
    replay : tuple or None
        Set where this call can be replayed (:class:`Replay`): the kernel's name, its
        options, the predictions, targets and class weights as it read them, and the
        class count.
    """

    sums: np.ndarray
    counts: np.ndarray
    class_sums: np.ndarray | None
    class_counts: np.ndarray | None
    row_losses: np.ndarray | None
    n_classes: int
    group_sums: np.ndarray | None = None
    group_counts: np.ndarray | None = None
    row_terms: np.ndarray | None = None
    group_codes: np.ndarray | None = None
    calibration: Any = None
    kept_terms: np.ndarray | None = None
    target: Any = None
    row_forecasts: np.ndarray | None = None
    bin_blocks: tuple[np.ndarray, np.ndarray] | None = None
    replay: tuple | None = None

    @property
    def n_rows(self) -> int:
        """Rows in the batch, ignored rows included."""
        return int(self.counts[layout.ROWS]) + int(self.counts[layout.IGNORED])


def _block_count(
    n_rows: int, n_classes: int, per_class: bool, n_groups: int, threads: int | None = None
) -> int:
    """Number of row blocks for one call (any choice gives the same bits)."""
    threads = numba.get_num_threads() if threads is None else threads
    if _one_block(n_rows, n_classes):  # every small batch: each bound below gives one
        return 1
    by_size = n_rows * max(n_classes, 1) // _MIN_BLOCK_ELEMENTS
    blocks = max(1, min(by_size, threads * _BLOCKS_PER_THREAD))
    per_block = n_groups * (layout.N_SUMS + layout.N_COUNTS) * N_SLOTS * 8
    if per_class:
        per_block += n_classes * layout.N_CLASS_SUMS * N_SLOTS * 8
    blocks = max(1, min(blocks, _BLOCK_STATE_BUDGET_BYTES // per_block))
    # Each block must stay below the terms a chunk can absorb without carrying.
    blocks = max(blocks, -(-n_rows // MAX_TERMS_PER_BLOCK))
    return min(blocks, max(n_rows, 1))


def _run(
    kernel: str,
    preds: Any,
    target: Any,
    weights: np.ndarray,
    sample_weight: Any,
    opts: layout.KernelOptions,
    *,
    groups: np.ndarray | None,
    n_groups: int,
    leading_shape: tuple[int, ...],
    n_classes: int,
    per_class: bool,
    keep_rows: bool,
    row_offset: int,
    names: ColumnNames,
    axis: str | None,
    keep_terms: bool = False,
    target_columns_follow: bool = False,
    rules: Mapping[int, str] | None = None,
    device: Any = None,
    keep_forecasts: bool = False,
    calibration_bins: int | None = None,
) -> BatchSums:
    """Call kernel ``kernel`` (a ``cpu`` name) on the CPU or, with ``device``, its CUDA twin.

    ``axis`` / ``target_columns_follow``: what a bad column of the kernel's error
    records is, and ``rules`` the kind's own wording of error codes
    (:func:`~xentstream._errors.kernel_error`). ``keep_terms``: also every
    row's terms in row order (``BatchSums.kept_terms``; the CUDA twins write none).
    ``keep_forecasts``: also the rows' top-label forecasts (``BatchSums.row_forecasts``;
    on the CPU, otherwise None), asked only by a kernel that writes them (the
    multiclass ones: their kinds declare ``Kind.kernel_forecasts``).
    ``calibration_bins``: also the rows' reliability bins from the kernel itself
    (``BatchSums.bin_blocks``; on the CPU, otherwise None), asked only of the binary
    kernel (its kind declares ``Kind.kernel_bins``).
    """
    # Only C-contiguous arrays reach the kernels: other layouts are copied once here,
    # which keeps one compiled specialization per dtype instead of one per layout.
    # Device arrays were checked to be contiguous by _array and stay where they are.
    preds = _read_only(preds)
    target = _read_only(target)
    sample_weight = _read_only(sample_weight)
    weights = _read_only(weights)  # class / label weights: a per-label pos_weight is a view
    n_rows = preds.shape[0]
    group_codes = _read_only(
        _NO_GROUPS if groups is None else _check_groups(groups, n_rows, n_groups)
    )
    n_groups_given = n_groups
    n_groups = 1 if groups is None else n_groups
    class_width = n_classes if per_class else 0
    # With many groups a CPU call sums every row into the batch's totals and hands back
    # each row's terms, reduced per group by the caller: kernel cost and memory then do
    # not grow with the number of groups (each block would hold G full accumulators,
    # and its staging columns shrink to one a group). A few groups are summed in the
    # kernel as before, at its full speed; the CUDA twin always does that.
    row_terms = device is None and groups is not None and n_groups > _KERNEL_GROUPS
    term_rows = _NO_GROUPS
    if row_terms:
        kernel_codes, n_groups = _NO_GROUPS, 1
        # Each row's terms are written where its group's rows lie together (a stable
        # counting sort by code): gathering them afterwards cost more than the kernel.
        term_rows = _read_only(row_positions(group_codes, n_groups_given))
    else:
        kernel_codes = group_codes
    # Terms in row order: the kernel writes row i's at i when term_rows is empty. The
    # CUDA twins write none: their per-row losses stand in (the caller's fallback).
    terms_in_order = keep_terms and device is None and not row_terms
    keep_rows = keep_rows or (keep_terms and device is not None)
    forecasts = None
    if keep_forecasts and device is None:
        forecasts = np.empty((2, n_rows))
    bin_blocks = [] if calibration_bins is not None and device is None else None
    launch = (
        functools.partial(
            _launch_cpu,
            term_rows=term_rows if row_terms else _NO_GROUPS if terms_in_order else None,
            row_forecasts=_NO_FORECASTS if forecasts is None else forecasts,
            n_bins=0 if bin_blocks is None else calibration_bins,
            bin_blocks=bin_blocks,
        )
        if device is None
        else device.launch
    )
    (
        block_sums,
        block_counts,
        block_class_sums,
        block_class_counts,
        errors,
        error_values,
        row_losses,
        *terms,
    ) = launch(
        kernel,
        preds,
        target,
        weights,
        sample_weight,
        kernel_codes,
        opts,
        n_groups=n_groups,
        class_width=class_width,
        keep_rows=keep_rows,
    )
    n_blocks = block_sums.shape[0]
    # One block (every small batch): one element read, not a numpy reduction.
    if (errors[0, 0] if n_blocks == 1 else errors[:, 0].max()) >= 0:
        failed = np.flatnonzero(errors[:, 0] >= 0)
        first = failed[np.argmin(errors[failed, 0])]
        row, code, column = (int(v) for v in errors[first])
        raise kernel_error(
            code,
            row,
            column,
            float(error_values[first]),
            names=names,
            row_offset=row_offset,
            leading_shape=leading_shape,
            n_classes=n_classes,
            sum_tol=opts.sum_tol,
            axis=axis,
            target_columns_follow=target_columns_follow,
            rules=rules,
        )
    kept_terms = None
    if terms_in_order:
        kept_terms = terms[0]
    elif keep_terms and row_terms:  # in group order: row i's at term_rows[i]
        kept_terms = terms[0][term_rows]
    if n_blocks == 1:
        # Combining one block into zeros is normalizing it: the same bits, in place.
        group_sums = block_sums[0]
        normalize(group_sums.reshape(n_groups * layout.N_SUMS, N_SLOTS))
    else:
        group_sums = accumulator.empty(n_groups, layout.N_SUMS)
        combine_blocks(
            block_sums.reshape(n_blocks, n_groups * layout.N_SUMS, N_SLOTS),
            group_sums.reshape(n_groups * layout.N_SUMS, N_SLOTS),
        )
    group_counts = block_counts[0] if n_blocks == 1 else block_counts.sum(axis=0)
    if groups is None or row_terms:
        sums, counts = group_sums[0], group_counts[0]
    else:
        sums = group_sums.sum(axis=0)
        accumulator.merge_into(sums, accumulator.empty(layout.N_SUMS))
        counts = group_counts.sum(axis=0)
    class_sums = class_counts = None
    if per_class:
        class_sums = accumulator.empty(n_classes, layout.N_CLASS_SUMS)
        combine_blocks(
            block_class_sums.reshape(n_blocks, n_classes * layout.N_CLASS_SUMS, N_SLOTS),
            class_sums.reshape(n_classes * layout.N_CLASS_SUMS, N_SLOTS),
        )
        class_counts = block_class_counts.sum(axis=0)
    replayable = (
        n_blocks == 1
        and device is None
        and groups is None
        and not (keep_rows or keep_terms or per_class or forecasts is not None or bin_blocks)
        and calibration_bins is None
        and sample_weight.shape[0] == 0
    )
    return BatchSums(
        sums=sums,
        counts=counts,
        class_sums=class_sums,
        class_counts=class_counts,
        replay=(kernel, opts, preds, target, weights, n_classes) if replayable else None,
        row_losses=row_losses.reshape(leading_shape) if keep_rows else None,
        n_classes=n_classes,
        group_sums=None if groups is None or row_terms else group_sums,
        group_counts=None if groups is None or row_terms else group_counts,
        row_terms=terms[0] if row_terms else None,
        group_codes=group_codes if row_terms else None,
        kept_terms=kept_terms,
        target=target,
        row_forecasts=forecasts,
        bin_blocks=tuple(bin_blocks) if bin_blocks else None,
    )


def _launch_cpu(
    name: str,
    preds: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    sample_weight: np.ndarray,
    group_codes: np.ndarray,
    opts: layout.KernelOptions,
    *,
    n_groups: int,
    class_width: int,
    keep_rows: bool,
    term_rows: np.ndarray | None = None,
    row_forecasts: np.ndarray = None,
    n_bins: int = 0,
    bin_blocks: list | None = None,
) -> tuple[np.ndarray, ...]:
    """Run ``cpu.<name>`` over blocks of rows; the per-block outputs (see ``cpu.py``),
    then the per-row terms, at rows ``term_rows``, when given. ``row_forecasts``: the
    kernel's (2, N) output of top-label forecasts, or (2, 0) for none. ``n_bins``
    reliability bins (0: none) are appended to ``bin_blocks`` as ``(sums, counts)`` of
    the call's blocks (``BatchSums.bin_blocks``)."""
    keep_terms = term_rows is not None
    kernel = cpu.kernel(name, opts.with_entropy)
    n_rows = preds.shape[0]
    n_classes = preds.shape[1] if preds.ndim == 2 else 1
    threads = cpu.thread_count()
    n_blocks = _block_count(n_rows, n_classes, class_width > 0, n_groups, threads)
    row_losses = np.empty(n_rows, dtype=np.float64) if keep_rows else _NO_ROWS
    row_terms = np.empty((n_rows if keep_terms else 0, layout.N_ROW_TERMS), dtype=np.float64)
    block_sums = np.zeros((n_blocks, n_groups, layout.N_SUMS, N_SLOTS), dtype=np.int64)
    block_counts = np.zeros((n_blocks, n_groups, layout.N_COUNTS), dtype=np.int64)
    block_class_sums = np.zeros((n_blocks, class_width, layout.N_CLASS_SUMS, N_SLOTS), np.int64)
    block_class_counts = np.zeros((n_blocks, class_width), dtype=np.int64)
    errors = np.empty((n_blocks, 3), dtype=np.int64)
    errors.fill(-1)  # np.full costs three times as much, on every small batch
    error_values = np.zeros(n_blocks, dtype=np.float64)
    outputs = (
        row_losses,
        row_terms,
        block_sums,
        block_counts,
        block_class_sums,
        block_class_counts,
        errors,
        error_values,
    )
    positions = _NO_GROUPS if term_rows is None else term_rows
    packed = layout.packed_options(opts)
    forecasts = _NO_FORECASTS if row_forecasts is None else row_forecasts
    bin_sums = np.zeros((n_blocks if n_bins else 0, n_bins, N_BIN_SUMS, N_SLOTS), np.int64)
    bin_counts = np.zeros(bin_sums.shape[:2], np.int64)
    if bin_blocks is not None:
        bin_blocks.extend((bin_sums, bin_counts))
    arguments = (preds, target, weights, sample_weight, group_codes, packed, *outputs[:2])
    arguments = (*arguments, forecasts, bin_sums, bin_counts, positions, *outputs[2:])
    _launch(kernel, arguments, n_blocks, threads)
    return (*outputs[2:], row_losses, *((row_terms,) if keep_terms else ()))


def _launch(kernel: Any, arguments: tuple, n_blocks: int, threads: int) -> None:
    if _threading_layer_is_safe:
        cpu.launch(kernel, arguments, n_blocks, threads)
    else:
        _call_serialized(cpu.launch, (kernel, arguments, n_blocks, threads))


def _one_block(n_rows: int, n_classes: int) -> bool:
    """Whether a batch is small enough for one block of rows (:func:`_block_count`)."""
    return n_rows * max(n_classes, 1) // _MIN_BLOCK_ELEMENTS < 2


def _input_layout(value: Any) -> tuple:
    """What the checks of a batch read from an input: its type, dtype, shape past the
    first axis and device (numpy arrays and torch tensors both have ``.device``)."""
    return type(value), value.dtype, tuple(value.shape[1:]), getattr(value, "device", None)


_ONE_BLOCK_SUM_WORDS = layout.N_SUMS * N_SLOTS
_ONE_BLOCK_WORDS = _ONE_BLOCK_SUM_WORDS + layout.N_COUNTS


class Replay:
    """A validated small batch's kernel call, run again for the next batches of the
    same layout without redoing the Python around it.

    A 32-row batch's conversions and shape checks, its output allocations and the
    block bookkeeping cost about five times its kernel call (``docs/performance.md``).
    Everything they decide follows from the layout of the inputs (type, dtype, shape
    past the first axis, device) and from the config, so a metric keeps one
    ``Replay`` per (config, engine) and runs it while the layout repeats: the inputs
    go to the same compiled kernel as views, with the same options, weights and
    zero-size outputs. Values are still checked by the kernel, every row: a batch
    it rejects (and any batch of another layout, or too big for one block) returns
    None, and the full path then runs it, which raises the error with its message.
    So a replayed batch gives the bits of the full path, by construction.

    Made by :meth:`bind` only where the kernel read the caller's own memory (no
    conversion happened: the same address, dtype and size), for a CPU call of one
    block with no sample weights, groups, per-class sums or side outputs.
    """

    __slots__ = (
        "_errors",
        "_fixed",
        "_kernel",
        "_layouts",
        "_n_classes",
        "_shapes",
        "_tail",
    )

    def __init__(self, spec: tuple, preds: Any, target: Any) -> None:
        name, opts, kernel_preds, kernel_target, weights, n_classes = spec
        self._kernel = cpu.kernel(name, opts.with_entropy)
        no_terms = np.empty((0, layout.N_ROW_TERMS))
        no_bins = np.zeros((0, 0, N_BIN_SUMS, N_SLOTS), np.int64)
        self._fixed = (weights, _NO_WEIGHTS, _NO_GROUPS, layout.packed_options(opts), _NO_ROWS)
        self._fixed += (no_terms, _NO_FORECASTS, no_bins, np.zeros((0, 0), np.int64), _NO_GROUPS)
        self._errors = np.empty((1, 3), dtype=np.int64)
        self._errors.fill(-1)
        # The per-class outputs (zero classes), the error row and its value.
        self._tail = (
            np.zeros((1, 0, layout.N_CLASS_SUMS, N_SLOTS), np.int64),
            np.zeros((1, 0), np.int64),
            self._errors,
            np.zeros(1),
        )
        self._layouts = (_input_layout(preds), _input_layout(target))
        self._shapes = ((-1, *kernel_preds.shape[1:]), (-1, *kernel_target.shape[1:]))
        self._n_classes = n_classes

    @classmethod
    def bind(cls, batch: BatchSums, preds: Any, target: Any) -> Replay | None:
        """The replay of ``batch``'s kernel call for inputs laid out as ``preds`` /
        ``target`` (the inputs it was run on), or None where it cannot replay."""
        spec = batch.replay
        if spec is None:
            return None
        kernel_preds, kernel_target = spec[2], spec[3]
        given = [as_array(preds, "preds"), as_array(target, "target")]
        for mine, theirs in zip(given, (kernel_preds, kernel_target), strict=True):
            if (
                mine.dtype != theirs.dtype
                or mine.size != theirs.size
                or mine.ctypes.data != theirs.ctypes.data
                or not mine.flags.c_contiguous
            ):
                return None
        if given[0].shape[:1] != given[1].shape[:1]:
            return None
        return cls(spec, preds, target)

    def __call__(self, preds: Any, target: Any) -> BatchSums | None:
        """The batch's sums, or None: not this layout, too big, or rejected."""
        if _input_layout(preds) != self._layouts[0] or _input_layout(target) != self._layouts[1]:
            return None
        if type(preds) is not np.ndarray:  # a torch CPU tensor: a view of its memory
            preds, target = as_array(preds, "preds"), as_array(target, "target")
        n_rows = preds.shape[0]
        if (
            n_rows == 0
            or target.shape[0] != n_rows
            or not (preds.flags.c_contiguous and target.flags.c_contiguous)
        ):
            return None
        kernel_preds = preds.reshape(self._shapes[0])
        if not _one_block(kernel_preds.shape[0], self._n_classes):
            return None
        kernel_preds.flags.writeable = False
        kernel_target = target.reshape(self._shapes[1])
        kernel_target.flags.writeable = False
        block = np.zeros(_ONE_BLOCK_WORDS, dtype=np.int64)  # sums and counts, one zeroing
        sums = block[:_ONE_BLOCK_SUM_WORDS].reshape(1, 1, layout.N_SUMS, N_SLOTS)
        counts = block[_ONE_BLOCK_SUM_WORDS:].reshape(1, 1, layout.N_COUNTS)
        errors = self._errors
        _launch(
            self._kernel,
            (kernel_preds, kernel_target, *self._fixed, sums, counts, *self._tail),
            1,
            cpu.thread_count(),
        )
        if errors[0, 0] >= 0:
            errors.fill(-1)
            return None
        normalize(sums[0, 0])
        return BatchSums(
            sums[0, 0], counts[0, 0], None, None, None, self._n_classes, target=kernel_target
        )


@functools.lru_cache(maxsize=64)
def _unit_weights(n: int) -> np.ndarray:
    """Read-only ones: the class (label) weights of an unweighted config, made once."""
    ones = np.ones(n)
    ones.flags.writeable = False
    return ones


def _read_only(array: Any) -> Any:
    """A C-contiguous, read-only view (a copy only for other layouts); device arrays as is.

    numba types writable and read-only arrays differently; inputs from polars and
    pyarrow are read-only, numpy's usually not. Handing every kernel read-only views
    keeps one compiled specialization per dtype instead of one per combination.
    """
    if type(array) is np.ndarray:
        flags = array.flags
        if flags.c_contiguous:
            if not flags.writeable:
                return array
            view = array.view()  # numpy's own C-contiguous array: no copy to ask for
            view.flags.writeable = False
            return view
    if is_device_array(array):
        return array
    view = np.ascontiguousarray(array).view()
    view.flags.writeable = False
    return view


def _check_groups(groups: np.ndarray, n_rows: int, n_groups: int) -> np.ndarray:
    codes = _read_only(np.asarray(groups, dtype=np.int64).reshape(-1))
    if codes.shape[0] != n_rows:
        raise ValueError(f"by: {codes.shape[0]} group codes for {n_rows} rows")
    if n_rows and (codes.min() < 0 or codes.max() >= n_groups):
        raise ValueError(f"by: group codes must lie in [0, {n_groups})")
    return codes


def _call_serialized(kernel: Any, arguments: tuple) -> None:
    global _threading_layer_is_safe
    with _WORKQUEUE_LOCK:
        kernel(*arguments)
        _threading_layer_is_safe = numba.threading_layer() != "workqueue"


def _empty_batch(
    n_classes: int,
    per_class: bool,
    keep_rows: bool,
    shape: tuple,
    n_groups: int | None = None,
    keep_terms: bool = False,
) -> BatchSums:
    grouped = n_groups is not None
    return BatchSums(
        kept_terms=np.zeros((0, layout.N_ROW_TERMS)) if keep_terms else None,
        row_terms=np.zeros((0, layout.N_ROW_TERMS)) if grouped else None,
        group_codes=np.zeros(0, dtype=np.int64) if grouped else None,
        sums=accumulator.empty(layout.N_SUMS),
        counts=np.zeros(layout.N_COUNTS, dtype=np.int64),
        class_sums=accumulator.empty(n_classes, layout.N_CLASS_SUMS) if per_class else None,
        class_counts=np.zeros(n_classes, dtype=np.int64) if per_class else None,
        row_losses=np.zeros(shape, dtype=np.float64) if keep_rows else None,
        n_classes=n_classes,
    )


def _grouped(groups: np.ndarray | None, n_groups: int) -> int | None:
    return None if groups is None else n_groups


def _device_for(engine: str, preds: Any) -> Any:
    """The CUDA kernel module when this batch runs on the GPU, else None (CPU)."""
    if engine not in ENGINES:
        raise ValueError(f"engine: must be one of {ENGINES}, got {engine!r}")
    if engine == "cpu" or (engine == "auto" and not is_device_array(preds)):
        return None
    device = load_cuda()
    device.ensure_available()
    return device


def _array(
    value: Any, name: str, device: Any, *, floating: bool = False, row_offset: int = 0
) -> Any:
    """:func:`as_array`, except that device arrays stay on the device for the CUDA engine."""
    if device is None or not is_device_array(value):
        return as_array(value, name, floating=floating, row_offset=row_offset)
    array = device.as_device_array(value, name)  # zero copy, except to widen half precision
    if floating and array.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: must be floating point (float32 or float64), got {array.dtype}")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name}: unsupported dtype {array.dtype}")
    if not array.is_c_contiguous():
        # A strided device array would need a device-side copy kernel; rare enough
        # (a transposed tensor) to ask for .contiguous() instead.
        raise ValueError(
            f"{name}: a non-contiguous device array (shape {array.shape}); make it "
            "contiguous first (e.g. tensor.contiguous())"
        )
    return array


def _sample_weight(
    sample_weight: Any,
    leading_shape: tuple[int, ...],
    name: str,
    row_offset: int,
    device: Any = None,
) -> Any:
    if sample_weight is None:
        return _NO_WEIGHTS
    weights = _array(sample_weight, name, device, row_offset=row_offset)
    if weights.dtype.kind not in "fiub":
        raise TypeError(f"{name}: must be numeric, got {weights.dtype}")
    if weights.dtype.kind != "f" or weights.dtype.itemsize < 4:
        if is_device_array(weights):  # integer weights on the device: rare, convert on host
            weights = device.to_host(weights)
        weights = weights.astype(np.float64)
    if weights.shape != leading_shape:
        raise ValueError(
            f"{name}: shape {weights.shape} does not match the rows of the predictions "
            f"{leading_shape}"
        )
    return weights.reshape(-1)


def _hard_labels(array: Any) -> Any:
    """Host hard labels narrower than 64 bits as int64 (exact), device labels as they are.

    One label dtype per prediction dtype means one compiled kernel variant instead of
    one per integer width (each is seconds of compile); the copy is 8 bytes a row
    beside the row's C predictions.
    """
    if is_device_array(array):
        return _as_kernel_labels(array)
    if array.dtype.itemsize < 8 or array.dtype == np.bool_:
        return np.asarray(array, dtype=np.int64)
    return array


def _as_kernel_labels(array: Any) -> Any:
    # numba reads bool arrays poorly as numbers; a uint8 view is free.
    return array.view(np.uint8) if array.dtype == np.bool_ else array


def _class_predictions(
    preds: Any,
    names: ColumnNames,
    expected: int | None,
    what: str,
    row_offset: int = 0,
    device: Any = None,
) -> tuple[Any, tuple[int, ...], int]:
    array = _array(preds, names.preds, device, floating=True, row_offset=row_offset)
    if array.ndim < 2:
        raise ValueError(
            f"{names.preds}: shape {array.shape} has no {what} dimension; expected (..., C)"
        )
    shape = tuple(array.shape)  # device arrays' shapes may refuse negative indices
    n_classes = shape[-1]
    plural = {"class": "classes", "label": "labels"}.get(what, f"{what}s")
    if n_classes == 0:
        raise ValueError(f"{names.preds}: shape {array.shape} has zero {plural}")
    if expected is not None and n_classes != expected:
        raise ValueError(
            f"{names.preds}: has {n_classes} {plural} (last dimension) but the metric "
            f"expects {expected}"
        )
    return array, shape[:-1], n_classes


def _options(config: LossConfig, dtype: Any, *, with_entropy: bool) -> layout.KernelOptions:
    """The kernel options of ``config`` for inputs of ``dtype``."""
    # Resolving eps and the tolerance (np.finfo) and building the tuple cost ~6 us,
    # a tenth of a small batch's update: configs are frozen, so remember the result.
    return _cached_options(config, dtype, with_entropy)


@functools.lru_cache(maxsize=256)
def _cached_options(config: LossConfig, dtype: Any, with_entropy: bool) -> layout.KernelOptions:
    from_config = {}
    for name in layout.CONFIG_OPTIONS:
        value = getattr(config, name, None)
        # A per-label pos_weight is an array argument of its kernel, not an option.
        if value is not None and not isinstance(value, tuple):
            from_config[name] = value
    return layout.kernel_options(
        input_kind=layout.INPUT_KINDS[config.input],
        eps=config.resolve_eps(dtype),
        sum_tol=config.resolve_sum_tol(dtype),
        validate=config.validate,
        with_entropy=with_entropy,
        **from_config,
    )


def multiclass_batch(
    config: MulticlassConfig,
    preds: Any,
    target: Any,
    sample_weight: Any = None,
    *,
    keep_rows: bool = False,
    with_entropy: bool = False,
    row_offset: int = 0,
    names: ColumnNames = DEFAULT_NAMES,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
    engine: str = "auto",
    keep_terms: bool = False,
    keep_forecasts: bool = False,
) -> BatchSums:
    """Exact sums of multiclass cross-entropy over one batch (hard or soft targets).

    ``keep_forecasts``: also each row's top-label forecast (``BatchSums.row_forecasts``)
    for reliability bins, on the CPU."""
    device = _device_for(engine, preds)
    eps_dtype = half_precision(preds)  # eps follows the given dtype, not the widened one
    preds, leading_shape, n_classes = _class_predictions(
        preds, names, config.num_classes, "class", row_offset, device
    )
    target = _array(target, names.target, device, row_offset=row_offset)
    target = squeeze_label_column(target, leading_shape)
    if config.class_weight is not None and len(config.class_weight) != n_classes:
        raise ValueError(
            f"class_weight: has {len(config.class_weight)} entries but {names.preds} has "
            f"{n_classes} classes"
        )
    if target.shape == leading_shape and target.dtype.kind in "iub":
        kernel = "multiclass_hard"
        target = _hard_labels(target).reshape(-1)
    elif target.shape == preds.shape and target.dtype.kind in "fiub":
        if target.dtype.kind != "f":
            # Integer one-hot rows are soft targets, as in Keras; the kernel checks
            # that they are >= 0 and sum to 1 like any other.
            if is_device_array(target):
                raise TypeError(
                    f"{names.target}: soft targets on the device must be floats, got {target.dtype}"
                )
            target = target.astype(preds.dtype)
        if config.ignore_index is not None:
            raise ValueError(
                f"{names.target}: soft targets (shape {target.shape}) cannot use "
                "ignore_index, which selects hard labels"
            )
        kernel = "multiclass_soft"
        target = target.reshape(-1, n_classes)
    elif target.shape == leading_shape:
        raise TypeError(
            f"{names.target}: hard labels must be integers, got {target.dtype}; soft "
            f"targets must have the predictions' shape {preds.shape}"
        )
    else:
        raise ValueError(
            f"{names.target}: shape {target.shape} matches neither hard labels "
            f"{leading_shape} nor soft targets {preds.shape} for {names.preds}"
        )
    weights = _sample_weight(sample_weight, leading_shape, names.sample_weight, row_offset, device)
    per_class = config.per_class
    if preds.size == 0:
        return _empty_batch(
            n_classes, per_class, keep_rows, leading_shape, _grouped(groups, n_groups), keep_terms
        )
    class_weight = (
        _unit_weights(n_classes) if config.class_weight is None else np.asarray(config.class_weight)
    )
    opts = _options(config, eps_dtype or preds.dtype, with_entropy=with_entropy)
    return _run(
        kernel,
        preds.reshape(-1, n_classes),
        target,
        class_weight,
        weights,
        opts,
        groups=groups,
        n_groups=n_groups,
        leading_shape=leading_shape,
        n_classes=n_classes,
        per_class=per_class,
        keep_rows=keep_rows,
        row_offset=row_offset,
        names=names,
        axis="class",
        keep_terms=keep_terms,
        device=device,
        keep_forecasts=keep_forecasts,
    )


def _binary_target(
    target: Any, shape: tuple[int, ...], names: ColumnNames, row_offset: int, device: Any
) -> Any:
    array = _array(target, names.target, device, row_offset=row_offset)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{names.target}: must be numeric or bool, got {array.dtype}")
    if array.shape != shape:
        raise ValueError(
            f"{names.target}: shape {array.shape} does not match {names.preds} shape {shape}"
        )
    return _as_kernel_labels(array)


def binary_batch(
    config: BinaryConfig,
    preds: Any,
    target: Any,
    sample_weight: Any = None,
    *,
    keep_rows: bool = False,
    with_entropy: bool = False,
    row_offset: int = 0,
    names: ColumnNames = DEFAULT_NAMES,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
    engine: str = "auto",
    keep_terms: bool = False,
    calibration_bins: int | None = None,
) -> BatchSums:
    """Exact sums of binary cross-entropy over one batch (predictions of any shape).

    ``calibration_bins``: also the batch's reliability bins, from the kernel's own
    blocks (``BatchSums.bin_blocks``), on the CPU."""
    device = _device_for(engine, preds)
    eps_dtype = half_precision(preds)  # eps follows the given dtype, not the widened one
    preds = _array(preds, names.preds, device, floating=True, row_offset=row_offset)
    preds, target = binary_columns(
        preds,
        _array(target, names.target, device, row_offset=row_offset),
        input=config.input,
        sum_tol=config.resolve_sum_tol(preds.dtype),
        validate=config.validate,
        name=names.preds,
        row_offset=row_offset,
    )
    leading_shape = tuple(preds.shape)
    target = _binary_target(target, leading_shape, names, row_offset, device).reshape(-1)
    weights = _sample_weight(sample_weight, leading_shape, names.sample_weight, row_offset, device)
    if preds.size == 0:
        return _empty_batch(
            1, False, keep_rows, leading_shape, _grouped(groups, n_groups), keep_terms
        )
    opts = _options(config, eps_dtype or preds.dtype, with_entropy=with_entropy)
    return _run(
        "binary",
        preds.reshape(-1),
        target,
        _NO_WEIGHTS,
        weights,
        opts,
        groups=groups,
        n_groups=n_groups,
        leading_shape=leading_shape,
        n_classes=1,
        per_class=False,
        keep_rows=keep_rows,
        row_offset=row_offset,
        names=names,
        axis=None,  # one value a row: no column to name
        keep_terms=keep_terms,
        device=device,
        calibration_bins=calibration_bins,
    )


def multilabel_batch(
    config: MultilabelConfig,
    preds: Any,
    target: Any,
    sample_weight: Any = None,
    *,
    keep_rows: bool = False,
    with_entropy: bool = False,
    row_offset: int = 0,
    names: ColumnNames = DEFAULT_NAMES,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
    engine: str = "auto",
    keep_terms: bool = False,
) -> BatchSums:
    """Exact sums of multi-label cross-entropy (sum over labels per row) over one batch."""
    device = _device_for(engine, preds)
    eps_dtype = half_precision(preds)  # eps follows the given dtype, not the widened one
    preds, leading_shape, n_labels = _class_predictions(
        preds, names, config.num_labels, "label", row_offset, device
    )
    target = _binary_target(target, tuple(preds.shape), names, row_offset, device)
    target = target.reshape(-1, n_labels)
    weights = _sample_weight(sample_weight, leading_shape, names.sample_weight, row_offset, device)
    if isinstance(config.pos_weight, tuple) and len(config.pos_weight) != n_labels:
        raise ValueError(
            f"pos_weight: has {len(config.pos_weight)} entries but {names.preds} has "
            f"{n_labels} labels"
        )
    if preds.size == 0:
        return _empty_batch(
            n_labels,
            config.per_label,
            keep_rows,
            leading_shape,
            _grouped(groups, n_groups),
            keep_terms,
        )
    if config.pos_weight is None:
        pos_weight = _unit_weights(n_labels)
    else:
        pos_weight = np.broadcast_to(np.asarray(config.pos_weight, dtype=np.float64), (n_labels,))
    opts = _options(config, eps_dtype or preds.dtype, with_entropy=with_entropy)
    return _run(
        "multilabel",
        preds.reshape(-1, n_labels),
        target,
        np.ascontiguousarray(pos_weight),
        weights,
        opts,
        groups=groups,
        n_groups=n_groups,
        leading_shape=leading_shape,
        n_classes=n_labels,
        per_class=config.per_label,
        keep_rows=keep_rows,
        row_offset=row_offset,
        names=names,
        axis="label",
        target_columns_follow=True,  # the kernel records target column j as C + j
        keep_terms=keep_terms,
        device=device,
    )


def entropy_batch(
    config: LossConfig,
    preds: Any,
    *,
    keep_rows: bool = False,
    names: ColumnNames = DEFAULT_NAMES,
    engine: str = "auto",
) -> BatchSums:
    """Exact sums of the entropy of each predicted distribution over one batch."""
    device = _device_for(engine, preds)
    eps_dtype = half_precision(preds)  # eps follows the given dtype, not the widened one
    preds, leading_shape, n_classes = _class_predictions(preds, names, None, "class", device=device)
    if preds.size == 0:
        return _empty_batch(n_classes, False, keep_rows, leading_shape)
    opts = _options(config, eps_dtype or preds.dtype, with_entropy=True)
    return _run(
        "prediction_entropy",
        preds.reshape(-1, n_classes),
        _NO_WEIGHTS,
        _NO_WEIGHTS,
        _NO_WEIGHTS,
        opts,
        groups=None,
        n_groups=1,
        leading_shape=leading_shape,
        n_classes=n_classes,
        per_class=False,
        keep_rows=keep_rows,
        row_offset=0,
        names=names,
        axis="class",
        device=device,
    )
