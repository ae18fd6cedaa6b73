"""The state backend's contract (state/base.py), run against every backend: a SQLite file and a real PostgreSQL
database (a fresh one per test, on the session's server). A new backend joins BACKENDS."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from messplus.service.errors import AlreadyExists, Conflict
from messplus.service.state.base import FeedbackCommit, RequestRow, Store
from messplus.service.state.sqlite import SqliteStore

def _postgres(request: pytest.FixtureRequest, tmp: Path) -> Store:
    from messplus.service.state.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("postgres_url"), record_wait_s=0.1)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "sqlite": lambda request, tmp: SqliteStore(tmp / "state.sqlite3"),
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = BACKENDS[request.param](request, tmp_path)
    s.ensure_tenants(("acme", "beta")).result()
    yield s
    s.close()


def row(rid: str, *, served: str = "cheap", invoked: tuple[str, ...] = ("cheap",), p: float = 0.6) -> RequestRow:
    return RequestRow(request_id=rid, tenant="acme", t=1, served_model=served, invoked=invoked,
                      exploration=len(invoked) > 1, cost=0.25, cost_raw=2.5, alpha=0.8,
                      embedding=np.arange(4, dtype=np.float32).tobytes(), explore_cost_raw=0.5 * (len(invoked) - 1),
                      p_served=p, target=0.9)


W, S = np.ones(3).tobytes(), np.eye(3).tobytes()  # a head snapshot's weights and covariance


def step(queue: float, n: int, s: float) -> float:
    return queue + 0.8 - s + n * 1000  # n is visible in the result: the store passes the tenant's label count


def test_tenants_start_at_zero_and_creating_them_again_keeps_them(store: Store) -> None:
    store.insert_request(row("r1")).result()
    store.ensure_tenants(("acme", "gamma")).result()
    t = store.tenants()
    assert set(t) == {"acme", "beta", "gamma"} and t["acme"].requests == 1 and t["gamma"].requests == 0
    assert t["beta"].queue == 0.0 and t["beta"].labelled == 0


def test_a_request_is_recorded_with_its_tenant_counters_and_model_counts(store: Store) -> None:
    store.insert_request(row("r1", served="big", invoked=("cheap", "big"))).result()
    assert store.request_exists("r1") and not store.request_exists("r2")
    got = store.request("r1")
    assert got is not None and got.invoked == ("cheap", "big") and got.served_model == "big" and got.exploration
    assert np.frombuffer(got.embedding or b"", np.float32).tolist() == [0, 1, 2, 3]
    t = store.tenants()["acme"]
    assert (t.requests, t.cost_sum, t.cost_raw_sum, t.explore_steps, t.explore_cost_raw) == (1, 0.25, 2.5, 1, 0.5)
    assert store.model_counts() == {("acme", "cheap"): (0, 1), ("acme", "big"): (1, 1)}


def test_a_record_written_again_counts_once_and_another_request_under_its_id_is_refused(store: Store) -> None:
    first = replace(row("r1", served="big", invoked=("cheap", "big")), replica="a")
    store.insert_request(first).result()
    store.insert_request(first).result()  # a retried commit whose reply was lost: the same router, tenant and t
    with pytest.raises(AlreadyExists, match="stored already"):
        store.insert_request(replace(first, t=2)).result()
    assert store.tenants()["acme"].requests == 1
    assert store.model_counts() == {("acme", "cheap"): (0, 1), ("acme", "big"): (1, 1)}


def test_a_failing_write_applies_nothing(store: Store) -> None:
    with pytest.raises(ValueError):
        store.insert_request(row("bad", served="big", invoked=("cheap",))).result()
    assert not store.request_exists("bad") and store.tenants()["acme"].requests == 0


def test_feedback_commits_new_labels_moves_the_queue_and_is_write_once(store: Store) -> None:
    store.insert_request(row("r1", invoked=("cheap", "big"))).result()
    seen: list[FeedbackCommit] = []
    fut: Future[FeedbackCommit] = store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0, "big": 0.0}, step,
                                                       seen.append)
    commit = fut.result()
    assert seen == [commit]  # after_commit ran before the future resolved
    assert commit.new == {"cheap": 1.0, "big": 0.0} and commit.moved and commit.queue == pytest.approx(1000 - 0.2)
    again = store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0}, step).result()
    assert again.new == {} and again.given == 1 and not again.moved and again.queue == pytest.approx(1000 - 0.2)
    with pytest.raises(Conflict, match="write-once"):
        store.apply_feedback("acme", "r1", "cheap", {"big": 1.0}, step).result()
    t = store.tenants()["acme"]
    assert (t.labelled, t.sat_sum, t.queue) == (1, 1.0, pytest.approx(1000 - 0.2))
    log = store.label_events(0)
    assert [(e.model, e.satisfaction, e.moves_queue) for e in log] == [("cheap", 1.0, True), ("big", 0.0, False)]
    assert log[0].seq < log[1].seq and store.label_events(log[0].seq) == log[1:]
    assert commit.events == tuple(log)  # the transaction's own log entries, as the log has them
    assert log[0].queue_after == commit.queue and log[1].queue_after is None and log[0].exploration
    assert np.frombuffer(log[0].embedding or b"", np.float32).tolist() == [0, 1, 2, 3] and log[0].tenant == "acme"
    rows, seq = store.tenants_at()
    assert seq == log[-1].seq and rows["acme"].labelled == 1


def test_a_label_of_another_model_does_not_move_the_queue(store: Store) -> None:
    store.insert_request(row("r1", invoked=("cheap", "big"))).result()
    commit = store.apply_feedback("acme", "r1", "cheap", {"big": 1.0}, step).result()
    assert not commit.moved and commit.queue == 0.0 and store.tenants()["acme"].labelled == 0


def test_expectations_split_labelled_and_pending_requests(store: Store) -> None:
    store.insert_request(row("r1", p=0.6)).result()
    store.insert_request(row("r2", p=0.7)).result()
    store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0}, step).result()
    store.insert_request(row("r3", served="gone", invoked=("gone",), p=0.1)).result()
    e = store.expectations(("cheap", "big"))["acme"]
    assert (e.pending_n, e.resid_n) == (1, 1)  # r3's model left the zoo: its label cannot come in
    assert e.pending_sum == pytest.approx(0.9 - 0.7) and e.resid_sum == pytest.approx(0.4)
    assert e.resid_sq == pytest.approx(0.16)
    assert store.expectations(("cheap", "big", "gone"))["acme"].pending_n == 2


def test_a_served_label_keeps_the_prediction_it_came_to_and_its_residual_is_against_that(store: Store) -> None:
    store.insert_request(row("r1", invoked=("cheap", "big"), p=0.6)).result()
    store.insert_request(row("r2", p=0.6)).result()
    commit = store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0, "big": 0.0}, step, p_label=0.9).result()
    assert [(e.model, e.p_label) for e in commit.events] == [("cheap", 0.9), ("big", None)]
    assert [(e.model, e.p_label, e.p_served) for e in store.label_events(0)] == [("cheap", 0.9, 0.6),
                                                                                  ("big", None, 0.6)]
    store.apply_feedback("acme", "r2", "cheap", {"cheap": 0.0}, step).result()  # none given: the routed one
    e = store.expectations(("cheap", "big"))["acme"]
    assert e.resid_n == 2 and e.resid_sum == pytest.approx((1.0 - 0.9) + (0.0 - 0.6))
    assert e.resid_sq == pytest.approx(0.1 ** 2 + 0.6 ** 2)


def test_head_snapshots_round_trip_and_pretrained_heads_sit_before_every_later_label(store: Store) -> None:
    store.write_heads([("cheap", W, S)], 3, 7).result()
    head = store.head("cheap")
    assert head is not None and (head.features, head.last_seq, head.W, head.S) == (3, 7, W, S)
    assert store.head("big") is None
    seq = store.write_pretrained([("cheap", W, S), ("big", W, S)], 3, 0).result()
    assert seq >= 1 and store.head("big") is not None and store.head("big").last_seq == seq  # type: ignore[union-attr]
    store.insert_request(row("r1")).result()
    store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0}, step).result()
    assert store.label_events(seq) and all(e.seq > seq for e in store.label_events(0))


def test_flush_waits_for_every_write(store: Store) -> None:
    futures = [store.insert_request(row(f"r{i}")) for i in range(20)]
    store.flush()
    assert all(f.done() for f in futures) and store.tenants()["acme"].requests == 20


def _run(store: Store, statement: str) -> None:
    """A statement in the store's own write transaction (to age records and snapshots: their times are now())."""
    store._writer.submit(lambda conn: conn.execute(statement)).result()  # type: ignore[attr-defined]


def test_expiry_drops_old_learned_records_with_their_labels_past_a_removed_models_stale_head(store: Store) -> None:
    """Records older than the retention go once every head snapshot has learned their labels, and their labels go
    with them; a record never labelled goes too. A model that left the zoo keeps its last snapshot, which must
    not hold every later record back (the minimum over all heads); a label left without its request answered
    the Feedback of a request that reused the id as a duplicate, applying nothing."""
    for rid in ("r0", "r1", "r2"):
        store.insert_request(row(rid)).result()
    for rid in ("r0", "r1"):
        store.apply_feedback("acme", rid, "cheap", {"cheap": 1.0}, step).result()
    seq = max(e.seq for e in store.label_events(0))
    store.write_heads([("cheap", W, S), ("big", W, S)], 3, seq).result()
    store.write_heads([("gone", W, S)], 3, 0).result()
    _run(store, "UPDATE heads SET updated = 0 WHERE model = 'gone'")  # a removed model's snapshot, long ago
    _run(store, "UPDATE requests SET created = 0")
    _run(store, "UPDATE labels SET created = 0")  # labels older than an expiry period too
    store.insert_request(row("r3")).result()  # new: kept
    store.retention_s = 3600.0  # type: ignore[attr-defined]
    assert store.expire().result() == 3
    assert [rid for rid in ("r0", "r1", "r2", "r3") if store.request_exists(rid)] == ["r3"]
    assert store.label_events(0) == []
    store.insert_request(row("r0")).result()  # the id is free again, and its label is new
    assert store.apply_feedback("acme", "r0", "cheap", {"cheap": 0.0}, step).result().new == {"cheap": 0.0}


def test_expiry_keeps_a_record_whose_label_no_snapshot_has_learned(store: Store) -> None:
    """A label after the last snapshot is replayed into the heads at start from its record: that record stays.
    On a quiet state whose newest snapshot is itself older than the retention (fewer labels than
    snapshot_every_labels in that time) the snapshot still counts: counting only heads written within the
    retention held every record back."""
    for rid in ("r0", "r1"):
        store.insert_request(row(rid)).result()
    store.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, step).result()
    store.write_heads([("cheap", W, S)], 3, max(e.seq for e in store.label_events(0))).result()
    store.apply_feedback("acme", "r1", "cheap", {"cheap": 1.0}, step).result()  # not learned by the snapshot
    _run(store, "UPDATE heads SET updated = 0")
    _run(store, "UPDATE requests SET created = 0")
    _run(store, "UPDATE labels SET created = 0")  # labels older than an expiry period too
    store.retention_s = 3600.0  # type: ignore[attr-defined]
    assert store.expire().result() == 1
    assert [rid for rid in ("r0", "r1") if store.request_exists(rid)] == ["r1"]
    assert [e.request_id for e in store.label_events(0)] == ["r1"]


def test_expiry_keeps_an_old_record_whose_label_came_in_within_an_expiry_period(store: Store) -> None:
    """A late label of a record past the retention, learned by the snapshot another replica wrote: a replica whose
    tail is behind has yet to read it, and a record dropped with its label at once was never learned there (the
    replicas' heads differed for good). It stays one expiry period (a tenth of the retention, at most an hour)."""
    store.insert_request(row("r0")).result()
    _run(store, "UPDATE requests SET created = 0")  # routed long ago
    store.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, step).result()  # labelled now
    store.write_heads([("cheap", W, S)], 3, max(e.seq for e in store.label_events(0))).result()
    store.retention_s = 3600.0  # type: ignore[attr-defined]
    assert store.expire().result() == 0 and store.request_exists("r0")
    _run(store, f"UPDATE labels SET created = created - {3600.0 / 10 + 1}")  # an expiry period later
    assert store.expire().result() == 1 and not store.request_exists("r0")


def test_expiry_leaves_the_expected_queue_as_it_was(store: Store) -> None:
    """A router started after an expiry expects what the running one expected: the SLA counts every request for
    good, so what a dropped record added (an unlabelled one's target - p_served, a labelled one's residual, its
    request index) is kept, per served model: an unlabelled request of a model that left the zoo stays out, as
    it does while stored. Without it a restart forgot a month of sparse feedback's unlabelled requests, and a
    tenant whose records had all gone was handed request indices again."""
    store.insert_request(replace(row("r0", p=0.6), t=5)).result()  # labelled: a residual of 0.4
    store.insert_request(row("r1", p=0.7)).result()  # unlabelled: 0.9 - 0.7 expected
    store.insert_request(row("r4", served="gone", invoked=("gone",), p=0.1)).result()  # a model no longer in the zoo
    store.insert_request(replace(row("b0", p=0.3), tenant="beta", t=9)).result()  # all of beta's records go
    store.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, step).result()
    store.write_heads([("cheap", W, S)], 3, max(e.seq for e in store.label_events(0))).result()
    _run(store, "UPDATE requests SET created = 0")
    _run(store, "UPDATE labels SET created = 0")  # labels older than an expiry period too
    store.insert_request(row("r2", p=0.5)).result()  # recent: stays, unlabelled
    store.insert_request(row("r3", p=0.8)).result()  # recent: stays, labelled (a residual of -0.8)
    store.apply_feedback("acme", "r3", "cheap", {"cheap": 0.0}, step).result()
    zoo = ("cheap", "big")
    before = store.expectations(zoo)
    store.retention_s = 3600.0  # type: ignore[attr-defined]
    assert store.expire().result() == 4 and not any(store.request_exists(r) for r in ("r0", "r1", "r4", "b0"))
    after = store.expectations(zoo)
    terms = ("pending_n", "resid_n", "last_t")
    assert [getattr(after["acme"], k) for k in terms] == [getattr(before["acme"], k) for k in terms] == [2, 2, 5]
    for k in ("pending_sum", "resid_sum", "resid_sq"):
        assert getattr(after["acme"], k) == pytest.approx(getattr(before["acme"], k))
    assert after["acme"].pending_sum == pytest.approx(0.2 + 0.4) and after["acme"].resid_sum == pytest.approx(-0.4)
    assert after["beta"] == before["beta"] and after["beta"].last_t == 9 and after["beta"].pending_n == 1
    assert store.expectations((*zoo, "gone"))["acme"].pending_n == 3  # the model back in the zoo: counted again


def test_an_inline_store_expires_everything_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay's in-memory store runs each job on the caller's thread: the batches run in a loop (chained
    from each other's commit they nested, and past Python's recursion limit stopped without a word)."""
    from messplus.service.state import sql

    monkeypatch.setattr(sql, "EXPIRE_BATCH", 1)
    s = SqliteStore(":memory:", inline=True, retention_s=3600.0)
    try:
        s.ensure_tenants(("acme",)).result()
        for i in range(1500):
            s.insert_request(row(f"r{i}")).result()
        s.submit(lambda conn: conn.execute("UPDATE requests SET created = 0")).result()
        assert s.expire().result() == 1
        assert s.read("SELECT count(*) FROM requests") == [(0,)]
    finally:
        s.close()


def test_expiry_runs_in_bounded_transactions_until_nothing_is_left(store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A first expiry of a large state drops EXPIRE_BATCH records per transaction (Route's records and Feedback
    commit in between), each next one submitted when the last came back full."""
    from messplus.service.state import sql

    monkeypatch.setattr(sql, "EXPIRE_BATCH", 2)
    for i in range(5):
        store.insert_request(row(f"r{i}")).result()
    _run(store, "UPDATE requests SET created = 0")
    store.retention_s = 3600.0  # type: ignore[attr-defined]
    assert store.expire().result() == 2
    store.flush()
    store.flush()  # the last of the chained jobs was submitted by the one before it
    assert not any(store.request_exists(f"r{i}") for i in range(5)) and store.tenants()["acme"].requests == 5


def test_a_started_sqlite_store_expires_by_itself(tmp_path: Path) -> None:
    """The SQLite state kept every record (2.1 KB each) for good: a router's file grew without bound. Once the
    router has started, the store expires on its own (at start, then every min(retention / 10, 1 h))."""
    s = SqliteStore(tmp_path / "state.sqlite3", retention_s=3600.0)
    try:
        s.ensure_tenants(("acme",)).result()
        s.insert_request(row("r0")).result()
        s.submit(lambda conn: conn.execute("UPDATE requests SET created = 0")).result()
        assert s.request_exists("r0")
        s.started()
        deadline = time.monotonic() + 10
        while s.request_exists("r0") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not s.request_exists("r0")
    finally:
        s.close()


def test_a_sqlite_state_opened_by_open_store_is_held_until_the_store_closes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`messplus serve` and `pretrain` open their state through open_store: a second opener of the same file is
    refused naming the holder, and closing the store lets it go."""
    import os

    from messplus.service.config import StateConfig
    from messplus.service.state import StateInUse, open_store

    path = str(tmp_path / "messplus.sqlite3")
    first = open_store(StateConfig(), path)
    try:
        with pytest.raises(StateInUse, match=rf"pid {os.getpid()}"):
            open_store(StateConfig(), path)
    finally:
        first.close()
    open_store(StateConfig(), path).close()


def test_postgres_reads_the_start_up_expectations_in_one_snapshot_while_another_replica_expires(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica starting reads the stored records' expected-queue terms, then table `expired`; another replica's
    expiry can commit in between, moving records from the first into the second. Read as separate statements,
    those records were counted twice. Here the expiry (a second store on the same database, its own connection
    and transaction) commits between the two reads, for real: the reads still see the state before it."""
    from messplus.service.state import sql

    store, other = _postgres(request, tmp_path), _postgres(request, tmp_path)
    try:
        store.ensure_tenants(("acme",)).result()
        store.insert_request(replace(row("r0", p=0.6), t=5)).result()  # labelled: a residual of 0.4
        store.insert_request(row("r1", p=0.7)).result()  # unlabelled: 0.9 - 0.7 expected
        store.apply_feedback("acme", "r0", "cheap", {"cheap": 1.0}, step).result()
        store.write_heads([("cheap", W, S)], 3, max(e.seq for e in store.label_events(0))).result()
        _run(store, "UPDATE requests SET created = 0")
        _run(store, "UPDATE labels SET created = 0")
        zoo = ("cheap", "big")
        before = store.expectations(zoo)["acme"]
        other.retention_s = 3600.0  # type: ignore[attr-defined]
        records_read, expired = sql._terms, []

        def then_expire(conn: object, only: str, params: tuple[object, ...]) -> object:
            out = records_read(conn, only, params)
            if only == "" and not expired:  # the start-up read of the stored records, not the expiry's own
                expired.append(other.expire().result())
            return out

        monkeypatch.setattr(sql, "_terms", then_expire)
        during = store.expectations(zoo)["acme"]
        assert expired == [2] and not store.request_exists("r0") and not store.request_exists("r1")
        monkeypatch.undo()
        after = store.expectations(zoo)["acme"]  # read again: every term from `expired` now
        for e in (during, after):
            assert (e.pending_n, e.resid_n, e.last_t) == (before.pending_n, before.resid_n, before.last_t) == (1, 1, 5)
            assert e.pending_sum == pytest.approx(0.2) and e.resid_sum == pytest.approx(0.4)
    finally:
        other.close()
        store.close()
