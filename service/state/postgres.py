"""The state on PostgreSQL, shared by every router replica (docs/SCALING.md has the design and its reasons).

- Writes are group-committed by one writer thread (state/writer.py), as on SQLite. A label and the tenant's new
  queue commit in one transaction. Every write transaction first takes one transaction-scoped advisory lock, so
  label seqs are handed out in commit order (a reader that has seen seq n has seen every committed seq below it)
  and replicas' batches, which lock tenant and model-count rows in no fixed order, never deadlock.
- The label log is read forward by seq: each feedback transaction returns every label after this replica's
  cursor (other replicas' and its own, in order), and a tail thread LISTENs for the notification every label
  commit sends (and reads the log every `poll_s` anyway, so nothing is missed across a lost connection). The
  subscriber (the router) gets the labels in order, on the writer thread.
- A routed request's record is a retried write: while the database is down, records wait (at most
  `buffer_records`; past that Route is refused with UNAVAILABLE) and are committed when it is back. Feedback is
  never retried by the store: it fails with UNAVAILABLE and nothing is acknowledged that was not committed.
- The schema is versioned (table messplus_schema) and migrated forward at start under a session advisory lock,
  so replicas starting together do not race; a schema newer than this code is refused (state/pgschema.py).

The password never appears in the URL: it comes from `state.password_file` or $MESSPLUS_STATE_PASSWORD.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import StorageUnavailable
from . import sql
from .base import AfterCommit, Expectation, FeedbackCommit, LabelEvent, QueueStep, RequestRow, Store, TenantRow, then
from .pgfaults import database_failure, tcp_defaults
from .pgschema import migrate
from .writer import GroupCommit

log = logging.getLogger("messplus.store")

CHANNEL = "messplus_labels"
LOG_LOCK = 0x6D6573735F6C6F67  # the log's advisory lock key ("mess_log"; pgschema.MIGRATE_LOCK: "mess_mig")
LOCK_TIMEOUT_S = 30.0
READ_LOCK_TIMEOUT_S = 3.0


def _lock_timeout(conn: psycopg.Connection[Any], seconds: float, *, local: bool = False) -> None:
    """How long the connection's statements (its transaction's, `local`) wait for a lock held elsewhere."""
    conn.execute(f"SET {'LOCAL ' if local else ''}lock_timeout = {int(seconds * 1000)}")


def _reader_settings(conn: psycopg.Connection[Any]) -> None:
    """A pooled reader waits READ_LOCK_TIMEOUT_S for a lock, no longer: a scrape of /metrics, SlaStatus and
    Feedback's lookup then fail (StorageUnavailable) while a table is locked, instead of hanging past
    Prometheus's scrape timeout (and messplus_state_up 0 never being stored). The start-up's reads wait as
    long as the writer does (PostgresStore._patient)."""
    _lock_timeout(conn, READ_LOCK_TIMEOUT_S)


class _Qmark:
    """A psycopg connection that takes the qmark placeholders of state/sql.py."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.raw.execute(query.replace("?", "%s"), params)  # type: ignore[arg-type]

    def close(self) -> None:
        self.raw.close()


class PostgresStore(sql.SqlReads, Store):
    """The shared state: a writer thread, a pool of readers, and the tail of the label log."""

    shared = True
    backend = "postgres"

    def __init__(self, url: str, *, password: str = "", buffer_records: int = 10_000, poll_s: float = 0.5,
                 retention_s: float = 30 * 86400.0, record_wait_s: float = 2.0, max_batch: int = 512) -> None:
        self._kw: dict[str, Any] = {**tcp_defaults(url), **({"password": password} if password else {})}
        self._url, self.poll_s = url, poll_s
        self.retention_s, self.record_wait_s = retention_s, record_wait_s
        with psycopg.connect(url, autocommit=True, **self._kw) as conn:
            self.schema_version = migrate(conn)
        self._pool = ConnectionPool(url, kwargs={"autocommit": True, **self._kw}, min_size=1, max_size=4,
                                    open=True, name="messplus-state-read", configure=_reader_settings)
        self._callbacks: list[Callable[[list[LabelEvent]], None]] = []
        self._on_tenants: Callable[[dict[str, TenantRow]], None] | None = None
        self._cursor = self._reading = 0  # the last label seq handed to subscribers; counting the open batch's reads
        self._read_batch = -1  # the writer's batch whose transaction has read the log (_log_since_cursor)
        self._failed_from = -1  # the cursor a subscriber last failed from (-1: the last delivery went through)
        self.log_stuck = ""  # why the labels after the cursor are not taken in ("" while deliveries go through)
        self._catching_up = threading.Event()
        self._patient = True  # reads wait as long as the writer until the router has loaded (started())
        self._tail_error = ""  # why the tail cannot reach the database ("" while it can)
        # every write transaction takes the log lock first: a batch mixes records (tenant and model-count rows)
        # and feedback (the log lock, then a tenant row), so replicas locking in different orders deadlocked.
        # READ COMMITTED whatever the server's default_transaction_isolation: each statement then sees what the
        # replica before it committed under the lock (a repeatable-read snapshot, taken before the lock is
        # granted, would fail concurrent replicas' writes with serialization errors)
        try:
            self._writer = GroupCommit(self._connect, begin="BEGIN ISOLATION LEVEL READ COMMITTED; "
                                                            f"SELECT pg_advisory_xact_lock({LOG_LOCK})",
                                       max_batch=max_batch, reconnect=True, max_buffered=buffer_records, multi=True,
                                       on_rollback=self._rolled_back, transient=database_failure)
        except BaseException:  # the writer's connection refused (too many clients): the pool's threads go too
            self._pool.close()
            raise
        self._stop = threading.Event()
        self._tail = threading.Thread(target=self._run_tail, name="messplus-state-tail", daemon=True)

    def _connect(self) -> _Qmark:
        conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5, **self._kw)
        try:
            # a lock held elsewhere (a row, the log lock) fails the batch after LOCK_TIMEOUT_S, and it is retried;
            # a statement timeout would also cut a long read of the label log (a replica catching up)
            _lock_timeout(conn, LOCK_TIMEOUT_S)
            # an acknowledged label is on the server's disk whatever the database's or role's default (`off` is a
            # common tuning: a server crash then loses the last commits, acknowledged or not); a stronger setting
            # (remote_write, remote_apply: synchronous standbys) is kept
            (level,) = conn.execute("SHOW synchronous_commit").fetchone() or ("on",)
            if level in ("off", "local"):
                conn.execute("SET synchronous_commit = on")
        except BaseException:
            conn.close()
            raise
        return _Qmark(conn)

    @property
    def error(self) -> str:
        """Why the database cannot be written now, or the label log not followed, or a commit has been waiting on
        it for STALL_S ("" when all is well)."""
        return self._writer.error or self._tail_error or self._writer.stall()

    # -- the label log ----------------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[list[LabelEvent]], None], after: int = 0,
                  tenants: Callable[[dict[str, TenantRow]], None] | None = None) -> None:
        """Hand every label after seq `after` to `callback` in order, and (every poll) the tenants' rows to
        `tenants`; starts the tail. One subscriber per store (one router per process)."""
        self._callbacks.append(callback)
        self._on_tenants = tenants
        self._cursor = self._reading = after
        if not self._tail.is_alive():
            self._tail.start()

    def _rolled_back(self) -> None:
        self._reading = self._cursor

    def _log_since_cursor(self, conn: Any, own: tuple[LabelEvent, ...] | None = None) -> tuple[int, list[LabelEvent]]:
        """The labels after what this batch has read so far, and the seq the read started after.

        `own`: the labels the calling job has just inserted. Once a job of this transaction has read the log, the
        log's lock has been the transaction's ever since (the writer's `begin` takes it), so what follows that
        read is exactly what this transaction's jobs inserted: they are their own read, without a round trip."""
        start = self._reading
        if own is not None and self._read_batch == self._writer.batch:
            events = sorted(own, key=lambda e: e.seq)
        else:
            events = sql.label_events(conn, start)
            self._read_batch = self._writer.batch
        if events:
            self._reading = events[-1].seq
        return start, events

    def _deliver(self, read: tuple[int, list[LabelEvent]]) -> None:
        """Hand the labels read to the subscribers. One that raises gets them again from the next read (the
        cursor goes back to before them; a subscriber skips what it has): moving on would lose them for good.
        A read that starts past the cursor was made in the same batch before such a failure: it is dropped, as
        the next read brings its labels again after the failed ones."""
        start, events = read
        if start > self._cursor or not events or events[-1].seq <= self._cursor:
            return
        before, self._cursor = self._cursor, events[-1].seq
        try:
            for cb in self._callbacks:
                cb(events)
            self._failed_from, self.log_stuck = -1, ""
        except Exception as exc:
            if before != self._failed_from:  # one traceback per failing stretch, not one per poll
                log.exception("state tail: a subscriber failed on labels %d-%d; they are read again",
                              events[0].seq, events[-1].seq)
            self._failed_from = before
            self.log_stuck = f"labels after seq {before} fail in this router ({type(exc).__name__}: {exc})"
            self._cursor = self._reading = before

    def catch_up(self) -> Future[list[LabelEvent]]:
        """Read the log after the cursor (on the writer thread, in order with feedback) and deliver it."""
        self._catching_up.set()

        def job(conn: Any) -> tuple[tuple[int, list[LabelEvent]], dict[str, TenantRow] | None]:
            self._catching_up.clear()
            # the log last: a job that failed after its read had moved the batch's read past the cursor, and
            # every later read of the log, starting there, was dropped by _deliver
            rows = sql.tenants(conn) if self._on_tenants else None
            return self._log_since_cursor(conn), rows

        def after(res: tuple[tuple[int, list[LabelEvent]], dict[str, TenantRow] | None]) -> None:
            self._deliver(res[0])
            if res[1] is not None and self._on_tenants is not None:
                self._on_tenants(res[1])

        fut = self._writer.submit(job, after)
        # a batch that failed before reaching the job (the database down) never cleared the flag: the tail would
        # then never ask again, and this replica would stop hearing other replicas' labels after an outage
        fut.add_done_callback(lambda f: f.exception() is None or self._catching_up.clear())
        return then(fut, lambda res: res[0][1])

    def _run_tail(self) -> None:
        """LISTEN for label commits; read the log on each one this replica did not read in its own commit, and
        every poll_s whatever happens."""
        last_cleanup = 0.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5, **self._kw) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._tail_error = ""
                    woke, last = True, 0.0
                    while not self._stop.is_set():
                        if (woke or time.monotonic() - last >= self.poll_s) and not self._catching_up.is_set():
                            self.catch_up()
                            last = time.monotonic()
                        woke = False
                        for note in conn.notifies(timeout=self.poll_s, stop_after=1):
                            # a label commit; not one this replica's own feedback transaction already read (each
                            # of those would otherwise cost a second transaction per Feedback)
                            woke = not note.payload.isdigit() or int(note.payload) > self._reading
                        if time.monotonic() - last_cleanup > sql.expire_every(self.retention_s):
                            last_cleanup = time.monotonic()
                            self.expire()
            except psycopg.Error as exc:  # the database went away: say so (health) even while nothing writes
                if self._tail_error != (why := f"the label log cannot be followed: {exc}"):
                    log.warning("state tail: %s; reconnecting", exc)
                self._tail_error = why
                self._stop.wait(min(self.poll_s * 4, 5.0))
            except RuntimeError:  # close() shut the writer between the loop's check and a submit
                if not self._stop.is_set():
                    raise

    # -- writes ------------------------------------------------------------------------------------------------
    def ensure_tenants(self, names: tuple[str, ...]) -> Future[None]:
        return self._writer.submit(lambda conn: sql.ensure_tenants(conn, names))

    def insert_request(self, row: RequestRow) -> Future[None]:
        """A retried write: kept while the database is down (bounded), so Route need not wait for it."""
        return self._writer.submit(lambda conn: sql.insert_request(conn, row, one_statement=True), retry=True)

    def apply_feedback(self, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                       step: QueueStep, after_commit: AfterCommit = None, *,
                       p_label: float | None = None) -> Future[FeedbackCommit]:
        def job(conn: Any) -> tuple[FeedbackCommit, tuple[int, list[LabelEvent]]]:
            # the log's lock is the transaction's already (the writer's `begin`)
            commit = sql.apply_feedback(conn, tenant, request_id, served_model, labels, step, notify=CHANNEL,
                                        p_label=p_label)
            return commit, self._log_since_cursor(conn, commit.events)

        def after(res: tuple[FeedbackCommit, tuple[int, list[LabelEvent]]]) -> None:
            try:
                if after_commit is not None:
                    after_commit(res[0])  # the router counts its own labels first ...
            finally:  # ... then the log, its own labels included, in order: read, it must be delivered (else
                # the cursor stays behind the batch's reads, and every later read is dropped as made past it)
                self._deliver(res[1])

        return then(self._writer.submit(job, after), lambda res: res[0])

    def write_heads(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[None]:
        return self._writer.submit(lambda conn: sql.write_heads(conn, snaps, features, last_seq))

    def write_pretrained(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[int]:
        """Heads trained offline, at a seq >= 1 that every later label comes after (the sequence moved past it)."""
        def job(conn: Any) -> int:  # the log's lock is the transaction's (the writer's `begin`)
            seq = max(int(last_seq), sql.label_seq(conn), 1)
            conn.execute("SELECT setval(pg_get_serial_sequence('labels', 'seq'), ?)", (seq,))
            sql.write_heads(conn, snaps, features, seq)
            return seq
        return self._writer.submit(job)

    def expire(self) -> Future[int]:
        return sql.expire_all(self._writer.submit, self.retention_s)  # type: ignore[no-any-return]

    def flush(self, timeout: float = 30.0) -> None:
        self._writer.flush(timeout)

    def close(self) -> None:
        self._stop.set()
        self._writer.close()
        if self._tail.is_alive():
            with contextlib.suppress(Exception):  # wake the tail out of its wait for a notification (up to poll_s)
                with self._pool.connection(timeout=1.0) as conn:
                    conn.execute(f"NOTIFY {CHANNEL}, 'stop'")
            self._tail.join(timeout=10)
        self._pool.close()

    # -- reads (a pooled connection each) -----------------------------------------------------------------------
    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn on a pooled connection; when the pool has none that works (the database restarted under it, or it
        is down and the pool waits out its reconnect backoff), on a fresh one; the database unreachable:
        StorageUnavailable (UNAVAILABLE), after a second at most, instead of the pool's 30 s wait and INTERNAL."""
        try:
            with self._pool.connection(timeout=1.0) as conn:
                if self._patient:  # the start-up's reads: an operator's brief DDL lock must not stop the start
                    _lock_timeout(conn, LOCK_TIMEOUT_S)
                    try:
                        return fn(_Qmark(conn), *args)
                    finally:
                        _reader_settings(conn)
                return fn(_Qmark(conn), *args)
        except psycopg.errors.LockNotAvailable as exc:  # the database answered: a lock is held elsewhere
            raise StorageUnavailable(f"the state database is locked ({exc}); retry") from exc
        except psycopg.OperationalError:
            pass
        try:
            conn = self._connect()
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"the state database cannot be reached ({exc}); retry") from exc
        try:
            if not self._patient:
                _reader_settings(conn.raw)
            return fn(conn, *args)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"the state database failed a read ({exc}); retry") from exc
        finally:
            conn.close()

    def started(self) -> None:
        self._patient = False

    def _snapshot(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn on a pooled connection inside one REPEATABLE READ transaction: its reads see one snapshot."""
        with self._pool.connection() as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if self._patient:
                    _lock_timeout(conn, LOCK_TIMEOUT_S, local=True)
                return fn(_Qmark(conn), *args)

    def tenants_at(self) -> tuple[dict[str, TenantRow], int]:
        return self._snapshot(lambda c: (sql.tenants(c), sql.label_seq(c)))  # type: ignore[no-any-return]

    def expectations(self, models: Sequence[str]) -> dict[str, Expectation]:
        """One snapshot: a replica expiring meanwhile moves records into `expired` between two of the reads,
        which separate statements would count twice (or not at all)."""
        return self._snapshot(sql.expectations, models)  # type: ignore[no-any-return]

    def request(self, request_id: str) -> RequestRow | None:
        """The request's record, one read. One routed by another replica a moment ago may still be in its group
        commit: the Feedback handler looks again for up to record_wait_s, waiting on the event loop between reads
        (a wait on a thread held one of the loop's few executor threads per lookup: a flood of Feedback for ids
        that exist nowhere blocked every Feedback and SlaStatus behind it)."""
        return self._read(sql.request, request_id)  # type: ignore[no-any-return]
