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

_LOW32 = 0xFFFFFFFF
_MANTISSA_MASK = (1 << 52) - 1
_HIDDEN_BIT = 1 << 52


@intrinsic
def float64_bits(typingctx, value):
    """Reinterpret a float64 as the int64 with the same bits (no conversion)."""
    if value != types.float64:
        return None
    signature = types.int64(types.float64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return signature, codegen


@njit(nogil=True, error_model="numpy")
def add_term(acc, slot, value):
    """Add the float64 ``value`` exactly to accumulator row ``acc[slot]``."""
    if value == 0.0:
        return
    if value - value != 0.0:  # inf or NaN: counted, never mixed into the integer
        if value != value:
            acc[slot, NAN] += 1
        elif value > 0.0:
            acc[slot, POS_INF] += 1
        else:
            acc[slot, NEG_INF] += 1
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
        acc[slot, chunk] -= low
        acc[slot, chunk + 1] -= mid
        acc[slot, chunk + 2] -= high
    else:
        acc[slot, chunk] += low
        acc[slot, chunk + 1] += mid
        acc[slot, chunk + 2] += high


@njit(nogil=True)
def normalize(acc):
    """Propagate carries in every row of ``acc`` so that chunks lie in [0, 2**32).

    The top chunk keeps the sign. The result is the canonical form of the sum.
    """
    for slot in range(acc.shape[0]):
        for k in range(N_CHUNKS - 1):
            carry = acc[slot, k] >> CHUNK_BITS  # arithmetic shift: floor division
            acc[slot, k] &= _LOW32
            acc[slot, k + 1] += carry


@njit(nogil=True)
def combine_blocks(block_accs, out):
    """Normalize each block's accumulator and add it into ``out`` (then normalize)."""
    for block in range(block_accs.shape[0]):
        normalize(block_accs[block])
        for slot in range(out.shape[0]):
            for k in range(N_SLOTS):
                out[slot, k] += block_accs[block, slot, k]
    normalize(out)
