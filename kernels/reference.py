"""Vectorised NumPy twins of the jitted kernels, `<name>_np`, for the tests to compare against.

Each twin takes the same arguments and has the same effect as its kernel, but is written as whole-array NumPy
(never as a copy of the kernel's loop), so that an agreement between the two is evidence and not an echo.
The head updates are sequential by nature (each step depends on the last), so their twins loop over steps and
vectorise each step.
"""

from __future__ import annotations

import numpy as np

from ._decide import TIE_RTOL
from ._explore import KEY_SEED, KEY_STREAM, KEY_T, MIX_MUL1, MIX_MUL2, TWO_POW_M53
from ._heads import MIN_CURVATURE, PROBIT_SCALE


# ---------------------------------------------------------------------------------------------- decide
def decide_batch_np(p_hat, cost, avail, queue, alpha, V):
    """argmin over available k of V*cost + queue*(alpha - p_hat), ties by cost then index; -1 if none."""
    score = V[:, None] * cost + queue[:, None] * (alpha[:, None] - p_hat)
    best = np.fmin.reduce(np.where(avail, score, np.inf), axis=1, initial=np.inf)
    cand = avail & (score <= (best + TIE_RTOL * np.abs(best))[:, None])
    cheapest = np.where(cand, cost, np.inf).min(axis=1, initial=np.inf)
    first = cand & (cost == cheapest[:, None])
    return np.where(first.any(axis=1), first.argmax(axis=1), -1).astype(np.int64)


# ----------------------------------------------------------------------------------------------- queue
def queue_update_np(q, target, s, floor):
    """max(floor, q + target - s), elementwise; ValueError where q, target or s is not finite (as queue_update)."""
    if not (np.isfinite(q).all() and np.isfinite(target).all() and np.isfinite(s).all()):
        raise ValueError("queue_update: q, target and s must be finite")
    return np.maximum(floor, q + target - s)


def queue_update_many_np(q, tenant, target, s, floor):
    """The same in-place result as queue_update_many, from the closed form of the Lindley recursion.

    Per tenant, with r = q - floor the step is r <- max(0, r + d) with d_j = target_j - s_j; with partial sums
    S_n = d_1 + ... + d_n it unrolls to r_n = S_n - min(-r_0, S_1, ..., S_n). A floor of -inf never binds:
    q_n = q_0 + S_n.
    """
    if not (np.isfinite(q).all() and np.isfinite(target).all() and np.isfinite(s).all()):
        raise ValueError("queue_update_many: every q, target and s must be finite")
    if tenant.size == 0:
        return
    order = np.argsort(tenant, kind="stable")
    who = tenant[order]
    steps = target[order] - s[order]
    starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
    ends = np.r_[starts[1:], who.size] - 1
    totals = np.cumsum(steps)
    before = np.r_[0.0, totals][starts]
    partial = totals - np.repeat(before, ends - starts + 1)
    t0 = who[starts]
    f = floor[t0]
    free = np.isinf(f)
    r0 = np.where(free, 0.0, q[t0] - np.where(free, 0.0, f))
    lowest = np.minimum(-r0, np.minimum.reduceat(partial, starts))
    bound = np.where(free, 0.0, f)
    # np.maximum: the closed form may round a hair below the floor
    q[t0] = np.where(free, q[t0] + partial[ends], np.maximum(bound, bound + partial[ends] - lowest))


# ------------------------------------------------------------------------------------------ exploration
def explore_probability_np(t, c):
    """min(1, c / t^(1/4)) clipped below at 0, with t < 1 read as 1 and t^(1/4) = sqrt(sqrt(t))."""
    root = np.sqrt(np.sqrt(np.maximum(np.asarray(t, dtype=np.int64), 1).astype(np.float64)))
    return np.clip(np.asarray(c, dtype=np.float64) / root, 0.0, 1.0)


def _mix64_np(z):
    """splitmix64 finaliser on uint64 arrays (wrapping products)."""
    z = (z ^ (z >> np.uint64(30))) * MIX_MUL1
    z = (z ^ (z >> np.uint64(27))) * MIX_MUL2
    return z ^ (z >> np.uint64(31))


def counter_uniform_np(seed, stream, t):
    """The counter-based uniform of (seed, stream, t), broadcast over arrays; bit-identical to the kernel."""
    seed, stream, t = (np.asarray(a, dtype=np.uint64) for a in (seed, stream, t))
    with np.errstate(over="ignore"):  # uint64 products wrap modulo 2^64 by design
        h = _mix64_np(seed ^ KEY_SEED)
        h = _mix64_np(h ^ stream ^ KEY_STREAM)
        h = _mix64_np(h ^ t ^ KEY_T)
    return (h >> np.uint64(11)).astype(np.float64) * TWO_POW_M53


def draw_explore_batch_np(seed, stream, t, c):
    """counter_uniform(seed, stream, t) < explore_probability(t, c), elementwise."""
    u = counter_uniform_np(seed, stream, np.asarray(t, dtype=np.int64).astype(np.uint64))
    return np.asarray(u < explore_probability_np(t, c), dtype=np.bool_).reshape(np.shape(stream))


# ----------------------------------------------------------------------------------------------- heads
def sigmoid_np(z):
    """1 / (1 + exp(-z)) through exp(-|z|)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def head_predict_np(X, W, S, p_out, var_out):
    """var_out = x' S[k] x and p_out = sigmoid(x.W[k] / sqrt(1 + pi v / 8)) for all (b, k), in place."""
    v = np.einsum("kbi,bi->bk", X @ S, X)
    z = X @ W.T
    var_out[...] = v
    p_out[...] = sigmoid_np(z / np.sqrt(1.0 + PROBIT_SCALE * np.maximum(v, 0.0)))


def head_update_np(x, y, k, W, S):
    """One ADF step, written as the textbook formulas (S x recomputed with the updated S), in place."""
    p = sigmoid_np(x @ W[k])
    h = max(p * (1.0 - p), MIN_CURVATURE)
    sx = S[k] @ x
    S[k] -= np.outer(sx, sx) * (h / (1.0 + h * (x @ sx)))
    W[k] -= (S[k] @ x) * (p - y)


def head_update_many_np(X, y, k, W, S):
    """head_update_np for each row in order (each step depends on the previous one)."""
    for i in range(X.shape[0]):
        head_update_np(X[i], y[i], k[i], W, S)


# ------------------------------------------------------------------------------------------ price floor
def window_satisfaction_np(q, p, cost, avail, lam):
    """Mean p of each row's choice argmin cost - lam * q (ties: lower cost, then lower index) over the rows with
    an available model; NaN if none has one."""
    score = cost - lam * q
    score = np.where(avail & ~np.isnan(score), score, np.inf)  # a NaN rating rules its model out, as in the kernel
    best = score.min(axis=1, initial=np.inf)
    cand = avail & (score == best[:, None])
    cheapest = np.where(cand, cost, np.inf).min(axis=1, initial=np.inf)
    first = cand & (cost == cheapest[:, None])
    rows = first.any(axis=1)
    if not rows.any():
        return np.nan
    choice = first.argmax(axis=1)
    return float(p[rows, choice[rows]].mean())


def price_for_target_np(q, p, cost, avail, target, hi):
    """The exact infimum of the prices in [0, hi] whose window satisfaction reaches `target` (inf if none does):
    the satisfaction only changes where two models' scores cross, at lam = (cost_j - cost_k) / (q_j - q_k), so
    the answer is 0 or one of those crossings, the first past which the target is reached. The kernel's
    bisection equals it where the satisfaction grows with lam (q = p) and is never below it."""
    if not window_satisfaction_np(q, p, cost, avail, hi) >= target:
        return np.inf
    if window_satisfaction_np(q, p, cost, avail, 0.0) >= target:
        return 0.0
    dq = q[:, :, None] - q[:, None, :]
    dc = cost[:, :, None] - cost[:, None, :]
    both = avail[:, :, None] & avail[:, None, :] & (dq != 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cross = np.where(both, dc / np.where(dq != 0, dq, 1.0), np.nan)
    points = np.unique(cross[np.isfinite(cross) & (cross >= 0) & (cross < hi)])
    for lam in points:  # S is constant between crossings: test just past each (past 0: a price below the kernel's)
        if window_satisfaction_np(q, p, cost, avail, max(float(lam) * (1 + 1e-9), 1e-7)) >= target:
            return float(lam)
    return float(hi)
