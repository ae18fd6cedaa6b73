"""The price floor: the kernel that finds the price of satisfaction a window of predictions says reaches a target
(against its NumPy twin, which finds the exact crossing), and what the floor does to a tenant's decisions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from messplus import kernels
from messplus.kernels import reference as ref
from messplus.kernels._price import PRICE_LO
from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.routing.heads import Heads
from messplus.service.routing.policy import price_floor
from messplus.service.routing.router import Router
from messplus.service.routing.types import RouteItem
from messplus.service.state.sqlite import SqliteStore

# values on a grid: every crossing (cost_j - cost_k) / (q_j - q_k) is then a well-separated rational, so the
# exact twin and the kernel's floating-point bisection cannot disagree on rounding (a price times a difference
# of 1e-16 is lost against a cost of 1 in the kernel, not in the twin's algebra)
UNIT = st.integers(0, 64).map(lambda i: i / 64)
COST = st.integers(0, 80).map(lambda i: i / 8)
HI = 1e4


@st.composite
def windows(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    W, K = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    q = draw(arrays(np.float64, (W, K), elements=UNIT))
    p = draw(arrays(np.float64, (W, K), elements=UNIT))
    cost = draw(arrays(np.float64, (W, K), elements=COST))
    avail = draw(arrays(np.bool_, (W, K), elements=st.booleans()))
    return q, p, cost, avail


@settings(max_examples=150, deadline=None)
@given(windows(), st.floats(0.0, 1e3))
def test_window_satisfaction_matches_numpy_twin(w: tuple[np.ndarray, ...], lam: float) -> None:
    got, want = kernels.window_satisfaction(*w, lam), ref.window_satisfaction_np(*w, lam)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(windows(), st.floats(0.0, 1.0))
def test_price_for_target_finds_the_first_crossing_when_satisfaction_grows_with_price(
        w: tuple[np.ndarray, ...], target: float) -> None:
    """q = p: the decisions rate the models by the satisfaction counted, so it grows with the price and the
    bisection lands on the twin's exact first crossing (or on PRICE_LO when the crossing is below it)."""
    q, _, cost, avail = w
    w = (q, q.copy(), cost, avail)
    got, want = kernels.price_for_target(*w, target, HI), ref.price_for_target_np(*w, target, HI)
    if math.isinf(want) or ref.window_satisfaction_np(*w, 0.0) >= target:
        assert got == want
        return
    assert got == pytest.approx(max(want, PRICE_LO), rel=1e-9)
    assert kernels.window_satisfaction(*w, got) >= target


@settings(max_examples=150, deadline=None)
@given(windows(), st.floats(0.0, 1.0))
def test_price_for_target_reaches_the_target_and_is_no_cheaper_than_possible(w: tuple[np.ndarray, ...],
                                                                               target: float) -> None:
    """q and p apart (an optimistic rating, a mean counted): satisfaction may dip as the price grows; the price
    found still reaches the target, is never below the exact first crossing, and is inf exactly when hi fails."""
    got, want = kernels.price_for_target(*w, target, HI), ref.price_for_target_np(*w, target, HI)
    if math.isinf(want) or ref.window_satisfaction_np(*w, 0.0) >= target:
        assert got == want
        return
    assert kernels.window_satisfaction(*w, got) >= target
    assert got >= max(want, PRICE_LO) * (1 - 1e-9)


def test_price_for_target_on_a_hand_worked_window() -> None:
    q = np.array([[0.8, 0.9], [0.7, 0.95]])
    cost = np.array([[0.1, 1.0], [0.1, 1.0]])
    avail = np.ones((2, 2), np.bool_)
    # at lam 0 both rows take the cheap model (0.75); row 2 switches at 0.9 / 0.25 = 3.6 (0.875), row 1 at 9
    assert kernels.price_for_target(q, q, cost, avail, 0.75, HI) == 0.0
    assert kernels.price_for_target(q, q, cost, avail, 0.8, HI) == pytest.approx(3.6, rel=1e-9)
    assert kernels.price_for_target(q, q, cost, avail, 0.9, HI) == pytest.approx(9.0, rel=1e-9)
    assert math.isinf(kernels.price_for_target(q, q, cost, avail, 0.93, HI))  # both dear: 0.925
    with pytest.raises(ValueError):
        kernels.price_for_target(q, q, cost, avail, 0.8, 0.0)
    with pytest.raises(ValueError):
        kernels.window_satisfaction(q, q[:1], cost, avail, 1.0)


def _router(floor_window: int, alpha: float = 0.8) -> Router:
    models = [ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
              ModelConfig(name="dear", triton_model="dear", cost_per_request=20.0)]
    tenant = TenantConfig(name="t", alpha=alpha, floor_window=floor_window, c=0.0)
    return Router(models, [tenant], Heads(["cheap", "dear"], 4), SqliteStore(":memory:", inline=True))


def _choices(router: Router, p: list[float], n: int) -> list[str]:
    out = []
    for i in range(n):
        (d,) = router.decide([RouteItem(tenant="t", request_id=f"r{i}")], np.array([p]), np.zeros((1, 2)))
        out.append(router.names[d.served])
    return out


def test_the_floor_buys_predicted_satisfaction_before_a_deficit_builds() -> None:
    """Cheap predicted 0.6, dear 0.97, alpha 0.8, nothing labelled: the queue is 0, so MESS+'s price is 0 and
    the cheap model is served until labels build a deficit; the floor pays from the first request the price at
    which the predictions reach alpha plus the margin."""
    assert _choices(_router(0), [0.6, 0.97], 5) == ["cheap"] * 5
    assert _choices(_router(256), [0.6, 0.97], 5) == ["dear"] * 5


def test_the_floor_mixes_where_the_predictions_differ_per_request() -> None:
    """Half the requests have the cheap model at 0.9 (enough), half at 0.5: the floor's price buys the dear
    model only for the second half."""
    router = _router(256, alpha=0.7)
    served = []
    for i in range(40):
        p = [0.9, 0.95] if i % 2 == 0 else [0.5, 0.95]
        served += _choices(router, p, 1)
    assert served[10:] == ["cheap", "dear"] * 15


def test_out_of_reach_the_floor_is_zero_and_the_queue_decides() -> None:
    """No model predicted to reach alpha: the floor gives way (0) and the decisions are MESS+'s."""
    assert _choices(_router(256, alpha=0.99), [0.6, 0.7], 5) == _choices(_router(0, alpha=0.99), [0.6, 0.7], 5)


def test_the_window_is_a_ring_of_floor_window_requests() -> None:
    router = _router(8)
    _choices(router, [0.6, 0.97], 20)
    w = router.tenants["t"].window
    assert w is not None and w.q.shape == (8, 2) and w.n == 8


def test_the_floor_holds_the_allowance_for_answers_whose_label_is_on_its_way() -> None:
    """Answers routed and none labelled yet: every one is in flight, so the whole of E's allowance (the error of
    what they are expected to add) raises the floor's target, spread over 50 requests, and is handed back for the
    queue's price to leave out. Requests alternate between the cheap model (cost 0.05 of the dear one's) at 0.75
    and at 0.80, the dear one at 0.95: the plain target (alpha 0.7 + 0.15) buys the dear model for the first kind
    only (0.88 over the window), the raised one (0.85 + 2.9 / 50) for both, at the second kind's price. With
    nothing in flight (answers presumed never to be labelled) the floor holds nothing and the allowance stays the
    queue's."""
    router = _router(256, alpha=0.7)
    kinds = [[0.75, 0.95], [0.80, 0.95]]
    for i in range(10):
        (d,) = router.decide([RouteItem(tenant="t", request_id=f"r{i}")], np.array([kinds[i % 2]]), np.zeros((1, 2)))
        router.record(d, np.full(4, 0.5, np.float32)).result()
    seen, plan = [], router.policy.plan
    router.policy.plan = lambda batch, pricing: seen.append(batch) or plan(batch, pricing)  # type: ignore[method-assign]
    router.decide([RouteItem(tenant="t", request_id="r10")], np.array([kinds[0]]), np.zeros((1, 2)))
    batch = seen[0]
    assert batch.flight.sum() == 10 and batch.allowance[0] > 0
    floor, _, held = price_floor(batch, batch.p_hat)
    assert held[0] == pytest.approx(batch.allowance[0])
    plain, _, none = price_floor(dataclasses.replace(batch, flight=np.zeros_like(batch.flight)), batch.p_hat)
    assert none[0] == 0.0
    assert plain[0] == pytest.approx(0.95 / 0.20, rel=1e-5)  # the crossings, cost over satisfaction gained
    assert floor[0] == pytest.approx(0.95 / 0.15, rel=1e-5)


def test_out_of_reach_the_allowance_for_answers_on_their_way_is_held_all_the_same() -> None:
    """Before any label has come back every model is predicted at its prior: here both below alpha, so no price
    reaches the floor's target and the floor is 0. The share of E's allowance for the answers in flight is still
    left out of the queue's price (handed back whole): their labels will come, and the queue answers their error
    then. On the queue's price it had bought the dearest model while the first labels came back (docs/ROUTING.md,
    late feedback). With nothing in flight the allowance stays the queue's."""
    router = _router(256, alpha=0.7)
    for i in range(10):
        (d,) = router.decide([RouteItem(tenant="t", request_id=f"r{i}")], np.array([[0.5, 0.5]]), np.zeros((1, 2)))
        router.record(d, np.full(4, 0.5, np.float32)).result()
    seen, plan = [], router.policy.plan
    router.policy.plan = lambda batch, pricing: seen.append(batch) or plan(batch, pricing)  # type: ignore[method-assign]
    router.decide([RouteItem(tenant="t", request_id="r10")], np.array([[0.5, 0.5]]), np.zeros((1, 2)))
    batch = seen[0]
    assert batch.flight.sum() == 10 and batch.allowance[0] > 0
    floor, _, held = price_floor(batch, batch.p_hat)
    assert floor[0] == 0.0
    assert held[0] == pytest.approx(batch.allowance[0])
    _, _, none = price_floor(dataclasses.replace(batch, flight=np.zeros_like(batch.flight)), batch.p_hat)
    assert none[0] == 0.0
