"""Durable state in one SQLite file (WAL mode): tenants' queues, requests, feedback labels, predictor heads.

Who writes, and in what order: one writer thread owns the write connection and runs every mutation as a job,
draining all pending jobs into one transaction (group commit, state/writer.py). A job's future resolves only
after that transaction has committed, so "append feedback, commit, then update Q in memory, then ack" holds:
the router updates its in-memory state in the job's `after_commit` callback, which runs on the writer thread
after the commit, and the RPC acknowledges when the future resolves. Only this process writes the file.

Retention: request records (2.1 KB each, mostly the embedding) older than `retention_s` whose labels every head
snapshot has learned are dropped with their labels (sql.expire: what they added to the tenant's expected queue
is kept in table `expired`), at start and every min(retention / 10, 1 h), on the writer thread in transactions of
sql.EXPIRE_BATCH records; the file then stops growing (SQLite reuses the freed pages; it does not shrink without
a VACUUM).

Durability: with `synchronous=FULL` (default) a committed transaction survives a process crash and a power
loss; with NORMAL it survives a process crash (kill -9) but the last transactions may roll back on power loss.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from . import sql
from .base import AfterCommit, FeedbackCommit, QueueStep, RequestRow, Store, TenantRow
from .writer import GroupCommit, Job

log = logging.getLogger("messplus.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    queue REAL NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    labelled INTEGER NOT NULL DEFAULT 0,
    sat_sum REAL NOT NULL DEFAULT 0,
    cost_sum REAL NOT NULL DEFAULT 0,
    cost_raw_sum REAL NOT NULL DEFAULT 0,
    explore_steps INTEGER NOT NULL DEFAULT 0,
    explore_cost_raw REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS model_counts (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    served INTEGER NOT NULL DEFAULT 0,
    invoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, model)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    t INTEGER NOT NULL,
    served_model TEXT NOT NULL,
    invoked TEXT NOT NULL,
    exploration INTEGER NOT NULL,
    cost REAL NOT NULL,
    cost_raw REAL NOT NULL,
    alpha REAL NOT NULL,
    embedding BLOB,
    created REAL NOT NULL,
    p_served REAL,
    target REAL,
    replica TEXT
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    satisfaction REAL NOT NULL,
    moves_queue INTEGER NOT NULL,
    queue_after REAL,
    created REAL NOT NULL,
    p_label REAL,
    UNIQUE (request_id, model)
);
CREATE TABLE IF NOT EXISTS expired (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    pending_sum REAL NOT NULL DEFAULT 0,
    pending_n INTEGER NOT NULL DEFAULT 0,
    resid_sum REAL NOT NULL DEFAULT 0,
    resid_sq REAL NOT NULL DEFAULT 0,
    resid_n INTEGER NOT NULL DEFAULT 0,
    last_t INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, model)
);
CREATE TABLE IF NOT EXISTS heads (
    model TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    last_label_seq INTEGER NOT NULL,
    W BLOB NOT NULL,
    S BLOB NOT NULL,
    updated REAL NOT NULL
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state file written by an earlier version up to SCHEMA (columns are only ever added)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(tenants)")}
    if "explore_cost_raw" not in have:
        conn.execute("ALTER TABLE tenants ADD COLUMN explore_cost_raw REAL NOT NULL DEFAULT 0")
    have = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for column, kind in (("p_served", "REAL"), ("target", "REAL"), ("replica", "TEXT")):
        if column not in have:
            conn.execute(f"ALTER TABLE requests ADD COLUMN {column} {kind}")
    if "p_label" not in {row[1] for row in conn.execute("PRAGMA table_info(labels)")}:
        conn.execute("ALTER TABLE labels ADD COLUMN p_label REAL")


_STORAGE = ("database is locked", "database or disk is full", "disk i/o error", "unable to open database file")


def _storage_failure(exc: BaseException) -> bool:
    """An error of the file, not of the job (a job's own errors are Conflict, NotFound, a constraint)."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc).lower().startswith(_STORAGE)


def connect(path: Path, synchronous: str = "FULL", readonly: bool = False) -> sqlite3.Connection:
    """A connection with the project's pragmas (WAL, the given sync mode, a busy timeout)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SqliteStore(sql.SqlReads, Store):
    """The SQLite file, one writer thread with group commit (state/writer.py), and a reader connection."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_batch: int = 512,
                 inline: bool = False, held: IO[str] | None = None, retention_s: float = 30 * 86400.0) -> None:
        """`inline=True` runs each job at once on the caller's thread (the replay's in-memory store, which never
        expires records); `held`, the state's lock file (`lock_sqlite_state`), is closed with the store."""
        self._held = held
        self.retention_s = retention_s
        self._stop = threading.Event()
        self._expiry: threading.Thread | None = None
        self.path = Path(path)
        self.inline = inline
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        sync = synchronous.upper()
        writer = connect(self.path, sync)
        writer.executescript(SCHEMA)
        _migrate(writer)
        self._writer = GroupCommit(lambda: writer, begin="BEGIN IMMEDIATE", max_batch=max_batch, inline=inline,
                                   transient=_storage_failure)
        try:
            self._reader = writer if inline else connect(self.path, sync)
        except BaseException:  # the writer's thread and connection go too
            self._writer.close()
            raise
        self._reader_lock = threading.Lock()
        self._closed = False

    @property
    def error(self) -> str:
        return self._writer.error or self._writer.stall()

    # -- writing -------------------------------------------------------------------------------------------
    def submit(self, job: Job, after_commit: Callable[[Any], None] | None = None) -> Future[Any]:
        """Run `job(conn)` inside the next transaction; the future holds its result once committed (and
        `after_commit(result)` has run on the writer thread)."""
        return self._writer.submit(job, after_commit)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every job submitted so far has committed."""
        self._writer.flush(timeout)

    def started(self) -> None:
        """The router has loaded its state: expire old records now (queued before anything the router writes next)
        and every min(retention / 10, 1 h) after."""
        if self.inline or self._expiry is not None:
            return
        self.expire()
        self._expiry = threading.Thread(target=self._run_expiry, name="messplus-state-expiry", daemon=True)
        self._expiry.start()

    def _run_expiry(self) -> None:
        every = sql.expire_every(self.retention_s)
        while not self._stop.wait(every):
            try:
                self.expire()
            except RuntimeError:  # closed between the wait and the submit
                return

    def expire(self) -> Future[int]:
        return sql.expire_all(self.submit, self.retention_s, inline=self.inline)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._expiry is not None:
            self._expiry.join(timeout=10)
        self._writer.close()
        if not self.inline:
            self._reader.close()
        if self._held is not None:
            self._held.close()

    # -- reading -------------------------------------------------------------------------------------------
    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._reader_lock:
            return self._reader.execute(sql, params).fetchall()

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._reader_lock:
            return fn(self._reader, *args)

    def tenants_at(self) -> tuple[dict[str, TenantRow], int]:
        with self._reader_lock:  # one read transaction: one snapshot of the file
            self._reader.execute("BEGIN")
            try:
                return sql.tenants(self._reader), sql.label_seq(self._reader)
            finally:
                self._reader.execute("COMMIT")

    # -- the router's writes (the Store interface): each a job on the writer thread ------------------------------
    def ensure_tenants(self, names: tuple[str, ...]) -> Future[None]:
        return self.submit(lambda conn: sql.ensure_tenants(conn, names))

    def insert_request(self, row: RequestRow) -> Future[None]:
        return self.submit(lambda conn: sql.insert_request(conn, row))

    def apply_feedback(self, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                       step: QueueStep, after_commit: AfterCommit = None, *,
                       p_label: float | None = None) -> Future[FeedbackCommit]:
        return self.submit(lambda conn: sql.apply_feedback(conn, tenant, request_id, served_model, labels, step,
                                                           p_label=p_label), after_commit)

    def write_heads(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[None]:
        return self.submit(lambda conn: sql.write_heads(conn, snaps, features, last_seq))

    def write_pretrained(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[int]:
        """The router reads a snapshot at seq 0 as "no snapshot" (and starts from the prior), so a state without
        any label gets its label counter moved to 1 (sqlite_sequence, SQLite's documented AUTOINCREMENT
        counter): the snapshot says "labels up to 1 are in", and the first real label gets seq 2 and is
        replayed after a crash."""
        def job(conn: sqlite3.Connection) -> int:
            seq = max(int(last_seq), sql.label_seq(conn), 1)
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'labels'").fetchone()
            if row is None:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('labels', ?)", (seq,))
            elif row[0] < seq:
                conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'labels'", (seq,))
            sql.write_heads(conn, snaps, features, seq)
            return seq
        return self.submit(job)
