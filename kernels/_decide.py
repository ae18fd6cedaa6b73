"""The MESS+ routing decision for a batch of requests.

For request b and zoo model k the drift-plus-penalty score is

    score[b, k] = V[b] * cost[b, k] + queue[b] * (alpha[b] - p_hat[b, k])

and the request goes to the available model with the smallest score. Scores within a relative tolerance of the
row minimum m count as ties,

    candidates(b) = {k : avail[b, k] and score[b, k] <= m + TIE_RTOL * |m|},

which are broken by the lower cost, then the lower index. The cost is per request: what model k would
charge for request b (a price per call plus a price per input token). A row with no available model gets -1.
NaN scores are never chosen.
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, njit

TIE_RTOL = 1e-12

_SIG = int64[::1](float64[:, ::1], float64[:, ::1], boolean[:, ::1], float64[::1], float64[::1], float64[::1])


@njit(_SIG, cache=True, nogil=True)
def decide_batch(p_hat, cost, avail, queue, alpha, V):
    """Chosen model per request: argmin_k over avail[b] of V*cost[b, k] + queue*(alpha - p_hat[b, k]); -1 if none.

    p_hat[B, K], cost[B, K], avail[B, K] (bool), queue[B], alpha[B], V[B]; all C-contiguous. The row body is
    one piece on purpose: moving its parts into helper functions cost 15-20% in bench/kernels_bench.py.
    """
    n_req, n_models = p_hat.shape
    if cost.shape[0] != n_req or cost.shape[1] != n_models or avail.shape[0] != n_req or avail.shape[1] != n_models:
        raise ValueError("decide_batch: p_hat, avail and cost disagree on B or K")
    if queue.shape[0] != n_req or alpha.shape[0] != n_req or V.shape[0] != n_req:
        raise ValueError("decide_batch: queue, alpha and V must have length B")
    out = np.empty(n_req, np.int64)
    score = np.empty(n_models)
    for b in range(n_req):
        vb, qb, ab = V[b], queue[b], alpha[b]  # locals, so the score loop below does not reload them
        for k in range(n_models):  # branch-free, so it vectorises; +inf where unavailable
            s = vb * cost[b, k] + qb * (ab - p_hat[b, k])
            score[k] = s if avail[b, k] else np.inf
        even, odd = np.inf, np.inf  # min(score) as two interleaved chains, which halves the compare latency
        for k in range(0, n_models - 1, 2):
            s0, s1 = score[k], score[k + 1]
            even = s0 if s0 < even else even
            odd = s1 if s1 < odd else odd
        if n_models % 2 == 1:
            s0 = score[n_models - 1]
            even = s0 if s0 < even else even
        best = odd if odd < even else even
        limit = best + TIE_RTOL * abs(best)
        choice, cheapest = -1, np.inf  # the cheapest, then first, available model within the tie band
        for k in range(n_models):
            if score[k] <= limit and avail[b, k] and (choice < 0 or cost[b, k] < cheapest):
                choice, cheapest = k, cost[b, k]
        out[b] = choice
    return out
