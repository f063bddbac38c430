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
from numba import njit, prange

from xentstream._kernels.exact import (
    MAX_STAGED_TERMS,
    N_CHUNKS,
    N_SLOTS,
    NAN,
    NEG_INF,
    POS_INF,
    UNIT_EXPONENT,
    add_term,
    add_terms,
    bits_float64,
    float64_bits,
    normalize,
)
from xentstream._kernels.layout import (
    CORRECT,
    DENOMINATOR,
    DENOMINATOR_SQUARED,
    IGNORED,
    LOSS,
    LOSS_SQUARED,
    N_SUMS,
    ROW_IGNORED,
    ROWS,
    WEIGHT,
)

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


#: ``_place``'s ``lows[s]`` of a sum no window holds (negative or non-finite).
_UNWINDOWED = -2


@njit(**_FLAGS)
def _place(g, lows, highs, base, window, wide, pending, side, n_wide, may_widen):
    """Where group ``g`` takes sums whose nonzero chunks are ``lows[s] .. highs[s]``
    (``highs[s] < 0``: zero; ``lows[s] == _UNWINDOWED``: only a full accumulator holds
    it): 1, its windows (moved to cover them); 0, its full accumulator (widened now if
    need be); -1, nowhere, changing no value, when the group is wide or must widen and
    ``may_widen`` is False, or must widen and ``side`` is full.
    """
    if wide[g] < 0:
        fits = pending[g] + WINDOW < MAX_PENDING
        if not fits:
            fits = _normalize_group(base, window, wide, side, g)
            pending[g] = 0
        for s in range(N_SUMS if fits else 0):
            if lows[s] == _UNWINDOWED or (
                highs[s] >= 0 and not _fit(base, window, g, s, lows[s], highs[s])
            ):
                fits = False
                break
        if fits:
            return 1
        if not may_widen or n_wide[0] == side.shape[0]:
            return -1
        _widen(base, window, wide, side, n_wide, g)
        pending[g] = 0
    elif not may_widen:
        return -1
    return 0


@njit(**_FLAGS)
def _add_full_group(g, sums, base, window, wide, pending, side, n_wide, may_widen):
    """Add the normalized accumulators ``sums`` (N_SUMS, N_SLOTS) into group ``g``.

    False, changing no value, when the group is wide or must widen and ``may_widen``
    is False, or must widen and ``side`` is full.
    """
    lows = np.empty(N_SUMS, dtype=np.int64)
    highs = np.empty(N_SUMS, dtype=np.int64)
    for s in range(N_SUMS):
        acc = sums[s]
        lows[s] = N_CHUNKS
        highs[s] = -1
        if acc[POS_INF] or acc[NEG_INF] or acc[NAN] or acc[N_CHUNKS - 1] < 0:
            lows[s] = _UNWINDOWED
            continue
        for k in range(N_CHUNKS):
            if acc[k] != 0:
                lows[s] = min(lows[s], k)
                highs[s] = k
    where = _place(g, lows, highs, base, window, wide, pending, side, n_wide, may_widen)
    if where < 0:
        return False
    if where == 1:
        for s in range(N_SUMS):
            b = base[g, s]
            if b >= 0:
                for k in range(WINDOW):
                    window[g, s, k] += sums[s, b + k]
        pending[g] += WINDOW
        return True
    full = side[wide[g]]
    full += sums
    normalize(full)
    return True


#: Terms :func:`_add_run_chunk` sums as integers: whole numbers up to this magnitude.
_SMALL_WHOLE = float(1 << 20)
#: Rows of a long run :func:`_add_run_chunk` takes at a time (20 KB: they stay in L1).
_RUN_CHUNK = 256
if _RUN_CHUNK * _SMALL_WHOLE >= 2.0**53 or _RUN_CHUNK > MAX_STAGED_TERMS:
    raise ImportError("xentstream: a chunk of small whole terms must sum exactly")


@njit(**_FLAGS)
def _add_run_chunk(scratch, terms, start, size, column):
    """Add rows ``start:start + size`` of ``terms`` into the full accumulators
    ``scratch`` (N_SUMS, N_SLOTS), exactly, a sum at a time (``column``: scratch).

    A sum whose terms are all whole numbers of magnitude at most ``_SMALL_WHOLE`` --
    unit weights, their denominators and squares, 0/1 correctness, the zero entropies
    of hard targets: most of a run's sums -- adds its int64 total as one term; the
    others go through ``add_terms``. The chunk's rows (20 KB) stay in L1 across the
    sums' strided passes, where a pass per sum over a whole run re-read it from L2
    each time (a 700-row run of three float and six whole sums, 1 thread: 27.1 -> 23.0
    ns a row). NaN and infinities are never whole and small, and are never converted.
    """
    rows = terms[start : start + size]  # sliced: ``start + j`` would cost a wraparound check
    for s in range(N_SUMS):
        whole = np.int64(0)
        odd = np.int64(0)
        for j in range(size):
            t = rows[j, s]
            small = (t == np.floor(t)) & (abs(t) <= _SMALL_WHOLE)
            odd += np.int64(not small)
            whole += np.int64(t if small else 0.0)
            column[j] = t
        if odd > 0:
            add_terms(scratch[s], column, size)
        elif whole != 0:
            add_term(scratch[s], np.float64(whole))  # |whole| < 2**53: exact


#: Runs of at least this many rows are summed with add_terms into a full accumulator
#: first (a few cycles a term), then added to their group as one accumulator.
LONG_RUN = 64


@njit(**_FLAGS)
def _add_run(g, start, stop, terms, base, window, wide, pending, side, n_wide, counts, may_widen):
    """Add rows ``start:stop`` of ``terms`` (all of group ``g``) into the table, exactly.

    False, changing no value (windows may have moved or been normalized), when the
    group is wide or must widen and ``may_widen`` is False, or must widen and ``side``
    is full. A short run is added term by term into its group's windows after one
    pass for the chunks its terms reach.
    """
    n = stop - start
    if n >= LONG_RUN:
        if not may_widen and wide[g] >= 0:
            return False
        scratch = np.zeros((N_SUMS, N_SLOTS), dtype=np.int64)
        column = np.empty(_RUN_CHUNK)
        for chunk_start in range(start, stop, _RUN_CHUNK):
            _add_run_chunk(scratch, terms, chunk_start, min(_RUN_CHUNK, stop - chunk_start), column)
        normalize(scratch)
        if not _add_full_group(g, scratch, base, window, wide, pending, side, n_wide, may_widen):
            return False
    else:
        if wide[g] < 0:
            fits = True
            if pending[g] + n >= MAX_PENDING:
                fits = _normalize_group(base, window, wide, side, g)
                pending[g] = 0
            # Each sum's window is fitted to its terms' chunks as soon as they are
            # known (moving a window changes no value, so a later sum that does not
            # fit leaves nothing to undo).
            for s in range(N_SUMS if fits else 0):
                low = N_CHUNKS
                high = -1
                finite = True
                for j in range(start, stop):
                    t = terms[j, s]
                    if t != 0.0:
                        finite = finite and t - t == 0.0
                        chunk = _term_chunk(t)
                        low = min(low, chunk)
                        high = max(high, chunk + 2)
                # inf and NaN: only a full accumulator counts them
                if not finite or (high >= 0 and not _fit(base, window, g, s, low, high)):
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
                if not may_widen or n_wide[0] == side.shape[0]:
                    return False
                _widen(base, window, wide, side, n_wide, g)
                pending[g] = 0
        if wide[g] >= 0:
            if not may_widen:
                return False
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
    return True


@njit(**_FLAGS)
def add_runs(
    terms,
    run_starts,
    run_codes,
    selected,
    first,
    base,
    window,
    wide,
    pending,
    side,
    n_wide,
    counts,
):
    """Add the rows of runs ``selected[first:]`` (one group each) into the table, exactly.

    ``terms``: (N, N_ROW_TERMS), the rows of each run together (run ``r`` is rows
    ``run_starts[r]:run_starts[r + 1]``, all of group ``run_codes[r]``). Returns the
    first entry of ``selected`` not added: ``len(selected)`` when done, less when a
    group must widen and ``side`` is full (the caller grows it and calls again from
    there; every run is added whole or not at all).
    """
    for q in range(first, selected.shape[0]):
        r = selected[q]
        g = run_codes[r]
        if not _add_run(
            g,
            run_starts[r],
            run_starts[r + 1],
            terms,
            base,
            window,
            wide,
            pending,
            side,
            n_wide,
            counts,
            True,
        ):
            return q
    return selected.shape[0]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def add_runs_parallel(
    terms,
    run_starts,
    run_codes,
    block_runs,
    base,
    window,
    wide,
    pending,
    side,
    n_wide,
    counts,
    added,
):
    """:func:`add_runs` of every run whose group stays compact, in parallel over blocks
    of runs (block ``b``: runs ``block_runs[b]:block_runs[b + 1]``; the runs' groups are
    distinct, so no two threads touch one group); ``added[r]``: whether run ``r`` was
    added (the others are for :func:`add_runs`)."""
    for block in prange(block_runs.shape[0] - 1):
        for r in range(block_runs[block], block_runs[block + 1]):
            g = run_codes[r]
            added[r] = _add_run(
                g,
                run_starts[r],
                run_starts[r + 1],
                terms,
                base,
                window,
                wide,
                pending,
                side,
                n_wide,
                counts,
                False,
            )


@njit(**_FLAGS)
def add_full(codes, sums, group_counts, first, base, window, wide, pending, side, n_wide, counts):
    """Add normalized full accumulators ``sums[i]`` (N_SUMS, N_SLOTS) into groups ``codes[i]``.

    For states loaded from files, merged tables and the CUDA engine's per-group sums.
    Returns the first entry not added (as :func:`add_runs`).
    """
    for i in range(first, codes.shape[0]):
        if not _add_full_group(codes[i], sums[i], base, window, wide, pending, side, n_wide, True):
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


#: Multiplier of the key hash (Fibonacci hashing: the high bits of ``key * phi``).
_PHI = np.uint64(0x9E3779B97F4A7C15)


@njit(**_FLAGS)
def _slot_of(key, mask):
    return np.int64((np.uint64(key) * _PHI) >> np.uint64(16)) & mask


@njit(**_FLAGS)
def hash_codes(values, valid, slot_keys, slot_codes, known, state, codes, new_rows, start):
    """Codes of int64 keys ``values[start:]`` (``valid``: False for a null, empty: none)
    from an open-addressing table; keys not there get the next codes, in row order.

    ``state``: ``[keys known (codes given), code of null or -1, new keys this call]``;
    ``known[code]``: each key, for rehashing (:func:`rehash`); ``new_rows``: the row of
    each new key's first appearance. Returns the first row not coded: ``len(values)``
    when done, less when the table would pass half full or ``known`` is full (the
    caller grows them and calls again from there).
    """
    mask = slot_keys.shape[0] - 1
    nulls = valid.shape[0] > 0
    for i in range(start, values.shape[0]):
        if nulls and not valid[i]:
            if state[1] < 0:
                if state[0] >= known.shape[0]:
                    return i
                state[1] = state[0]
                known[state[0]] = 0
                new_rows[state[2]] = i
                state[0] += 1
                state[2] += 1
            codes[i] = state[1]
            continue
        key = values[i]
        slot = _slot_of(key, mask)
        while True:
            code = slot_codes[slot]
            if code < 0:
                if 2 * (state[0] + 1) > slot_keys.shape[0] or state[0] >= known.shape[0]:
                    return i
                code = state[0]
                slot_keys[slot] = key
                slot_codes[slot] = code
                known[code] = key
                new_rows[state[2]] = i
                state[0] += 1
                state[2] += 1
                break
            if slot_keys[slot] == key:
                break
            slot = (slot + 1) & mask
        codes[i] = code
    return values.shape[0]


@njit(**_FLAGS)
def rehash(known, n_known, null_code, slot_keys, slot_codes):
    """Fill an empty table (``slot_codes`` all -1) with keys ``known[:n_known]``."""
    mask = slot_keys.shape[0] - 1
    for code in range(n_known):
        if code == null_code:
            continue
        key = known[code]
        slot = _slot_of(key, mask)
        while slot_codes[slot] >= 0:
            slot = (slot + 1) & mask
        slot_keys[slot] = key
        slot_codes[slot] = code


@njit(**_FLAGS)
def batch_runs(codes, seen):
    """Rows of one batch grouped by their codes, the groups in code order.

    ``seen``: scratch of at least ``max(codes) + 1`` entries, all -1 (and left so).
    Returns ``(runs, order, run_starts, run_codes)`` as
    :meth:`xentstream.grouping.GroupKeys.codes` describes them. Runs in code order make
    the grouped reduction sweep the group table forwards instead of at random.
    """
    n = codes.shape[0]
    distinct = np.empty(n, dtype=np.int64)
    k = 0
    top = 0
    for i in range(n):
        c = codes[i]
        if seen[c] < 0:
            seen[c] = 1
            distinct[k] = c
            k += 1
            top = max(top, c + 1)
    # Code order: sort the batch's groups, or scan the codes below the largest when
    # that is cheaper (a batch that holds most groups).
    if k * max(1, int(math.log2(k + 1))) < top:
        run_codes = np.sort(distinct[:k])
    else:
        run_codes = np.empty(k, dtype=np.int64)
        j = 0
        for c in range(top):
            if seen[c] >= 0:
                run_codes[j] = c
                j += 1
    for j in range(k):
        seen[run_codes[j]] = j
    run_starts = np.zeros(k + 1, dtype=np.int64)
    runs = np.empty(n, dtype=np.int64)
    for i in range(n):
        r = seen[codes[i]]
        runs[i] = r
        run_starts[r + 1] += 1
    for j in range(k):
        run_starts[j + 1] += run_starts[j]
        seen[run_codes[j]] = -1
    fill = run_starts[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        r = runs[i]
        order[fill[r]] = i
        fill[r] += 1
    return runs, order, run_starts, run_codes


@njit(**_FLAGS)
def row_positions(local_codes, n_local):
    """Where each row lands when the rows are grouped by ``local_codes`` (in
    ``[0, n_local)``, stable): the inverse of :func:`batch_runs`'s ``order``, for the
    kernel's per-row terms; one counting pass, no ``order`` built and inverted."""
    fill = np.zeros(n_local + 1, dtype=np.int64)
    for i in range(local_codes.shape[0]):
        fill[local_codes[i] + 1] += 1
    for c in range(n_local):
        fill[c + 1] += fill[c]
    positions = np.empty(local_codes.shape[0], dtype=np.int64)
    for i in range(local_codes.shape[0]):
        c = local_codes[i]
        positions[i] = fill[c]
        fill[c] += 1
    return positions


# -- the columnar form of a table in state files ------------------------------------------
#
# A sum is written as its normalized integer's nonzero 32-bit digits (``spans[g, s]``:
# the lowest nonzero chunk and the digit count; the digits of all sums one after the
# other): a function of the value only, so equal states give equal files whatever the
# splits, merges or windows held. A sum with a nonzero top chunk (negative or huge) or
# a non-finite term is *special*: written whole (its slots), its span (0, 0).


@njit(**_FLAGS)
def _normalized_sum(base, window, wide, side, g, s, acc):
    """Group ``g``'s sum ``s`` into ``acc`` (``N_SLOTS``), normalized as :func:`normalize`."""
    acc[:] = 0
    if wide[g] >= 0:
        acc[:] = side[wide[g], s]
        lo = 0
        last = N_CHUNKS - 1
    else:
        lo = base[g, s]
        if lo < 0:
            return
        for k in range(WINDOW):
            acc[lo + k] = window[g, s, k]
        last = lo + WINDOW - 1  # the chunks above are zero: carries stop there
    carry = 0
    for k in range(lo, N_CHUNKS - 1):
        value = acc[k] + carry
        acc[k] = value & _LOW32
        carry = value >> 32
        if carry == 0 and k >= last:
            return
    acc[N_CHUNKS - 1] += carry


@njit(**_FLAGS)
def _normalized_window(window, g, s, b, acc):
    """:func:`_normalized_sum` of a compact group's sum whose window starts at chunk
    ``b``, touching only the chunks the window and its carries reach: returns the
    chunk after the last written (``N_CHUNKS``: the top chunk was written too)."""
    last = b + WINDOW - 1
    top = N_CHUNKS - 1
    carry = 0
    k = b
    while k < top:
        value = (window[g, s, k - b] if k <= last else 0) + carry
        acc[k] = value & _LOW32
        carry = value >> 32
        k += 1
        if carry == 0 and k > last:
            return k
    acc[top] = (window[g, s, top - b] if top <= last else 0) + carry
    return N_CHUNKS


@njit(**_FLAGS)
def encode_groups(codes, base, window, wide, side, spans, special, digits):
    """Columnar form of groups ``codes``: ``spans[i, s]`` = (lowest nonzero chunk, digit
    count) of group ``codes[i]``'s sum ``s``, its digits appended to ``digits``,
    ``special[i, s]`` where the sum is special (then its span is (0, 0)).

    Returns the digits written, or -1 when ``digits`` has no room (the caller sizes
    it: ``WINDOW + 1`` digits a compact group's sum, ``N_CHUNKS - 1`` a wide one's).
    """
    acc = np.zeros(N_SLOTS, dtype=np.int64)
    n = 0
    top = N_CHUNKS - 1
    for i in range(codes.shape[0]):
        g = codes[i]
        for s in range(N_SUMS):
            spans[i, s, 0] = 0
            spans[i, s, 1] = 0
            special[i, s] = False
            if wide[g] >= 0:
                _normalized_sum(base, window, wide, side, g, s, acc)
                start, stop = 0, N_SLOTS
                flags = acc[POS_INF] != 0 or acc[NEG_INF] != 0 or acc[NAN] != 0
            else:
                start = base[g, s]
                if start < 0:
                    continue
                stop = _normalized_window(window, g, s, start, acc)
                flags = False
            if flags or acc[top] != 0:  # (acc is zero beyond what was written)
                special[i, s] = True
            else:
                lo = -1
                hi = -1
                for k in range(start, min(stop, top)):
                    if acc[k] != 0:
                        if lo < 0:
                            lo = k
                        hi = k
                if lo >= 0:
                    if n + hi - lo + 1 > digits.shape[0]:
                        return -1
                    for k in range(lo, hi + 1):
                        digits[n] = acc[k]
                        n += 1
                    spans[i, s, 0] = lo
                    spans[i, s, 1] = hi - lo + 1
            for k in range(start, stop):  # leave acc zero for the next sum
                acc[k] = 0
    return n


@njit(**_FLAGS)
def _add_encoded_group(
    g, spans, digits, offsets, i, lows, highs, base, window, wide, pending, side, n_wide
):
    """:func:`_add_full_group` of encoded sums (none special) ``spans[i]`` into group
    ``g``, the digits straight into its windows when they fit (``lows``, ``highs``:
    scratch). False, changing no value, when it must widen and ``side`` is full."""
    for s in range(N_SUMS):
        lows[s] = spans[i, s, 0]
        highs[s] = lows[s] + np.int64(spans[i, s, 1]) - 1
    where = _place(g, lows, highs, base, window, wide, pending, side, n_wide, True)
    if where < 0:
        return False
    for s in range(N_SUMS):
        at = offsets[i, s]
        # windowed: chunk k is window[g, s, k - base]; wide: the full row's own
        row = window[g, s] if where == 1 else side[wide[g], s]
        shift = base[g, s] if where == 1 else 0
        for k in range(lows[s], highs[s] + 1):
            row[k - shift] += np.int64(digits[at + k - lows[s]])
    if where == 1:
        pending[g] += WINDOW
    else:
        normalize(side[wide[g]])
    return True


@njit(**_FLAGS)
def add_encoded(
    codes,
    spans,
    digits,
    offsets,
    skip,
    group_counts,
    first,
    base,
    window,
    wide,
    pending,
    side,
    n_wide,
    counts,
):
    """:func:`add_full` of groups in :func:`encode_groups`' form: group ``i`` (unless
    ``skip[i]``: those with special sums, added whole by the caller) into group
    ``codes[i]``. Returns the first group not added (as :func:`add_full`)."""
    lows = np.empty(N_SUMS, dtype=np.int64)
    highs = np.empty(N_SUMS, dtype=np.int64)
    for i in range(first, codes.shape[0]):
        if skip[i]:
            continue
        g = codes[i]
        if not _add_encoded_group(
            g, spans, digits, offsets, i, lows, highs, base, window, wide, pending, side, n_wide
        ):
            return i
        counts[g] += group_counts[i]
    return codes.shape[0]


@njit(**_FLAGS)
def decode_groups(spans, digits, start, out):
    """Normalized accumulators ``out[i]`` (N_SUMS, N_SLOTS) of :func:`encode_groups`'
    ``spans`` (special sums left zero), the digits read from ``digits[start]`` on.

    Returns the next digit to read, or ``-1 - (N_SUMS * i + s)`` for the first sum
    whose span is not canonical (reaching the top chunk or past the digits, a zero
    lowest or highest digit, a lowest chunk without digits).
    """
    n = start
    for i in range(spans.shape[0]):
        for s in range(N_SUMS):
            row = out[i, s]
            row[:] = 0
            lo = np.int64(spans[i, s, 0])
            count = np.int64(spans[i, s, 1])
            if count == 0:
                if lo != 0:
                    return -1 - (N_SUMS * i + s)
                continue
            if lo + count > N_CHUNKS - 1 or n + count > digits.shape[0]:
                return -1 - (N_SUMS * i + s)
            if digits[n] == 0 or digits[n + count - 1] == 0:
                return -1 - (N_SUMS * i + s)
            for k in range(count):
                row[lo + k] = digits[n + k]
            n += count
    return n


@njit(**_FLAGS)
def _approx(digits, offset, lo, count):
    """``(m, e)`` with the integer of a span within 2**-60 relative of ``m * 2**e``."""
    if count == 0:
        return 0.0, 0
    take = min(count, np.int64(3))
    m = 0.0
    for j in range(take):
        m = m * 4294967296.0 + np.float64(digits[offset + count - 1 - j])
    return m, 32 * (lo + count - take)


@njit(**_FLAGS)
def _approx_add(m1, e1, m2, e2):
    if m1 == 0.0:
        return m2, e2
    if m2 == 0.0:
        return m1, e1
    e = max(e1, e2)
    return math.ldexp(m1, e1 - e) + math.ldexp(m2, e2 - e), e


@njit(**_FLAGS)
def _ratio_below(num_m, num_e, den_m, den_e, bound):
    """Whether ``num / den`` (approximations) is certainly at most ``bound`` ~ 1."""
    if num_m == 0.0:
        return True
    if den_m == 0.0:
        return False
    shift = num_e - den_e
    if shift > 200:
        return False
    if shift < -200:
        return True
    return math.ldexp(num_m / den_m, shift) <= bound


@njit(**_FLAGS)
def _at_most(digits, spans, offsets, i, a, b):
    """Whether group ``i``'s sum ``a`` is at most its sum ``b`` (compact sums), exactly."""
    top_a = spans[i, a, 0] + spans[i, a, 1] if spans[i, a, 1] else 0
    top_b = spans[i, b, 0] + spans[i, b, 1] if spans[i, b, 1] else 0
    if top_a != top_b:
        return top_a < top_b
    for k in range(np.int64(top_a) - 1, -1, -1):
        da = 0
        db = 0
        if spans[i, a, 1] and k >= spans[i, a, 0]:
            da = digits[offsets[i, a] + k - spans[i, a, 0]]
        if spans[i, b, 1] and k >= spans[i, b, 0]:
            db = digits[offsets[i, b] + k - spans[i, b, 0]]
        if da != db:
            return da < db
    return True


@njit(**_FLAGS)
def screen_groups(spans, special, digits, offsets, counts, options, doubtful):
    """Mark ``doubtful[i]`` the loaded groups a state check might refuse, so that only
    those are checked one by one (``Metric.load_state_dict``); the others certainly
    pass. Returns ``-1 - (N_SUMS * i + s)`` for the first sum whose span is not what
    :func:`encode_groups` writes (see :func:`decode_groups`; a special sum's is
    (0, 0)), else 0.

    ``offsets[i, s]``: where sum ``s`` of group ``i`` starts in ``digits``. ``options``:
    ``[validate, unit denominators, slack bits, underflow units, unit exponent]``, the
    rules of ``metrics._check_consistent``: no counted row, no sum; non-negative
    counts; ``correct <= weight`` (validated); Cauchy-Schwarz of the loss and of the
    denominator, within their slack. A group with a special sum is doubtful.
    Approximations decide only by a margin (2**-46) far above their error (2**-50).
    """
    validate = options[0] != 0
    unit_denominators = options[1] != 0
    bound = 1.0 + math.ldexp(1.0, -options[2]) - math.ldexp(1.0, -46)
    underflow = np.float64(options[3])
    unit_shift = -options[4]
    for i in range(spans.shape[0]):
        rows = counts[i, ROWS]
        # (a sum past 2**63 - 1 wraps negative)
        doubt = rows < 0 or counts[i, IGNORED] < 0 or rows + counts[i, IGNORED] < 0
        empty = True
        for s in range(N_SUMS):
            lo = np.int64(spans[i, s, 0])
            count = np.int64(spans[i, s, 1])
            if count == 0:
                if lo != 0:
                    return -1 - (N_SUMS * i + s)
            elif (
                special[i, s]
                or lo + count > N_CHUNKS - 1
                or offsets[i, s] + count > digits.shape[0]
                or digits[offsets[i, s]] == 0
                or digits[offsets[i, s] + count - 1] == 0
            ):
                return -1 - (N_SUMS * i + s)
            doubt = doubt or special[i, s]
            empty = empty and count == 0
        if doubt or rows == 0:
            doubtful[i] = doubt or not empty
            continue
        if validate and not _at_most(digits, spans, offsets, i, CORRECT, WEIGHT):
            doubtful[i] = True
            continue
        m_l, e_l = _approx(digits, offsets[i, LOSS], spans[i, LOSS, 0], spans[i, LOSS, 1])
        m_d, e_d = _approx(
            digits, offsets[i, DENOMINATOR], spans[i, DENOMINATOR, 0], spans[i, DENOMINATOR, 1]
        )
        slack = underflow * np.float64(rows)
        if unit_denominators:
            m_q, e_q = _approx(
                digits,
                offsets[i, LOSS_SQUARED],
                spans[i, LOSS_SQUARED, 0],
                spans[i, LOSS_SQUARED, 1],
            )
            m_q, e_q = _approx_add(m_q, e_q, slack, 0)
            if not _ratio_below(m_l * m_l, 2 * e_l, m_q * m_d, e_q + e_d, bound):
                doubtful[i] = True
                continue
        if m_d != 0.0:
            m_s, e_s = _approx(
                digits,
                offsets[i, DENOMINATOR_SQUARED],
                spans[i, DENOMINATOR_SQUARED, 0],
                spans[i, DENOMINATOR_SQUARED, 1],
            )
            m_s, e_s = _approx_add(m_s, e_s, slack, 0)
            if not _ratio_below(
                m_d * m_d, 2 * e_d, np.float64(rows) * m_s, e_s + unit_shift, bound
            ):
                doubtful[i] = True
                continue
        doubtful[i] = False
    return 0


# -- every group's floats and ratios at once, rounded once ---------------------------------
#
# A group's reported values are its exact integers (units 2**-1075) rounded once: a sum
# to float, a quotient of two sums, the variance (S D - L^2) / D^2. Python's int
# arithmetic does that exactly, at ~10 us a group; these kernels do it in float64 for
# every group at once and say where their result is not certain (then the caller takes
# the exact integers). A sum's top 106 bits as a double-double (truncated: relative error
# below 2**-105) carry the quotients; the quotient's error is bounded, and a result is
# certain when the exact value cannot lie on the other side of a rounding boundary
# (Ziv's test). Results outside the normal range (subnormal, overflow) are uncertain too.

#: ``value_flags`` bits: a special (infinite or NaN) sum; a result not certain here.
SPECIAL = 1
UNCERTAIN = 2
#: Relative error bound of a double-double quotient of truncated double-doubles (the
#: analysis gives ~2**-102; a wide margin costs nothing: uncertain results are rare).
_DD_ERROR = 2.0**-90
_SPLIT = 134217729.0  # 2**27 + 1, Dekker's split


@njit(**_FLAGS)
def _scaled(x, k):
    """``math.ldexp(x, k)`` for the finite ``x``: a product by ``2**k`` where that is a
    normal float64 (exact when the result is normal: every use here; a libm call
    otherwise)."""
    if -1022 <= k <= 1023:
        return x * bits_float64((k + 1023) << 52)
    return math.ldexp(x, k)


@njit(**_FLAGS)
def _bit_length(x):
    """Bits of the non-negative ``x < 2**53``."""
    if x == 0:
        return 0
    return ((float64_bits(np.float64(x)) >> 52) & 0x7FF) - 1022


@njit(**_FLAGS)
def _field(acc, lo, n):
    """Bits ``lo .. lo + n - 1`` (``n <= 53``; bits below 0 are zero) of the non-negative
    integer ``acc`` (32-bit chunks, the last below 2**53)."""
    out = np.uint64(0)
    hi = lo + n - 1
    first = max(lo, 0) >> 5
    last = min(hi >> 5, acc.shape[0] - 1)
    for k in range(first, last + 1):
        chunk = np.uint64(acc[k])
        shift = 32 * k - lo
        if shift >= 0:
            out |= chunk << np.uint64(shift)
        else:
            out |= chunk >> np.uint64(-shift)
    return np.int64(out & ((np.uint64(1) << np.uint64(n)) - np.uint64(1)))


@njit(**_FLAGS)
def _any_below(acc, position, start=0):
    """Whether a bit below ``position`` of ``acc`` (zero below chunk ``start``) is set."""
    if position <= 0:
        return False
    whole = position >> 5
    for k in range(start, min(whole, acc.shape[0])):
        if acc[k] != 0:
            return True
    part = position - 32 * whole
    if part and whole < acc.shape[0]:
        return (acc[whole] & ((1 << part) - 1)) != 0
    return False


@njit(**_FLAGS)
def _load_sum(base, window, wide, side, g, s, acc):
    """Group ``g``'s sum ``s`` into ``acc`` (zero), normalized: returns the chunks it
    wrote, ``(start, stop)`` (a compact group's window and its carries only)."""
    if wide[g] >= 0:
        _normalized_sum(base, window, wide, side, g, s, acc)
        return 0, N_SLOTS
    b = base[g, s]
    if b < 0:
        return 0, 0
    return b, _normalized_window(window, g, s, b, acc)


@njit(**_FLAGS)
def _magnitude(acc, stop):
    """Make the normalized ``acc`` (zero from chunk ``stop`` on) its absolute value (in
    place); returns its sign and its bit count, or bit count -1 if the magnitude is too
    large to read here."""
    top = N_CHUNKS - 1
    sign = 1
    if stop > top and acc[top] < 0:
        sign = -1
        borrow = 0
        for k in range(top):
            value = -acc[k] - borrow
            borrow = 0
            if value < 0:
                value += 1 << 32
                borrow = 1
            acc[k] = value
        acc[top] = -acc[top] - borrow
    else:
        top = min(stop, N_CHUNKS) - 1
    if top == N_CHUNKS - 1 and acc[top] >= 1 << 52:
        return sign, -1
    for k in range(top, -1, -1):
        if acc[k] != 0:
            return sign, 32 * k + _bit_length(acc[k])
    return 0, 0


@njit(**_FLAGS)
def _rounded(acc, bits, start):
    """The magnitude ``acc`` (``bits`` long, at least 54; zero below chunk ``start``)
    times 2**-1075, rounded to nearest even; NaN where the result is not a normal
    float64."""
    shift = bits - 53
    q = _field(acc, shift, 53)
    half = _field(acc, shift - 1, 1)
    if half and (q & 1 or _any_below(acc, shift - 1, start)):
        q += 1
    exponent = shift + UNIT_EXPONENT
    if exponent + 53 > 1024:
        return np.nan
    return _scaled(np.float64(q), exponent)


@njit(**_FLAGS)
def _two_product(a, b):
    """``a * b`` as ``(p, e)`` with ``p + e`` exact (Dekker; no FMA)."""
    p = a * b
    t = _SPLIT * a
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = _SPLIT * b
    b_hi = t - (t - b)
    b_lo = b - b_hi
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


@njit(**_FLAGS)
def _two_sum(a, b):
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@njit(**_FLAGS)
def _dd_mul(ah, al, bh, bl):
    p, e = _two_product(ah, bh)
    e += ah * bl + al * bh
    return _two_sum(p, e)


@njit(**_FLAGS)
def _dd_div(ah, al, bh, bl):
    """``(ah + al) / (bh + bl)`` as a double-double (relative error ~2**-104)."""
    q1 = ah / bh
    p, e = _two_product(q1, bh)
    r = (((ah - p) - e) + al) - q1 * bl
    q2 = r / bh
    return _two_sum(q1, q2)


@njit(**_FLAGS)
def _certain(s, t, bound):
    """Whether ``s + t + d`` (``|d| <= bound * |s|``; ``s = fl(s + t)``, ``s > 0``)
    rounds to ``s``: it lies strictly inside ``s``'s rounding interval."""
    bits = float64_bits(s)
    ulp = _scaled(1.0, ((bits >> 52) & 0x7FF) - 1075)
    below = ulp / 4.0 if (bits & _MANTISSA_MASK) == 0 else ulp / 2.0
    slack = bound * s
    return t + slack < ulp / 2.0 and slack - t < below


@njit(**_FLAGS)
def _is_multiple(a, b, t, f, product):
    """Whether ``a == t * b * 2**f`` exactly (``a``, ``b``: non-negative integers in
    32-bit chunks; ``0 < t < 2**54``; ``product``: scratch, two chunks longer than ``b``)."""
    mask = np.uint64(_LOW32)
    product[:] = 0
    for j in range(2):
        tj = np.uint64((t >> (32 * j)) & _LOW32)
        if tj == 0:
            continue
        carry = np.uint64(0)
        for k in range(b.shape[0]):
            # (2**32 - 1)**2 + 2 (2**32 - 1) < 2**64: no wrap
            x = np.uint64(b[k]) * tj + product[k + j] + carry
            product[k + j] = x & mask
            carry = x >> np.uint64(32)
        product[b.shape[0] + j] += carry
    top = product.shape[0] - 1
    while top > 0 and product[top] == 0:
        top -= 1
    p_bits = 32 * top + _bit_length(np.int64(product[top]))
    top = a.shape[0] - 1
    while top > 0 and a[top] == 0:
        top -= 1
    a_bits = 32 * top + _bit_length(a[top])
    if a_bits != p_bits + f:
        return False
    shift_a = max(f, 0)  # compare a / 2**max(f, 0) with product / 2**max(-f, 0)
    shift_p = max(-f, 0)
    if _any_below(a, shift_a) or _any_below(product, shift_p):
        return False
    for position in range(0, p_bits - shift_p, 32):
        if _field(a, shift_a + position, 32) != _field(product, shift_p + position, 32):
            return False
    return True


@njit(**_FLAGS)
def _tie(a, b, qh, ql, exponent, product):
    """The quotient ``a / b`` (magnitudes in 32-bit chunks) rounded once where its
    double-double ``(qh + ql) * 2**exponent`` lies too close to a rounding boundary for
    the error bound: if it is exactly the boundary (a tie: the even neighbour), else
    NaN (not certain)."""
    bits = float64_bits(qh)
    es = ((bits >> 52) & 0x7FF) - 1023
    mantissa = (bits & _MANTISSA_MASK) | _HIDDEN_BIT
    scale = exponent + es - 52  # qh * 2**exponent = mantissa * 2**scale
    if ql > 0.0:
        t, f, up = 2 * mantissa + 1, scale - 1, True
    elif mantissa == _HIDDEN_BIT:
        t, f, up = 4 * mantissa - 1, scale - 2, False
    else:
        t, f, up = 2 * mantissa - 1, scale - 1, False
    if not _is_multiple(a, b, t, f, product):
        return np.nan
    if up:
        chosen = mantissa + (mantissa & 1)
    else:
        chosen = mantissa - (mantissa & 1)
    return _scaled(np.float64(chosen), scale)


@njit(**_FLAGS)
def _round_quotient(qh, ql, exponent, sign, bound):
    """``sign * (qh + ql) * 2**exponent`` rounded once (``qh + ql`` within ``bound``
    relative of the exact quotient, ``qh`` in [0.25, 4]); NaN if not certain."""
    if exponent < -1018 or exponent > 1020:
        return np.nan
    if not _certain(qh, ql, bound):
        return np.nan
    return sign * _scaled(qh, exponent)


@njit(**_FLAGS)
def group_values(
    codes, base, window, wide, side, counts, pairs, floats, ratios, variance, signs, flags
):
    """Every group's sums rounded to float64 and its quotients, rounded once.

    For group ``codes[i]``: ``floats[i, s]`` its sum ``s`` (``accumulator.to_float``);
    ``signs[i, s]`` the sign of sum ``s`` (-1, 0, 1); ``ratios[i, j]`` the quotient
    of its sums ``pairs[j, 0]`` and ``pairs[j, 1]`` (``accumulator.integer_ratio``: NaN
    for a zero denominator); ``variance[i]`` ``(S D - L^2) / D^2`` of its loss squares
    ``S``, denominator ``D`` and loss ``L`` (``report._exact_variance`` before its
    clamp at zero; NaN for ``D = 0``), for groups of more than one counted row (the
    others' is NaN: no standard error needs it). ``flags[i]``: :data:`SPECIAL` where a sum is
    special (the other outputs then mean nothing), :data:`UNCERTAIN` where a value was
    not certain here (NaN: the caller computes it from the exact integers).
    """
    _group_values_range(
        codes, 0, codes.shape[0], base, window, wide, side, counts, pairs,
        floats, ratios, variance, signs, flags,
    )  # fmt: skip


#: Groups per block of :func:`group_values_parallel` (one thread's serial work).
VALUES_PER_BLOCK = 4096


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def group_values_parallel(
    codes, base, window, wide, side, counts, pairs, floats, ratios, variance, signs, flags
):
    """:func:`group_values`, threads splitting the groups in blocks (each writes only
    its own groups' outputs and reads the table)."""
    n_blocks = (codes.shape[0] + VALUES_PER_BLOCK - 1) // VALUES_PER_BLOCK
    for block in prange(n_blocks):
        start = block * VALUES_PER_BLOCK
        stop = min(start + VALUES_PER_BLOCK, codes.shape[0])
        _group_values_range(
            codes, start, stop, base, window, wide, side, counts, pairs,
            floats, ratios, variance, signs, flags,
        )  # fmt: skip


@njit(**_FLAGS)
def _group_values_range(
    codes, first, stop, base, window, wide, side, counts, pairs, floats, ratios, variance,
    signs, flags,
):  # fmt: skip
    """:func:`group_values` of groups ``codes[first:stop]``."""
    magnitudes = np.zeros((N_SUMS, N_SLOTS), dtype=np.int64)
    product = np.zeros(N_SLOTS + 2, dtype=np.uint64)
    used = np.zeros((N_SUMS, 2), dtype=np.int64)  # chunks of magnitudes[s] not zero
    hi = np.zeros(N_SUMS)
    lo = np.zeros(N_SUMS)
    ex = np.zeros(N_SUMS, dtype=np.int64)
    sg = np.zeros(N_SUMS, dtype=np.int64)
    for i in range(first, stop):
        g = codes[i]
        flag = 0
        for s in range(N_SUMS):
            acc = magnitudes[s]
            acc[used[s, 0] : used[s, 1]] = 0
            start, stop = _load_sum(base, window, wide, side, g, s, acc)
            used[s, 0] = start
            used[s, 1] = stop
            if stop > N_CHUNKS and (acc[POS_INF] != 0 or acc[NEG_INF] != 0 or acc[NAN] != 0):
                flag |= SPECIAL
                continue
            sign, bits = _magnitude(acc, stop)
            if sign < 0:
                used[s, 0] = 0
                used[s, 1] = N_SLOTS
            sg[s] = sign
            signs[i, s] = sign
            if bits < 0:
                flag |= UNCERTAIN
                floats[i, s] = np.nan
                hi[s] = np.nan
                lo[s] = np.nan
                continue
            # 32-bit chunks throughout (the top one's high bits into the slot above it,
            # free: the sum is not special)
            if used[s, 1] >= N_CHUNKS:
                acc[N_CHUNKS] = acc[N_CHUNKS - 1] >> 32
                acc[N_CHUNKS - 1] &= _LOW32
                used[s, 1] = max(used[s, 1], N_CHUNKS + 1)
            if bits == 0:
                floats[i, s] = 0.0
            elif bits < 54:  # below 2**-1022: a subnormal (or 2**-1022 rounded up)
                floats[i, s] = np.nan
                flag |= UNCERTAIN
            else:
                value = _rounded(acc, bits, used[s, 0])
                if value != value:
                    flag |= UNCERTAIN
                floats[i, s] = sign * value
            ex[s] = bits - 53
            hi[s] = np.float64(_field(acc, bits - 53, 53))
            lo[s] = _scaled(np.float64(_field(acc, bits - 106, 53)), -53)
        if flag & SPECIAL:
            flags[i] = flag
            continue
        for j in range(pairs.shape[0]):
            a = pairs[j, 0]
            b = pairs[j, 1]
            if sg[b] == 0:
                ratios[i, j] = np.nan
            elif sg[a] == 0:
                ratios[i, j] = 0.0 if sg[b] > 0 else -0.0
            elif hi[a] != hi[a] or hi[b] != hi[b]:
                ratios[i, j] = np.nan
                flag |= UNCERTAIN
            else:
                qh, ql = _dd_div(hi[a], lo[a], hi[b], lo[b])
                value = _round_quotient(qh, ql, ex[a] - ex[b], sg[a] * sg[b], _DD_ERROR)
                if value != value and -1018 <= ex[a] - ex[b] <= 1020:
                    value = _tie(magnitudes[a], magnitudes[b], qh, ql, ex[a] - ex[b], product)
                    value *= sg[a] * sg[b]
                if value != value:
                    flag |= UNCERTAIN
                ratios[i, j] = value
        variance[i] = np.nan
        if counts[g, ROWS] > 1:
            variance[i] = _variance(hi, lo, ex, sg)
        if variance[i] != variance[i] and sg[DENOMINATOR] != 0 and counts[g, ROWS] > 1:
            flag |= UNCERTAIN
        flags[i] = flag


@njit(**_FLAGS)
def _variance(hi, lo, ex, sg):
    """``(S D - L^2) / D^2`` of the double-doubles of sums LOSS_SQUARED, DENOMINATOR,
    LOSS (see :func:`group_values`), rounded once, or NaN (zero ``D`` or not certain)."""
    d = DENOMINATOR
    if sg[d] == 0:
        return np.nan
    for s in (LOSS, LOSS_SQUARED, d):
        if hi[s] != hi[s]:
            return np.nan
    # S D and L^2 (zero when S or L is), each within 2**-103 relative.
    ph = pl_ = 0.0
    pe = 0
    if sg[LOSS_SQUARED] != 0:
        ph, pl_ = _dd_mul(hi[LOSS_SQUARED], lo[LOSS_SQUARED], hi[d], lo[d])
        ph, pl_ = sg[LOSS_SQUARED] * sg[d] * ph, sg[LOSS_SQUARED] * sg[d] * pl_
        pe = ex[LOSS_SQUARED] + ex[d]
    mh = ml = 0.0
    me = 0
    if sg[LOSS] != 0:
        mh, ml = _dd_mul(hi[LOSS], lo[LOSS], hi[LOSS], lo[LOSS])
        me = 2 * ex[LOSS]
    if ph == 0.0 and mh == 0.0:
        return 0.0
    top = max(pe, me) if ph != 0.0 and mh != 0.0 else (pe if ph != 0.0 else me)
    if top - min(pe, me) > 900:  # one product dwarfs the other: its own value
        if ph != 0.0 and pe < me:
            ph = pl_ = 0.0
        elif mh != 0.0 and me < pe:
            mh = ml = 0.0
    ph, pl_ = (
        _scaled(ph, pe - top) if ph != 0.0 else 0.0,
        (_scaled(pl_, pe - top) if ph != 0.0 else 0.0),
    )
    mh, ml = (
        _scaled(mh, me - top) if mh != 0.0 else 0.0,
        (_scaled(ml, me - top) if mh != 0.0 else 0.0),
    )
    # N = S D - L^2 as a double-double; its error is below 2**-100 of |S D| + |L^2|.
    nh, nt = _two_sum(ph, -mh)
    nt += pl_ - ml
    nh, nl = _two_sum(nh, nt)
    error = 2.0**-98 * (abs(ph) + abs(mh))
    if abs(nh) <= 2.0 * error:
        return np.nan  # so much cancellation that the sign itself may be wrong
    sign = 1.0
    if nh < 0.0:  # (rounding errors of the terms; the caller clamps it at zero)
        sign, nh, nl = -1.0, -nh, -nl
    dh, dl = _dd_mul(hi[d], lo[d], hi[d], lo[d])
    qh, ql = _dd_div(nh, nl, dh, dl)
    # the quotient's leading part scaled to [0.25, 4] for the rounding test
    k = ((float64_bits(qh) >> 52) & 0x7FF) - 1023
    qh = _scaled(qh, -k)
    ql = _scaled(ql, -k)
    bound = 2.0 * error / abs(nh) + _DD_ERROR
    return _round_quotient(qh, ql, top - 2 * ex[d] + k, sign, bound)
