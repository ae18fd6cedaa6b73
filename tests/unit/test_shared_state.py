"""Several routers on one PostgreSQL state (real server, no Triton): one queue per tenant, feedback at any
router, every router's heads learning every label in the same order."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
from prometheus_client import generate_latest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.errors import Conflict
from messplus.service.routing.heads import Heads
from messplus.service.routing.router import Router
from messplus.service.routing.tenant import fold_queue
from messplus.service.routing.types import EXPLORE_ALWAYS, Decision, RouteItem
from messplus.service.server.metrics import Metrics
from messplus.service.state.base import LabelEvent
from messplus.service.state.postgres import PostgresStore

DIM = 8
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANT = TenantConfig(name="acme", alpha=0.8, c=0.0)


@pytest.fixture
def routers(postgres_url: str) -> Iterator[Callable[[], Router]]:
    made: list[Router] = []

    def make(**kw: int) -> Router:
        store = PostgresStore(postgres_url, poll_s=0.05)
        r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], DIM), store, snapshot_every=7, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.store.close()


def route(r: Router, rng: np.random.Generator, **kw: object) -> Decision:
    emb = rng.standard_normal((1, DIM)).astype(np.float32)
    (routed,) = r.route([RouteItem(tenant="acme", **kw)], emb / np.linalg.norm(emb))  # type: ignore[arg-type]
    assert not isinstance(routed, Exception)
    r.record(routed.decision, routed.embedding).result(10)  # committed: another router may label it at once
    return routed.decision


def caught_up(*rs: Router) -> None:
    """Every router has read the whole label log (what the tail does by itself every poll_s)."""
    for r in rs:
        r.store.catch_up().result(10)  # type: ignore[attr-defined]


def test_feedback_at_any_router_moves_one_queue_and_every_head(routers) -> None:
    a, b = routers(), routers()
    rng = np.random.default_rng(0)
    sats = []
    for i in range(30):
        d = route((a, b)[i % 2], rng, exploration=EXPLORE_ALWAYS if i % 5 == 0 else 0)
        s = float(rng.random() < 0.7)
        others = [(a.names[k], 1.0) for k in d.invoked if k != d.served]
        res = (b, a)[i % 3 % 2].feedback("acme", d.request_id, s, others).result(10)  # often at the other router
        assert res.applied == 1 + len(others)
        sats.append(s)
    caught_up(a, b)
    expected = fold_queue(a.tenants["acme"].cfg, sats)
    for r in (a, b):
        assert r.tenants["acme"].queue == pytest.approx(expected, abs=1e-12)
        assert r.tenants["acme"].labelled == 30 and r.tenants["acme"].sat_sum == pytest.approx(sum(sats))
    assert a.heads.last_seq == b.heads.last_seq > 30
    np.testing.assert_allclose(a.heads.W, b.heads.W, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.heads.S, b.heads.S, rtol=0, atol=1e-12)
    status = a.status("acme")
    assert status.requests == 30 and status.labelled == 30 and int(status.served.sum()) == 30


def test_a_router_started_later_learns_from_the_snapshot_and_the_tail(routers) -> None:
    a = routers()
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = route(a, rng)
        a.feedback("acme", d.request_id, float(rng.random() < 0.5), []).result(10)
    a.snapshot().result(10)
    for _ in range(5):  # labels after the snapshot
        d = route(a, rng)
        a.feedback("acme", d.request_id, 1.0, []).result(10)
    late = routers()
    d = route(a, rng)
    a.feedback("acme", d.request_id, 0.0, []).result(10)
    caught_up(a, late)
    assert late.heads.last_seq == a.heads.last_seq
    np.testing.assert_allclose(late.heads.W, a.heads.W, rtol=0, atol=1e-12)
    assert late.tenants["acme"].queue == pytest.approx(a.tenants["acme"].queue, abs=1e-12)
    assert late.tenants["acme"].labelled == a.tenants["acme"].labelled == 26


def test_conflicting_labels_from_two_routers_one_wins(routers) -> None:
    a, b = routers(), routers()
    d = route(a, np.random.default_rng(2))
    a.store.flush()
    fa, fb = a.feedback("acme", d.request_id, 1.0, []), b.feedback("acme", d.request_id, 0.0, [])
    outcomes = []
    for f in (fa, fb):
        try:
            outcomes.append(f.result(10).applied)
        except Conflict as exc:
            outcomes.append(str(exc))
    assert sorted(map(type, outcomes), key=str) == [int, str] and 1 in outcomes
    assert any("write-once" in str(o) for o in outcomes)
    caught_up(a, b)
    assert a.tenants["acme"].labelled == b.tenants["acme"].labelled == 1


def test_the_tail_delivers_without_being_asked(routers) -> None:
    a, b = routers(), routers()
    d = route(a, np.random.default_rng(3))
    a.feedback("acme", d.request_id, 0.0, []).result(10)
    deadline = time.monotonic() + 10
    while b.tenants["acme"].labelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.tenants["acme"].labelled == 1 and math.isclose(b.tenants["acme"].queue, a.tenants["acme"].queue)
    assert b.tenants["acme"].next_t >= 2  # the request a routed advanced b's clock too (tenant rows)


def test_a_request_labelled_at_another_router_leaves_the_expectation_of_the_router_that_routed_it(routers) -> None:
    a, b = routers(), routers()
    rng = np.random.default_rng(4)
    ids = [route(a, rng).request_id for _ in range(10)]
    assert a.tenants["acme"].pending_n == 10 and b.tenants["acme"].pending_n == 0
    a.store.flush()
    for rid in ids:
        b.feedback("acme", rid, 1.0, []).result(10)
    caught_up(a, b)
    assert a.tenants["acme"].pending_n == 0 and b.tenants["acme"].pending_n == 0
    assert a.tenants["acme"].pending_sum == pytest.approx(0.0, abs=1e-12) and b.tenants["acme"].resid_n == 0
    assert a.tenants["acme"].resid_n == 10  # the predictor's error is measured where the prediction was made
    route(a, rng)  # unlabelled
    a.store.flush()
    late = routers()  # a replica that starts now counts only the requests it routes itself, not a's
    assert late.tenants["acme"].pending_n == 0 and a.tenants["acme"].pending_n == 1


def test_a_label_long_after_its_request_left_the_cache_still_leaves_the_expectation(routers) -> None:
    """A router remembers its latest `cache_size` requests; a label that comes later (a tenant that sends its
    feedback in a daily batch) must still take its request out of the expected queue of the router that routed
    it, whether that router or another one takes the Feedback. Judged by the stored request's router, not by
    the cache, which once left such requests in the expectation for good."""
    a, b = routers(cache_size=3), routers(cache_size=3)
    rng = np.random.default_rng(5)
    mine = [route(a, rng) for _ in range(8)]
    theirs = [route(b, rng) for _ in range(8)]
    assert a.tenants["acme"].pending_n == 8 and b.tenants["acme"].pending_n == 8
    a.store.flush()
    b.store.flush()
    for d in mine[:4] + theirs[:4]:  # evicted at both routers: each takes labels of its own and of the other's
        a.feedback("acme", d.request_id, 1.0, []).result(10)
    for d in mine[4:] + theirs[4:]:
        b.feedback("acme", d.request_id, 0.0, []).result(10)
    caught_up(a, b)
    for r in (a, b):
        st = r.tenants["acme"]
        assert (st.pending_n, st.resid_n) == (0, 8)
        assert st.pending_sum == pytest.approx(0.0, abs=1e-9)


def test_feedback_for_an_id_no_request_can_have_is_not_found(routers) -> None:
    """PostgreSQL text cannot hold a NUL: the lookup raised psycopg's DataError, an INTERNAL error."""
    from messplus.service.errors import NotFound

    a = routers()
    for rid in ("bad\x00id", "with space", "é", "x" * 129):
        with pytest.raises(NotFound, match="is not a request of tenant 'acme'"):
            a.feedback("acme", rid, 1.0, []).result(10)


def test_the_tail_expires_old_records_by_itself(routers, postgres_url: str) -> None:
    """What expiry drops is the store contract's (tests/unit/test_store_contract.py); on PostgreSQL the tail runs
    it, once when it starts and then every min(retention / 10, 1 h)."""
    a = routers()
    rid = route(a, np.random.default_rng(6), request_id="old-0").request_id
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # past this store's retention, not the router's
        conn.execute("UPDATE requests SET created = %s", (time.time() - 7200,))
    store = PostgresStore(postgres_url, poll_s=0.05, retention_s=3600.0)
    try:
        assert store.request_exists(rid)
        store.subscribe(lambda events: None)  # starts the tail
        deadline = time.monotonic() + 10
        while store.request_exists(rid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not store.request_exists(rid)
    finally:
        store.close()


def test_labels_a_subscriber_failed_on_are_delivered_again_and_counted_once(routers, caplog) -> None:
    a, b = routers(), routers()
    rng = np.random.default_rng(7)
    learn, failed = b.learner.learn, []

    def flaky(events, *args, **kw):  # b's heads fail once, after its counters have taken the labels
        if not failed:
            failed.append(len(events))
            raise RuntimeError("boom")
        return learn(events, *args, **kw)

    b.learner.learn = flaky  # type: ignore[method-assign]
    sats = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    for s in sats:
        a.feedback("acme", route(a, rng).request_id, s, []).result(10)
    caught_up(b)
    caught_up(a, b)
    st_a, st_b = a.tenants["acme"], b.tenants["acme"]
    assert failed  # the labels the failure skipped are learned after all: the heads agree
    np.testing.assert_allclose(b.heads.W, a.heads.W, rtol=0, atol=1e-12)
    assert st_b.labelled == st_a.labelled == len(sats) and st_b.sat_sum == pytest.approx(sum(sats))  # once each
    assert st_b.queue == pytest.approx(st_a.queue, abs=1e-12)
    assert "a subscriber failed on labels" in caplog.text


def test_a_replica_failing_on_labels_says_so_in_its_metrics_until_it_takes_them(routers) -> None:
    a, b = routers(), routers()
    metrics = Metrics()
    metrics.watch(b)
    stuck = 'messplus_label_log_stuck{backend="postgres"} '
    assert stuck + "0.0" in generate_latest(metrics.registry).decode()
    def broken(*args: object, **kw: object) -> int:
        raise RuntimeError("boom")

    learn, b.learner.learn = b.learner.learn, broken  # type: ignore[method-assign]
    a.feedback("acme", route(a, np.random.default_rng(3)).request_id, 1.0, []).result(10)
    deadline = time.monotonic() + 10
    while not b.store.log_stuck and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stuck + "1.0" in generate_latest(metrics.registry).decode() and "boom" in b.store.log_stuck
    b.learner.learn = learn  # type: ignore[method-assign]
    caught_up(b)
    assert stuck + "0.0" in generate_latest(metrics.registry).decode() and b.tenants["acme"].labelled == 1


def test_a_read_made_before_a_failed_delivery_in_the_same_batch_is_dropped_and_read_again(postgres_url) -> None:
    store = PostgresStore(postgres_url, poll_s=60)  # no subscriber thread: deliveries are driven by hand
    try:
        got, fail = [], [True]

        def cb(events: list[LabelEvent]) -> None:
            if fail and fail.pop():
                raise RuntimeError("boom")
            got.extend(ev.seq for ev in events)

        def ev(seq: int) -> LabelEvent:
            return LabelEvent(seq=seq, tenant="acme", request_id=f"r{seq}", model="cheap", satisfaction=1.0,
                              moves_queue=True, queue_after=0.0, exploration=False, embedding=None)

        store._callbacks.append(cb)
        # one batch, two reads (labels 1-2, then 3), delivered after its commit: the first delivery fails
        store._deliver((0, [ev(1), ev(2)]))
        store._deliver((2, [ev(3)]))  # read before the failure: delivering it would move past labels 1-2
        assert (store._cursor, store._reading, got) == (0, 0, [])
        assert store.log_stuck == "labels after seq 0 fail in this router (RuntimeError: boom)"  # a metric says so
        store._deliver((0, [ev(1), ev(2), ev(3)]))  # the next read, from before the failed labels
        assert got == [1, 2, 3] and store._cursor == 3 and store.log_stuck == ""
    finally:
        store.close()


LOG_READ = "FROM labels l JOIN requests r"  # the label log since a cursor (state/sql.py _EVENTS)


def test_a_feedback_is_a_few_round_trips_under_the_fleets_lock(postgres_url: str) -> None:
    """Every statement of a Feedback's transaction is a round trip made while the log's lock is held, so they
    bound the Feedbacks the whole fleet commits per second (docs/SCALING.md). A Feedback's job is one read and
    one write (with the notification) whatever the number of labels, a duplicate's the read alone, and the
    transaction's first job reads the label log since the cursor: after it the lock is the transaction's, so
    the later jobs' labels are their own read. A routed record's job is one statement; the transaction around a
    batch adds its begin (with the lock and the first savepoint), one statement between two jobs, the commit."""
    store = PostgresStore(postgres_url, poll_s=0.1)  # the tail's reads share batches with the counted jobs
    r = Router(MODELS, [TENANT], Heads([m.name for m in MODELS], DIM), store, snapshot_every=10_000)
    sent: list[str] = []
    real = store._writer.conn.execute

    def counted(query: str, params: tuple = ()) -> object:
        sent.append(query)
        return real(query, params)

    def job_of(marker: str, nth: int = -1) -> tuple[list[str], bool]:
        """The statements of the job that sent `marker` (the nth such job), from its savepoint to the release
        after it, and whether a job before it in its transaction read the log (such as the tail's)."""
        assert not {"SAVEPOINT job", "RELEASE SAVEPOINT job", "COMMIT"} & set(sent), sent
        start = [i for i, q in enumerate(sent) if marker in q][nth]
        while not sent[start - 1].endswith("SAVEPOINT job"):
            start -= 1
        end = next(i for i in range(start, len(sent)) if sent[i].startswith("RELEASE SAVEPOINT job;"))
        begin = max(i for i in range(start) if sent[i].startswith("BEGIN"))
        return [q.split()[0] for q in sent[start:end]], any(LOG_READ in q for q in sent[begin:start])

    def feedback_job(nth: int = -1, wrote: bool = True) -> None:
        job, read_before = job_of("LEFT JOIN tenants", nth)
        assert job == ["SELECT", *(["WITH"] if wrote else []), *([] if read_before else ["SELECT"])], (job, sent)

    store._writer.conn.execute = counted
    try:
        rng = np.random.default_rng(1)
        d = route(r, rng, exploration=EXPLORE_ALWAYS)  # both models invoked: two labels to give
        assert job_of("INSERT INTO requests")[0] == ["WITH"]
        other = next(r.names[k] for k in d.invoked if k != d.served)
        for labels, applied in (([(other, 1.0)], 2), ([], 0)):
            sent.clear()
            assert r.feedback("acme", d.request_id, 1.0, labels).result(10).applied == applied
            feedback_job(wrote=applied > 0)
        # three Feedbacks in one batch (the writer held meanwhile): one log read among them
        ds = [route(r, rng) for _ in range(3)]
        gate = threading.Event()
        held = store._writer.submit(lambda conn: gate.wait(10))
        sent.clear()
        futures = [r.feedback("acme", x.request_id, 0.0, []) for x in ds]
        gate.set()
        assert held.result(10) and [f.result(10).applied for f in futures] == [1, 1, 1]
        for nth in range(3):
            feedback_job(nth)
        first = job_of("LEFT JOIN tenants", 0)
        batch = sent[max(i for i in range(sent.index(next(q for q in sent if "LEFT JOIN tenants" in q)))
                         if sent[i].startswith("BEGIN")):]
        batch = batch[:next(i for i, q in enumerate(batch) if q.endswith("COMMIT")) + 1]
        assert sum(LOG_READ in q for q in batch) == 1, (first, batch)
        # the labels the later jobs took as their own read are the log's: every one learned, in order
        caught_up(r)
        seqs = [e.seq for e in store.label_events(0, 0)]
        assert r.heads.last_seq == seqs[-1] == store._cursor and r.tenants["acme"].labelled == 4
        (last,) = store.label_events(0, 0)[-1:]
        assert last.request_id == ds[-1].request_id and last.moves_queue and last.satisfaction == 0.0
        assert last.queue_after == r.tenants["acme"].queue
    finally:
        store.close()


def test_calibration_is_counted_by_the_replica_that_routed_whichever_took_the_feedback(routers) -> None:
    """The calibration counters (predicted against observed satisfaction per model) are kept by the router that
    routed a request, from its memory of the prediction. A Feedback taken by another replica reaches it through
    the label log: the fleet's sum counts every request once, with the labels of its first Feedback."""
    a, b = routers(), routers()
    ma, mb = Metrics(), Metrics()
    ma.watch(a)
    mb.watch(b)
    rng = np.random.default_rng(2)
    ds = []
    for i in range(6):
        d = route(a, rng, exploration=EXPLORE_ALWAYS if i < 2 else 0)
        ma.routed(d)  # what the servicer does after a Route
        ds.append(d)
    other = [(a.names[k], 1.0) for k in ds[1].invoked if k != ds[1].served]  # ds[1]: both models at once
    for i, d in enumerate(ds):
        at, m = (a, ma) if i % 2 else (b, mb)  # half at the other replica
        sat, labels = float(i % 3 == 0), other if i == 1 else []
        assert at.feedback("acme", d.request_id, sat, labels).result(10).applied == 1 + len(labels)
        m.labelled(d.request_id, sat, labels)  # what the servicer does after an applied Feedback
    late = [(a.names[k], 1.0) for k in ds[0].invoked if k != ds[0].served]  # a second Feedback: not counted
    assert a.feedback("acme", ds[0].request_id, 1.0, late).result(10).applied == 1
    caught_up(a, b)

    def counted(m: Metrics, name: str) -> dict[str, float]:
        return {s.labels["model"]: s.value for fam in m.registry.collect() if fam.name == name
                for s in fam.samples if s.name == name + "_total"}

    want: dict[str, list[tuple[float, float]]] = {}  # model: [(predicted, observed)]
    for i, d in enumerate(ds):
        for model, s in [(a.names[d.served], float(i % 3 == 0)), *(other if i == 1 else [])]:
            want.setdefault(model, []).append((float(d.p_hat[a.index[model]]), s))
    assert counted(mb, "messplus_labels") == {}  # b routed nothing
    assert counted(ma, "messplus_labels") == {m: len(v) for m, v in want.items()}
    assert counted(ma, "messplus_label_observed") == pytest.approx({m: sum(s for _, s in v) for m, v in want.items()})
    assert counted(ma, "messplus_label_predicted") == pytest.approx({m: sum(p for p, _ in v) for m, v in want.items()})
