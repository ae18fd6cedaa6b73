"""Timings of the kernels against their NumPy twins, and the JIT cost of a first and a second start.

    python -m bench.kernels_bench [--json OUT]      (or: python bench/kernels_bench.py)

Per-call times are the best of REPEATS runs (the least disturbed by other processes on a shared machine).
The JIT cost is measured in fresh interpreters: the first with an empty numba cache directory, the second
with the cache the first one wrote, each timing `import messplus.kernels` (which compiles or loads every
kernel: their signatures are explicit) plus `kernels.warmup()`, after numba itself is imported.
Numbers only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPEATS = 7
DECIDE_K = (2, 4, 16, 64)
DECIDE_B = (1, 64, 1024)


def _best_us(fn: Callable[[], object], number: int) -> float:
    """Best of REPEATS runs of `number` calls, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number * 1e6


def _decide_args(rng: np.random.Generator, B: int, K: int) -> tuple[np.ndarray, ...]:
    return (rng.random((B, K)), rng.random((B, K)), rng.random((B, K)) < 0.9,
            rng.random(B) * 5, np.full(B, 0.7), np.full(B, 0.1))


def bench_decide(rng: np.random.Generator) -> list[dict[str, float]]:
    from messplus.kernels import decide_batch
    from messplus.kernels import reference as ref

    out = []
    for K in DECIDE_K:
        for B in DECIDE_B:
            args = _decide_args(rng, B, K)
            number = max(50, 100_000 // (B * max(K, 8) // 8))
            jit = _best_us(lambda: decide_batch(*args), number)
            twin = _best_us(lambda: ref.decide_batch_np(*args), max(10, number // 8))
            out.append({"K": K, "B": B, "numba_us_per_call": jit, "numba_us_per_request": jit / B,
                        "numpy_us_per_call": twin, "numpy_us_per_request": twin / B, "speedup": twin / jit})
            print(f"decide_batch K={K:3d} B={B:5d}: {jit / B:8.4f} us/request | numpy {twin / B:8.4f} us/request"
                  f" | speed-up {twin / jit:6.1f}x", flush=True)
    return out


def bench_heads(rng: np.random.Generator, K: int = 5, D: int = 385) -> list[dict[str, float]]:
    from messplus.kernels import head_init, head_predict, head_update
    from messplus.kernels import reference as ref

    W, S = head_init(K, D, 1.0, np.zeros(K))
    X = rng.normal(size=(64, D)) / np.sqrt(D)
    X[:, -1] = 1.0
    for i in range(64):  # a few updates so S is not diagonal
        head_update(X[i], float(i % 2), np.int64(i % K), W, S)
    x, k = X[0].copy(), np.int64(3)
    out = []
    jit = _best_us(lambda: head_update(x, 0.7, k, W, S), 300)
    twin = _best_us(lambda: ref.head_update_np(x, 0.7, k, W, S), 100)
    out.append({"kernel": "head_update", "K": K, "B": 1, "D": D, "numba_us": jit, "numpy_us": twin})
    print(f"head_update K={K} D={D}: {jit:9.2f} us | numpy {twin:9.2f} us", flush=True)
    for B in (1, 8, 32, 64):
        Xb, p, v = X[:B].copy(), np.empty((B, K)), np.empty((B, K))
        jit = _best_us(lambda: head_predict(Xb, W, S, p, v), max(5, 200 // B))
        twin = _best_us(lambda: ref.head_predict_np(Xb, W, S, p, v), max(5, 100 // B))
        out.append({"kernel": "head_predict", "K": K, "B": B, "D": D, "numba_us": jit, "numpy_us": twin})
        print(f"head_predict B={B:3d} K={K} D={D}: {jit:9.1f} us | numpy {twin:9.1f} us", flush=True)
    return out


_JIT_PROBE = """
import json, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
import messplus.kernels as k
t2 = time.perf_counter()
k.warmup()
t3 = time.perf_counter()
print(json.dumps({"import_numba_s": t1 - t0, "import_kernels_s": t2 - t1, "warmup_s": t3 - t2,
                  "kernels_s": t3 - t1}))
"""


def jit_cost(starts: int = 2) -> dict[str, object]:
    """Compile cost in fresh interpreters: `starts` starts sharing one initially empty numba cache dir."""
    with tempfile.TemporaryDirectory(prefix="messplus-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(starts):
            done = subprocess.run([sys.executable, "-c", _JIT_PROBE], env=env, capture_output=True, text=True,
                                  check=True, timeout=300)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for i, r in enumerate(runs):
        print(f"start {i + 1} ({'empty cache' if i == 0 else 'cache from start 1'}): kernels "
              f"{r['kernels_s']:.3f} s (import {r['import_kernels_s']:.3f} + warm-up {r['warmup_s']:.3f}); "
              f"numba itself {r['import_numba_s']:.3f} s", flush=True)
    return {"first": runs[0], "second": runs[1:]}


def run(jit_starts: int = 3) -> dict[str, object]:
    from messplus.kernels import warmup

    warmup()
    rng = np.random.default_rng(0)
    return {"decide": bench_decide(rng), "heads": bench_heads(rng), "jit": jit_cost(jit_starts)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    res = run()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
