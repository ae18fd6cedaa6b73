"""Start-up warm-up: run every jitted kernel once on tiny inputs.

Importing the kernels compiles them (their signatures are explicit) or loads them from numba's on-disk cache;
the first call still pays for linking and first-touch costs, which warmup() moves to start-up.
"""

from __future__ import annotations

import time

import numpy as np

from ._decide import decide_batch
from ._explore import counter_uniform, draw_explore_batch, explore_probability
from ._heads import head_init, head_predict, head_update, head_update_many
from ._price import price_for_target
from ._queue import queue_update, queue_update_many


def _warm_heads() -> None:
    W, S = head_init(2, 3, 1.0, np.zeros(2))
    X = np.ones((1, 3))
    p, v = np.empty((1, 2)), np.empty((1, 2))
    head_predict(X, W, S, p, v)
    head_update(X[0], 1.0, np.int64(0), W, S)
    head_update_many(X, np.ones(1), np.zeros(1, np.int64), W, S)


def _warm_routing() -> None:
    ones, zero = np.ones(1), np.zeros(1, np.int64)
    decide_batch(np.full((1, 1), 0.5), np.ones((1, 1)), np.ones((1, 1), np.bool_), ones, ones, ones)
    queue_update(0.0, 0.5, 1.0, 0.0)
    price_for_target(np.full((1, 1), 0.5), np.full((1, 1), 0.5), np.ones((1, 1)), np.ones((1, 1), np.bool_), 0.5, 1.0)
    queue_update_many(np.zeros(1), zero, ones, ones, np.zeros(1))
    explore_probability(np.int64(1), 1.0)
    counter_uniform(np.uint64(0), np.uint64(0), np.uint64(1))
    draw_explore_batch(np.uint64(0), np.zeros(1, np.uint64), np.ones(1, np.int64), ones)


def warmup() -> float:
    """Call each jitted kernel once with tiny inputs; return the seconds it took."""
    start = time.perf_counter()
    _warm_routing()
    _warm_heads()
    return time.perf_counter() - start
