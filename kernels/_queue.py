"""The MESS+ virtual queue: how far behind its satisfaction target a tenant is.

One step with target alpha and observed satisfaction s is

    Q <- max(0, Q + alpha - s),

so Q grows while the tenant is served below its target and drains, never below zero, while above it.
"""

from __future__ import annotations

from numba import float64, int64, njit, void


@njit(float64(float64, float64, float64), cache=True, nogil=True)
def queue_update(q, alpha, s):
    """max(0, q + alpha - s)."""
    return max(0.0, q + alpha - s)


@njit(void(float64[::1], int64[::1], float64[::1], float64[::1]), cache=True, nogil=True)
def queue_update_many(q, tenant, alpha, s):
    """For i = 0..M-1 in order: q[t] <- max(0, q[t] + alpha[t] - s[i]) with t = tenant[i]; in place.

    q[N] and alpha[N] are per tenant; tenant[M] and s[M] per observation. Every index is checked before
    anything is written, so a bad index leaves q untouched.
    """
    if alpha.shape[0] != q.shape[0]:
        raise ValueError("queue_update_many: q and alpha must have the same length")
    if s.shape[0] != tenant.shape[0]:
        raise ValueError("queue_update_many: tenant and s must have the same length")
    for i in range(tenant.shape[0]):
        if tenant[i] < 0 or tenant[i] >= q.shape[0]:
            raise IndexError("queue_update_many: tenant index out of range")
    for i in range(tenant.shape[0]):
        t = tenant[i]
        q[t] = queue_update(q[t], alpha[t], s[i])
