"""The prompts every benchmark sends: a routing trace shipped with the project, in one seeded shuffled order.

The load generator, the predictor-alone ceiling and the GPU script all draw from this one sequence, so their
numbers are over the same prompt mix (the trace's length mix decides the encoder's cost: RouterBench's ARC and
Winogrande rows carry few-shot blocks and reach the 256-token cap, its MBPP rows are ~20 tokens).
"""

from __future__ import annotations

import random
from pathlib import Path

from messplus.service.demo.repository import DEFAULT_TRACE
from messplus.service.trace import load_trace

SEED = 0


def trace_prompts(path: str | Path = DEFAULT_TRACE, *, seed: int = SEED, limit: int = 0) -> list[str]:
    """The trace's distinct prompts, shuffled with `seed` (first `limit` of them when limit > 0)."""
    prompts = sorted(set(load_trace(path).prompts))
    random.Random(seed).shuffle(prompts)
    return prompts[:limit] if limit > 0 else prompts
