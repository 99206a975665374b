"""jax's threefry-2x32 random stream, written in NumPy (private to :mod:`funcnn.random`).

For a raw key (``uint32`` array of shape ``(2,)``) every function here computes
what jax 0.10's default PRNG ("threefry2x32") and ``jax.random`` compute:

* :func:`threefry2x32`: the Threefry-2x32 block cipher, 20 rounds (Salmon et al.,
  "Parallel random numbers: as easy as 1, 2, 3", SC 2011), as jax applies it;
* :func:`split`, :func:`fold_in`: jax's key derivation;
* :func:`random_bits`: 32- or 64-bit words, one per output element;
* :func:`unit_floats`, :func:`uniform`, :func:`normal`, :func:`permutation`: jax's
  conversions (bits to a float in ``[1, 2)`` minus 1; ``sqrt(2) * erfinv(u)`` with
  XLA's polynomial approximation of erfinv; rounds of sorts keyed by random words).

``partitionable`` picks between jax's two counter layouts, the flag
``jax_threefry_partitionable`` (True by default in recent jax, 0.10 included): True
hashes the pair ``(i >> 32, i & 0xFFFFFFFF)`` for output ``i``; False hashes the first
half of ``0 .. 2n-1`` against the second half. Integer arithmetic is on ``uint32``
arrays, which wrap modulo ``2**32`` as the cipher needs. The float steps are XLA's IEEE
operations in XLA's order, with its multiply-add in ``uniform`` fused into one rounding
(:func:`fused_multiply_add`), so uniforms agree bit for bit; normals agree to a few ulp,
as XLA's ``log`` and the multiply-adds inside its polynomials round differently.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "erfinv",
    "fold_in",
    "fused_multiply_add",
    "normal",
    "permutation",
    "random_bits",
    "split",
    "threefry2x32",
    "uniform",
    "unit_floats",
]

MASK32 = 0xFFFFFFFF
# Rotation distances of the 4-round groups: odd groups use the first row, even the second.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# The key schedule's third word is k0 ^ k1 ^ PARITY (Threefish's constant C240).
PARITY = 0x1BD11BDA
N_INJECTIONS = 5  # 20 rounds: five groups of four, each followed by a key injection
_FEW_PAIRS = 8  # up to this many pairs, Python ints beat NumPy's per-call overhead


# ---------------------------------------------------------------------- the cipher


def _threefry_pair(schedule: tuple, x0: int, x1: int) -> tuple:
    """Threefry-2x32 of one counter pair, in Python ints (cheaper than arrays for a few
    pairs, as in key derivation). ``schedule`` is ``(k0, k1, k0 ^ k1 ^ PARITY)``."""
    x0, x1 = (x0 + schedule[0]) & MASK32, (x1 + schedule[1]) & MASK32  # key injection 0
    for s in range(1, N_INJECTIONS + 1):
        for r in ROTATIONS[(s - 1) % 2]:  # one round: x0 += x1; x1 = rotl(x1, r) ^ x0
            x0 = (x0 + x1) & MASK32
            x1 = (((x1 << r) & MASK32) | (x1 >> (32 - r))) ^ x0
        # key injection s: the schedule turned by s words, and s added to the second word
        x0 = (x0 + schedule[s % 3]) & MASK32
        x1 = (x1 + schedule[(s + 1) % 3] + s) & MASK32
    return x0, x1


def _round(x0: np.ndarray, x1: np.ndarray, rotation: int, scratch: np.ndarray) -> None:
    """One Threefry round on arrays, in place: ``x0 += x1; x1 = rotl(x1, rotation) ^ x0``."""
    np.add(x0, x1, out=x0)
    np.left_shift(x1, rotation, out=scratch)
    np.right_shift(x1, 32 - rotation, out=x1)
    np.bitwise_or(x1, scratch, out=x1)
    np.bitwise_xor(x1, x0, out=x1)


def threefry2x32(key: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple:
    """Encrypt the counter pairs ``(x0[i], x1[i])`` under ``key``; 1-d uint32 in and out."""
    k0, k1 = int(key[0]), int(key[1])
    schedule = (k0, k1, k0 ^ k1 ^ PARITY)
    if x0.size <= _FEW_PAIRS:
        pairs = np.array([_threefry_pair(schedule, a, b)
                          for a, b in zip(x0.tolist(), x1.tolist(), strict=True)], np.uint32)
        pairs = pairs.reshape(-1, 2)  # (0, 2) when there are no pairs
        return pairs[:, 0].copy(), pairs[:, 1].copy()
    # the same steps as _threefry_pair on arrays, in place (uint32 addition wraps by itself)
    x0 = np.add(x0, np.uint32(schedule[0]), dtype=np.uint32)  # new arrays: inputs untouched
    x1 = np.add(x1, np.uint32(schedule[1]), dtype=np.uint32)
    scratch = np.empty_like(x1)
    for s in range(1, N_INJECTIONS + 1):
        for rotation in ROTATIONS[(s - 1) % 2]:
            _round(x0, x1, rotation, scratch)
        x0 += np.uint32(schedule[s % 3])
        x1 += np.uint32((schedule[(s + 1) % 3] + s) & MASK32)
    return x0, x1


def _counters(n: int) -> tuple:
    """``0 .. n-1`` as the high and low uint32 words of uint64 (jax's ``iota_2x32_shape``)."""
    if n <= 2**32:
        return np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32)
    count = np.arange(n, dtype=np.uint64)
    return (count >> np.uint64(32)).astype(np.uint32), count.astype(np.uint32)


def _hash_halves(key: np.ndarray, n: int) -> np.ndarray:
    """jax's ``threefry_2x32(key, arange(n))``: the first half of the counters (padded
    with a zero to even length) against the second half, outputs concatenated."""
    if n >= MASK32:
        raise ValueError(
            f"{n} random words in one draw is beyond this NumPy port's limit of 2**32 - 2 "
            "with jax_threefry_partitionable=False"
        )
    half = (n + 1) // 2
    counts = np.arange(2 * half, dtype=np.uint32)
    counts[n:] = 0
    y0, y1 = threefry2x32(key, counts[:half], counts[half:])
    return np.concatenate([y0, y1])[:n]


# ---------------------------------------------------------------------- keys and bits


def split(key: np.ndarray, n: int, partitionable: bool) -> np.ndarray:
    """``jax.random.split(key, n)`` as raw keys of shape ``(n, 2)``."""
    if partitionable:
        y0, y1 = threefry2x32(key, *_counters(n))
        return np.stack([y0, y1], axis=1)
    return _hash_halves(key, 2 * n).reshape(n, 2)


def fold_in(key: np.ndarray, data: int) -> np.ndarray:
    """``jax.random.fold_in(key, data)`` for ``0 <= data < 2**32``: hash the pair ``(0, data)``."""
    y0, y1 = threefry2x32(key, np.zeros(1, np.uint32), np.array([data], np.uint32))
    return np.concatenate([y0, y1])


def random_bits(key: np.ndarray, bit_width: int, n: int, partitionable: bool) -> np.ndarray:
    """``n`` random words of ``bit_width`` (32 or 64) bits, flat (``jax.random.bits``)."""
    if partitionable:
        y0, y1 = threefry2x32(key, *_counters(n))
        if bit_width == 32:
            return np.bitwise_xor(y0, y1, out=y0)
        return (y0.astype(np.uint64) << np.uint64(32)) | y1
    if bit_width == 32:
        return _hash_halves(key, n)
    words = _hash_halves(key, 2 * n)
    return (words[:n].astype(np.uint64) << np.uint64(32)) | words[n:]


# ---------------------------------------------------------------------- conversions

# dtype -> (unsigned type of the same width, bits, explicit mantissa bits)
_LAYOUT = {np.dtype(np.float32): (np.uint32, 32, 23), np.dtype(np.float64): (np.uint64, 64, 52)}


def unit_floats(key: np.ndarray, n: int, dtype: np.dtype, partitionable: bool) -> np.ndarray:
    """``n`` floats in ``[0, 1)``: the top mantissa bits of a random word make a float
    in ``[1, 2)``, minus 1 (``jax.random.uniform`` before scaling; flat)."""
    uint, nbits, nmant = _LAYOUT[dtype]
    bits = random_bits(key, nbits, n, partitionable)
    one = np.array(1.0, dtype).view(uint)
    return ((bits >> uint(nbits - nmant)) | one).view(dtype) - dtype.type(1.0)


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple:
    """``s + e == a + b`` exactly, ``s`` the rounded sum (Knuth's TwoSum)."""
    s = a + b
    b_part = s - a
    return s, (a - (s - b_part)) + (b - b_part)


def _sum_to_odd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` rounded to odd: an inexact sum ends in an odd last bit, so a later
    rounding to fewer bits is correct (Boldo & Melquiond 2008)."""
    s, e = _two_sum(a, b)
    even = (s.view(np.uint64) & np.uint64(1)) == 0
    return np.where((e != 0) & even, np.nextafter(s, np.copysign(np.inf, e)), s)


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple:
    """``p + e == a * b`` exactly for float64, ``p`` the rounded product (Dekker)."""
    p = a * b
    a_hi = a * 134217729.0  # 2**27 + 1 splits 53 bits into 26 + 27
    a_hi = a_hi - (a_hi - a)
    b_hi = b * 134217729.0
    b_hi = b_hi - (b_hi - b)
    a_lo, b_lo = a - a_hi, b - b_hi
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def fused_multiply_add(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` rounded once, as XLA computes it on CPUs with FMA. float32 goes
    through float64 (the product is exact there); float64 uses exact transformations."""
    if a.dtype == np.float32:
        product = a.astype(np.float64) * np.asarray(b, np.float64)
        return _sum_to_odd(product, np.asarray(c, np.float64)).astype(np.float32)
    product, error = _two_product(a, np.asarray(b, np.float64))
    high, low = _two_sum(product, np.asarray(c, np.float64))
    return high + _sum_to_odd(low, error)


def uniform(key: np.ndarray, shape: tuple, dtype: np.dtype, minval: float, maxval: float,
            partitionable: bool) -> np.ndarray:
    """``jax.random.uniform``: ``max(minval, f * (maxval - minval) + minval)`` for ``f``
    from :func:`unit_floats`, the multiply-add fused as XLA does."""
    floats = unit_floats(key, math.prod(shape), dtype, partitionable)
    lo, hi = np.asarray(minval, dtype), np.asarray(maxval, dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # as jax: inf or NaN, no warning
        return np.maximum(lo, fused_multiply_add(floats, hi - lo, lo)).reshape(shape)


def _horner(coefficients: tuple, t: np.ndarray) -> np.ndarray:
    """``sum(c[k] * t**(K-k))`` evaluated as XLA does: ``p = c[k] + p * t``."""
    p = np.full_like(t, coefficients[0])
    for c in coefficients[1:]:
        p *= t
        p += t.dtype.type(c)
    return p


# XLA's log1p: Cephes' rational approximation for |y| < sqrt(2) - 1, log(1 + y) beyond
_LOG1P_NUMERATOR = (
    4.5270000862445199635215e-5, 4.9854102823193375972212e-1, 6.5787325942061044846969e0,
    2.9911919328553073277375e1, 6.0949667980987787057556e1, 5.7112963590585538103336e1,
    2.0039553499201281259648e1)
_LOG1P_DENOMINATOR = (
    1.0, 1.5062909083469192043167e1, 8.3047565967967209469434e1, 2.2176239823732856465394e2,
    3.0909872225312059774938e2, 2.1642788614495947685003e2, 6.0118660497603843919306e1)
_LOG1P_SMALL = 0.41421356237309504880


def _log1p(y: np.ndarray) -> np.ndarray:
    """``log(1 + y)`` as XLA computes it in float64 (NumPy's own log1p differs by up to
    129 ulp near ``y = -0.4``, where the rational approximation is least accurate). In
    float32 both are within 2 ulp of the true value, and NumPy's is 30 passes cheaper."""
    if y.dtype == np.float32:
        return np.log1p(y)
    one = y.dtype.type(1.0)
    y2 = y * y
    ratio = _horner(_LOG1P_NUMERATOR, y) / _horner(_LOG1P_DENOMINATOR, y)
    small = y + (y.dtype.type(-0.5) * y2 + (y * y2) * ratio)
    return np.where(np.abs(y) < y.dtype.type(_LOG1P_SMALL), small, np.log(y + one))


# XLA's erf_inv (chlo.erf_inv): Giles' polynomials in a shifted w = -log1p(-x * x),
# highest degree first. float32: two branches.
_ERFINV32 = (
    (5.0, 2.5, (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)),
    (math.inf, 3.0, (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844,
                     0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)),
)
# float64: three branches.
_ERFINV64 = (
    (6.25, 3.125, (
        -3.6444120640178196996e-21, -1.685059138182016589e-19, 1.2858480715256400167e-18,
        1.115787767802518096e-17, -1.333171662854620906e-16, 2.0972767875968561637e-17,
        6.6376381343583238325e-15, -4.0545662729752068639e-14, -8.1519341976054721522e-14,
        2.6335093153082322977e-12, -1.2975133253453532498e-11, -5.4154120542946279317e-11,
        1.051212273321532285e-09, -4.1126339803469836976e-09, -2.9070369957882005086e-08,
        4.2347877827932403518e-07, -1.3654692000834678645e-06, -1.3882523362786468719e-05,
        0.0001867342080340571352, -0.00074070253416626697512, -0.0060336708714301490533,
        0.24015818242558961693, 1.6536545626831027356)),
    (16.0, 3.25, (
        2.2137376921775787049e-09, 9.0756561938885390979e-08, -2.7517406297064545428e-07,
        1.8239629214389227755e-08, 1.5027403968909827627e-06, -4.013867526981545969e-06,
        2.9234449089955446044e-06, 1.2475304481671778723e-05, -4.7318229009055733981e-05,
        6.8284851459573175448e-05, 2.4031110387097893999e-05, -0.0003550375203628474796,
        0.00095328937973738049703, -0.0016882755560235047313, 0.0024914420961078508066,
        -0.0037512085075692412107, 0.005370914553590063617, 1.0052589676941592334,
        3.0838856104922207635)),
    (math.inf, 5.0, (
        -2.7109920616438573243e-11, -2.5556418169965252055e-10, 1.5076572693500548083e-09,
        -3.7894654401267369937e-09, 7.6157012080783393804e-09, -1.4960026627149240478e-08,
        2.9147953450901080826e-08, -6.7711997758452339498e-08, 2.2900482228026654717e-07,
        -9.9298272942317002539e-07, 4.5260625972231537039e-06, -1.9681778105531670567e-05,
        7.5995277030017761139e-05, -0.00021503011930044477347, -0.00013871931833623122026,
        1.0103004648645343977, 4.8499064014085844221)),
)


def erfinv(x: np.ndarray) -> np.ndarray:
    """The inverse error function by XLA's float32 or float64 approximation (1-d ``x``)."""
    branches = _ERFINV32 if x.dtype == np.float32 else _ERFINV64
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = -_log1p(x * -x)
        p = np.empty_like(x)
        rest = np.ones(x.shape, bool)  # not yet in a branch; the last takes all (NaN too)
        for i, (bound, shift, coefficients) in enumerate(branches):
            take = rest if i == len(branches) - 1 else rest & (w < bound)
            if take.all():  # the common case for draws: |x| < 0.99 everywhere
                wt = w
            elif take.any():
                wt = w[take]
            else:
                continue
            # the central branch is a polynomial in w, the tails in sqrt(w)
            t = (wt if i == 0 else np.sqrt(wt)) - wt.dtype.type(shift)
            if wt is w:
                p = _horner(coefficients, t)
                break
            p[take] = _horner(coefficients, t)
            rest &= ~take
        out = p * x
        edge = np.abs(x) == 1.0  # erfinv(+-1) = +-inf
        if edge.any():
            out[edge] = x[edge] * np.inf
    return out


def normal(key: np.ndarray, shape: tuple, dtype: np.dtype, partitionable: bool) -> np.ndarray:
    """``jax.random.normal``: ``sqrt(2) * erfinv(u)``, ``u`` uniform in ``(-1, 1)``."""
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    floats = unit_floats(key, math.prod(shape), dtype, partitionable)
    # f * (1 - lo) = f * 2 is exact, so the unfused multiply-add equals XLA's fused one
    u = np.maximum(lo, floats * (dtype.type(1.0) - lo) + lo)
    return (dtype.type(np.sqrt(2)) * erfinv(u)).reshape(shape)


def permutation(key: np.ndarray, n: int, partitionable: bool) -> np.ndarray:
    """``jax.random.permutation(key, arange(n, dtype=int32))``: ``ceil(3 ln n / ln(2**32 - 1))``
    rounds, each a stable sort of the current order by fresh 32-bit random words (after
    enough rounds, ties between the words of two elements become vanishingly unlikely)."""
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(MASK32)))
    order = np.arange(n, dtype=np.int32)
    for _ in range(rounds):
        key, subkey = split(key, 2, partitionable)
        sort_keys = random_bits(subkey, 32, n, partitionable)
        order = order[_stable_argsort(sort_keys)]
    return order


def _stable_argsort(words: np.ndarray) -> np.ndarray:
    """``argsort(words, kind="stable")`` of uint32 ``words``: each word packed with its
    position into one uint64, then sorted; the packed values are all distinct, so any
    sort gives the stable order (6x faster than NumPy's stable argsort at 60 000 rows)."""
    packed = (words.astype(np.uint64) << np.uint64(32)) | np.arange(words.size, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64(MASK32)).astype(np.intp)
