"""Served answers whose label is on its way (tenant.Flight) and what they do to the decisions."""

from __future__ import annotations

import math

import numpy as np

from messplus.service.routing.router import Router
from messplus.service.routing.tenant import FLIGHT_AGE, FLIGHT_MAX, Flight
from messplus.service.routing.types import Decision, RouteItem

from .test_router import DIM, router  # noqa: F401 (the fixture)


def test_every_answer_counts_until_a_label_shows_the_delay_then_older_ones_are_presumed_lost() -> None:
    f = Flight(np.zeros(3))
    for t in range(1, 11):
        f.add(f"r{t}", t, t % 3)
    assert f.expire(50).tolist() == [3, 4, 3]  # no label seen yet: all ten are on their way
    f.landed("r5", now=9)  # a label 4 requests late
    assert f.delay == 4 and f.expire(10).tolist() == [3, 3, 2]  # r1 is older than FLIGHT_AGE * 4: lost
    f.landed("r5", now=12)  # twice: nothing changes
    assert f.delay == 4
    assert f.expire(10 + int(FLIGHT_AGE * 4)).tolist() == [0, 1, 0]  # only r10 is young enough
    f.landed("r10", now=20)
    assert f.expire(20).tolist() == [0, 0, 0] and f.delay == 7  # the mean of 4 and 10


def test_one_very_late_label_does_not_keep_lost_answers_counting() -> None:
    f = Flight(np.zeros(1))
    for t in range(1, 101):
        f.add(f"r{t}", t, 0)
        if t % 10 == 0:
            f.landed(f"r{t - 2}", now=t)  # every tenth request, a label 2 requests late
    f.landed("r1", now=100)  # and one 99 requests late
    assert 0 < f.delay < 12
    assert f.expire(101).tolist() == [len([t for t in range(101 - int(FLIGHT_AGE * f.delay), 101)
                                           if t % 10 != 8])]  # the young ones still count; r1 .. r79 do not


def test_the_mean_delay_follows_varied_delays_labels_presumed_lost_included() -> None:
    """Exponential delays, mean 200: a label landing after its answer was presumed lost still counts in the mean
    (left out, the mean ratcheted down to about 2 and almost nothing counted as in flight)."""
    f, rng = Flight(np.zeros(1)), np.random.default_rng(0)
    due: dict[int, list[str]] = {}
    for t in range(20_000):
        f.add(f"r{t}", t, 0)
        due.setdefault(t + int(rng.exponential(200.0)), []).append(f"r{t}")
        for rid in due.pop(t, []):
            f.landed(rid, now=t)
        f.expire(t)
    assert 170 < f.delay < 230
    assert f.counts[0] > 100  # about 200 answers are truly on their way


def test_at_most_flight_max_answers_are_remembered() -> None:
    f = Flight(np.zeros(2))
    for t in range(FLIGHT_MAX + 10):
        f.add(f"r{t}", t, 0)
    assert f.expire(FLIGHT_MAX + 10).tolist() == [FLIGHT_MAX, 0] and len(f.live) == FLIGHT_MAX


def decide(router: Router) -> Decision:
    """acme, every model predicted alike and unknown (logit variance 4), the queue asking for satisfaction."""
    p, var = np.full((1, 3), 0.5), np.full((1, 3), 4.0)
    (d,) = router.decide([RouteItem(tenant="acme")], p, var)
    assert isinstance(d, Decision)
    router.record(d, np.ones(DIM, np.float32) / math.sqrt(DIM)).result()
    return d


def test_a_model_whose_answer_is_awaiting_its_label_yields_to_the_next(router: Router) -> None:
    router.tenants["acme"].queue = 50.0
    first = decide(router)
    assert router.names[first.served] == "cheap"  # alike: the cheapest
    second = decide(router)
    assert router.names[second.served] == "mid"  # cheap's label is on its way: the next one is tried meanwhile
    flight = router.tenants["acme"].flight
    assert flight is not None and flight.counts.tolist() == [1, 1, 0]
    router.feedback("acme", first.request_id, 0.0, []).result()
    router.feedback("acme", second.request_id, 0.0, []).result()
    assert flight.counts.tolist() == [0, 0, 0] and flight.delay == 0.5  # labels 1 and 0 requests late
    router.tenants["acme"].queue = 50.0
    assert router.names[decide(router).served] == "cheap"  # labels back: alike again (var is given, not learned)
