"""Exact per-group sums at any number of groups: compact windows, widened when needed.

A group's sum of one quantity is the same fixed-point integer as an accumulator row of
:mod:`xentstream._kernels.exact` (chunk ``k`` counts units of ``2**(32k - 1075)``), but
held as a *window*: ``WINDOW`` consecutive chunks starting at chunk ``base``. Terms of
one quantity in one group mostly share a few binades (a loss of 0.01 to 20 spans
chunks 31 to 34), so six chunks hold the whole sum: 48 bytes instead of 560. A term
that falls outside the window moves it (when the chunks it gives up are zero), and a
group whose terms span more than a window, or hold a negative or non-finite sum, is
*widened*: its sums move to a full accumulator row of a side table and stay there.
Both forms are the same integers, so widening changes no bit; a group's exported
accumulator is normalized (:func:`export_group`), hence canonical: equal sums give
equal bits, whatever the splits, the order of rows and merges, or the form held.

Window chunks are added to unnormalized, like a block's accumulator: ``pending``
counts the terms each group took since its last normalization and stays below
:data:`MAX_PENDING`, far below the ``2**31`` terms a chunk absorbs.

The table is a set of arrays, one row per group (see :class:`xentstream.grouping.GroupTable`)::

    base[g, sum]           int16   first chunk of the window, -1: empty (zero)
    window[g, sum, WINDOW] int64   the window's chunks
    wide[g]                int64   row of ``side`` holding the group's sums, -1: none
    pending[g]             int64   terms added since the group was last normalized
    side[w, sum, N_SLOTS]  int64   full accumulators of widened groups
    n_wide[0]              int64   rows of ``side`` in use
    counts[g, N_COUNTS]    int64   rows counted and ignored

Only the groups of a batch's rows are touched: the rows come grouped (``order``,
``run_starts``: the rows of run ``r`` are ``order[run_starts[r]:run_starts[r + 1]]``,
all of group ``run_codes[r]``), so a batch costs its rows plus its groups.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from xentstream._kernels.exact import (
    MAX_STAGED_TERMS,
    N_CHUNKS,
    N_SLOTS,
    NAN,
    NEG_INF,
    POS_INF,
    add_term,
    add_terms,
    float64_bits,
    normalize,
)
from xentstream._kernels.layout import IGNORED, N_SUMS, ROW_IGNORED, ROWS

#: Chunks of a window (``32 * WINDOW`` bits around a group's exponent range).
WINDOW = 6
#: Terms a group takes between normalizations (each adds < 2**32 to a chunk).
MAX_PENDING = 1 << 29
#: A normalized window's top chunk stays below this, so that int64 never wraps.
_TOP_LIMIT = 1 << 40
_LOW32 = 0xFFFFFFFF
_MANTISSA_MASK = (1 << 52) - 1
_HIDDEN_BIT = 1 << 52
_FLAGS = {"nogil": True, "cache": True, "error_model": "numpy"}


@njit(**_FLAGS)
def _term_chunk(value):
    """The lowest chunk a nonzero finite float64 touches (it reaches two above)."""
    exponent = (float64_bits(value) >> 52) & 0x7FF
    return max(exponent, 1) >> 5


@njit(**_FLAGS)
def _add_term_window(window, base, value):
    """Add the nonzero finite ``value`` to ``window`` (chunks ``base ..``), as add_term."""
    bits = float64_bits(value)
    exponent = (bits >> 52) & 0x7FF
    mantissa = bits & _MANTISSA_MASK
    if exponent == 0:
        exponent = 1
    else:
        mantissa |= _HIDDEN_BIT
    chunk = (exponent >> 5) - base
    shift = exponent & 31
    low = (mantissa & ((1 << (32 - shift)) - 1)) << shift
    mid = (mantissa >> (32 - shift)) & _LOW32
    high = (mantissa >> 32) >> (32 - shift)
    if bits < 0:
        window[chunk] -= low
        window[chunk + 1] -= mid
        window[chunk + 2] -= high
    else:
        window[chunk] += low
        window[chunk + 1] += mid
        window[chunk + 2] += high


@njit(**_FLAGS)
def _normalize_window(window):
    """Carries within one window; the top chunk keeps the rest (and the sign)."""
    for k in range(WINDOW - 1):
        carry = window[k] >> 32
        window[k] &= _LOW32
        window[k + 1] += carry


@njit(**_FLAGS)
def _fit(base, window, g, s, lo, hi):
    """Make group ``g``'s window of sum ``s`` cover chunks ``lo .. hi``; False if it cannot.

    The window moves only over chunks that are zero (after normalizing), so its value
    never changes; a negative sum, or one whose top chunk grew large, does not move.
    """
    b = base[g, s]
    if b >= 0 and lo >= b and hi <= b + WINDOW - 1:
        return True
    row = window[g, s]
    low_used = N_CHUNKS
    high_used = -1
    if b >= 0:
        _normalize_window(row)
        if row[WINDOW - 1] < 0 or row[WINDOW - 1] >= _TOP_LIMIT:
            return False
        for k in range(WINDOW):
            if row[k] != 0:
                low_used = min(low_used, b + k)
                high_used = b + k
    low = min(lo, low_used)
    high = max(hi, high_used)
    if high - low + 1 > WINDOW:
        return False
    # Room above the terms for the sum to grow (one chunk: 2**32 times the largest).
    new_base = min(low, max(0, high + 1 - (WINDOW - 1)), N_CHUNKS - WINDOW)
    if b >= 0 and new_base != b:
        moved = np.zeros(WINDOW, dtype=np.int64)
        for k in range(WINDOW):
            if row[k] != 0:
                moved[b + k - new_base] = row[k]
        row[:] = moved
    base[g, s] = new_base
    return True


@njit(**_FLAGS)
def _normalize_group(base, window, wide, side, g):
    """Normalize every sum of group ``g``; False if a window can no longer hold its sum."""
    if wide[g] >= 0:
        normalize(side[wide[g]])
        return True
    fits = True
    for s in range(N_SUMS):
        if base[g, s] >= 0:
            _normalize_window(window[g, s])
            top = window[g, s, WINDOW - 1]
            fits = fits and 0 <= top < _TOP_LIMIT
    return fits


@njit(**_FLAGS)
def _widen(base, window, wide, side, n_wide, g):
    """Move group ``g``'s sums to the next free row of ``side`` (the caller checked room)."""
    row = n_wide[0]
    n_wide[0] += 1
    wide[g] = row
    full = side[row]
    full[:, :] = 0
    for s in range(N_SUMS):
        b = base[g, s]
        if b >= 0:
            for k in range(WINDOW):
                full[s, b + k] += window[g, s, k]
                window[g, s, k] = 0
            base[g, s] = -1
    normalize(full)


@njit(**_FLAGS)
def _add_full_group(g, sums, base, window, wide, pending, side, n_wide):
    """Add the normalized accumulators ``sums`` (N_SUMS, N_SLOTS) into group ``g``.

    False, changing nothing, when the group must widen and ``side`` is full.
    """
    if wide[g] < 0:
        fits = pending[g] + WINDOW < MAX_PENDING
        if not fits:
            fits = _normalize_group(base, window, wide, side, g)
            pending[g] = 0
        for s in range(N_SUMS if fits else 0):
            acc = sums[s]
            if acc[POS_INF] or acc[NEG_INF] or acc[NAN] or acc[N_CHUNKS - 1] < 0:
                fits = False
                break
            lo = N_CHUNKS
            hi = -1
            for k in range(N_CHUNKS):
                if acc[k] != 0:
                    lo = min(lo, k)
                    hi = k
            if hi >= 0 and not _fit(base, window, g, s, lo, hi):
                fits = False
                break
        if fits:
            for s in range(N_SUMS):
                b = base[g, s]
                if b >= 0:
                    for k in range(WINDOW):
                        window[g, s, k] += sums[s, b + k]
            pending[g] += WINDOW
            return True
        if n_wide[0] == side.shape[0]:
            return False
        _widen(base, window, wide, side, n_wide, g)
        pending[g] = 0
    full = side[wide[g]]
    full += sums
    normalize(full)
    return True


#: Runs of at least this many rows are summed with add_terms into a full accumulator
#: first (a few cycles a term), then added to their group as one accumulator.
LONG_RUN = 64


@njit(**_FLAGS)
def add_runs(
    terms,
    run_starts,
    run_codes,
    first_run,
    base,
    window,
    wide,
    pending,
    side,
    n_wide,
    counts,
):
    """Add the rows of runs ``first_run ..`` (one group each) into the table, exactly.

    ``terms``: (N, N_ROW_TERMS), the rows of each run together. Returns the
    first run not added: ``len(run_codes)`` when done, less when a group must widen
    and ``side`` is full (the caller grows it and calls again from there; every run
    is added whole or not at all). A short run is added term by term into its
    group's windows after one pass for the chunks its terms reach.
    """
    n_runs = run_codes.shape[0]
    lo = np.empty(N_SUMS, dtype=np.int64)
    hi = np.empty(N_SUMS, dtype=np.int64)
    scratch = np.zeros((N_SUMS, N_SLOTS), dtype=np.int64)
    column = np.empty(MAX_STAGED_TERMS)
    for r in range(first_run, n_runs):
        g = run_codes[r]
        start = run_starts[r]
        stop = run_starts[r + 1]
        n = stop - start
        if n >= LONG_RUN:
            scratch[:, :] = 0
            for s in range(N_SUMS):
                for chunk_start in range(start, stop, MAX_STAGED_TERMS):
                    size = min(MAX_STAGED_TERMS, stop - chunk_start)
                    for j in range(size):
                        column[j] = terms[chunk_start + j, s]
                    add_terms(scratch[s], column, size)
            normalize(scratch)
            if not _add_full_group(g, scratch, base, window, wide, pending, side, n_wide):
                return r
        else:
            if wide[g] < 0:
                fits = True
                if pending[g] + n >= MAX_PENDING:
                    fits = _normalize_group(base, window, wide, side, g)
                    pending[g] = 0
                finite = True
                for s in range(N_SUMS):
                    low = N_CHUNKS
                    high = -1
                    for j in range(start, stop):
                        t = terms[j, s]
                        if t != 0.0:
                            finite = finite and t - t == 0.0
                            chunk = _term_chunk(t)
                            low = min(low, chunk)
                            high = max(high, chunk + 2)
                    lo[s] = low
                    hi[s] = high
                fits = fits and finite  # inf and NaN: only a full accumulator counts them
                for s in range(N_SUMS if fits else 0):
                    if hi[s] >= 0 and not _fit(base, window, g, s, lo[s], hi[s]):
                        fits = False
                        break
                if fits:
                    for s in range(N_SUMS):
                        row = window[g, s]
                        b = base[g, s]
                        for j in range(start, stop):
                            t = terms[j, s]
                            if t != 0.0:
                                _add_term_window(row, b, t)
                    pending[g] += n
                else:
                    if n_wide[0] == side.shape[0]:
                        return r
                    _widen(base, window, wide, side, n_wide, g)
                    pending[g] = 0
            if wide[g] >= 0:
                full = side[wide[g]]
                if pending[g] + n >= MAX_PENDING:
                    normalize(full)
                    pending[g] = 0
                for s in range(N_SUMS):
                    for j in range(start, stop):
                        add_term(full[s], terms[j, s])
                pending[g] += n
        ignored = 0
        for j in range(start, stop):
            ignored += np.int64(terms[j, ROW_IGNORED] != 0.0)
        counts[g, IGNORED] += ignored
        counts[g, ROWS] += n - ignored
    return n_runs


@njit(**_FLAGS)
def add_full(codes, sums, group_counts, first, base, window, wide, pending, side, n_wide, counts):
    """Add normalized full accumulators ``sums[i]`` (N_SUMS, N_SLOTS) into groups ``codes[i]``.

    For states loaded from files, merged tables and the CUDA engine's per-group sums.
    Returns the first entry not added (as :func:`add_runs`).
    """
    for i in range(first, codes.shape[0]):
        if not _add_full_group(codes[i], sums[i], base, window, wide, pending, side, n_wide):
            return i
        counts[codes[i]] += group_counts[i]
    return codes.shape[0]


@njit(**_FLAGS)
def export_groups(codes, base, window, wide, side, out):
    """Normalized full accumulators of groups ``codes`` into ``out[i]`` (N_SUMS, N_SLOTS)."""
    for i in range(codes.shape[0]):
        g = codes[i]
        full = out[i]
        full[:, :] = 0
        if wide[g] >= 0:
            full += side[wide[g]]
        else:
            for s in range(N_SUMS):
                b = base[g, s]
                if b >= 0:
                    for k in range(WINDOW):
                        full[s, b + k] += window[g, s, k]
        normalize(full)


@njit(**_FLAGS)
def group_runs(local_codes, n_local):
    """Rows grouped by ``local_codes`` (in ``[0, n_local)``): a counting sort.

    Returns ``(order, run_starts)``: the rows of local group ``c`` are
    ``order[run_starts[c]:run_starts[c + 1]]``, in row order.
    """
    run_starts = np.zeros(n_local + 1, dtype=np.int64)
    for i in range(local_codes.shape[0]):
        run_starts[local_codes[i] + 1] += 1
    for c in range(n_local):
        run_starts[c + 1] += run_starts[c]
    fill = run_starts[:-1].copy()
    order = np.empty(local_codes.shape[0], dtype=np.int64)
    for i in range(local_codes.shape[0]):
        c = local_codes[i]
        order[fill[c]] = i
        fill[c] += 1
    return order, run_starts


@njit(**_FLAGS)
def approximate(codes, slot, base, window, wide, side, out, uncertain):
    """Float values of sum ``slot`` of groups ``codes``, within a few ulps (``uncertain``:
    where that bound may fail: negative or non-finite sums). For ranking groups only;
    reported values are the exact ones, rounded once."""
    for i in range(codes.shape[0]):
        g = codes[i]
        total = 0.0
        doubt = False
        if wide[g] >= 0:
            acc = side[wide[g], slot]
            doubt = acc[POS_INF] != 0 or acc[NEG_INF] != 0 or acc[NAN] != 0
            for k in range(N_CHUNKS - 1, -1, -1):
                if acc[k] != 0:
                    total += math.ldexp(np.float64(acc[k]), 32 * k - 1075)
                    doubt = doubt or acc[k] < 0
        else:
            b = base[g, slot]
            if b >= 0:
                for k in range(WINDOW - 1, -1, -1):
                    chunk = window[g, slot, k]
                    if chunk != 0:
                        total += math.ldexp(np.float64(chunk), 32 * (b + k) - 1075)
                        doubt = doubt or chunk < 0
        out[i] = total
        uncertain[i] = doubt


@njit(**_FLAGS)
def add_at_rows(target, rows, values):
    """``target[rows[i], :values.shape[1]] += values[i]`` (rows distinct), in one pass."""
    for i in range(rows.shape[0]):
        row = target[rows[i]]
        for k in range(values.shape[1]):
            row[k] += values[i, k]
