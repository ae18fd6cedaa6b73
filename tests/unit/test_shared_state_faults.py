"""The shared PostgreSQL state under faults (a real server): replicas' concurrent writes never deadlock."""

from __future__ import annotations

from messplus.service.state.base import RequestRow
from messplus.service.state.postgres import PostgresStore


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
