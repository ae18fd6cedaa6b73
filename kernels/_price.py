"""The price of satisfaction that a window of recent requests says meets a target.

Request r of the window goes to the available model with the smallest `cost[r, k] - lam * q[r, k]` (ties: the
lower cost, then the lower index), the same decision as `decide_batch` with queue / V = lam. The window's
predicted satisfaction at lam is the mean of `p[r, choice]` over its rows. `price_for_target` bisects on log lam
for a price that reaches the target: what satisfaction costs, per unit, on the requests the tenant actually
sends. Where q ranks each row's models as p does (q = p), the satisfaction grows with lam and the bisection
finds the smallest such price; where they differ (the router's q is an optimistic bound, p the mean) it can dip
as lam grows, and the price found reaches the target but may not be the smallest that does.
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, njit

PRICE_LO = 1e-6  # below this the decisions are those of lam = 0
PRICE_STEPS = 48  # bisection steps on log lam: the bracket shrinks to a ratio of (hi / lo)^(2^-48)

_ARR = float64[:, ::1]
_SAT_SIG = float64(_ARR, _ARR, _ARR, boolean[:, ::1], float64)


@njit(_SAT_SIG, cache=True, nogil=True)
def window_satisfaction(q, p, cost, avail, lam):
    """Mean of p[r, choice_r] over the rows with an available model, choice_r = argmin_k cost - lam * q; NaN
    when no row has one."""
    n_rows, n_models = q.shape
    if p.shape[0] != n_rows or p.shape[1] != n_models or cost.shape[0] != n_rows or cost.shape[1] != n_models:
        raise ValueError("window_satisfaction: q, p and cost disagree on W or K")
    if avail.shape[0] != n_rows or avail.shape[1] != n_models:
        raise ValueError("window_satisfaction: avail disagrees with q on W or K")
    total, rows = 0.0, 0
    for r in range(n_rows):
        choice, best, cheapest = -1, np.inf, np.inf
        for k in range(n_models):
            if not avail[r, k]:
                continue
            s = cost[r, k] - lam * q[r, k]
            if s < best or (s == best and cost[r, k] < cheapest):
                choice, best, cheapest = k, s, cost[r, k]
        if choice >= 0:
            total += p[r, choice]
            rows += 1
    return total / rows if rows else np.nan


@njit(float64(_ARR, _ARR, _ARR, boolean[:, ::1], float64, float64), cache=True, nogil=True)
def price_for_target(q, p, cost, avail, target, hi):
    """A lam in [0, hi] whose window satisfaction reaches `target`, by bisection between the largest tried that
    does not and the smallest that does (the smallest of all when satisfaction grows with lam: see the module
    docstring); 0 when lam = 0 reaches it; +inf when even `hi` does not (or no row has an available model)."""
    if not hi > PRICE_LO:
        raise ValueError("price_for_target: hi must be > PRICE_LO")
    top = window_satisfaction(q, p, cost, avail, hi)
    if not top >= target:
        return np.inf
    if window_satisfaction(q, p, cost, avail, 0.0) >= target:
        return 0.0
    lo, up = np.log(PRICE_LO), np.log(hi)
    for _ in range(PRICE_STEPS):
        mid = 0.5 * (lo + up)
        if window_satisfaction(q, p, cost, avail, np.exp(mid)) >= target:
            up = mid
        else:
            lo = mid
    return float(np.exp(up))
