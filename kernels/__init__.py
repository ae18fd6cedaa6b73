"""Numerical kernels of the MESS+ router: pure functions over NumPy arrays and scalars.

Every kernel is `numba.njit(cache=True, nogil=True)` with an explicit signature, so it is compiled (or loaded
from numba's cache) when this package is imported, and releases the GIL while it runs. Arrays must match the
signature exactly: C-contiguous float64, int64 indices, bool masks, uint64 counters; anything else is a
TypeError ("No matching definition"). Shape mismatches raise ValueError and bad indices IndexError, before
anything is written. `messplus.kernels.reference` holds the vectorised NumPy twin of each kernel.

    decide_batch(p_hat[B,K], cost[B,K], avail[B,K] bool, queue[B], alpha[B], V[B]) -> int64[B]
    queue_update(q, target, s, floor) -> float
    queue_update_many(q[N], tenant[M] int64, target[M], s[M], floor[N]) -> None  (q in place)
    explore_probability(t: int64, c) -> float
    counter_uniform(seed: uint64, stream: uint64, t: uint64) -> float
    draw_explore_batch(seed: uint64, stream[B] uint64, t[B] int64, c[B]) -> bool[B]
    head_predict(X[B,D], W[K,D], S[K,D,D], p_out[B,K], var_out[B,K]) -> None     (outputs in place)
    head_update(x[D], y, k: int64, W[K,D], S[K,D,D]) -> None                      (W, S in place)
    head_update_many(X[N,D], y[N], k[N] int64, W, S) -> None                      (W, S in place)
    head_init(K, D, prior_var, bias_logit[K]) -> (W, S)                           (plain NumPy)
    window_satisfaction(q[W,K], p[W,K], cost[W,K], avail[W,K] bool, lam) -> float
    price_for_target(q[W,K], p[W,K], cost[W,K], avail[W,K] bool, target, hi) -> float  (inf: unreachable)
    warmup() -> float                                                             (seconds taken)
"""

from ._decide import decide_batch
from ._explore import counter_uniform, draw_explore_batch, explore_probability
from ._heads import head_init, head_predict, head_update, head_update_many
from ._price import price_for_target, window_satisfaction
from ._queue import queue_update, queue_update_many
from ._warmup import warmup

__all__ = [
    "counter_uniform",
    "decide_batch",
    "draw_explore_batch",
    "explore_probability",
    "head_init",
    "head_predict",
    "head_update",
    "head_update_many",
    "price_for_target",
    "queue_update",
    "queue_update_many",
    "warmup",
    "window_satisfaction",
]
