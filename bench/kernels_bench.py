"""Timings of the kernels against their NumPy twins: `python bench/kernels_bench.py`.

Prints the best-of-repeats time per call and per request. Numbers only; nothing here is asserted.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

from messplus.kernels import decide_batch, head_init, head_predict, head_update, warmup
from messplus.kernels import reference as ref

REPEATS = 7


def _best_us(fn: Callable[[], object], number: int) -> float:
    """Best of REPEATS runs of `number` calls, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number * 1e6


def _decide_args(rng: np.random.Generator, B: int, K: int) -> tuple[np.ndarray, ...]:
    return (rng.random((B, K)), rng.random(K), rng.random((B, K)) < 0.9,
            rng.random(B) * 5, np.full(B, 0.7), np.full(B, 0.1))


def bench_decide(rng: np.random.Generator, K: int = 16) -> None:
    for B in (1, 64, 256, 1024):
        args = _decide_args(rng, B, K)
        number = max(200, 200_000 // B)
        jit = _best_us(lambda: decide_batch(*args), number)
        twin = _best_us(lambda: ref.decide_batch_np(*args), number // 4)
        print(f"decide_batch K={K} B={B:5d}: {jit:9.2f} us/call {jit / B:7.3f} us/req | "
              f"numpy {twin:9.2f} us/call {twin / B:7.3f} us/req | speed-up {twin / jit:6.1f}x")


def bench_heads(rng: np.random.Generator, K: int = 11, D: int = 385) -> None:
    W, S = head_init(K, D, 1.0, np.zeros(K))
    X = rng.normal(size=(64, D)) / np.sqrt(D)
    X[:, -1] = 1.0
    for i in range(64):  # a few updates so S is not diagonal
        head_update(X[i], float(i % 2), np.int64(i % K), W, S)
    x, k = X[0].copy(), np.int64(3)
    print(f"head_update D={D}: {_best_us(lambda: head_update(x, 0.7, k, W, S), 300):9.2f} us/call | "
          f"numpy {_best_us(lambda: ref.head_update_np(x, 0.7, k, W, S), 100):9.2f} us/call")
    for B in (1, 32):
        Xb, p, v = X[:B].copy(), np.empty((B, K)), np.empty((B, K))
        jit = _best_us(lambda: head_predict(Xb, W, S, p, v), 30)
        twin = _best_us(lambda: ref.head_predict_np(Xb, W, S, p, v), 5)
        print(f"head_predict B={B} K={K} D={D}: {jit:9.2f} us/call | numpy {twin:9.2f} us/call")


def main() -> None:
    print(f"warmup: {warmup() * 1e3:.2f} ms")
    rng = np.random.default_rng(0)
    bench_decide(rng)
    bench_heads(rng)


if __name__ == "__main__":
    main()
