"""The values that cross the routing core's boundary: a request to route, the decision, feedback's result."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a caller's request id: 1-128 printable ASCII, no spaces

EXPLORE_DEFAULT, EXPLORE_NEVER, EXPLORE_ALWAYS = 0, 1, 2


class TextEncoder(Protocol):
    """Prompt texts -> [B, dim] float32 embeddings (encoder.Encoder, or a test's stand-in)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True, kw_only=True)
class RouteItem:
    tenant: str
    request_id: str = ""
    allowed: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    exploration: int = EXPLORE_DEFAULT
    input_tokens: float | None = None  # the prompt's input tokens (pricing.input_tokens()); None: a typical request


@dataclass(frozen=True, kw_only=True)
class Decision:
    request_id: str
    tenant: str
    t: int
    served: int
    exploration: bool
    invoked: tuple[int, ...]
    choice: int  # the exploit decision (== served unless exploring)
    p_hat: np.ndarray
    var: np.ndarray
    available: np.ndarray
    queue: float
    alpha: float
    cost: float
    cost_raw: float
    model_costs: np.ndarray  # [K] what each model would cost for this request, in the zoo's unit (raw)

    def fallback_order(self) -> list[int]:
        """The models to try in turn when serving: the served one, then the other available ones by p_hat."""
        rest = np.argsort(-self.p_hat, kind="stable")
        return [self.served, *[int(k) for k in rest if self.available[k] and k != self.served]]


@dataclass(frozen=True)
class Routed:
    """A decision with the prompt embedding it was made from (stored with the request, for learning)."""

    decision: Decision
    embedding: np.ndarray


@dataclass(frozen=True, kw_only=True)
class FeedbackResult:
    request_id: str
    applied: int
    duplicate: int
    queue: float
    queue_updated: bool


@dataclass
class Pending:
    """What feedback needs of a routed request: in memory for recent ones, rebuilt from the store for older."""

    tenant: str
    served: int
    invoked: tuple[int, ...]
    embedding: np.ndarray
    exploration: bool = False
