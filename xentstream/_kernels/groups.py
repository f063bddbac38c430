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
    add_term,
    add_terms,
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


#: Runs of at least this many rows are summed with add_terms into a full accumulator
#: first (a few cycles a term), then added to their group as one accumulator.
LONG_RUN = 64
#: Runs per block of :func:`add_runs_parallel` (a block is one thread's serial work).
RUNS_PER_BLOCK = 4096


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
        column = np.empty(min(MAX_STAGED_TERMS, n))
        for s in range(N_SUMS):
            for chunk_start in range(start, stop, MAX_STAGED_TERMS):
                size = min(MAX_STAGED_TERMS, stop - chunk_start)
                for j in range(size):
                    column[j] = terms[chunk_start + j, s]
                add_terms(scratch[s], column, size)
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
    terms, run_starts, run_codes, base, window, wide, pending, side, n_wide, counts, added
):
    """:func:`add_runs` of every run whose group stays compact, in parallel over blocks
    of runs (the runs' groups are distinct, so no two threads touch one group);
    ``added[r]``: whether run ``r`` was added (the others are for :func:`add_runs`)."""
    n_runs = run_codes.shape[0]
    n_blocks = (n_runs + RUNS_PER_BLOCK - 1) // RUNS_PER_BLOCK
    for block in prange(n_blocks):
        for r in range(block * RUNS_PER_BLOCK, min(n_runs, (block + 1) * RUNS_PER_BLOCK)):
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
