"""Exact, order-independent summation of float64 terms inside numba kernels.

An accumulator row is an ``int64`` vector of :data:`N_SLOTS` slots. Slots
``0 .. N_CHUNKS-1`` hold a fixed-point integer: chunk ``k`` counts units of
``2**(32*k - 1075)``, so every finite float64 (subnormals included) is an integer
number of the smallest unit ``2**-1074 / 2``. The last three slots count the
non-finite terms (+inf, -inf, NaN).

This is the "small superaccumulator" of R. Neal's xsum (arXiv:1505.05571) with
32-bit chunks: a term's 53-bit mantissa, shifted into place, spans at most three
chunks and adds less than ``2**32`` to each, so a chunk absorbs ``2**31`` terms
before it can overflow. Integer addition is associative, hence the sum does not
depend on the order of the terms, the block split or the thread count; carries
are propagated by :func:`normalize` before partial sums are combined, which also
makes the representation canonical (equal sums give equal bits).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

CHUNK_BITS = 32
#: Chunks of the fixed-point part: the lowest mantissa bit sits in chunk <= 63 and
#: a term reaches two chunks above it; one more chunk takes carries.
N_CHUNKS = 67
POS_INF = N_CHUNKS
NEG_INF = N_CHUNKS + 1
NAN = N_CHUNKS + 2
N_SLOTS = N_CHUNKS + 3
#: Exponent of the unit of chunk 0: value = sum(chunk[k] * 2**(32k)) * 2**-1075.
UNIT_EXPONENT = -1075
#: A block of rows must add fewer terms than this to one slot before normalizing.
MAX_TERMS_PER_BLOCK = 1 << 30
#: Terms one :func:`add_terms` call may take: its int64 sums of 2**11 parts below
#: 2**52 stay below 2**63, so this is the most it can be. The CPU kernels' staging
#: buffers are sized by it (``cpu._STAGED_ROWS``).
MAX_STAGED_TERMS = 1 << 11

#: add_terms adds this many terms or fewer one by one.
_FEW_TERMS = 4
_LOW32 = 0xFFFFFFFF
_MANTISSA_MASK = (1 << 52) - 1
_HIDDEN_BIT = 1 << 52


def _reinterpret(source, target, name, doc):
    """An intrinsic that reinterprets a ``source`` value's bits as ``target`` (no conversion)."""

    def typer(typingctx, value):
        if value != source:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


float64_bits = _reinterpret(
    types.float64, types.int64, "float64_bits", "The int64 with the same bits as a float64."
)
bits_float64 = _reinterpret(
    types.int64, types.float64, "bits_float64", "The float64 with the same bits as an int64."
)
float32_bits = _reinterpret(
    types.float32, types.int32, "float32_bits", "The int32 with the same bits as a float32."
)
bits_float32 = _reinterpret(
    types.int32, types.float32, "bits_float32", "The float32 with the same bits as an int32."
)


@njit(nogil=True, error_model="numpy")
def add_term(acc, value):
    """Add the float64 ``value`` exactly to ``acc``, one accumulator row (``sums[slot]``).

    The row, not ``(sums, slot)``, is the argument: numba compiles a called ``@njit``
    function once per *literal* argument, so a slot constant would compile one copy of
    this function per slot (0.4-0.7 s each on a cold cache).
    """
    if value == 0.0:
        return
    if value - value != 0.0:  # inf or NaN: counted, never mixed into the integer
        if value != value:
            acc[NAN] += 1
        elif value > 0.0:
            acc[POS_INF] += 1
        else:
            acc[NEG_INF] += 1
        return
    bits = float64_bits(value)
    exponent = (bits >> 52) & 0x7FF
    mantissa = bits & _MANTISSA_MASK
    if exponent == 0:
        exponent = 1  # subnormal: same unit as the smallest normal exponent
    else:
        mantissa |= _HIDDEN_BIT
    chunk = exponent >> 5
    shift = exponent & 31
    # Split mantissa << shift (up to 85 bits) into three 32-bit pieces without
    # ever shifting by 64 or overflowing an int64.
    low = (mantissa & ((1 << (32 - shift)) - 1)) << shift
    mid = (mantissa >> (32 - shift)) & _LOW32
    high = (mantissa >> 32) >> (32 - shift)
    if bits < 0:
        acc[chunk] -= low
        acc[chunk + 1] -= mid
        acc[chunk + 2] -= high
    else:
        acc[chunk] += low
        acc[chunk + 1] += mid
        acc[chunk + 2] += high


@njit(nogil=True, error_model="numpy")
def _power_of_two(k):
    """2.0**k for a normal result (-1022 <= k <= 1023), built in the exponent bits."""
    return bits_float64((k + 1023) << 52)


@njit(nogil=True, error_model="numpy")
def add_units(acc, units, unit_exponent):
    """Add ``units * 2**unit_exponent`` (``|units| < 2**62``) exactly, as two float64 terms."""
    high = units >> 31  # arithmetic shift: floor, so 0 <= low < 2**31
    low = units - (high << 31)
    add_term(acc, np.float64(high) * _power_of_two(unit_exponent + 31))
    add_term(acc, np.float64(low) * _power_of_two(unit_exponent))


@njit(nogil=True, error_model="numpy")
def add_terms(acc, terms, n_terms):
    """Add ``terms[:n_terms]`` exactly to ``acc``, like :func:`add_term` for each, faster.

    ``terms`` is scratch: its first ``n_terms`` values are overwritten. At most
    :data:`MAX_STAGED_TERMS` terms per call.

    Rump, Ogita and Oishi's error-free extraction (AccSum, SIAM J. Sci. Comput. 2008),
    two levels deep: with ``2**e`` the largest finite magnitude, ``(sigma + t) - sigma``
    for ``sigma = 1.5 * 2**(e + 2)`` is ``t`` rounded to a multiple of ``2**(e - 50)``,
    exactly, and ``t`` minus it is exact too; the second level does the same to the
    remainders with multiples of ``2**(e - 101)``. Each level's parts are integers times
    its unit, below ``2**52`` in magnitude, summed in an ``int64`` (no overflow for
    2**11 terms) by a loop that LLVM vectorizes; the two sums join the accumulator as
    four :func:`add_term` calls. Only what is left below ``2**(e - 101)`` -- terms more
    than 2**50 times smaller than the largest, with low bits set -- and non-finite terms
    go through :func:`add_term` one by one. A few cycles a term instead of ~4 ns.

    Examples
    --------
    >>> import math
    >>> import numpy as np
    >>> terms = [0.1, 1e-300, -2.5, 3e20, 7.0]
    >>> acc = np.zeros((N_SLOTS,), dtype=np.int64)
    >>> add_terms(acc, np.array(terms), len(terms))
    >>> reference = np.zeros((N_SLOTS,), dtype=np.int64)
    >>> for term in terms:
    ...     add_term(reference, term)
    >>> normalize(acc.reshape(1, -1)); normalize(reference.reshape(1, -1))
    >>> bool((acc == reference).all())
    True
    """
    if n_terms <= _FEW_TERMS:  # one row's terms (grouped rows): the setup would dominate
        for i in range(n_terms):
            add_term(acc, terms[i])
        return
    top_exponent = 0  # biased exponent bits of the largest finite term; 0: none nonzero
    non_finite = 0
    for i in range(n_terms):
        t = terms[i]
        finite = t - t == 0.0
        non_finite += np.int64(not finite)
        exponent_bits = (float64_bits(t) >> 52) & 0x7FF
        top_exponent = max(top_exponent, exponent_bits if finite else 0)
    if non_finite > 0:
        for i in range(n_terms):
            if terms[i] - terms[i] != 0.0:
                add_term(acc, terms[i])
                terms[i] = 0.0
    e = top_exponent - 1023
    if top_exponent == 0 or e < -921 or e > 1000:
        # All zero or subnormal, or so large or small that a level's unit or sigma
        # would leave the normal range: term by term (add_term skips zeros).
        for i in range(n_terms):
            add_term(acc, terms[i])
        return
    sigma_high = 1.5 * _power_of_two(e + 2)
    scale_high = _power_of_two(50 - e)
    sigma_middle = 1.5 * _power_of_two(e - 49)
    scale_middle = _power_of_two(101 - e)
    units_high = 0
    units_middle = 0
    leftover = 0
    for i in range(n_terms):
        t = terms[i]
        high = (sigma_high + t) - sigma_high
        rest = t - high
        middle = (sigma_middle + rest) - sigma_middle
        low = rest - middle
        units_high += np.int64(high * scale_high)
        units_middle += np.int64(middle * scale_middle)
        terms[i] = low
        leftover += np.int64(low != 0.0)
    add_units(acc, units_high, e - 50)
    add_units(acc, units_middle, e - 101)
    if leftover > 0:
        for i in range(n_terms):
            add_term(acc, terms[i])


@njit(nogil=True, cache=True)
def normalize(acc):
    """Propagate carries in every row of ``acc`` so that chunks lie in [0, 2**32).

    The top chunk keeps the sign. The result is the canonical form of the sum.
    """
    for slot in range(acc.shape[0]):
        for k in range(N_CHUNKS - 1):
            carry = acc[slot, k] >> CHUNK_BITS  # arithmetic shift: floor division
            acc[slot, k] &= _LOW32
            acc[slot, k + 1] += carry


@njit(nogil=True, cache=True)
def sum_fits(target, source, top_bound):
    """Whether ``target + source`` (rows of accumulators, both normalized) stays in
    range: no row's top chunks reach ``top_bound`` in magnitude (+1 for a carry), where
    int64 could wrap. Compiled: numpy's slicing, abs and max took ~17 us a check, on
    every batch of a metric with reliability bins."""
    top = N_CHUNKS - 1
    for slot in range(target.shape[0]):
        if abs(float(target[slot, top]) + float(source[slot, top])) + 1.0 >= top_bound:
            return False
    return True


@njit(nogil=True, cache=True)
def add_normalized(target, source, top_bound):
    """``target += source`` (rows of accumulators, both normalized), normalized again.

    Returns False, with ``target`` unchanged, if the sum leaves the range
    (:func:`sum_fits`). One call in place of numpy's range check, add and normalize:
    microseconds on small batches.
    """
    if not sum_fits(target, source, top_bound):
        return False
    for slot in range(target.shape[0]):
        for k in range(N_SLOTS):
            target[slot, k] += source[slot, k]
    normalize(target)
    return True


@njit(nogil=True, cache=True)
def combine_blocks(block_accs, out):
    """Normalize each block's accumulator and add it into ``out`` (then normalize)."""
    for block in range(block_accs.shape[0]):
        normalize(block_accs[block])
        for slot in range(out.shape[0]):
            for k in range(N_SLOTS):
                out[slot, k] += block_accs[block, slot, k]
    normalize(out)
