"""The MESS+ paper code's semantics (Woisetschläger et al., NeurIPS 2025), as a policy on the same router core.

Differences from messplus's `Policy`, each a hook: the tenant runs the paper's knobs (V ~ 0 on raw costs, explore
every model, no optimism, no safety margin, the queue floored at 0 and weighed linearly; the exploration
constant c stays the tenant's, 0.5 in the paper and in the replay's reference runs: `reference_tenant`); the
decisions weigh the queue Q alone (nothing for the requests still unlabelled); costs are the raw configured costs, not normalised (with V = 1e-6 the cost
term all but vanishes, so the policy is bang-bang: cheapest while Q = 0, most likely satisfying otherwise);
labels train the heads only on exploration steps (exploitation labels move the queue but are thrown away).
"""

from __future__ import annotations

from dataclasses import replace

from ..config import TenantConfig
from .policy import Policy
from .pricing import Pricing
from .tenant import Counters, TenantState

REFERENCE_V = 1e-6
REFERENCE_C = 0.5


def paper_knobs(tenant: TenantConfig) -> TenantConfig:
    """The tenant with the MESS+ paper's fixed knobs (its own c and seed kept)."""
    return replace(tenant, V=REFERENCE_V, explore_models=0, optimism=0.0, margin=0.0, reserve=0.0, confidence=0.0,
                   debt_gain=0.0, floor_window=0, caution=0)


def reference_tenant(tenant: TenantConfig) -> TenantConfig:
    """The tenant as the paper runs it: its fixed knobs and c = 0.5 (the replay's MESS+ reference)."""
    return replace(paper_knobs(tenant), c=REFERENCE_C)


class PaperPolicy(Policy):
    """MESS+ as published (the module docstring)."""

    name = "mess-paper"

    def tenant(self, cfg: TenantConfig) -> TenantConfig:
        return paper_knobs(cfg)

    def learns(self, exploration: bool) -> bool:
        return exploration

    def expected(self, st: TenantState) -> tuple[float, float]:
        return st.queue, 0.0  # the paper's queue moves on labels alone

    def cost_unit(self, pricing: Pricing) -> float:
        return 1.0

    def v_unit(self, counters: Counters, pricing: Pricing) -> float:
        return 1.0
