"""Kernels of the token input: one target log-probability (or NLL) a row, no vocabulary.

Evaluation harnesses store, per token, the log-probability the model gave the token
that came next (256 KB of logits a token at a 128k vocabulary are not kept). Row ``i``
holds ``x_i``; its loss is ``L_i = -x_i`` (``nll=False``: a log-probability, finite and
``<= 0``) or ``L_i = x_i`` (``nll=True``: finite and ``>= 0``). A mask (``mask[i] == 0``:
padding) drops a row without looking at its value, sample weights ``s_i`` and units
``u_i`` (bytes, characters or words the token covers) come per row.

:func:`token_sums` makes one pass: fused validation (a block stops at its first bad
row, as the other kernels, see :mod:`xentstream._kernels.cpu`), exact block sums in the
layout of :mod:`xentstream._kernels.layout` (``LOSS``, ``DENOMINATOR``, ``LOSS_SQUARED``,
``WEIGHT``, ``DENOMINATOR_SQUARED``; the multiclass-only sums stay zero) and the unit sums
below, staged a chunk of rows at a time and added with
:func:`~xentstream._kernels.exact.add_terms`. With ``terms`` it also writes each row's
terms (columns of :data:`TERM_COLUMNS`), which :func:`code_sums` adds exactly per code
(documents, groups): rows of a code need not be contiguous.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from xentstream._kernels.exact import MAX_STAGED_TERMS, add_term, add_terms
from xentstream._kernels.layout import (
    DENOMINATOR,
    DENOMINATOR_SQUARED,
    IGNORED,
    LOSS,
    LOSS_SQUARED,
    MASK_INVALID,
    OK,
    PRED_NAN,
    PRED_NEG_INF,
    PRED_NEGATIVE_NLL,
    PRED_POS_INF,
    PRED_POSITIVE_LOGPROB,
    ROWS,
    SAMPLE_WEIGHT_INVALID,
    UNITS_INVALID,
    WEIGHT,
)

# Exact sums of the units (``unit_sums[slot]``), for bits per unit and its delta-method
# standard error (the per-row ratio estimator needs the three products).
UNITS = 0  # sum s u
UNIT_LOSS_SQUARED = 1  # sum (s L)**2
UNIT_CROSS = 2  # sum (s L)(s u)
UNIT_SQUARED = 3  # sum (s u)**2
N_UNIT_SUMS = 4

#: The per-row terms a caller may ask for (``term_columns``), by index.
TERM_LOSS = 0  # s L
TERM_WEIGHT = 1  # s
TERM_LOSS_SQUARED = 2  # s L**2
TERM_WEIGHT_SQUARED = 3  # s**2
TERM_UNITS = 4  # s u
TERM_UNIT_LOSS_SQUARED = 5  # (s L)**2
TERM_UNIT_CROSS = 6  # (s L)(s u)
TERM_UNIT_SQUARED = 7  # (s u)**2
N_TERMS = 8

#: Rows a block stages before adding (one add_terms call per staged sum).
_CHUNK = MAX_STAGED_TERMS
_N_STAGED = 9
_FLAGS = {"parallel": True, "nogil": True, "cache": True, "error_model": "numpy"}


@njit(nogil=True, error_model="numpy")
def _scratch(rows):
    """Staging columns of one block, allocated in a called function: numba hoists an
    ``np.empty`` written in a ``prange`` body out of the loop (then blocks share it)."""
    return np.empty((_N_STAGED, rows)), np.empty(N_TERMS)


@njit(nogil=True, error_model="numpy")
def check_value(x, nll):
    """Error code of one token value (``OK`` when valid)."""
    if x != x:
        return PRED_NAN
    if nll:
        if x == np.inf:
            return PRED_POS_INF
        if x < 0.0:
            return PRED_NEGATIVE_NLL
        return OK
    if x > 0.0:
        return PRED_POS_INF if x == np.inf else PRED_POSITIVE_LOGPROB
    if x == -np.inf:
        return PRED_NEG_INF
    return OK


@njit(nogil=True, error_model="numpy")
def _record(errors, error_values, block, row, code, value):
    errors[block, 0] = row
    errors[block, 1] = code
    errors[block, 2] = -1
    error_values[block] = value


@njit(nogil=True, error_model="numpy")
def _row_terms(out, loss, s, u):
    out[TERM_LOSS] = s * loss
    out[TERM_WEIGHT] = s
    out[TERM_LOSS_SQUARED] = s * (loss * loss)
    out[TERM_WEIGHT_SQUARED] = s * s
    out[TERM_UNITS] = s * u
    out[TERM_UNIT_LOSS_SQUARED] = (s * loss) * (s * loss)
    out[TERM_UNIT_CROSS] = (s * loss) * (s * u)
    out[TERM_UNIT_SQUARED] = (s * u) * (s * u)


@njit(nogil=True, error_model="numpy")
def _add_chunk(block_sums, block_unit_sums, staged, n, weighted, with_units):
    add_terms(block_sums[LOSS], staged[0], n)
    add_terms(block_sums[LOSS_SQUARED], staged[1], n)
    if weighted:
        # DENOMINATOR and WEIGHT are the same sum s here: staged once, added twice
        # (add_terms overwrites its scratch, so a copy first).
        staged[8, :n] = staged[2, :n]
        add_terms(block_sums[DENOMINATOR], staged[2], n)
        add_terms(block_sums[WEIGHT], staged[8], n)
        add_terms(block_sums[DENOMINATOR_SQUARED], staged[3], n)
    if with_units:
        add_terms(block_unit_sums[UNITS], staged[4], n)
        add_terms(block_unit_sums[UNIT_LOSS_SQUARED], staged[5], n)
        add_terms(block_unit_sums[UNIT_CROSS], staged[6], n)
        add_terms(block_unit_sums[UNIT_SQUARED], staged[7], n)


@njit(**_FLAGS)
def token_sums(
    values,
    mask,
    sample_weight,
    units,
    nll,
    validate,
    term_columns,
    sums,
    unit_sums,
    counts,
    terms,
    errors,
    error_values,
):
    """Exact sums of one batch of token values, per block of rows.

    Parameters
    ----------
    values : (N,) float32 or float64
    mask : (N,) uint8, or empty (every row counted); 0 drops a row, 1 keeps it
    sample_weight : (N,) float, or empty (all ones)
    units : (N,) float64, or empty (no unit sums)
    nll : bool
        ``values`` are negative log-likelihoods (else log-probabilities).
    validate : bool
        Value checks (the mask check is never skipped).
    term_columns : (K,) int64
        Which :data:`N_TERMS` per-row terms to write into ``terms`` (none when K = 0).
    sums : (B, N_SUMS, N_SLOTS) int64, zeroed; unit_sums : (B, N_UNIT_SUMS, N_SLOTS)
    counts : (B, N_COUNTS) int64, zeroed
    terms : (N, K) float64; rows that are dropped get zero terms
    errors : (B, 3) int64, filled with -1; error_values : (B,) float64
    """
    n_rows = values.shape[0]
    n_blocks = sums.shape[0]
    masked = mask.shape[0] > 0
    weighted = sample_weight.shape[0] > 0
    with_units = units.shape[0] > 0
    n_columns = term_columns.shape[0]
    for block in prange(n_blocks):
        start = block * n_rows // n_blocks
        stop = (block + 1) * n_rows // n_blocks
        staged, row = _scratch(min(_CHUNK, max(stop - start, 1)))
        chunk = staged.shape[1]
        n = 0
        failed = False
        for i in range(start, stop):
            if masked:
                keep = mask[i]
                if keep > 1:
                    _record(errors, error_values, block, i, MASK_INVALID, np.float64(keep))
                    failed = True
                    break
                if keep == 0:
                    counts[block, IGNORED] += 1
                    for k in range(n_columns):
                        terms[i, k] = 0.0
                    continue
            x = np.float64(values[i])
            if validate:
                code = check_value(x, nll)
                if code != OK:
                    _record(errors, error_values, block, i, code, x)
                    failed = True
                    break
            loss = x if nll else -x
            s = 1.0
            if weighted:
                s = np.float64(sample_weight[i])
                if validate and not (s >= 0.0 and s - s == 0.0):
                    _record(errors, error_values, block, i, SAMPLE_WEIGHT_INVALID, s)
                    failed = True
                    break
            u = 0.0
            if with_units:
                u = units[i]
                if validate and not (u >= 0.0 and u - u == 0.0):
                    _record(errors, error_values, block, i, UNITS_INVALID, u)
                    failed = True
                    break
            counts[block, ROWS] += 1
            _row_terms(row, loss, s, u)
            staged[0, n] = row[TERM_LOSS]
            staged[1, n] = row[TERM_LOSS_SQUARED]
            staged[2, n] = s
            staged[3, n] = row[TERM_WEIGHT_SQUARED]
            staged[4, n] = row[TERM_UNITS]
            staged[5, n] = row[TERM_UNIT_LOSS_SQUARED]
            staged[6, n] = row[TERM_UNIT_CROSS]
            staged[7, n] = row[TERM_UNIT_SQUARED]
            for k in range(n_columns):
                terms[i, k] = row[term_columns[k]]
            n += 1
            if n == chunk:
                _add_chunk(sums[block], unit_sums[block], staged, n, weighted, with_units)
                n = 0
        if not failed:
            _add_chunk(sums[block], unit_sums[block], staged, n, weighted, with_units)
            if not weighted:
                # s = 1: the sums that count rows, added once per block (exact: < 2**53).
                rows = np.float64(counts[block, ROWS])
                add_term(sums[block, DENOMINATOR], rows)
                add_term(sums[block, WEIGHT], rows)
                add_term(sums[block, DENOMINATOR_SQUARED], rows)


@njit(**_FLAGS)
def code_sums(terms, order, starts, out):
    """Exact per-code sums of ``terms`` columns: ``out[code, k] += sum of terms[i, k]``
    over the rows ``i = order[starts[code]:starts[code + 1]]`` (the rows of a code, in
    any order: the sums are exact; an empty ``order``: the rows in order, codes sorted).
    One ``prange`` iteration per code; ``out`` is (n_codes, K, N_SLOTS), zeroed, and
    normalized by the caller."""
    n_codes = starts.shape[0] - 1
    n_columns = terms.shape[1]
    ordered = order.shape[0] > 0
    for code in prange(n_codes):
        first = starts[code]
        last = starts[code + 1]
        staged, _unused = _scratch(min(_CHUNK, max(last - first, 1)))
        width = staged.shape[1]
        for k in range(n_columns):
            j = first
            while j < last:
                n = min(width, last - j)
                for t in range(n):
                    staged[0, t] = terms[order[j + t] if ordered else j + t, k]
                add_terms(out[code, k], staged[0], n)
                j += n
