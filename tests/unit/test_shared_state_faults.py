"""The shared PostgreSQL state under faults (a real server): replicas' concurrent writes never deadlock; the
server stopped and started again under two routers (a server of the test's own, not the session's): reads fail
fast with StorageUnavailable while it is down, and each router recovers by itself, one that gets no traffic of
its own included: its store commits again and its tail brings the other's labels."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from prometheus_client import generate_latest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import StorageUnavailable
from messplus.service.routing.heads import Heads
from messplus.service.routing.router import Router
from messplus.service.routing.types import RouteItem
from messplus.service.server.metrics import Metrics
from messplus.service.state.base import RequestRow
from messplus.service.state.postgres import PostgresStore

from ..support.postgres import PostgresServer

MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANT = TenantConfig(name="acme", alpha=0.8, c=0.0)


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    try:
        srv = PostgresServer().start()
    except RuntimeError as exc:  # no server binaries: pg_fixtures' postgres_server fails under CI, skips here
        pytest.skip(str(exc))
    yield srv
    srv.close()


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def until(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not cond():
        assert time.monotonic() - began < timeout_s, what
        time.sleep(0.02)
    return time.monotonic() - began


def test_routers_recover_from_a_database_restart_without_traffic_of_their_own(server: PostgresServer) -> None:
    routers = [Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(server.url, poll_s=0.05))
               for _ in range(2)]
    a, b = routers
    try:
        emb = np.ones((1, 8), np.float32) / np.sqrt(8)
        (routed,) = a.route([RouteItem(tenant="acme")], emb)
        assert not isinstance(routed, Exception)
        a.record(routed.decision, routed.embedding)
        a.store.flush()
        rid = routed.decision.request_id

        metrics = Metrics()
        metrics.watch(b)
        assert 'messplus_state_up{backend="postgres"} 1.0' in scrape(metrics)

        server.stop("fast")
        until(lambda: bool(a.store.error and b.store.error), 10, "the stores never noticed the database was gone")
        # the scrape still answers (it was an HTTP 500 for every metric): the queue and Triton's state stay,
        # the fleet's counters, which only the database holds, are left out, and the state says it is down
        down = scrape(metrics)
        assert 'messplus_state_up{backend="postgres"} 0.0' in down and 'messplus_tenant_queue{tenant="acme"}' in down
        assert "messplus_tenant_requests_total{" not in down and "messplus_model_available{" in down
        began = time.monotonic()
        with pytest.raises(StorageUnavailable):  # b reads a's record: refused, not a 30 s wait and an INTERNAL
            b.feedback("acme", rid, 1.0, []).result(10)
        assert time.monotonic() - began < 5

        server.start()
        # no Route and no Feedback anywhere: the tails alone bring both stores back
        until(lambda: not a.store.error and not b.store.error, 15, "a store never committed again")
        a.feedback("acme", rid, 0.0, []).result(10)
        back = scrape(metrics)
        assert 'messplus_state_up{backend="postgres"} 1.0' in back and 'requests_total{tenant="acme"} 1.0' in back
        until(lambda: b.tenants["acme"].labelled == 1, 10, "b's tail never brought a's label")
        assert b.tenants["acme"].queue == a.tenants["acme"].queue and b.heads.last_seq == a.heads.last_seq
    finally:
        for r in routers:
            r.store.close()


def test_replicas_writing_rows_in_different_orders_never_deadlock(postgres_url: str) -> None:
    """Three stores group-commit records of two tenants in opposite orders, and feedback: every write commits
    (each write transaction takes the log lock first, so no two of them hold row locks at once)."""
    stores = [PostgresStore(postgres_url, poll_s=0.05) for _ in range(3)]
    try:
        stores[0].ensure_tenants(("acme", "beta")).result(10)
        futs = []
        for i in range(900):
            rid = f"r{i}"
            tenant = ("acme", "beta")[i % 2]
            row = RequestRow(request_id=rid, tenant=tenant, t=i, served_model="cheap", exploration=True,
                             invoked=("big", "cheap")[::(-1) ** i], cost=1.0, cost_raw=1.0, alpha=0.8, embedding=None)
            futs.append(stores[i % 3].insert_request(row))
            if i % 3 == 2:
                futs.append(stores[(i + 1) % 3].apply_feedback(tenant, f"r{i - 2}", "cheap", {"cheap": 1.0},
                                                                lambda q, n, s: q + 0.8 - s))
        for f in futs:
            f.result(20)
    finally:
        for s in stores:
            s.close()
