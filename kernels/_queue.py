"""The virtual queue: how far behind its satisfaction target a tenant is.

One step with target a (alpha, plus the router's decaying safety margin), observed satisfaction s and floor f is

    Q <- max(f, Q + a - s).

With f = 0 this is the MESS+ queue (the Lindley recursion): Q grows while the tenant is served below target and
drains, never below zero, while above it; the surplus of a good stretch is lost at the floor. With f < 0 (down
to -inf) the queue keeps that surplus as a reserve of up to -f, which later requests may spend.
"""

from __future__ import annotations

import math

from numba import float64, int64, njit, void


@njit(float64(float64, float64, float64, float64), cache=True, nogil=True)
def _step(q, target, s, floor):
    """max(floor, q + target - s), its inputs checked by the caller."""
    return max(floor, q + target - s)


@njit(float64(float64, float64, float64, float64), cache=True, nogil=True)
def queue_update(q, target, s, floor):
    """max(floor, q + target - s). A non-finite q, target or s raises ValueError: max() takes a NaN step to the
    floor, which with an unlimited reserve is -inf, a queue that would never ask for satisfaction again."""
    if not (math.isfinite(q) and math.isfinite(target) and math.isfinite(s)):
        raise ValueError("queue_update: q, target and s must be finite")
    return _step(q, target, s, floor)


@njit(void(float64[::1], int64[::1], float64[::1], float64[::1], float64[::1]), cache=True, nogil=True)
def queue_update_many(q, tenant, target, s, floor):
    """For i = 0..M-1 in order: q[t] <- max(floor[t], q[t] + target[i] - s[i]) with t = tenant[i]; in place.

    q[N] and floor[N] are per tenant; tenant[M], target[M] and s[M] per observation. Every index, q, target and
    s is checked once, before anything is written, so a bad one leaves q untouched (IndexError; ValueError for a
    non-finite one, as in queue_update).
    """
    if floor.shape[0] != q.shape[0]:
        raise ValueError("queue_update_many: q and floor must have the same length")
    if s.shape[0] != tenant.shape[0] or target.shape[0] != tenant.shape[0]:
        raise ValueError("queue_update_many: tenant, target and s must have the same length")
    for i in range(tenant.shape[0]):
        if tenant[i] < 0 or tenant[i] >= q.shape[0]:
            raise IndexError("queue_update_many: tenant index out of range")
        if not (math.isfinite(target[i]) and math.isfinite(s[i])):
            raise ValueError("queue_update_many: every q, target and s must be finite")
    for t in range(q.shape[0]):
        if not math.isfinite(q[t]):
            raise ValueError("queue_update_many: every q, target and s must be finite")
    for i in range(tenant.shape[0]):
        t = tenant[i]
        q[t] = _step(q[t], target[i], s[i], floor[t])
