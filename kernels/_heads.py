"""Online Bayesian logistic-regression heads, one per zoo model, over D features (the last one constant 1).

Head k keeps a Gaussian N(W[k], S[k]) over its weights. For features x:

    predict:  z = x.W[k],  v = x' S[k] x,  p = sigmoid(z / sqrt(1 + pi v / 8))      (probit-moderated)
    update with a soft label y in [0, 1] (one assumed-density-filtering / online-Newton step):
              p = sigmoid(x.W[k]),  g = p - y,  h = max(p (1 - p), 1e-6),  Sx = S[k] x
              S[k] <- S[k] - h Sx Sx' / (1 + h x'Sx)          (Sherman-Morrison: (S^-1 + h x x')^-1)
              W[k] <- W[k] - g S[k] x                          (with the updated S[k])

Since S[k]_new x = Sx / (1 + h x'Sx), the mean step reuses Sx and costs O(D), not O(D^2). S[k] must be
symmetric, and is kept so exactly: entries (i, j) and (j, i) subtract the same product (Sx_i Sx_j) r. The
kernels lean on that: S x is formed as the sum of the rows x_j S[j, :] (a loop that vectorises), and
x'Sx reads only the upper triangle, half the memory traffic of the full form.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float64, int64, njit, void

MIN_CURVATURE = 1e-6
PROBIT_SCALE = math.pi / 8.0
ROWS = 4

# Reassociating the sums lets LLVM vectorise the dot products; only read-only reductions get it, never the
# in-place covariance update, whose exact symmetry depends on every entry being rounded the same way.
_REDUCE = {"reassoc", "contract"}
_X1 = float64[::1]
_X2 = float64[:, ::1]
_X3 = float64[:, :, ::1]


@njit(float64(float64), cache=True, nogil=True)
def _sigmoid(z):
    """1 / (1 + exp(-z)), evaluated through exp(-|z|) so it never overflows."""
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(float64(_X1, _X1), cache=True, nogil=True, fastmath=_REDUCE)
def _dot(a, b):
    """sum_i a[i] b[i]."""
    acc = 0.0
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(float64(_X1, _X2), cache=True, nogil=True, fastmath=_REDUCE)
def _quad(x, Sk):
    """x' S x = sum_j x_j (S_jj x_j + 2 sum_{i>j} S_ji x_i), reading the upper triangle of symmetric S."""
    acc = 0.0
    for j in range(x.shape[0]):
        acc += x[j] * (Sk[j, j] * x[j] + 2.0 * _dot(Sk[j, j + 1:], x[j + 1:]))
    return acc


@njit(void(_X2, _X2, int64, _X1), cache=True, nogil=True, fastmath=_REDUCE)
def _quad_rows(X, Sk, b, v):
    """v[r] = x' S x for x = X[min(b + r, B - 1)], r < ROWS: _quad on ROWS rows that share each load of S."""
    last = X.shape[0] - 1
    x0, x1, x2, x3 = X[min(b, last)], X[min(b + 1, last)], X[min(b + 2, last)], X[min(b + 3, last)]
    v[:] = 0.0
    for j in range(Sk.shape[0]):
        row, t0, t1, t2, t3 = Sk[j, j + 1:], x0[j + 1:], x1[j + 1:], x2[j + 1:], x3[j + 1:]
        a0 = a1 = a2 = a3 = 0.0
        for i in range(row.shape[0]):
            a0 += row[i] * t0[i]
            a1 += row[i] * t1[i]
            a2 += row[i] * t2[i]
            a3 += row[i] * t3[i]
        d = Sk[j, j]
        v[0] += x0[j] * (d * x0[j] + 2.0 * a0)
        v[1] += x1[j] * (d * x1[j] + 2.0 * a1)
        v[2] += x2[j] * (d * x2[j] + 2.0 * a2)
        v[3] += x3[j] * (d * x3[j] + 2.0 * a3)


@njit(void(_X2, _X2, _X3, _X2, _X2), cache=True, nogil=True)
def head_predict(X, W, S, p_out, var_out):
    """For every request b and head k: var_out = x_b' S[k] x_b, p_out = sigmoid(x_b.W[k] / sqrt(1 + pi v/8)).

    X[B, D], W[K, D], S[K, D, D] (symmetric; only its upper triangle is read), p_out[B, K], var_out[B, K].
    v is clipped at 0 inside the square root. Rows go ROWS at a time, so each S[k] is streamed B / ROWS times.
    """
    n_req, dim = X.shape
    n_heads = W.shape[0]
    if W.shape[1] != dim or S.shape[0] != n_heads or S.shape[1] != dim or S.shape[2] != dim:
        raise ValueError("head_predict: X, W and S disagree on K or D")
    if p_out.shape[0] != n_req or p_out.shape[1] != n_heads or var_out.shape != p_out.shape:
        raise ValueError("head_predict: p_out and var_out must be [B, K]")
    v = np.empty(ROWS)
    for k in range(n_heads):
        for b in range(0, n_req, ROWS):
            if b + 1 == n_req:
                v[0] = _quad(X[b], S[k])
            else:
                _quad_rows(X, S[k], b, v)
            for r in range(min(ROWS, n_req - b)):
                var_out[b + r, k] = v[r]
                p_out[b + r, k] = _sigmoid(_dot(X[b + r], W[k]) / math.sqrt(1.0 + PROBIT_SCALE * max(v[r], 0.0)))


@njit(void(_X2, _X1, _X1), cache=True, nogil=True)
def _sym_matvec(Sk, x, out):
    """out = S x for symmetric S, as the sum of the rows x_j S[j, :] (a loop that vectorises as it stands)."""
    out[:] = 0.0
    for j in range(x.shape[0]):
        row, xj = Sk[j], x[j]
        for i in range(out.shape[0]):
            out[i] += xj * row[i]


@njit(void(_X1, float64, int64, _X2, _X3), cache=True, nogil=True)
def head_update(x, y, k, W, S):
    """One ADF / online-Newton step of head k towards soft label y, in place (see the module docstring)."""
    dim = x.shape[0]
    if W.shape[1] != dim or S.shape[0] != W.shape[0] or S.shape[1] != dim or S.shape[2] != dim:
        raise ValueError("head_update: x, W and S disagree on K or D")
    if k < 0 or k >= W.shape[0]:
        raise IndexError("head_update: head index out of range")
    Wk, Sk = W[k], S[k]
    p = _sigmoid(_dot(x, Wk))
    h = max(p * (1.0 - p), MIN_CURVATURE)
    sx = np.empty(dim)
    _sym_matvec(Sk, x, sx)
    denom = 1.0 + h * _dot(x, sx)
    r = h / denom
    for i in range(dim):
        for j in range(dim):
            Sk[i, j] -= sx[i] * sx[j] * r
    step = (p - y) / denom
    for i in range(dim):
        Wk[i] -= sx[i] * step


@njit(void(_X2, _X1, int64[::1], _X2, _X3), cache=True, nogil=True)
def head_update_many(X, y, k, W, S):
    """head_update(X[i], y[i], k[i], W, S) for i = 0..N-1 in order; every k[i] is checked first."""
    if y.shape[0] != X.shape[0] or k.shape[0] != X.shape[0]:
        raise ValueError("head_update_many: X, y and k must have the same length")
    for i in range(k.shape[0]):
        if k[i] < 0 or k[i] >= W.shape[0]:
            raise IndexError("head_update_many: head index out of range")
    for i in range(X.shape[0]):
        head_update(X[i], y[i], k[i], W, S)


def head_init(K: int, D: int, prior_var: float, bias_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prior heads: W[K, D] zero but W[:, D-1] = bias_logit (the constant feature), S[k] = prior_var * I_D."""
    bias = np.asarray(bias_logit, dtype=np.float64)
    if K < 1 or D < 1 or bias.shape != (K,):
        raise ValueError("head_init: need K >= 1, D >= 1 and bias_logit of shape (K,)")
    if not (math.isfinite(prior_var) and prior_var > 0.0):
        raise ValueError("head_init: prior_var must be finite and positive")
    W = np.zeros((K, D))
    W[:, D - 1] = bias
    S = np.zeros((K, D, D))
    S[:, np.arange(D), np.arange(D)] = prior_var
    return W, S
