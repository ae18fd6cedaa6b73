"""A request id names one stored request: a caller's id is held while its call is in flight, a record the store
did not keep is forgotten (its Feedback is NOT_FOUND, its counts taken back), and feedback is applied only to a
request the database holds for that tenant. Over a real SQLite file and a real PostgreSQL server (no Triton)."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import AlreadyExists, NotFound
from messplus.service.routing.heads import Heads
from messplus.service.routing.router import Router
from messplus.service.routing.types import Decision, RouteItem
from messplus.service.state.postgres import PostgresStore
from messplus.service.state.sqlite import SqliteStore

DIM = 8
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANTS = (TenantConfig(name="acme", alpha=0.8, c=0.0), TenantConfig(name="beta", alpha=0.8, c=0.0))
EMB = np.ones(DIM, np.float32) / math.sqrt(DIM)


def make(store: Any) -> Router:
    return Router(MODELS, TENANTS, Heads([m.name for m in MODELS], DIM), store, snapshot_every=1000)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    r = make(SqliteStore(tmp_path / "state.sqlite3"))
    yield r
    r.store.close()


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[Callable[[], Router]]:
    made: list[Router] = []

    def new() -> Router:
        made.append(make(PostgresStore(postgres_url, poll_s=0.05)))
        return made[-1]

    yield new
    for r in made:
        r.store.close()


def decide(r: Router, tenant: str = "acme", **kw: Any) -> Decision:
    p = np.array([[0.5, 0.9]])
    (d,) = r.decide([RouteItem(tenant=tenant, **kw)], p, np.zeros_like(p))
    assert isinstance(d, Decision)
    return d


def books(r: Router, tenant: str) -> tuple[int, int, float]:
    st = r.tenants[tenant]
    return st.requests, st.pending_n, round(st.cost_sum, 9)


def test_an_id_in_flight_is_refused_to_a_second_call_until_it_is_recorded_or_released(router: Router) -> None:
    assert router.reserve("x") and not router.reserve("x")  # a Generate still streaming holds its id
    router.release("x")  # its call failed: nothing was routed under it
    assert router.reserve("x")
    router.record(decide(router, request_id="x"), EMB).result()
    assert not router.reserve("x"), "a routed id was offered again"  # after a restart too: test_router.py


def test_a_record_the_store_refuses_is_forgotten_and_its_feedback_not_found(router: Router) -> None:
    router.record(decide(router, "acme", request_id="dup"), EMB).result()
    before = books(router, "beta")
    with pytest.raises(AlreadyExists, match="stored already"):  # the same id for another tenant, past the reservation
        router.record(decide(router, "beta", request_id="dup"), EMB).result()
    assert books(router, "beta") == before, "a request the database does not hold is still counted"
    with pytest.raises(NotFound, match="tenant 'beta'"):
        router.feedback("beta", "dup", 1.0, []).result()
    assert router.feedback("acme", "dup", 1.0, []).result().applied == 1  # the stored one keeps its owner
    assert router.store.read("SELECT name, labelled FROM tenants WHERE name IN ('acme', 'beta') ORDER BY name") \
        == [("acme", 1), ("beta", 0)]


class FailingCommit:
    """The writer's connection, failing its next COMMIT as a full disk does (tests/functional fills a real one)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.armed = conn, True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def test_a_request_whose_record_did_not_commit_gets_not_found_not_internal(router: Router) -> None:
    router.store.flush()  # the start's jobs (expiry) have committed: the next commit to fail is the record's
    writer = router.store._writer  # type: ignore[attr-defined]
    writer.conn = FailingCommit(writer.conn)
    d = decide(router)
    with pytest.raises(Exception, match="could not commit"):
        router.record(d, EMB).result(10)
    assert books(router, "acme") == (0, 0, 0.0)
    flight = router.tenants["acme"].flight
    assert flight is not None and not flight.counts.any(), "a forgotten answer still counts as awaiting its label"
    with pytest.raises(NotFound):
        router.feedback("acme", d.request_id, 1.0, []).result(10)
    router.record(decide(router, request_id=d.request_id), EMB).result(10)  # the caller retries under its id
    router.feedback("acme", d.request_id, 1.0, []).result(10)
    assert not flight.counts.any() and flight.delay_n == 1


def test_the_store_applies_labels_only_to_a_request_it_holds_for_that_tenant(router: Router) -> None:
    router.record(decide(router, "acme", request_id="r1"), EMB).result()
    step = lambda q, n, s: q  # noqa: E731 - the queue's rule is not under test
    with pytest.raises(NotFound, match="not a stored request of tenant 'beta'"):
        router.store.apply_feedback("beta", "r1", "cheap", {"cheap": 1.0}, step).result()
    with pytest.raises(NotFound):
        router.store.apply_feedback("acme", "never-stored", "cheap", {"cheap": 1.0}, step).result()
    assert router.store.read("SELECT count(*) FROM labels") == [(0,)]


def test_one_id_routed_at_two_replicas_labels_neither_tenant_wrongly(replicas: Callable[[], Router]) -> None:
    """Two replicas route one id at once (both before either record commits, so both pass the Route-time
    lookup); the second replica's record is refused by the key. Another tenant's stored request stays NOT_FOUND
    to the refused one's tenant (its existence not revealed), and the owner's labels apply at either replica."""
    a, b = replicas(), replicas()
    a.record(decide(a, "acme", request_id="dup"), EMB).result()
    with pytest.raises(AlreadyExists, match="stored already"):
        b.record(decide(b, "beta", request_id="dup"), EMB).result()
    with pytest.raises(NotFound, match="tenant 'beta'"):
        b.feedback("beta", "dup", 0.0, []).result(10)
    assert b.feedback("acme", "dup", 1.0, []).result(10).applied == 1  # the owner's label, at either replica
    for r in (a, b):
        r.store.catch_up().result(10)  # type: ignore[attr-defined]
        assert (r.tenants["acme"].labelled, r.tenants["beta"].labelled) == (1, 0)
    assert [(e.tenant, e.satisfaction) for e in a.store.label_events(0)] == [("acme", 1.0)]


def test_a_replica_counts_labels_committed_while_it_was_starting(replicas: Callable[[], Router],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a = replicas()
    ds = [decide(a) for _ in range(5)]
    for d in ds:
        a.record(d, EMB).result()
    real = PostgresStore.expectations

    def labels_land_meanwhile(self: PostgresStore, models: Any) -> Any:  # between the tenants and the label log
        for d in ds:
            a.feedback("acme", d.request_id, 1.0, []).result(10)
        return real(self, models)

    monkeypatch.setattr(PostgresStore, "expectations", labels_land_meanwhile)
    b = replicas()
    monkeypatch.setattr(PostgresStore, "expectations", real)
    b.store.catch_up().result(10)  # type: ignore[attr-defined]
    assert (b.tenants["acme"].labelled, b.tenants["acme"].sat_sum) == (5, 5.0)
    assert b.tenants["acme"].queue == pytest.approx(a.tenants["acme"].queue)


def test_replicas_write_under_a_repeatable_read_default(postgres_url: str, replicas: Callable[[], Router]) -> None:
    """The writers set READ COMMITTED themselves: under a stricter server default, a snapshot taken before the
    log lock would fail concurrent replicas' writes."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        db = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{db}" SET default_transaction_isolation = \'repeatable read\'')
    a, b = replicas(), replicas()
    errors: list[BaseException] = []

    def work(r: Router) -> None:
        for _ in range(20):
            try:
                d = decide(r)
                r.record(d, EMB).result(10)
                r.feedback("acme", d.request_id, 1.0, []).result(10)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone() == (40,)
        assert conn.execute("SELECT labelled FROM tenants WHERE name = 'acme'").fetchone() == (40,)
