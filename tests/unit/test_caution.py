"""A tenant's `caution`: for its first N labels the price floor's target is raised by one standard error, and
where no mix reaches it the request goes to the model likeliest to satisfy, a dearer model taken for the
likelier good one (service/routing/policy.py price_floor, cautious_choice)."""

from __future__ import annotations

import numpy as np
import pytest

from messplus.service import config as config_mod
from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import ConfigError
from messplus.service.routing.heads import Heads
from messplus.service.routing.policy import caution_allowance, cautious_choice
from messplus.service.routing.router import Router
from messplus.service.routing.types import RouteItem
from messplus.service.state.sqlite import SqliteStore

NAMES = ["cheap", "mid", "dear"]


def _router(caution: int, alpha: float = 0.8, margin: float = 0.3, reserve: float = -1.0) -> Router:
    models = [ModelConfig(name=n, triton_model=n, cost_per_request=c) for n, c in zip(NAMES, (1.0, 4.0, 20.0))]
    # confidence 0: the routed requests left unlabelled here add no allowance to the queue
    tenant = TenantConfig(name="t", alpha=alpha, margin=margin, reserve=reserve, c=0.0, confidence=0.0,
                          caution=caution)
    return Router(models, [tenant], Heads(NAMES, 4), SqliteStore(":memory:", inline=True))


def _route(router: Router, p: list[float], i: int) -> str:
    (d,) = router.decide([RouteItem(tenant="t", request_id=f"r{i}")], np.array([p]), np.zeros((1, 3)))
    router.record(d, np.full(4, 0.5, np.float32)).result()  # durable, so Feedback can find it
    return router.names[d.served]


def test_the_allowance_is_one_standard_error_of_the_labels_so_far() -> None:
    assert caution_allowance(0.8, 16) == pytest.approx(0.1)
    assert caution_allowance(0.5, 0) == pytest.approx(0.5)  # no label yet: as wide as one
    assert caution_allowance(0.9, 10_000) == pytest.approx(0.003)


def test_a_cautious_choice_takes_the_dearer_of_equals_and_a_clearly_better_cheap_model() -> None:
    costs, every = np.array([1.0, 4.0, 20.0]), np.ones(3, np.bool_)
    assert cautious_choice(np.array([0.5, 0.5, 0.5]), costs, every) == 2
    assert cautious_choice(np.array([0.95, 0.5, 0.5]), costs, every) == 0  # logit 2.9 against 0 + 1.2
    assert cautious_choice(np.array([0.5, 0.5, 0.5]), costs, np.array([True, True, False])) == 1
    assert cautious_choice(np.array([0.5, 0.5, 0.5]), np.ones(3), every) == 0  # one price: the first


def test_a_new_cautious_tenant_starts_on_the_likeliest_model_where_no_mix_reaches_its_target() -> None:
    """Nothing learned (every model predicted 0.5, alpha 0.8): no price reaches the target, so the floor is 0 and
    the empty queue buys the cheapest model; a cautious tenant's first requests go to the dearest instead."""
    p = [0.5, 0.5, 0.5]
    assert [_route(_router(0), p, i) for i in range(3)] == ["cheap"] * 3
    assert [_route(_router(10), p, i) for i in range(3)] == ["dear"] * 3


def test_caution_overrides_a_mix_the_plain_floor_would_buy() -> None:
    """The cheap model predicted 0.85 on half the requests and 0.5 on the rest, the dear one 0.95, alpha 0.8, no
    margin: the floor buys the dear model for the second half only (0.9 on average). Before any label, a cautious
    tenant's target is raised by sqrt(0.16 / 1) to 1.0, out of reach: every request goes to the dear model."""
    plain, careful = _router(0, margin=0.0), _router(10, margin=0.0)
    kinds = [[0.85, 0.5, 0.95] if i % 2 == 0 else [0.5, 0.5, 0.95] for i in range(12)]
    assert [_route(plain, p, i) for i, p in enumerate(kinds)] == ["cheap", "dear"] * 6
    assert [_route(careful, p, i) for i, p in enumerate(kinds)] == ["dear"] * 12


def test_once_labels_narrow_the_allowance_the_floor_pays_the_raised_targets_price() -> None:
    """Every request alike: cheap 0.85, mid 0.95, dear 0.97; alpha 0.8, no margin, no banked surplus (reserve 0),
    labels equal to the served model's prediction (no predictor bias: the heads, which judge each label as it
    comes, are made to predict what the requests were decided on). The plain target, 0.8, is the cheap
    model's; after 16 labels the cautious target is 0.8 + sqrt(0.16 / 16) = 0.9, reachable by the mid model at
    a higher price, so the floor buys it; the dear one is cautious_choice's only before that."""
    p = [0.85, 0.95, 0.97]
    plain, careful = _router(0, margin=0.0, reserve=0.0), _router(100, margin=0.0, reserve=0.0)
    for router in (plain, careful):
        router.heads.predicted = lambda emb, k: p[k]  # type: ignore[method-assign]
        for i in range(16):
            served = _route(router, p, i)
            router.feedback("t", f"r{i}", p[NAMES.index(served)], []).result()
    assert careful.tenants["t"].labelled == 16
    assert _route(plain, p, 16) == "cheap"
    assert _route(careful, p, 16) == "mid"
    assert _route(_router(100, margin=0.0, reserve=0.0), p, 0) == "dear"  # no label: 0.8 + 0.4, out of reach


def test_caution_ends_after_its_labels() -> None:
    """After `caution` labels the tenant is decided as any other: two labels of 1.0 bank a surplus (the queue
    below 0), and with every model predicted alike the cheapest is served again."""
    router = _router(2)
    p = [0.5, 0.5, 0.5]
    for i in range(2):
        assert _route(router, p, i) == "dear"
        router.feedback("t", f"r{i}", 1.0, []).result()
    assert router.tenants["t"].labelled == 2 and router.tenants["t"].queue < 0
    assert [_route(router, p, i) for i in range(2, 5)] == ["cheap"] * 3


def test_caution_without_the_price_floor_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.caution': needs the price floor"):
        config_mod.from_mapping({"tenants": [{"name": "t", "alpha": 0.7, "caution": 100, "floor_window": 0}]}, env={})
    cfg = config_mod.from_mapping({"tenants": [{"name": "t", "alpha": 0.7, "caution": 100}]}, env={})
    assert cfg.tenants[0].caution == 100
