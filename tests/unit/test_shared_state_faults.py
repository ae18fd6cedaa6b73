"""The shared PostgreSQL state under faults (a real server): replicas' concurrent writes never deadlock; the
server stopped and started again under two routers (a server of the test's own, not the session's): reads fail
fast with StorageUnavailable while it is down, and each router recovers by itself, one that gets no traffic of
its own included: its store commits again and its tail brings the other's labels."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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


def test_a_lock_held_elsewhere_fails_the_batch_as_an_outage_and_the_record_is_kept(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement that waits on a lock past the writer's lock_timeout fails inside one job, not at COMMIT: it
    must count as the database failing (Feedback UNAVAILABLE, retry), and a routed request's record must wait and
    commit once the lock is gone. Before, the job alone failed with psycopg's LockNotAvailable: Feedback answered
    INTERNAL and the record was thrown away (its Feedback NOT_FOUND for good). A commit stuck on the lock makes
    the store report an error meanwhile (health, messplus_state_up)."""
    import psycopg

    import messplus.service.state.postgres as pg_mod
    import messplus.service.state.writer as writer_mod

    monkeypatch.setattr(pg_mod, "LOCK_TIMEOUT_S", 1.5)
    monkeypatch.setattr(writer_mod, "STALL_S", 0.5)

    @contextlib.contextmanager
    def lock_held(r: Router) -> Iterator[None]:
        with psycopg.connect(postgres_url, autocommit=True) as holder, holder.transaction():
            holder.execute("SELECT * FROM tenants WHERE name = 'acme' FOR UPDATE")
            yield

    kept_through_an_outage(postgres_url, lock_held, "a commit has waited")


def kept_through_an_outage(url: str, outage: Callable[[Router], contextlib.AbstractContextManager[None]],
                           reported: str) -> None:
    """A router on `url` stores one request; during `outage` a second one's record waits (the store's error says
    `reported`) while Feedback answers UNAVAILABLE; after it the kept record commits and both take their labels."""
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(url, poll_s=0.05))
    try:
        emb = np.ones((1, 8), np.float32) / np.sqrt(8)
        (first,) = r.route([RouteItem(tenant="acme")], emb)
        assert not isinstance(first, Exception)
        r.record(first.decision, first.embedding).result(10)
        r.store.flush()
        with outage(r):
            (second,) = r.route([RouteItem(tenant="acme")], emb)
            assert not isinstance(second, Exception)
            stored = r.record(second.decision, second.embedding)
            until(lambda: reported in r.store.error, 5, f"the outage ({reported!r}) was never reported")
            with pytest.raises(StorageUnavailable):
                r.feedback("acme", first.decision.request_id, 1.0, []).result(10)
            assert not stored.done() and r.store._writer.buffered >= 1  # type: ignore[attr-defined]
        stored.result(15)  # the outage is over: the kept record commits
        assert r.store.request(second.decision.request_id) is not None
        r.feedback("acme", first.decision.request_id, 1.0, []).result(10)
        r.feedback("acme", second.decision.request_id, 1.0, []).result(10)
        assert r.store.tenants()["acme"].labelled == 2 and r.tenants["acme"].requests == 2
        until(lambda: not r.store.error, 5, "the store kept reporting an error after committing again")
    finally:
        r.store.close()


def test_a_read_only_database_fails_the_batch_as_an_outage_and_the_record_is_kept(postgres_url: str) -> None:
    """A read-only transaction (the URL reached a standby after a failover, or the database was set read-only)
    is the database failing, not the job: the record waits and commits once it is writable, Feedback meanwhile
    answers UNAVAILABLE, and the store says why (health). Before, psycopg's InternalError failed each job alone:
    records were dropped (their Feedback NOT_FOUND for good), Feedback answered INTERNAL, health stayed SERVING."""
    import psycopg

    database = postgres_url.rsplit("/", 1)[1]

    @contextlib.contextmanager
    def read_only(r: Router) -> Iterator[None]:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")  # new sessions
            r.store._writer.conn.execute("SET default_transaction_read_only = on")  # type: ignore[attr-defined]
            yield
            admin.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")  # a fresh connection

    kept_through_an_outage(postgres_url, read_only, "read-only")


def test_acknowledged_labels_wait_for_the_disk_whatever_the_database_default(postgres_url: str) -> None:
    """`synchronous_commit = off`, a common tuning of a database or role, acknowledges a commit before it is on
    disk: a server crash then loses acknowledged Feedback. The writer's sessions set it back on."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {postgres_url.rsplit('/', 1)[1]} SET synchronous_commit = off")
    with psycopg.connect(postgres_url) as plain:
        assert plain.execute("SHOW synchronous_commit").fetchone() == ("off",)  # the default took
    store = PostgresStore(postgres_url, poll_s=0.05)
    try:
        writer = store._writer  # type: ignore[attr-defined]
        assert writer.submit(lambda c: c.execute("SHOW synchronous_commit").fetchone()[0]).result(10) == "on"
    finally:
        store.close()
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # a stronger setting (synchronous standbys)
        admin.execute(f"ALTER DATABASE {postgres_url.rsplit('/', 1)[1]} SET synchronous_commit = remote_apply")
    store = PostgresStore(postgres_url, poll_s=0.05)
    try:
        writer = store._writer  # type: ignore[attr-defined]
        level = writer.submit(lambda c: c.execute("SHOW synchronous_commit").fetchone()[0]).result(10)
        assert level == "remote_apply"  # kept, not lowered to on
    finally:
        store.close()


def test_feedback_for_an_id_two_replicas_routed_at_once_is_refused_where_its_record_was_not_stored(
        postgres_url: str) -> None:
    """Two replicas route the same caller's id at once (both looked it up before either record committed): the
    second record is refused. Its Feedback at that replica is FAILED_PRECONDITION instead of labelling the first
    request, which the id names in the database, with what the caller said about another answer."""
    from messplus.service.errors import AlreadyExists, Conflict

    a, b = (Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(postgres_url, poll_s=0.05))
            for _ in range(2))
    try:
        emb = np.ones((1, 8), np.float32) / np.sqrt(8)
        (first,) = a.route([RouteItem(tenant="acme", request_id="order-42")], emb)
        (second,) = b.route([RouteItem(tenant="acme", request_id="order-42")], emb)
        assert not isinstance(first, Exception) and not isinstance(second, Exception)
        a.record(first.decision, first.embedding).result(10)
        with pytest.raises(AlreadyExists):
            b.record(second.decision, second.embedding).result(10)
        with pytest.raises(Conflict, match="routed twice"):
            b.feedback("acme", "order-42", 0.0, [])
        assert a.store.tenants()["acme"].labelled == 0  # the first request holds no label it was not given
        assert a.feedback("acme", "order-42", 1.0, []).result(10).applied == 1  # its own caller's label
        # the first request's record goes (as expiry drops it); the id routed again at B is B's request now
        a.store._writer.submit(  # type: ignore[attr-defined]
            lambda c: (c.execute("DELETE FROM labels WHERE request_id = 'order-42'"),
                       c.execute("DELETE FROM requests WHERE request_id = 'order-42'"))).result(10)
        assert not b.routed_before("order-42")
        (again,) = b.route([RouteItem(tenant="acme", request_id="order-42")], emb)
        assert not isinstance(again, Exception)
        b.record(again.decision, again.embedding).result(10)
        assert b.feedback("acme", "order-42", 0.0, []).result(10).applied == 1  # no longer "routed twice"
    finally:
        a.store.close()
        b.store.close()


def test_a_database_known_to_be_down_is_not_asked_whether_a_request_id_was_routed(server: PostgresServer) -> None:
    """While the state store reports an outage, the Route-time lookup of a caller's id is skipped: each one
    waited about a second for the database on one of the event loop's few threads, and Routes that bring an id
    slowed to seconds while Route otherwise buffers its records (a reviewer's measurement: p50 2.0 s)."""
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(server.url, poll_s=0.05))
    try:
        asked: list[str] = []
        real = r.store.request_exists
        r.store.request_exists = lambda rid: asked.append(rid) or real(rid)  # type: ignore[method-assign]
        assert not r.routed_before("order-1") and asked == ["order-1"]  # up: the database is asked
        server.stop()
        until(lambda: bool(r.store.error), 10, "the outage was never reported")
        assert not r.routed_before("order-2") and asked == ["order-1"]  # down: not asked
    finally:
        r.store.close()


class LostCommitReply:
    """The writer's connection, whose next COMMIT is carried out by the server and its reply lost (the link
    drops right after): the writer sees a failed commit of a batch that is in fact stored."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.armed = conn, True

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        out = self.conn.execute(query, params)
        if query == "COMMIT" and self.armed:
            self.armed = False
            import psycopg

            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return out

    def close(self) -> None:
        self.conn.close()


def test_a_record_whose_commit_reply_was_lost_is_counted_once(postgres_url: str) -> None:
    """The record is retried after the lost reply and finds itself stored: it is that commit, not another
    request under the same id. Before, the retry failed on the key and the router forgot a stored request
    (its counters one short), then counted its label against an expectation it no longer held (pending -1)."""
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(postgres_url, poll_s=0.05))
    try:
        writer = r.store._writer  # type: ignore[attr-defined]
        r.store.flush()
        writer.conn = LostCommitReply(writer.conn)
        emb = np.ones((1, 8), np.float32) / np.sqrt(8)
        (routed,) = r.route([RouteItem(tenant="acme")], emb)
        assert not isinstance(routed, Exception)
        r.record(routed.decision, routed.embedding).result(15)
        st = r.tenants["acme"]
        assert (st.requests, st.pending_n) == (1, 1) and r.store.tenants()["acme"].requests == 1
        r.feedback("acme", routed.decision.request_id, 1.0, []).result(10)
        assert (st.pending_n, st.resid_n, st.labelled) == (0, 1, 1)
        assert st.pending_sum == pytest.approx(0.0, abs=1e-12)
    finally:
        r.store.close()


def test_the_stop_runs_to_its_end_when_the_heads_snapshot_fails(server: PostgresServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM with the database down: the heads' snapshot fails, and the rest of the drain (the store, Triton,
    the metrics) still runs. It was skipped, and buffered records were dropped without their log line. The
    App's own drain on a real router and store; the parts after the store are recorded, not started."""
    import asyncio
    import logging

    from messplus.service.server.app import App

    store = PostgresStore(server.url, poll_s=0.05)
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), store)
    steps: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def close(self) -> None:
            steps.append(f"{self.name}.close")

        def stop(self) -> None:
            steps.append(f"{self.name}.stop")

    class MetricsPart:
        def close(self) -> None:  # the metrics server's close is not a coroutine
            steps.append("metrics.close")

    app = App.__new__(App)
    app.server, app._tasks, app._stopping, app.progress = None, [], False, lambda line: None
    app.router, app.store, app.zoo, app.triton, app.metrics = r, store, Part("zoo"), Part("triton"), MetricsPart()
    server.stop("fast")
    with caplog.at_level(logging.ERROR, logger="messplus"):
        asyncio.run(app.stop())
    assert steps == ["zoo.close", "triton.stop", "metrics.close"]
    assert "the heads' snapshot at stop failed" in caplog.text


def test_reads_give_up_on_a_locked_table_within_seconds(postgres_url: str) -> None:
    """A scrape of /metrics, SlaStatus and Feedback's lookup read through the pool: they waited as long as a
    table lock held elsewhere, past Prometheus's scrape timeout (so messplus_state_up 0 was never stored)."""
    import psycopg

    from messplus.service.state.postgres import READ_LOCK_TIMEOUT_S

    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(postgres_url, poll_s=0.05))
    try:
        with psycopg.connect(postgres_url, autocommit=True) as holder, holder.transaction():
            holder.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
            began = time.monotonic()
            with pytest.raises(StorageUnavailable, match="locked"):
                r.store.tenants()
            assert time.monotonic() - began < READ_LOCK_TIMEOUT_S + 2
        assert "acme" in r.store.tenants()
    finally:
        r.store.close()


def test_a_router_starts_through_a_brief_table_lock(postgres_url: str) -> None:
    """The start-up's reads wait as long as the writer's (30 s), not the 3 s of a running router's reads: an
    operator's brief DDL lock (ALTER, VACUUM FULL) made a replica fail to start."""
    import psycopg

    first = PostgresStore(postgres_url)  # the schema exists before the lock is taken
    first.close()
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn, conn.transaction():
            conn.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(10)
    threading.Timer(4.5, release.set).start()
    began = time.monotonic()
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], 8), PostgresStore(postgres_url, poll_s=0.05))
    try:
        assert time.monotonic() - began >= 4.0  # it waited for the lock, and started
        holder.join(10)
        assert r.store.tenants()["acme"].requests == 0
    finally:
        release.set()
        r.store.close()


def _row(rid: str, t: int) -> RequestRow:
    return RequestRow(request_id=rid, tenant="acme", t=t, served_model="cheap", exploration=False,
                      invoked=("cheap",), cost=1.0, cost_raw=1.0, alpha=0.8, embedding=None)


def _step(q: float, n: int, s: float) -> float:
    return q + 0.8 - s


def test_one_log_read_per_batch_delivers_every_label_in_order_before_any_catch_up(postgres_url: str) -> None:
    """In a batch of Feedbacks only the first reads the label log (the lock is the transaction's after it): the
    labels the later ones insert are taken as their read. Checked on what the subscriber got when the futures
    resolve, before the tail could read anything (its poll is an hour): another replica's label, committed
    before the batch, comes through the one read; then the batch's own labels, each once, in seq order."""
    a, b = (PostgresStore(postgres_url, poll_s=3600.0) for _ in range(2))
    got: list[int] = []
    try:
        a.ensure_tenants(("acme",)).result(10)
        for i in range(5):
            (a if i else b).insert_request(_row(f"r{i}", i)).result(10)
        a.subscribe(lambda events: got.extend(e.seq for e in events))
        a.catch_up().result(10)  # the subscription's own first read, then nothing until this test's batch
        assert b.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, _step).result(10).events  # b's label
        gate = threading.Event()
        held = a._writer.submit(lambda conn: gate.wait(10))
        futs = [a.apply_feedback("acme", f"r{i}", "cheap", {"cheap": 0.0}, _step) for i in range(1, 5)]
        gate.set()
        assert held.result(10) is True
        mine = [f.result(10).events[0].seq for f in futs]
        log = [e.seq for e in a.label_events(0, 0)]
        assert len(log) == 5 and got == log and log[1:] == mine and a._cursor == log[-1], (got, log, mine)
    finally:
        a.close()
        b.close()


def test_a_failing_after_commit_does_not_stop_the_label_log(postgres_url: str) -> None:
    """The labels a Feedback's transaction read are delivered even when the caller's after-commit callback
    fails: before, the read had moved past the cursor undelivered, every later read was dropped as made past
    it, and the replica stopped learning without saying so."""
    a, b = (PostgresStore(postgres_url, poll_s=3600.0) for _ in range(2))
    got: list[int] = []
    try:
        a.ensure_tenants(("acme",)).result(10)
        for i in range(3):
            a.insert_request(_row(f"r{i}", i)).result(10)
        a.subscribe(lambda events: got.extend(e.seq for e in events))
        a.catch_up().result(10)

        def boom(commit: object) -> None:
            raise RuntimeError("a bug in the caller")

        with pytest.raises(RuntimeError, match="a bug in the caller"):
            a.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, _step, boom).result(10)
        b.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0}, _step).result(10)  # another replica's label
        a.apply_feedback("acme", "r2", "cheap", {"cheap": 0.0}, _step).result(10)
        assert got == [e.seq for e in a.label_events(0, 0)] and len(got) == 3, got
    finally:
        a.close()
        b.close()
