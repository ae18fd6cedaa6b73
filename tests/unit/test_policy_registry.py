"""The routing policy is picked by name (`routing.policy`); a policy is a Policy subclass using public hooks only."""

from __future__ import annotations

import numpy as np
import pytest

from messplus.service import config as config_mod
from messplus.service.cli import main
from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import ConfigError
from messplus.service.routing import registry
from messplus.service.routing.heads import Heads
from messplus.service.routing.policy import Batch, Plan, Policy
from messplus.service.routing.pricing import Pricing
from messplus.service.routing.reference import PaperPolicy
from messplus.service.routing.router import Router
from messplus.service.routing.types import Decision, RouteItem
from messplus.service.state.sqlite import SqliteStore

MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))


class Dearest(Policy):
    """A policy of the test's own: always the dearest available model, never exploring."""

    name = "dearest"

    def plan(self, batch: Batch, pricing: Pricing) -> list[Plan | None]:
        out: list[Plan | None] = []
        for b in range(len(batch.tenants)):
            idx = np.flatnonzero(batch.masks[b])
            if not idx.size:
                out.append(None)
                continue
            k = int(idx[np.argmax(batch.raw[b, idx])])
            out.append(Plan(k, False, (k,), k))
        return out


def test_the_registry_names_messplus_and_the_paper_policy() -> None:
    assert type(registry.get_policy()) is Policy and registry.DEFAULT_POLICY == "messplus"
    assert type(registry.get_policy("mess-paper")) is PaperPolicy
    with pytest.raises(ConfigError, match="routing.policy.*unknown policy 'nope'.*messplus, mess-paper"):
        registry.get_policy("nope")


def test_a_registered_policy_decides_through_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.POLICIES, Dearest.name, Dearest)
    store = SqliteStore(":memory:", inline=True)
    router = Router(MODELS, [TenantConfig(name="t", alpha=0.5)], Heads(["cheap", "big"], 4), store,
                    policy=registry.get_policy("dearest"))
    p = np.array([[0.9, 0.9]])
    (d,) = router.decide([RouteItem(tenant="t")], p, np.zeros_like(p))
    assert isinstance(d, Decision) and router.names[d.served] == "big" and d.cost == pytest.approx(1.0)
    (d,) = router.decide([RouteItem(tenant="t", excluded=("big",))], p, np.zeros_like(p))
    assert isinstance(d, Decision) and router.names[d.served] == "cheap"
    store.close()


def test_the_paper_policy_fixes_its_knobs_and_learns_from_exploration_only() -> None:
    paper = PaperPolicy()
    t = paper.tenant(TenantConfig(name="t", alpha=0.7, c=0.3))
    assert (t.V, t.c, t.explore_models, t.margin, t.reserve, t.debt_gain) == (1e-6, 0.3, 0, 0.0, 0.0, 0.0)
    assert paper.learns(True) and not paper.learns(False) and Policy().learns(False)


def test_the_paper_policy_weighs_the_queue_alone_not_the_unlabelled_requests() -> None:
    """With Q = 0 and every answer unlabelled (no feedback yet) MESS+ serves the cheapest model; messplus's
    expected deficit of those requests is not the paper's."""
    store = SqliteStore(":memory:", inline=True)
    router = Router(MODELS, [TenantConfig(name="t", alpha=0.8, c=0.0)], Heads(["cheap", "big"], 4), store,
                    policy=PaperPolicy())
    p = np.array([[0.5, 0.9]])
    for _ in range(12):
        (d,) = router.decide([RouteItem(tenant="t")], p, np.zeros_like(p))
        assert isinstance(d, Decision)
        router.record(d, np.ones(4, np.float32) / 2).result()
        assert router.names[d.served] == "cheap"
    assert router.tenants["t"].queue == 0.0 and router.tenants["t"].pending_n == 12
    store.close()


def test_routing_policy_is_a_config_key_checked_at_start(tmp_path, capsys) -> None:
    cfg = config_mod.from_mapping({"routing": {"policy": "mess-paper"}}, env={})
    assert cfg.routing.policy == "mess-paper"
    assert config_mod.from_mapping({}, env={"MESSPLUS_ROUTING_POLICY": "x"}).routing.policy == "x"
    bad = tmp_path / "bad.toml"
    bad.write_text('[routing]\npolicy = "nope"\n')
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "config key 'routing.policy': unknown policy 'nope'" in capsys.readouterr().err


def test_a_tenants_decisions_do_not_depend_on_who_shares_its_batch() -> None:
    """The router batches requests of every tenant; a tenant's exploration draws were taken with the first row's
    seed, and a tenant with optimism 0 was decided on another number when an optimistic tenant shared the batch."""
    three = (*MODELS[:1], ModelConfig(name="mid", triton_model="mid", cost_per_request=3.0), MODELS[1])
    tenants = (TenantConfig(name="acme", alpha=0.8, c=0.6, seed=0),
               TenantConfig(name="beta", alpha=0.6, c=0.6, seed=98765),
               TenantConfig(name="zero", alpha=0.75, c=0.0, optimism=0.0, margin=0.0, debt_gain=0.0),
               TenantConfig(name="opt", alpha=0.75, c=0.0, optimism=1.0))

    def router() -> Router:
        return Router(three, tenants, Heads([m.name for m in three], 8), SqliteStore(":memory:", inline=True))

    alone, mixed = router(), router()
    p, var = np.array([[0.5, 0.7, 0.9]]), np.zeros((1, 3))
    draws = []
    for _ in range(60):
        (a,) = alone.decide([RouteItem(tenant="beta")], p, var)
        _, b = mixed.decide([RouteItem(tenant="acme"), RouteItem(tenant="beta")], np.repeat(p, 2, 0),
                            np.repeat(var, 2, 0))
        assert isinstance(a, Decision) and isinstance(b, Decision)
        draws.append((a.exploration, b.exploration))
    assert all(x == y for x, y in draws) and any(x for x, _ in draws)

    p, var = np.array([[0.5, 0.6, 0.7]]), np.array([[0.01, 0.01, 6.0]])
    for r in (alone, mixed):
        r.tenants["zero"].queue = 2.0
    (a,) = alone.decide([RouteItem(tenant="zero")], p, var)
    b, _ = mixed.decide([RouteItem(tenant="zero"), RouteItem(tenant="opt")], np.repeat(p, 2, 0), np.repeat(var, 2, 0))
    assert isinstance(a, Decision) and isinstance(b, Decision)
    assert (a.served, a.exploration) == (b.served, b.exploration)
