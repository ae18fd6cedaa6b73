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
        # min(score) as four interleaved chains: a compare's latency, not the loop, bounds one chain
        m0, m1, m2, m3 = np.inf, np.inf, np.inf, np.inf
        k = 0
        while k + 3 < n_models:
            s0, s1, s2, s3 = score[k], score[k + 1], score[k + 2], score[k + 3]
            m0 = s0 if s0 < m0 else m0
            m1 = s1 if s1 < m1 else m1
            m2 = s2 if s2 < m2 else m2
            m3 = s3 if s3 < m3 else m3
            k += 4
        while k < n_models:
            s0 = score[k]
            m0 = s0 if s0 < m0 else m0
            k += 1
        m0 = m1 if m1 < m0 else m0
        m2 = m3 if m3 < m2 else m2
        best = m2 if m2 < m0 else m0
        limit = best + TIE_RTOL * abs(best)
        choice, cheapest = -1, np.inf  # the cheapest, then first, available model within the tie band
        if limit < np.inf:  # a finite band: an unavailable model (+inf) is never in it, so avail is not read again
            for k in range(n_models):
                if score[k] <= limit:
                    c = cost[b, k]
                    if choice < 0 or c < cheapest:
                        choice, cheapest = k, c
        else:  # the band is +inf (every available score +inf, or the best so near the largest float that the band
            # overflows) or NaN: availability decides
            for k in range(n_models):
                if score[k] <= limit and avail[b, k] and (choice < 0 or cost[b, k] < cheapest):
                    choice, cheapest = k, cost[b, k]
        out[b] = choice
    return out
