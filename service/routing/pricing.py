"""What a model costs for a request: a configured price list, learned per-call parts, the prompt's input tokens.

A model's price for a request has a part per call (its `cost_per_request` plus its output tokens, learned from
observed calls) and a part per input token, known from the prompt's length before the call. Costs here are in
the zoo's configured unit ("raw"); the policy decides what they are normalised by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..config import ModelConfig

CHARS_PER_TOKEN = 4.0  # input tokens are estimated from the prompt's length, as the service charges them
OUTPUT_TOKENS_PRIOR = 256.0  # output tokens per call assumed for cost_per_output_token until calls are observed
TYPICAL_TOKENS_PRIOR = 256.0  # input tokens of a typical request, until requests say otherwise
TYPICAL_TOKENS_EMA = 0.01  # weight of each request in the running typical input length


def input_tokens(text: str) -> float:
    """The input tokens a prompt will be charged for, estimated as characters / CHARS_PER_TOKEN."""
    return len(text) / CHARS_PER_TOKEN


class Pricing:
    """Per-model cost estimates of one zoo. Memory only: the per-call part is relearned after a restart."""

    def __init__(self, models: Sequence[ModelConfig], *, cost_ema: float = 0.05) -> None:
        self.models = tuple(models)
        self.cost_ema = cost_ema
        self.cost_fixed = np.array([m.cost_per_request + m.cost_per_output_token * OUTPUT_TOKENS_PRIOR
                                    for m in self.models], dtype=np.float64)
        self.cost_input = np.array([m.cost_per_input_token for m in self.models], dtype=np.float64)
        self.typical_tokens = TYPICAL_TOKENS_PRIOR
        self.cost_raw = np.zeros(len(self.models))
        self.reprice()

    def reprice(self) -> None:
        """`cost_raw`: each model's cost estimate for a typical request (the running mean input length), in the
        zoo's unit; recomputed once per decided batch and per observed call, not on every read."""
        self.cost_raw = self.request_costs(np.array([self.typical_tokens]))[0]

    def request_costs(self, tokens: np.ndarray) -> np.ndarray:
        """[B, K] cost estimates, in the zoo's unit, of requests with these input tokens ([B])."""
        return np.maximum(self.cost_fixed[None, :] + self.cost_input[None, :] * tokens[:, None], 1e-12)

    def observe_tokens(self, tokens: Sequence[float | None]) -> None:
        """Move the typical input length towards the requests' own (None: a request of unknown length)."""
        for t in tokens:
            if t is not None:
                self.typical_tokens += TYPICAL_TOKENS_EMA * (t - self.typical_tokens)
        self.reprice()

    def observe_cost(self, model: int, cost_raw: float, tokens: float = 0.0) -> None:
        """Move the model's per-call cost estimate towards what a real call of `tokens` input tokens cost, less
        its input tokens' price (which is known)."""
        if cost_raw > 0 and math.isfinite(cost_raw):
            per_call = cost_raw - self.cost_input[model] * tokens
            self.cost_fixed[model] += self.cost_ema * (per_call - self.cost_fixed[model])
            self.reprice()

    def call_cost(self, model: int, tokens: float, output: str) -> float:
        """What one finished call cost by the price list: per request, per input token, per output token."""
        m = self.models[model]
        return m.cost_per_request + m.cost_per_input_token * tokens + m.cost_per_output_token * input_tokens(output)
