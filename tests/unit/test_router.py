"""The router core over a real SQLite file: decisions, queues, feedback semantics, restart."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import Conflict, InvalidArgument, NotFound
from messplus.service.routing.heads import Heads
from messplus.service.routing.policy import Batch, Plan, Policy, debt_pressure
from messplus.service.routing.pricing import TYPICAL_TOKENS_PRIOR, Pricing, input_tokens
from messplus.service.routing.router import Router
from messplus.service.routing.tenant import BIAS_PRIOR_N, Counters, expected_pending, fold_queue
from messplus.service.routing.types import EXPLORE_ALWAYS, EXPLORE_NEVER, Decision, RouteItem
from messplus.service.state.sqlite import SqliteStore as Store

DIM = 8
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="mid", triton_model="mid", cost_per_request=3.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
# acme: the queue's own semantics, without the price floor (tests/unit/test_price_floor.py has the floor's)
TENANTS = (TenantConfig(name="acme", alpha=0.8, V=1.0, c=0.0, floor_window=0),
           TenantConfig(name="beta", alpha=0.6, c=0.0),
           TenantConfig(name="mess", alpha=0.8, c=0.0, explore_models=0, optimism=0.0, margin=0.0, reserve=0.0,
                        confidence=0.0, debt_gain=0.0))


def make_router(path: Path | str, **kw: object) -> Router:
    store = Store(path, inline=str(path) == ":memory:")
    heads = Heads([m.name for m in MODELS], DIM, prior_var=1.0)
    return Router(MODELS, TENANTS, heads, store, **kw)  # type: ignore[arg-type]


def route(router: Router, tenant: str = "acme", p: tuple[float, ...] = (0.5, 0.7, 0.9), **kw: object) -> Decision:
    item = RouteItem(tenant=tenant, **kw)  # type: ignore[arg-type]
    p_hat = np.array([p], dtype=np.float64)
    (d,) = router.decide([item], p_hat, np.zeros_like(p_hat))
    assert isinstance(d, Decision)
    router.record(d, np.ones(DIM, np.float32) / math.sqrt(DIM)).result()
    return d


@pytest.fixture
def router(tmp_path: Path) -> Router:
    r = make_router(tmp_path / "state.sqlite3")
    yield r
    r.store.close()


def test_empty_queue_picks_the_cheapest(router: Router) -> None:
    d = route(router)
    assert router.names[d.served] == "cheap" and not d.exploration and d.queue == 0.0


def test_queue_grows_on_misses_and_then_buys_quality(router: Router) -> None:
    for _ in range(40):
        d = route(router)
        router.feedback("acme", d.request_id, 0.0, []).result()
        if router.names[d.served] != "cheap":
            break
    assert router.tenants["acme"].queue > 0
    assert router.names[d.served] in ("mid", "big")


def test_mess_plus_queue_is_max_zero(router: Router) -> None:
    d = route(router, tenant="mess")
    res = router.feedback("mess", d.request_id, 1.0, []).result()
    assert res.queue == 0.0 and res.queue_updated
    d = route(router, tenant="mess")
    res = router.feedback("mess", d.request_id, 0.0, []).result()
    assert res.queue == pytest.approx(0.8)


def test_default_queue_holds_labels_to_a_decaying_margin_and_banks_the_surplus(router: Router) -> None:
    d = route(router)  # acme: alpha 0.8, margin 0.3, unlimited reserve
    res = router.feedback("acme", d.request_id, 1.0, []).result()
    assert res.queue == pytest.approx(0.8 + 0.3 / 2 - 1.0)  # -0.05: kept, not floored at 0
    d = route(router)
    res = router.feedback("acme", d.request_id, 0.0, []).result()
    assert res.queue == pytest.approx(-0.05 + 0.8 + 0.3 / (2 * math.sqrt(2)))
    assert router.tenants["acme"].queue == res.queue


def test_a_negative_queue_decides_like_an_empty_one(router: Router) -> None:
    router.tenants["acme"].queue = -5.0
    assert router.names[route(router).served] == "cheap"
    router.tenants["acme"].queue = 50.0
    assert router.names[route(router).served] == "big"


def test_optimism_tries_an_unknown_model_when_the_queue_asks_for_satisfaction(router: Router) -> None:
    router.tenants["acme"].queue = 50.0
    p = np.array([[0.5, 0.7, 0.5]])
    known = np.array([[0.0, 0.0, 0.0]])
    unknown_big = np.array([[0.0, 0.0, 4.0]])
    (d,) = router.decide([RouteItem(tenant="acme")], p, known)
    assert isinstance(d, Decision) and router.names[d.served] == "mid"
    (d,) = router.decide([RouteItem(tenant="acme")], p, unknown_big)
    assert isinstance(d, Decision) and router.names[d.served] == "big"  # sigmoid(0 + 2) = 0.88 beats 0.7
    (d,) = router.decide([RouteItem(tenant="mess")], p, unknown_big)
    assert isinstance(d, Decision) and router.names[d.served] == "cheap"  # no optimism, queue 0


def test_feedback_twice_changes_nothing_and_says_so(router: Router) -> None:
    d = route(router)
    first = router.feedback("acme", d.request_id, 0.0, []).result()
    again = router.feedback("acme", d.request_id, 0.0, []).result()
    assert first.applied == 1 and again.applied == 0 and again.duplicate == 1
    assert again.queue == first.queue and not again.queue_updated
    assert router.tenants["acme"].labelled == 1


def test_conflicting_feedback_is_refused(router: Router) -> None:
    d = route(router)
    router.feedback("acme", d.request_id, 0.0, []).result()
    with pytest.raises(Conflict, match="write-once"):
        router.feedback("acme", d.request_id, 1.0, []).result()


def test_unknown_and_foreign_request_ids_are_not_found(router: Router) -> None:
    with pytest.raises(NotFound):
        router.feedback("acme", "nope", 1.0, [])
    d = route(router, tenant="beta")
    with pytest.raises(NotFound):
        router.feedback("acme", d.request_id, 1.0, [])


@pytest.mark.parametrize(("sat", "labels", "field"), [
    (float("nan"), [], "satisfaction"),
    (1.5, [], "satisfaction"),
    (-0.1, [], "satisfaction"),
    (None, [("gpt-9", 1.0)], "labels[0].model"),
    (None, [("cheap", float("inf"))], "labels[0].satisfaction"),
    (None, [], "satisfaction"),
])
def test_invalid_feedback_names_the_field(router: Router, sat: float | None, labels: list[tuple[str, float]],
                                          field: str) -> None:
    d = route(router)
    with pytest.raises(InvalidArgument) as err:
        router.feedback("acme", d.request_id, sat, labels)
    assert err.value.field == field


def test_empty_or_unknown_tenant_is_invalid(router: Router) -> None:
    with pytest.raises(InvalidArgument, match="tenant"):
        router.tenant("")
    with pytest.raises(InvalidArgument, match="unknown tenant"):
        router.feedback("who", "x", 1.0, [])


def test_exploration_invokes_every_available_model_and_learns_all_labels(router: Router) -> None:
    d = route(router, tenant="mess", exploration=EXPLORE_ALWAYS)
    assert d.exploration and d.invoked == (0, 1, 2)
    assert router.names[d.served] == "big"  # highest p_hat
    before = router.heads.labels.copy()
    res = router.feedback("mess", d.request_id, None, [("cheap", 0.0), ("mid", 1.0), ("big", 1.0)]).result()
    assert res.applied == 3 and res.queue_updated
    assert (router.heads.labels - before).tolist() == [1, 1, 1]


# cheap is sure to be good, mid is known to be mediocre, big is unknown: with a queue, cheap stays the choice
SURE_CHEAP = (np.array([[0.9, 0.5, 0.5]]), np.array([[0.01, 0.01, 3.0]]))


def test_exploration_adds_the_runner_up_with_each_model_at_its_plausible_best(router: Router) -> None:
    item = RouteItem(tenant="acme", exploration=EXPLORE_ALWAYS)
    p = np.array([[0.5, 0.5, 0.5]])
    (d,) = router.decide([item], p, np.array([[0.1, 2.0, 3.0]]))  # choice: cheap (queue 0)
    assert isinstance(d, Decision) and d.invoked == (0, 1)  # big is as plausible, but 10x; mid is the next dearer
    router.pricing.cost_fixed[2] = 2.0  # now big is within 2x, and cheaper than mid
    (d,) = router.decide([item], p, np.array([[0.1, 2.0, 3.0]]))
    assert isinstance(d, Decision) and d.invoked == (0, 2)


def test_with_a_queue_exploration_prefers_the_model_that_might_satisfy(router: Router) -> None:
    item = RouteItem(tenant="acme", exploration=EXPLORE_ALWAYS)
    st = router.tenants["acme"]
    st.cost_raw_sum = 100.0  # the budget (10% of it) affords big
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.choice == 0 and d.invoked == (0, 1)  # no queue: the cheaper runner-up
    st.queue = 5.0
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.choice == 0 and d.invoked == (0, 2)  # mid cannot reach alpha, big might


def test_a_model_whose_exploration_label_is_in_flight_yields_to_the_next(router: Router) -> None:
    item = RouteItem(tenant="acme", exploration=EXPLORE_ALWAYS)
    st = router.tenants["acme"]
    st.queue = 5.0
    router.pricing.cost_fixed[2] = 3.5  # big now costs about what mid does; both are unknown
    p, var = np.array([[0.9, 0.5, 0.5]]), np.array([[0.01, 3.0, 3.0]])
    (d,) = router.decide([item], p, var)
    assert isinstance(d, Decision) and d.invoked == (0, 1)  # as plausible as big, and cheaper
    router.record(d, np.ones(DIM, np.float32)).result()
    assert st.awaiting.tolist() == [False, True, False]
    (d2,) = router.decide([item], p, var)
    assert isinstance(d2, Decision) and d2.invoked == (0, 2)  # mid's label is on its way: learn big meanwhile
    router.feedback("acme", d.request_id, None, [("mid", 1.0)]).result()
    assert not st.awaiting.any()
    (d3,) = router.decide([item], p, var)
    assert isinstance(d3, Decision) and d3.invoked == (0, 1)


def test_the_exploration_budget_affords_a_dear_uncertain_model_and_is_spent(router: Router) -> None:
    item = RouteItem(tenant="acme", exploration=EXPLORE_ALWAYS)
    st = router.tenants["acme"]
    st.queue = 5.0  # enough to want big, not enough to justify its price without the budget
    st.cost_raw_sum = 95.0  # 10% of it (9.5) affords big (10) only once more spend comes in
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.choice == 0 and d.invoked == (0, 1)
    st.cost_raw_sum = 100.0
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.invoked == (0, 2)
    router.record(d, np.ones(DIM, np.float32)).result()
    assert st.explore_cost_raw == 10.0  # big's cost, not the served model's
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.invoked == (0, 1)  # budget spent


def test_a_deep_queue_explores_a_dear_model_without_budget(router: Router) -> None:
    item = RouteItem(tenant="acme", exploration=EXPLORE_ALWAYS)
    st = router.tenants["acme"]
    assert st.cost_raw_sum == 0.0  # no budget at all
    st.queue = 5.0
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.invoked == (0, 1)
    st.queue = 50.0  # now a perfect answer from big would be worth its price over cheap's
    (d,) = router.decide([item], *SURE_CHEAP)
    assert isinstance(d, Decision) and d.choice == 0 and d.invoked == (0, 2)


def test_the_queue_weighs_more_past_half_the_margins_surplus() -> None:
    # margin 0.3 after 100 labels has banked 0.3 * sqrt(100) = 3 labels; half of it is 1.5; gain 3
    q = np.array([-2.0, 1.0, 1.5, 2.5])
    ones = np.ones_like(q)
    assert debt_pressure(q, 0.3 * ones, 100 * ones, 3 * ones) == pytest.approx([-2.0, 1.0, 1.5, 2.5 + 3 * 1.0])
    assert (debt_pressure(q, 0.3 * ones, 100 * ones, 0 * ones) == q).all()  # gain 0: MESS+'s linear queue
    assert debt_pressure(np.array([1.0]), np.array([0.3]), np.array([0.0]), np.array([3.0]))[0] == pytest.approx(
        1.0 + 3 * (1.0 - 0.15))  # before the first label the bank is that of one label
    # E's allowance for labels never to be seen is banked at the plain slope too: 2.5 is 1.5 + 1.0, not past it
    assert debt_pressure(q, 0.3 * ones, 100 * ones, 3 * ones, np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(
        [-2.0, 1.0, 1.5, 2.5])


def test_a_standing_deficit_past_the_bank_buys_the_dearer_model(router: Router) -> None:
    st = router.tenants["acme"]  # alpha 0.8, V 1 per going rate; mid is 0.1 likelier to satisfy at 2 more
    item, p, var = RouteItem(tenant="acme", exploration=EXPLORE_NEVER), np.array([[0.6, 0.7, 0.7]]), np.zeros((1, 3))
    st.labelled, st.queue = 400, 5.0  # banked 0.3 * sqrt(400) = 6, half is 3: the queue is 2 past it
    (d,) = router.decide([item], p, var)
    assert isinstance(d, Decision) and d.served == 1  # 5 + 3 * 2 = 11 > V' * 0.2 / 0.1 = 6.7
    router.tenants["acme"].cfg = replace(st.cfg, debt_gain=0.0)
    (d,) = router.decide([item], p, var)
    assert isinstance(d, Decision) and d.served == 0  # linear: 5 < 6.7, the deficit stands


def test_a_tenant_stuck_in_debt_explores_more() -> None:
    tenant = TenantConfig(name="acme", alpha=0.8, c=0.2)
    router = Router(MODELS, (tenant,), Heads([m.name for m in MODELS], DIM), Store(":memory:", inline=True))
    st = router.tenants["acme"]
    st.queue, st.labelled = 50.0, 100  # far past the margin's bank (0.15 sqrt(100) = 1.5)

    def explorations(p: tuple[float, ...]) -> int:
        st.next_t = 1000  # the same counter-based draws for both: exploration probability 0.2 / 1000^(1/4)
        p_hat = np.array([p] * 400)
        return sum(d.exploration for d in router.decide([RouteItem(tenant="acme")] * 400, p_hat, np.zeros_like(p_hat)))

    plain = explorations((0.5, 0.7, 0.9))  # the choice (big) is predicted above alpha: in debt, not stuck
    stuck = explorations((0.5, 0.6, 0.7))  # no model is predicted to reach alpha
    assert 5 <= plain <= 30 and stuck >= 2.5 * plain  # 0.036 and STUCK_EXPLORE times that, of 400


def test_a_batch_is_decided_on_the_counters_as_they_were_when_it_was_taken() -> None:
    """The policy runs outside the router's lock while the writer thread lands records and labels: it reads the
    tenant's counters as copied under the lock, not live fields that could come from two different moments."""
    tenant = TenantConfig(name="acme", alpha=0.8, c=1.0)
    seen: list[tuple[int, float, float, float]] = []

    class Landing(Policy):  # the writer thread lands 1,000 dear requests and their labels as the batch is planned
        def plan(self, batch: Batch, pricing: Pricing) -> list[Plan | None]:
            for st in batch.tenants:
                st.requests, st.cost_raw_sum, st.explore_cost_raw = st.requests + 1000, st.cost_raw_sum + 1e4, 1e4
                st.resid_sum, st.resid_n, st.pending_n = st.resid_sum - 500.0, st.resid_n + 1000, 0
            return super().plan(batch, pricing)

        def v_unit(self, counters: Counters, pricing: Pricing) -> float:
            seen.append((counters.requests, counters.cost_raw_sum, counters.explore_cost_raw, counters.bias))
            return super().v_unit(counters, pricing)

    router = Router(MODELS, (tenant,), Heads([m.name for m in MODELS], DIM), Store(":memory:", inline=True),
                    policy=Landing())
    st = router.tenants["acme"]
    st.requests, st.cost_raw_sum, st.explore_cost_raw, st.resid_sum, st.resid_n = 100, 150.0, 5.0, 4.0, 40
    p_hat = np.array([(0.5, 0.7, 0.9)])
    (d,) = router.decide([RouteItem(tenant="acme")], p_hat, np.zeros_like(p_hat))
    assert isinstance(d, Decision)
    assert seen == [(100, 150.0, 5.0, pytest.approx(4.0 / (40 + BIAS_PRIOR_N)))]


PRICED = (ModelConfig(name="per-call", triton_model="per-call", cost_per_request=1.0),
          ModelConfig(name="per-token", triton_model="per-token", cost_per_input_token=0.01))


def test_a_request_is_priced_by_its_input_tokens(tmp_path: Path) -> None:
    tenant = TenantConfig(name="acme", alpha=0.8, c=0.0)
    router = Router(PRICED, (tenant,), Heads([m.name for m in PRICED], DIM), Store(":memory:", inline=True))
    assert router.pricing.typical_tokens == TYPICAL_TOKENS_PRIOR and router.cost_raw[1] == pytest.approx(2.56)
    p = np.array([[0.5, 0.5]])
    short, long = input_tokens("x" * 40), input_tokens("x" * 4000)  # 10 and 1000 tokens
    (d,) = router.decide([RouteItem(tenant="acme", input_tokens=short)], p, np.zeros_like(p))
    assert router.names[d.served] == "per-token" and d.cost_raw == pytest.approx(0.1)
    np.testing.assert_allclose(d.model_costs, [1.0, 0.1])
    (d,) = router.decide([RouteItem(tenant="acme", input_tokens=long)], p, np.zeros_like(p))
    assert router.names[d.served] == "per-call" and d.model_costs[1] == pytest.approx(10.0)
    # the typical request moved towards what was routed: its costs are what ListModels reports
    after_short = TYPICAL_TOKENS_PRIOR + 0.01 * (10 - TYPICAL_TOKENS_PRIOR)
    assert router.pricing.typical_tokens == pytest.approx(after_short + 0.01 * (1000 - after_short))
    np.testing.assert_allclose(router.cost_raw, [1.0, 0.01 * router.pricing.typical_tokens])
    # an observed call teaches the per-call part (here its output), net of the known input price
    router.pricing.observe_cost(1, 0.1 + 0.5, short)
    assert router.pricing.cost_fixed[1] == pytest.approx(0.05 * 0.5)


def test_labels_for_models_not_invoked_are_refused(router: Router) -> None:
    d = route(router, exploration=EXPLORE_NEVER)
    with pytest.raises(InvalidArgument, match="not invoked"):
        router.feedback("acme", d.request_id, None, [("big", 1.0)])


def test_unavailable_models_are_masked(router: Router) -> None:
    router.set_available(0, False)
    d = route(router)
    assert router.names[d.served] == "mid"
    router.set_available(1, False)
    router.set_available(2, False)
    (err,) = router.decide([RouteItem(tenant="acme")], np.full((1, 3), 0.5), np.zeros((1, 3)))
    assert not isinstance(err, Decision) and "no zoo model" in str(err)


def test_restart_keeps_queues_counts_and_heads(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    r = make_router(path, snapshot_every=5)
    for i in range(12):
        d = route(r, exploration=EXPLORE_ALWAYS if i % 3 == 0 else 0)
        r.feedback("acme", d.request_id, float(i % 2), []).result()
    queue, st = r.tenants["acme"].queue, r.tenants["acme"]
    counts = (st.requests, st.labelled, st.explore_steps, st.served.tolist())
    explore_cost = st.explore_cost_raw
    assert explore_cost > 0
    W = r.heads.W.copy()
    late = route(r)
    r.store.close()  # no final snapshot: labels after the last snapshot are replayed from the log

    r2 = make_router(path)
    st2 = r2.tenants["acme"]
    assert st2.queue == queue
    assert (st2.requests - 1, st2.labelled, st2.explore_steps) == counts[:3]
    assert st2.explore_cost_raw == explore_cost
    np.testing.assert_allclose(r2.heads.W, W, rtol=1e-12, atol=1e-12)
    r2.feedback("acme", late.request_id, 1.0, []).result()  # late feedback after restart still lands
    assert r2.tenants["acme"].labelled == st.labelled + 1
    r2.store.close()


def test_heads_replay_the_log_in_pages_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head without a snapshot (a model new to the zoo) replays the whole log at start: read in pages, not
    at once (a long-running router's log, with its embeddings, would not fit in memory)."""
    import messplus.service.routing.learner as learner_mod

    path = tmp_path / "state.sqlite3"
    r = make_router(path, snapshot_every=10_000)  # no snapshot: every label is replayed
    for i in range(23):
        d = route(r, exploration=EXPLORE_ALWAYS if i % 4 == 0 else 0)
        r.feedback("acme", d.request_id, float(i % 3 == 0), []).result()
    W, seq = r.heads.W.copy(), r.heads.last_seq
    r.store.close()
    pages: list[int] = []
    read = learner_mod.Learner.learn

    def learn(self, events, *args, **kw):  # type: ignore[no-untyped-def]
        pages.append(len(events))
        return read(self, events, *args, **kw)

    monkeypatch.setattr(learner_mod, "RESTORE_PAGE", 4)
    monkeypatch.setattr(learner_mod.Learner, "learn", learn)
    r2 = make_router(path)
    assert pages == [4, 4, 4, 4, 4, 3]  # the 23 labels of the log
    np.testing.assert_allclose(r2.heads.W, W, rtol=1e-12, atol=1e-12)
    assert r2.heads.last_seq == seq
    r2.store.close()


def test_the_request_index_never_goes_back_after_a_restart(tmp_path: Path) -> None:
    """t moves for every decision, recorded or not (no model available, a cancelled or failed Generate); a
    restart resumed at requests + 1, so stored requests shared a t (and its exploration coin)."""
    path = tmp_path / "state.sqlite3"
    r = make_router(path)
    for k in range(3):
        r.set_available(k, False)
    for _ in range(3):
        (err,) = r.decide([RouteItem(tenant="acme")], np.full((1, 3), 0.5), np.zeros((1, 3)))
        assert not isinstance(err, Decision)
    for k in range(3):
        r.set_available(k, True)
    first = route(r)
    r.store.close()
    r2 = make_router(path)
    second = route(r2)
    assert (first.t, second.t) == (4, 5)
    r2.store.close()


def test_queue_equals_recomputation_from_the_label_log(router: Router) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = route(router, tenant=str(rng.choice(["acme", "beta", "mess"])))
        if rng.random() < 0.8:
            router.feedback(d.tenant, d.request_id, float(rng.random()), []).result()
    for name, st in router.tenants.items():
        rows = router.store.read("SELECT l.satisfaction FROM labels l JOIN requests r USING (request_id) "
                                 "WHERE r.tenant = ? AND l.moves_queue = 1 ORDER BY l.seq", (name,))
        assert st.queue == pytest.approx(fold_queue(st.cfg, [s for (s,) in rows]), abs=1e-12)
        q = 0.0  # and by hand, for the two policies in play
        for n, (s,) in enumerate(rows, start=1):
            if st.cfg.reserve == 0:
                q = max(0.0, q + st.cfg.alpha - s)
            else:
                q = q + st.cfg.alpha + st.cfg.margin / (2 * math.sqrt(n)) - s
        assert st.queue == pytest.approx(q, abs=1e-9)


def test_a_state_file_from_before_the_exploration_budget_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE tenants (name TEXT PRIMARY KEY, queue REAL NOT NULL DEFAULT 0, requests INTEGER "
                       "NOT NULL DEFAULT 0, labelled INTEGER NOT NULL DEFAULT 0, sat_sum REAL NOT NULL DEFAULT 0, "
                       "cost_sum REAL NOT NULL DEFAULT 0, cost_raw_sum REAL NOT NULL DEFAULT 0, explore_steps INTEGER "
                       "NOT NULL DEFAULT 0); INSERT INTO tenants (name, queue, requests) VALUES ('acme', 2.5, 7);")
    conn.close()
    r = make_router(path)
    st = r.tenants["acme"]
    assert (st.queue, st.requests, st.explore_cost_raw) == (2.5, 7, 0.0)
    d = route(r, exploration=EXPLORE_ALWAYS)
    assert r.store.tenants()["acme"].explore_cost_raw == pytest.approx(st.explore_cost_raw) and d.exploration
    r.store.close()


def test_the_predictors_bias_is_measured_against_the_prediction_as_the_label_comes(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    r = make_router(path)
    d = route(r)  # served cheap, routed on p_hat 0.5
    emb = np.ones(DIM, np.float32) / math.sqrt(DIM)
    for _ in range(5):  # the heads learn other answers of cheap's before this one's label comes
        r.heads.update(emb, 0, 1.0)
    now = float(r.heads.predict(emb.reshape(1, -1))[0][0, 0])
    assert now > 0.6
    r.feedback("acme", d.request_id, 1.0, []).result()
    st = r.tenants["acme"]
    assert (st.resid_n, st.resid_sum) == (1, pytest.approx(1.0 - now))  # not 1.0 - 0.5: the heads have learned
    assert st.pending_n == 0 and st.pending_sum == pytest.approx(0.0, abs=1e-12)  # E lets go of what it added
    r.store.close()
    r2 = make_router(path)  # a start recomputes it from the stored label
    assert (r2.tenants["acme"].resid_n, r2.tenants["acme"].resid_sum) == (1, pytest.approx(1.0 - now))
    assert r2.tenants["acme"].resid_sq == pytest.approx((1.0 - now) ** 2)
    r2.store.close()


def test_unlabelled_requests_count_in_decisions_by_their_expected_satisfaction(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    r = make_router(path)
    ds = [route(r) for _ in range(3)]  # acme: p_hat 0.5, 0.7, 0.9 for cheap, mid, big; no feedback yet
    assert ds[0].served == 0  # the first goes to cheap; the next ones weigh what the first may have missed
    # each one's target (alpha plus the margin at its index) minus the satisfaction predicted for what it was served
    deficits = [0.8 + 0.3 / (2 * math.sqrt(d.t)) - float(d.p_hat[d.served]) for d in ds]
    st = r.tenants["acme"]
    assert st.cfg.confidence == 2.0
    # no labels yet: no bias; the spread is the prior's 1/4, and the error of 3 guesses is sqrt(1/4 (3 + 9 / 20));
    # the allowance is two of those
    allowance = 2 * math.sqrt(0.25 * (3 + 9 / BIAS_PRIOR_N))
    assert expected_pending(st) == pytest.approx(sum(deficits) + allowance)
    with_allowance, apart = r.policy.expected(st)
    assert apart == pytest.approx(allowance)  # apart, for the queue's plain slope
    assert with_allowance == pytest.approx(st.queue + sum(deficits) + allowance)
    seen, plan = [], r.policy.plan
    r.policy.plan = lambda batch, pricing: seen.append(batch) or plan(batch, pricing)  # type: ignore[method-assign]
    r.decide([RouteItem(tenant="acme")], np.array([[0.5, 0.7, 0.9]]), np.zeros((1, 3)))  # decided, not recorded
    assert seen[0].allowance == pytest.approx([allowance]) and seen[0].expected == pytest.approx(
        [st.queue + sum(deficits) + allowance])  # the decision gets both
    r.store.close()

    r2 = make_router(path)  # the expectation is rebuilt from the stored requests
    st2 = r2.tenants["acme"]
    assert expected_pending(st2) == pytest.approx(sum(deficits) + allowance)
    r2.feedback("acme", ds[0].request_id, 1.0, []).result()  # labelled: it leaves E, and says p_hat was 0.5 low
    m = 1 + BIAS_PRIOR_N
    bias = 0.5 / m
    spread = (0.5 ** 2 - 0.5 * bias + 0.25 * BIAS_PRIOR_N) / m
    assert (st2.pending_n, st2.resid_n) == (2, 1)
    assert expected_pending(st2) == pytest.approx(sum(deficits[1:]) - 2 * bias + 2 * math.sqrt(spread * (2 + 4 / m)))
    st2.cfg = replace(st2.cfg, confidence=0.0)  # without the allowance: the bias-corrected estimate alone
    assert expected_pending(st2) == pytest.approx(sum(deficits[1:]) - 2 * bias)
    assert st2.queue == pytest.approx(0.8 + 0.3 / 2 - 1.0)
    r2.store.close()


def test_pending_expectation_makes_the_router_buy_quality_before_feedback_arrives(router: Router) -> None:
    for _ in range(30):  # 30 requests routed to "cheap" (p_hat 0.5 < alpha 0.8), none labelled yet
        d = route(router)
    assert router.tenants["acme"].queue == 0.0
    assert router.names[d.served] != "cheap"  # the expected deficit already moved the decision


def test_a_request_id_is_known_after_the_memory_cache_forgets_it_and_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    r = make_router(path, cache_size=2)
    first = route(r, request_id="caller-1")
    for i in range(3):
        route(r, request_id=f"later-{i}")
    assert "caller-1" not in r._cache and not r.reserve("caller-1") and r.reserve("never")
    r.store.close()
    r2 = make_router(path)
    assert not r2.reserve(first.request_id) and not r2.reserve("later-2") and r2.reserve("never")
    r2.store.close()
