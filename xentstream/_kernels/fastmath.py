"""Branch-free float64 ``exp`` / ``log`` / ``log1p`` that LLVM can vectorize.

pip's llvmlite ships no SVML, so ``math.exp`` and ``math.log`` in a numba loop are
scalar calls into libm and the loop around them never vectorizes. The functions
here are plain arithmetic and bit manipulation (range reduction plus polynomial,
2**n built in the exponent bits), written without branches so that a loop over
the classes of a row compiles to AVX2 / AVX-512 code. LLVM inlines them into the
kernels' loops (numba's ``inline="always"`` is not needed and costs compile time) and
they are compiled with no fast-math flags, so NaN and inf keep their IEEE
meaning; only the reductions use :func:`add_reassoc` / :func:`max_num`, whose
single instructions allow reordering (see there).

Accuracy (``tests/test_fastmath.py``, against numpy over wide sweeps): ``exp64``
and ``log64`` within 2 ulp, ``log1p64`` within 4 ulp, special values (0,
subnormals, +-inf, NaN) as in IEEE libm -- far inside SPEC section 3.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from xentstream._kernels.exact import bits_float32, bits_float64, float32_bits, float64_bits


@intrinsic
def add_reassoc(typingctx, a, b):
    """``a + b`` as one ``fadd reassoc``: lets LLVM vectorize a sum reduction.

    Only this addition may be reordered with the other additions of the same
    reduction chain, so a loop ``s = add_reassoc(s, term)`` is summed in lanes
    (fixed at compile time: the result of a row depends only on the row, never on
    the block or thread it runs in). Everything else keeps strict IEEE order.
    """
    if a != types.float64 or b != types.float64:
        return None
    signature = types.float64(types.float64, types.float64)

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc", "nsz"))

    return signature, codegen


@intrinsic
def max_num(typingctx, a, b):
    """The larger of ``a`` and ``b`` for non-NaN operands: ``llvm.maxnum`` with ``nnan nsz``.

    Without the flags LLVM keeps the max reduction scalar (it must honour NaN and the
    sign of zero lane by lane: 1.2 ns a value, more than the exp pass); with them it is
    a vector ``vmaxpd`` (0.36 ns). Callers must not rely on the result for rows holding
    NaN: the row scans catch those with their probe and re-scan the row (scalar).
    """
    if a != types.float64 or b != types.float64:
        return None
    signature = types.float64(types.float64, types.float64)

    def codegen(context, builder, sig, args):
        double = ir.DoubleType()
        fnty = ir.FunctionType(double, [double, double])
        fn = builder.module.declare_intrinsic("llvm.maxnum", [double], fnty)
        return builder.call(fn, args, fastmath=("nnan", "nsz"))

    return signature, codegen


@intrinsic
def add_four(typingctx, table, row, a, b, c, d):
    """``table[row, :4] += (a, b, c, d)`` as one 4-lane vector load, add and store.

    ``table`` is a C-contiguous float64 array of 4 columns and ``row`` one of its rows:
    neither is checked (the caller's row index is in range by construction). A row's
    four scalar read-modify-writes, which LLVM will not merge (it cannot tell the table
    from the arrays the values came from), cost 2.0 ns a row of the reliability bins'
    tally; the vector, 1.05 (1 thread). The lanes add as the scalars would: same bits.
    """
    if not (
        isinstance(table, types.Array)
        and table.dtype == types.float64
        and table.ndim == 2
        and table.layout == "C"
        and isinstance(row, types.Integer)
        and all(value == types.float64 for value in (a, b, c, d))
    ):
        return None
    signature = types.void(table, row, a, b, c, d)

    def codegen(context, builder, sig, args):
        array = context.make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        start = builder.mul(index, ir.Constant(index.type, 4))
        lanes = ir.VectorType(ir.DoubleType(), 4)
        pointer = builder.bitcast(builder.gep(array.data, [start]), lanes.as_pointer())
        values = ir.Constant(lanes, ir.Undefined)
        for lane, value in enumerate(args[2:]):
            values = builder.insert_element(values, value, ir.Constant(ir.IntType(32), lane))
        builder.store(builder.fadd(builder.load(pointer, align=8), values), pointer, align=8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def is_float32(typingctx, array):
    """Whether ``array`` holds float32: a compile-time constant that LLVM folds.

    Lets a row helper pick float32 SIMD math for float32 input in a branch that the
    float64 specialization of the same helper does not contain.
    """
    if not isinstance(array, types.Array):
        return None
    answer = array.dtype == types.float32

    def codegen(context, builder, sig, args):
        return context.get_constant(types.boolean, answer)

    return types.boolean(array), codegen


_LOG2E = 1.4426950408889634
# ln 2 split so that k * _LN2_HI is exact for |k| < 2**32 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_EXP_LOW = -746.0  # exp underflows to 0 below about -745.13
_EXP_HIGH = 710.0  # ... and overflows to inf above about 709.78
# 1/k! for k = 2 .. 12: Taylor on |r| <= ln2 / 2 is within 2e-16 relative.
_E2 = 1.0 / 2.0
_E3 = 1.0 / 6.0
_E4 = 1.0 / 24.0
_E5 = 1.0 / 120.0
_E6 = 1.0 / 720.0
_E7 = 1.0 / 5040.0
_E8 = 1.0 / 40320.0
_E9 = 1.0 / 362880.0
_E10 = 1.0 / 3628800.0
_E11 = 1.0 / 39916800.0
_E12 = 1.0 / 479001600.0


@njit(nogil=True, error_model="numpy")
def exp64(x):
    """``exp(x)`` for a float64, branch-free: exp(-inf) = 0, exp(inf) = inf, NaN -> NaN."""
    if x < _EXP_LOW:
        x = _EXP_LOW
    if x > _EXP_HIGH:
        x = _EXP_HIGH
    finite = x if x == x else 0.0  # keep the integer conversion defined for NaN
    k = np.rint(finite * _LOG2E)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _E11 + r * _E12
    p = _E10 + r * p
    p = _E9 + r * p
    p = _E8 + r * p
    p = _E7 + r * p
    p = _E6 + r * p
    p = _E5 + r * p
    p = _E4 + r * p
    p = _E3 + r * p
    p = _E2 + r * p
    p = 1.0 + r * p
    p = 1.0 + r * p
    # 2**k as two factors so that k down to -1077 (subnormal results) and up to
    # 1025 (overflow to inf) need no branch.
    n = np.int64(k)
    half = n >> 1
    scale_a = bits_float64((half + 1023) << 52)
    scale_b = bits_float64((n - half + 1023) << 52)
    return (p * scale_a) * scale_b


_SQRT2 = 1.4142135623730951
_TWO54 = 18014398509481984.0
_MIN_NORMAL = 2.2250738585072014e-308
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52
# fdlibm e_log.c: minimax for log(1+f) = f - f**2/2 + s*(f**2/2 + R(s**2)).
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@njit(nogil=True, error_model="numpy")
def log64(x):
    """``log(x)`` for a float64, branch-free: log(0) = -inf, log(inf) = inf, x < 0 -> NaN."""
    tiny = x < _MIN_NORMAL
    y = x * _TWO54 if tiny else x  # subnormals: scale into the normal range
    bits = float64_bits(y)
    k = ((bits >> 52) & 0x7FF) - 1023
    if tiny:
        k -= 54
    m = bits_float64((bits & _MANTISSA) | _ONE_BITS)  # y = m * 2**k, m in [1, 2)
    if m > _SQRT2:
        m = m * 0.5
        k += 1
    f = m - 1.0  # in [sqrt(2)/2 - 1, sqrt(2) - 1]
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    hfsq = 0.5 * f * f
    dk = np.float64(k)
    result = dk * _LN2_HI - ((hfsq - (s * (hfsq + t1 + t2) + dk * _LN2_LO)) - f)
    if x == 0.0:
        result = -np.inf
    if x == np.inf:
        result = np.inf
    if not x >= 0.0:  # negative or NaN
        result = np.nan
    return result


@njit(nogil=True, error_model="numpy")
def log1p64(u):
    """``log(1 + u)`` for a float64 u >= -1, branch-free and accurate for tiny u."""
    w = 1.0 + u
    # w rounds 1 + u; (u - (w - 1)) is that rounding error, first order in 1/w.
    result = log64(w) + (u - (w - 1.0)) / w
    if w == np.inf:
        result = np.inf
    if w == 0.0:
        result = -np.inf
    return result


# inline="always" (the one helper here that has it): LLVM does not inline a function
# that returns a tuple and holds an exp64 and a log1p64, so a loop calling it stayed
# scalar (138 vs 29 ms for 4 Mi values); numba's inliner copies these three lines into
# the loop at little compile cost.
@njit(inline="always", nogil=True, error_model="numpy")
def log_sigmoid_pair(x):
    """``(log sigmoid(x), log sigmoid(-x))`` with one exp and one log1p (x finite or inf).

    ``log sigmoid(+-x) = -softplus(-+x) = -(max(-+x, 0) + log1p(exp(-|x|)))``.
    """
    m = log1p64(exp64(-abs(x)))
    return -(max(-x, 0.0) + m), -(max(x, 0.0) + m)


# -- float32 ------------------------------------------------------------------------------
#
# float32 input gets float32 exp / log (SPEC section 3 asks 1e-6 relative per row for it):
# twice the lanes of the float64 versions and shorter polynomials. Cephes' expf / logf
# minimax coefficients; every constant is a np.float32 so numba keeps the arithmetic in
# float32 (a Python float would widen it to float64).

_F_LOG2E = np.float32(1.44269504088896341)
# ln 2 = _F_LN2_HI + _F_LN2_LO, _F_LN2_HI with 9 significant bits (k * it exact).
_F_LN2_HI = np.float32(0.693359375)
_F_LN2_LO = np.float32(-2.12194440e-4)
#: Below this exp32 returns 0: the smallest normal float32 is exp(-87.34).
_F_EXP_LOW = np.float32(-87.33654)
#: exp32 is for arguments up to 88 (the kernels call it on x - max <= 0 and -|x|).
_F_EXP_HIGH = np.float32(88.0)
_F_P0 = np.float32(1.9875691500e-4)
_F_P1 = np.float32(1.3981999507e-3)
_F_P2 = np.float32(8.3334519073e-3)
_F_P3 = np.float32(4.1665795894e-2)
_F_P4 = np.float32(1.6666665459e-1)
_F_P5 = np.float32(5.0000001201e-1)
_F_ZERO = np.float32(0.0)
_F_ONE = np.float32(1.0)
_F_HALF = np.float32(0.5)
_F_INF = np.float32(np.inf)
_F_NAN = np.float32(np.nan)


@njit(nogil=True, error_model="numpy")
def exp32(x):
    """``exp(x)`` for a float32 ``x <= 88``, branch-free: within 2 ulp; 0 below -87.34.

    Results that would be subnormal are flushed to 0 (they are below 1e-38 of the
    largest exp of the row that the kernels add them to); exp(-inf) = 0, NaN -> NaN.
    """
    clamped = x
    if clamped < _F_EXP_LOW:
        clamped = _F_EXP_LOW
    if clamped > _F_EXP_HIGH:
        clamped = _F_EXP_HIGH
    if clamped != clamped:
        clamped = _F_ZERO  # keep the integer conversion defined for NaN
    k = np.float32(np.rint(clamped * _F_LOG2E))
    r = (clamped - k * _F_LN2_HI) - k * _F_LN2_LO
    z = r * r
    p = _F_P0 * r + _F_P1
    p = p * r + _F_P2
    p = p * r + _F_P3
    p = p * r + _F_P4
    p = p * r + _F_P5
    y = (p * z + r) + _F_ONE
    scale = bits_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    result = y * scale
    if x < _F_EXP_LOW:
        result = _F_ZERO
    if x != x:
        result = x
    return result


_F_SQRTHF = np.float32(0.707106781186547524)
_F_TWO25 = np.float32(33554432.0)
_F_MIN_NORMAL = np.float32(1.17549435e-38)
_F_L0 = np.float32(7.0376836292e-2)
_F_L1 = np.float32(-1.1514610310e-1)
_F_L2 = np.float32(1.1676998740e-1)
_F_L3 = np.float32(-1.2420140846e-1)
_F_L4 = np.float32(1.4249322787e-1)
_F_L5 = np.float32(-1.6668057665e-1)
_F_L6 = np.float32(2.0000714765e-1)
_F_L7 = np.float32(-2.4999993993e-1)
_F_L8 = np.float32(3.3333331174e-1)


@njit(nogil=True, error_model="numpy")
def log32(x):
    """``log(x)`` for a float32, branch-free: within 2 ulp; log(0) = -inf, x < 0 -> NaN."""
    tiny = x < _F_MIN_NORMAL
    y = x * _F_TWO25 if tiny else x  # subnormals: scale into the normal range
    bits = float32_bits(y)
    e = np.int32(((bits >> np.int32(23)) & np.int32(0xFF)) - np.int32(126))
    if tiny:
        e = np.int32(e - np.int32(25))
    # y = m * 2**e with m in [0.5, 1)
    m = bits_float32(np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000)))
    if m < _F_SQRTHF:
        e = np.int32(e - np.int32(1))
        m = (m + m) - _F_ONE
    else:
        m = m - _F_ONE
    z = m * m
    p = _F_L0 * m + _F_L1
    p = p * m + _F_L2
    p = p * m + _F_L3
    p = p * m + _F_L4
    p = p * m + _F_L5
    p = p * m + _F_L6
    p = p * m + _F_L7
    p = p * m + _F_L8
    fe = np.float32(e)
    t = (p * m) * z + fe * _F_LN2_LO
    t = t - _F_HALF * z
    result = (m + t) + fe * _F_LN2_HI
    if x == _F_ZERO:
        result = -_F_INF
    if x == _F_INF:
        result = _F_INF
    if not x >= _F_ZERO:  # negative or NaN
        result = _F_NAN
    return result


@njit(nogil=True, error_model="numpy")
def log1p32(u):
    """``log(1 + u)`` for a float32 ``u >= -1``, branch-free and accurate for tiny u."""
    w = _F_ONE + u
    result = log32(w) + (u - (w - _F_ONE)) / w
    if w == _F_INF:
        result = _F_INF
    if w == _F_ZERO:
        result = -_F_INF
    return result
