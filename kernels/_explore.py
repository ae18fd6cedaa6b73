"""Exploration: with probability min(1, c / t^(1/4)) request t of a tenant is sent to explore.

The coin for tenant `stream` at its request t is a counter-based uniform: a pure function of (seed, stream, t),
so the draw is reproducible whatever the order or the thread in which requests are handled.

    h = mix(seed ^ K0);  h = mix(h ^ stream ^ K1);  h = mix(h ^ t ^ K2);  u = (h >> 11) * 2^-53  in [0, 1)

where mix is the splitmix64 finaliser (a bijection on 64-bit words) and all arithmetic is modulo 2^64.
The 64-bit products are formed from 32-bit halves, so that the same code is exact, and free of numpy overflow
warnings, when it runs as plain Python under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, njit, uint64

MIX_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_MUL2 = np.uint64(0x94D049BB133111EB)
KEY_SEED = np.uint64(0x9E3779B97F4A7C15)
KEY_STREAM = np.uint64(0xD1B54A32D192ED03)
KEY_T = np.uint64(0x8CB92BA72F3D8DD7)
TWO_POW_M53 = 2.0**-53

_LOW32 = np.uint64(0xFFFFFFFF)
_S11 = np.uint64(11)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


@njit(uint64(uint64, uint64), cache=True, nogil=True)
def _mul64(a, b):
    """a * b mod 2^64 from 32-bit halves (no intermediate exceeds 2^64)."""
    a_lo, a_hi = a & _LOW32, a >> _S32
    b_lo, b_hi = b & _LOW32, b >> _S32
    low = a_lo * b_lo
    high = ((a_hi * b_lo) & _LOW32) + ((a_lo * b_hi) & _LOW32) + (low >> _S32)
    return ((high & _LOW32) << _S32) | (low & _LOW32)


@njit(uint64(uint64), cache=True, nogil=True)
def _mix64(z):
    """splitmix64 finaliser: z ^= z>>30; z *= M1; z ^= z>>27; z *= M2; z ^= z>>31 (mod 2^64)."""
    z = _mul64(z ^ (z >> _S30), MIX_MUL1)
    z = _mul64(z ^ (z >> _S27), MIX_MUL2)
    return z ^ (z >> _S31)


@njit(float64(uint64, uint64, uint64), cache=True, nogil=True)
def counter_uniform(seed, stream, t):
    """Uniform in [0, 1) determined by (seed, stream, t) alone; 53 random mantissa bits."""
    h = _mix64(np.uint64(seed) ^ KEY_SEED)
    h = _mix64(h ^ np.uint64(stream) ^ KEY_STREAM)
    h = _mix64(h ^ np.uint64(t) ^ KEY_T)
    return np.float64(h >> _S11) * TWO_POW_M53


@njit(float64(int64, float64), cache=True, nogil=True)
def explore_probability(t, c):
    """min(1, c / t^(1/4)), clipped below at 0; t < 1 is read as 1.

    The fourth root is sqrt(sqrt(t)): both roots are correctly rounded, so the value is bit-identical
    everywhere and non-increasing in t.
    """
    root = np.sqrt(np.sqrt(np.float64(max(t, 1))))
    return max(0.0, min(1.0, c / root))


@njit(boolean[::1](uint64, uint64[::1], int64[::1], float64[::1]), cache=True, nogil=True)
def draw_explore_batch(seed, stream, t, c):
    """explore[b] = counter_uniform(seed, stream[b], t[b]) < explore_probability(t[b], c[b])."""
    if t.shape[0] != stream.shape[0] or c.shape[0] != stream.shape[0]:
        raise ValueError("draw_explore_batch: stream, t and c must have the same length")
    out = np.empty(stream.shape[0], np.bool_)
    for b in range(stream.shape[0]):
        u = counter_uniform(seed, stream[b], np.uint64(t[b]))
        out[b] = u < explore_probability(t[b], c[b])
    return out
