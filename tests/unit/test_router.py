"""The router core over a real SQLite file: decisions, queues, feedback semantics, restart."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import Conflict, InvalidArgument, NotFound
from messplus.service.heads import Heads
from messplus.service.router import EXPLORE_ALWAYS, EXPLORE_NEVER, Decision, RouteItem, Router
from messplus.service.store import Store

DIM = 8
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="mid", triton_model="mid", cost_per_request=3.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANTS = (TenantConfig(name="acme", alpha=0.8, V=1.0, c=0.0), TenantConfig(name="beta", alpha=0.6, c=0.0))


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


def test_queue_update_is_max_zero(router: Router) -> None:
    d = route(router)
    res = router.feedback("acme", d.request_id, 1.0, []).result()
    assert res.queue == 0.0 and res.queue_updated
    d = route(router)
    res = router.feedback("acme", d.request_id, 0.0, []).result()
    assert res.queue == pytest.approx(0.8)


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
    d = route(router, exploration=EXPLORE_ALWAYS)
    assert d.exploration and d.invoked == (0, 1, 2)
    assert router.names[d.served] == "big"  # highest p_hat
    before = router.heads.labels.copy()
    res = router.feedback("acme", d.request_id, None, [("cheap", 0.0), ("mid", 1.0), ("big", 1.0)]).result()
    assert res.applied == 3 and res.queue_updated
    assert (router.heads.labels - before).tolist() == [1, 1, 1]


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
    W = r.heads.W.copy()
    late = route(r)
    r.store.close()  # no final snapshot: labels after the last snapshot are replayed from the log

    r2 = make_router(path)
    st2 = r2.tenants["acme"]
    assert st2.queue == queue
    assert (st2.requests - 1, st2.labelled, st2.explore_steps) == counts[:3]
    np.testing.assert_allclose(r2.heads.W, W, rtol=1e-12, atol=1e-12)
    r2.feedback("acme", late.request_id, 1.0, []).result()  # late feedback after restart still lands
    assert r2.tenants["acme"].labelled == st.labelled + 1
    r2.store.close()


def test_queue_equals_recomputation_from_the_label_log(router: Router) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = route(router, tenant=str(rng.choice(["acme", "beta"])))
        if rng.random() < 0.8:
            router.feedback(d.tenant, d.request_id, float(rng.random()), []).result()
    for name, st in router.tenants.items():
        rows = router.store.read("SELECT l.satisfaction, r.alpha FROM labels l JOIN requests r USING (request_id) "
                                 "WHERE r.tenant = ? AND l.moves_queue = 1 ORDER BY l.seq", (name,))
        q = 0.0
        for s, alpha in rows:
            q = max(0.0, q + alpha - s)
        assert st.queue == pytest.approx(q, abs=1e-12)
