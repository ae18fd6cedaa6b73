"""Replay baselines: hand-computed values on the tiny trace, the LP's closed form against brute force, and the
MESS+ reference semantics on the router core."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from messplus.service.replay.baselines import (cheapest_single, min_cost_assignment, oracle, static_mixture,
                                               stream_baselines)
from messplus.service.routing.reference import PaperPolicy, reference_tenant
from messplus.service.routing.router import Router
from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.routing.heads import Heads
from messplus.service.routing.types import EXPLORE_ALWAYS, Decision, RouteItem
from messplus.service.state.sqlite import SqliteStore as Store
from messplus.service.trace import load_trace

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_trace.csv"

# The tiny trace by hand (labels; '-' = empty; costs small 1, medium 2/4 alternating, large 10):
#        t1 t2 t3 t4 t5 t6 t7 t8     accuracy           mean cost
# small   1  1  1  0  0  0  -  -     3/6 = 0.5          1
# medium  1  1  0  1  1  1  1  0     6/8 = 0.75         3
# large   1  1  1  1  1  0  1  1     7/8 = 0.875        10
# Oracle, alpha 0.7 (5.6 of 8 right): cheapest picks t1-t6 small, t7 medium (2), t8 medium (4): cost 12, 4 right.
# Upgrades per extra right answer: t5 -> medium +1, t4 and t6 -> medium +3 each, t8 -> large +6. So t5 (5 right,
# cost 13), then 0.6 of the +3 tier: 13 + 1.8 = 14.8, mean 1.85. Alpha 0.8 (6.4): 13 + 1.4 * 3 = 17.2 -> 2.15.
# Alpha 0.9 (7.2): 19 + 0.2 * 6 = 20.2 -> 2.525. Alpha 0.5 (4): the cheapest picks already -> 12 / 8 = 1.5.
# Static mixture (hull (1, .5), (3, .75), (10, .875)): 0.7 = 0.2 small + 0.8 medium -> 2.6;
# 0.8 = 0.6 medium + 0.4 large -> 5.8; 0.9 is above every model: infeasible.
HAND = {
    0.5: {"single": ("small", 1.0), "static": 1.0, "oracle": 1.5},
    0.7: {"single": ("medium", 3.0), "static": 2.6, "oracle": 1.85},
    0.8: {"single": ("large", 10.0), "static": 5.8, "oracle": 2.15},
    0.9: {"single": (None, None), "static": None, "oracle": 2.525},
}


@pytest.fixture(scope="module")
def tiny():
    return load_trace(TINY)


@pytest.mark.parametrize("alpha", sorted(HAND))
def test_tiny_trace_baselines_equal_hand_computed_values(tiny, alpha: float) -> None:
    b = stream_baselines(tiny.models, tiny.costs, tiny.labels, alpha)
    want = HAND[alpha]
    assert (b["cheapest_single"]["model"], b["cheapest_single"]["mean_cost"]) == want["single"]
    if want["static"] is None:
        assert not b["static_mixture"]["feasible"]
    else:
        assert b["static_mixture"]["feasible"] and b["static_mixture"]["mean_cost"] == pytest.approx(want["static"])
        assert b["static_mixture"]["satisfaction"] == pytest.approx(max(alpha, 0.5))
    assert b["oracle"]["feasible"]
    assert b["oracle"]["mean_cost"] == pytest.approx(want["oracle"])
    assert b["oracle"]["satisfaction"] == pytest.approx(max(alpha, 0.5))


def test_static_mixture_probabilities_on_the_tiny_trace(tiny) -> None:
    mix = stream_baselines(tiny.models, tiny.costs, tiny.labels, 0.7)["static_mixture"]["mix"]
    assert mix == pytest.approx({"small": 0.2, "medium": 0.8})


def test_an_empty_label_is_no_label_not_a_zero(tiny) -> None:
    assert math.isnan(tiny.labels[6, 0]) and math.isnan(tiny.labels[7, 0])
    assert tiny.accuracy[0] == 0.5  # 3 of 6 labelled, not 3 of 8
    # read as zeros, small would miss alpha 0.5 and the oracle would serve t7 with small (cost 1, "wrong")
    assert cheapest_single(tiny.models, tiny.mean_cost, tiny.accuracy, 0.5)["model"] == "small"
    o = oracle(tiny.costs, tiny.labels, 0.5)
    assert o.solution.x[6, 0] == 0.0 and o.solution.x[7, 0] == 0.0 and o.excluded == 0


def test_a_prompt_without_any_label_is_left_out_of_the_oracle() -> None:
    labels = np.array([[1.0, 1.0], [np.nan, np.nan], [0.0, 1.0]])
    costs = np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    o = oracle(costs, labels, 1.0)
    assert o.excluded == 1 and list(o.rows) == [0, 2]
    assert o.solution.mean_cost == pytest.approx((1 + 5) / 2)


# ------------------------------------------------------------------------------------------ LP vs brute force
def brute_force(cost: np.ndarray, acc: np.ndarray, avail: np.ndarray, alpha: float) -> float | None:
    """Min over integer assignments and over mixes of two that differ on one prompt (the LP's optimal vertex
    lies on such an edge): the LP optimum per prompt, or None when infeasible."""
    N, K = cost.shape
    target = alpha * N
    choices = [[m for m in range(K) if avail[i, m]] for i in range(N)]
    best = math.inf
    for x in itertools.product(*choices):
        cx, ax = sum(cost[i, m] for i, m in enumerate(x)), sum(acc[i, m] for i, m in enumerate(x))
        if ax >= target - 1e-12:
            best = min(best, cx)
            continue
        for i in range(N):
            for m in choices[i]:
                ay = ax - acc[i, x[i]] + acc[i, m]
                if ay >= target:
                    theta = (target - ax) / (ay - ax)
                    best = min(best, cx + theta * (cost[i, m] - cost[i, x[i]]))
    return None if math.isinf(best) else best / N


@pytest.mark.parametrize("soft", [False, True])
def test_closed_form_lp_matches_brute_force(soft: bool) -> None:
    rng = np.random.default_rng(7 + soft)
    for _ in range(150):
        N, K = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        cost = np.round(rng.uniform(0.1, 10.0, (N, K)), 2)
        acc = rng.uniform(0, 1, (N, K)).round(2) if soft else rng.integers(0, 2, (N, K)).astype(float)
        avail = rng.random((N, K)) < 0.8
        avail[np.arange(N), rng.integers(0, K, N)] = True
        alpha = float(rng.choice([0.3, 0.5, 0.6, 0.75, 0.9, rng.uniform(0, 1)]))
        want = brute_force(cost, acc, avail, alpha)
        got = min_cost_assignment(cost, acc, alpha, avail)
        if want is None:
            assert not got.feasible
            continue
        assert got.feasible
        assert got.mean_cost == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert got.satisfaction >= alpha - 1e-9
        assert np.allclose(got.x.sum(axis=1), 1.0) and (got.x >= 0).all() and (got.x[~avail] == 0).all()


def test_alpha_met_exactly_is_feasible_whatever_the_rounding_of_alpha_times_n() -> None:
    acc = np.zeros((50, 1))
    acc[:7] = 1.0  # 7 of 50 correct: alpha 0.14 exactly, while 0.14 * 50 = 7.000000000000001
    got = min_cost_assignment(np.ones((50, 1)), acc, 0.14)
    assert got.feasible and got.satisfaction == pytest.approx(0.14)


def test_lp_solution_is_consistent_with_its_reported_cost() -> None:
    rng = np.random.default_rng(3)
    cost, acc = rng.uniform(1, 5, (200, 4)), rng.integers(0, 2, (200, 4)).astype(float)
    sol = min_cost_assignment(cost, acc, 0.8)
    assert sol.mean_cost == pytest.approx((sol.x * cost).sum() / 200)
    assert sol.satisfaction == pytest.approx(0.8)
    assert sol.lam > 0


def test_static_mixture_is_on_the_lower_hull() -> None:
    rng = np.random.default_rng(11)
    for _ in range(100):
        K = int(rng.integers(1, 6))
        cost, acc = rng.uniform(0.1, 10, K), rng.uniform(0, 1, K)
        alpha = float(rng.uniform(0, 1))
        got = static_mixture([str(k) for k in range(K)], cost, acc, alpha)
        pairs = []
        for i, j in itertools.product(range(K), repeat=2):
            if acc[i] >= alpha:
                pairs.append(cost[i])
            elif acc[j] > alpha:
                t = (alpha - acc[i]) / (acc[j] - acc[i])
                pairs.append((1 - t) * cost[i] + t * cost[j])
        if not pairs:
            assert not got["feasible"]
            continue
        assert got["mean_cost"] == pytest.approx(min(pairs))
        assert len(got["mix"]) <= 2 and sum(got["mix"].values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------- MESS+ reference
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1e-4),
          ModelConfig(name="big", triton_model="big", cost_per_request=5e-3))


def _reference(c: float = 0.0) -> Router:
    """A router running the MESS+ paper's policy (routing/reference.py)."""
    tenant = replace(reference_tenant(TenantConfig(name="t", alpha=0.8)), c=c)
    return Router(MODELS, [tenant], Heads([m.name for m in MODELS], 4), Store(":memory:", inline=True),
                  policy=PaperPolicy())


def _route(r: Router, rid: str, **kw: object) -> Decision:
    p = np.array([[0.5, 0.9]])
    (d,) = r.decide([RouteItem(tenant="t", request_id=rid, **kw)], p, np.zeros_like(p))  # type: ignore[arg-type]
    assert isinstance(d, Decision)
    r.record(d, np.full(4, 0.5, np.float32)).result()
    return d


def test_reference_learns_only_from_exploration_steps() -> None:
    r = _reference()
    d = _route(r, "exploit")
    assert not d.exploration and r.names[d.served] == "cheap"
    r.feedback("t", "exploit", 0.0, []).result()
    assert r.heads.labels.sum() == 0  # thrown away, as the paper's code does
    assert r.tenants["t"].queue == pytest.approx(0.8)  # but the queue moved
    e = _route(r, "explore", exploration=EXPLORE_ALWAYS)
    assert e.exploration and e.invoked == (0, 1)
    r.feedback("t", "explore", None, [("cheap", 0.0), ("big", 1.0)]).result()
    assert list(r.heads.labels) == [1, 1]
    r.store.close()


def test_reference_uses_raw_costs_so_v_makes_it_bang_bang() -> None:
    r = _reference()
    assert list(r.costs()) == [1e-4, 5e-3]
    r.tenants["t"].queue = 1e-3  # any positive queue outweighs V * cost at V = 1e-6
    assert r.names[_route(r, "a").served] == "big"
    r.store.close()
