"""Durable state in one SQLite file (WAL mode): tenants' queues, requests, feedback labels, predictor heads.

Who writes, and in what order: one writer thread owns the write connection and runs every mutation as a job
(`Store.submit`), draining all pending jobs into one transaction (group commit). A job's future resolves only
after that transaction has committed, so "append feedback, commit, then update Q in memory, then ack" holds:
the router updates its in-memory state in the job's `after_commit` callback, which runs on the writer thread
after the commit, and the RPC acknowledges when the future resolves.

Durability: with `synchronous=FULL` (default) a committed transaction survives a process crash and a power
loss; with NORMAL it survives a process crash (kill -9) but the last transactions may roll back on power loss.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..errors import Conflict, StorageUnavailable
from .base import (AfterCommit, Expectation, FeedbackCommit, HeadRow, LabelEvent, QueueStep, RequestRow, Store,
                   TenantRow, now)

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
    target REAL
);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    satisfaction REAL NOT NULL,
    moves_queue INTEGER NOT NULL,
    queue_after REAL,
    created REAL NOT NULL,
    UNIQUE (request_id, model)
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


Job = Callable[[sqlite3.Connection], Any]
_STOP = object()


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a state file written by an earlier version up to SCHEMA (columns are only ever added)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(tenants)")}
    if "explore_cost_raw" not in have:
        conn.execute("ALTER TABLE tenants ADD COLUMN explore_cost_raw REAL NOT NULL DEFAULT 0")
    have = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for column in ("p_served", "target"):
        if column not in have:
            conn.execute(f"ALTER TABLE requests ADD COLUMN {column} REAL")


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


class SqliteStore(Store):
    """The SQLite file, one writer thread with group commit, and a reader connection for look-ups."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_batch: int = 512,
                 inline: bool = False) -> None:
        """`inline=True` runs each job at once on the caller's thread (the replay's in-memory store)."""
        self.path = Path(path)
        self.inline = inline
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous.upper()
        self._max_batch = max_batch
        self._jobs: queue.Queue[Any] = queue.Queue()
        writer = connect(self.path, self._synchronous)
        writer.executescript(SCHEMA)
        _migrate(writer)
        self._writer = writer
        self._reader = writer if inline else connect(self.path, self._synchronous)
        self._reader_lock = threading.Lock()
        self._closed = False
        if inline:
            return
        self._thread = threading.Thread(target=self._run, name="messplus-store-writer", daemon=True)
        self._thread.start()

    # -- writing -------------------------------------------------------------------------------------------
    def submit(self, job: Job, after_commit: Callable[[Any], None] | None = None) -> Future[Any]:
        """Run `job(conn)` inside the next transaction; the future holds its result once committed.

        `after_commit(result)` runs on the writer thread right after the commit and before the future
        resolves: that is where in-memory state follows the durable state, in commit order.
        """
        if self._closed:
            raise RuntimeError("store is closed")
        fut: Future[Any] = Future()
        if self.inline:
            self._commit_batch([(job, after_commit, fut)])
        else:
            self._jobs.put((job, after_commit, fut))
        return fut

    def _drain(self, first: Any) -> list[Any]:
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._jobs.put(_STOP)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            self._commit_batch(self._drain(first))

    def _commit_batch(self, batch: list[Any]) -> None:
        conn = self._writer
        results: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, _, _ in batch:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((job(conn), None))
                    conn.execute("RELEASE job")
                except Exception as exc:  # noqa: BLE001 - a failing job must not take its batch down
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((None, exc))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the commit itself failed (disk full, I/O error)
            log.error("store commit failed: %s", exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            failure = StorageUnavailable(f"the state store could not commit ({exc}); nothing was applied: retry")
            for _, _, fut in batch:
                fut.set_exception(failure)
            return
        for (_, after, fut), (res, err) in zip(batch, results):
            if err is not None:
                fut.set_exception(err)
                continue
            try:
                if after is not None:
                    after(res)
            except Exception as exc:  # noqa: BLE001
                log.exception("after-commit callback failed")
                fut.set_exception(exc)
                continue
            fut.set_result(res)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every job submitted so far has committed."""
        self.submit(lambda conn: None).result(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.inline:
            self._jobs.put(_STOP)
            self._thread.join(timeout=60)
            self._reader.close()
        self._writer.close()

    # -- reading -------------------------------------------------------------------------------------------
    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._reader_lock:
            return self._reader.execute(sql, params).fetchall()

    def tenants(self) -> dict[str, TenantRow]:
        with self._reader_lock:
            return _tenants(self._reader)

    def tenants_at(self) -> tuple[dict[str, TenantRow], int]:
        with self._reader_lock:  # one read transaction: one snapshot of the file
            self._reader.execute("BEGIN")
            try:
                rows = _tenants(self._reader)
                (seq,) = self._reader.execute("SELECT COALESCE(MAX(seq), 0) FROM labels").fetchone()
            finally:
                self._reader.execute("COMMIT")
        return rows, int(seq)

    def expectations(self) -> dict[str, Expectation]:
        out: dict[str, dict[str, float]] = {}
        for tenant, total, n in self.read(
                "SELECT r.tenant, SUM(r.target - r.p_served), COUNT(*) FROM requests r WHERE r.p_served IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.request_id = r.request_id AND "
                "l.model = r.served_model) GROUP BY r.tenant"):
            out.setdefault(tenant, {}).update(pending_sum=float(total), pending_n=int(n))
        for tenant, total, sq, n in self.read(
                "SELECT r.tenant, SUM(l.satisfaction - r.p_served), "
                "SUM((l.satisfaction - r.p_served) * (l.satisfaction - r.p_served)), COUNT(*) FROM requests r "
                "JOIN labels l ON l.request_id = r.request_id AND l.model = r.served_model "
                "WHERE r.p_served IS NOT NULL GROUP BY r.tenant"):
            out.setdefault(tenant, {}).update(resid_sum=float(total), resid_sq=float(sq), resid_n=int(n))
        return {k: Expectation(**v) for k, v in out.items()}  # type: ignore[arg-type]

    def model_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {(r[0], r[1]): (r[2], r[3]) for r in self.read("SELECT tenant, model, served, invoked FROM model_counts")}

    def request_exists(self, request_id: str) -> bool:
        return bool(self.read("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)))

    def request(self, request_id: str) -> RequestRow | None:
        rows = self.read("SELECT request_id, tenant, t, served_model, invoked, exploration, cost, cost_raw, alpha, "
                         "embedding, p_served, target FROM requests WHERE request_id = ?", (request_id,))
        return _request_row(rows[0]) if rows else None

    def head(self, model: str) -> HeadRow | None:
        rows = self.read("SELECT dim, last_label_seq, W, S FROM heads WHERE model = ?", (model,))
        return HeadRow(features=rows[0][0], last_seq=rows[0][1], W=rows[0][2], S=rows[0][3]) if rows else None

    def label_events(self, after: int) -> list[LabelEvent]:
        rows = self.read("SELECT l.seq, r.tenant, l.request_id, l.model, l.satisfaction, l.moves_queue, l.queue_after, "
                         "r.exploration, r.embedding FROM labels l JOIN requests r ON r.request_id = l.request_id "
                         "WHERE l.seq > ? ORDER BY l.seq", (after,))
        return [LabelEvent(seq=r[0], tenant=r[1], request_id=r[2], model=r[3], satisfaction=r[4],
                           moves_queue=bool(r[5]), queue_after=r[6], exploration=bool(r[7]), embedding=r[8])
                for r in rows]

    # -- the router's writes (the Store interface): each a job on the writer thread ------------------------------
    def ensure_tenants(self, names: tuple[str, ...]) -> Future[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT OR IGNORE INTO tenants (name) VALUES (?)", [(n,) for n in names])
        return self.submit(job)

    def insert_request(self, row: RequestRow) -> Future[None]:
        return self.submit(lambda conn: _insert_request(conn, row))

    def apply_feedback(self, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                       step: QueueStep, after_commit: AfterCommit = None) -> Future[FeedbackCommit]:
        def job(conn: sqlite3.Connection) -> FeedbackCommit:
            return _apply_feedback(conn, tenant, request_id, served_model, labels, step)
        return self.submit(job, after_commit)

    def write_heads(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[None]:
        def job(conn: sqlite3.Connection) -> None:
            _write_heads(conn, snaps, features, last_seq)
        return self.submit(job)

    def write_pretrained(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[int]:
        """The router reads a snapshot at seq 0 as "no snapshot" (and starts from the prior), so a state without
        any label gets its label counter moved to 1 (sqlite_sequence, SQLite's documented AUTOINCREMENT
        counter): the snapshot says "labels up to 1 are in", and the first real label gets seq 2 and is
        replayed after a crash."""
        def job(conn: sqlite3.Connection) -> int:
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM labels").fetchone()
            seq = max(int(last_seq), int(top), 1)
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'labels'").fetchone()
            if row is None:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('labels', ?)", (seq,))
            elif row[0] < seq:
                conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'labels'", (seq,))
            _write_heads(conn, snaps, features, seq)
            return seq
        return self.submit(job)


def _tenants(conn: sqlite3.Connection) -> dict[str, TenantRow]:
    rows = conn.execute("SELECT name, queue, requests, labelled, sat_sum, cost_sum, cost_raw_sum, explore_steps, "
                        "explore_cost_raw FROM tenants").fetchall()
    return {r[0]: TenantRow(name=r[0], queue=r[1], requests=r[2], labelled=r[3], sat_sum=r[4], cost_sum=r[5],
                            cost_raw_sum=r[6], explore_steps=r[7], explore_cost_raw=r[8]) for r in rows}


def _insert_request(conn: sqlite3.Connection, row: RequestRow) -> None:
    conn.execute("INSERT INTO requests (request_id, tenant, t, served_model, invoked, exploration, cost, cost_raw,"
                 " alpha, embedding, created, p_served, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (row.request_id, row.tenant, row.t, row.served_model, "\n".join(row.invoked),
                  int(row.exploration), row.cost, row.cost_raw, row.alpha, row.embedding, now(), row.p_served,
                  row.target))
    conn.execute("UPDATE tenants SET requests = requests + 1, cost_sum = cost_sum + ?, "
                 "cost_raw_sum = cost_raw_sum + ?, explore_steps = explore_steps + ?, "
                 "explore_cost_raw = explore_cost_raw + ? WHERE name = ?",
                 (row.cost, row.cost_raw, int(row.exploration), row.explore_cost_raw, row.tenant))
    for m in row.invoked:
        conn.execute("INSERT INTO model_counts (tenant, model, served, invoked) VALUES (?, ?, ?, 1) "
                     "ON CONFLICT (tenant, model) DO UPDATE SET served = served + excluded.served, "
                     "invoked = invoked + 1", (row.tenant, m, int(m == row.served_model)))
    if row.served_model not in row.invoked:
        raise ValueError("served model must be among the invoked ones")


def _apply_feedback(conn: sqlite3.Connection, tenant: str, request_id: str, served_model: str,
                    labels: dict[str, float], step: QueueStep) -> FeedbackCommit:
    stored = dict(conn.execute("SELECT model, satisfaction FROM labels WHERE request_id = ?", (request_id,)))
    new: dict[str, float] = {}
    for model, s in labels.items():
        if model in stored:
            if abs(stored[model] - s) > 1e-12:
                raise Conflict(f"request {request_id!r} already has satisfaction {stored[model]} for "
                               f"model {model!r}; feedback is write-once")
        else:
            new[model] = s
    queue, labelled = conn.execute("SELECT queue, labelled FROM tenants WHERE name = ?", (tenant,)).fetchone()
    moves = served_model in new
    if moves:
        queue = step(float(queue), int(labelled) + 1, new[served_model])
        conn.execute("UPDATE tenants SET queue = ?, labelled = labelled + 1, sat_sum = sat_sum + ? "
                     "WHERE name = ?", (queue, new[served_model], tenant))
    events = []
    if new:
        exploration, embedding = conn.execute("SELECT exploration, embedding FROM requests WHERE request_id = ?",
                                              (request_id,)).fetchone()
    for model, s in new.items():
        served = model == served_model
        cur = conn.execute("INSERT INTO labels (request_id, model, satisfaction, moves_queue, queue_after, created)"
                           " VALUES (?, ?, ?, ?, ?, ?)", (request_id, model, s, int(served),
                                                          queue if served else None, now()))
        events.append(LabelEvent(seq=int(cur.lastrowid or 0), tenant=tenant, request_id=request_id, model=model,
                                 satisfaction=s, moves_queue=served, queue_after=queue if served else None,
                                 exploration=bool(exploration), embedding=embedding))
    return FeedbackCommit(new=new, given=len(labels), queue=queue, moved=moves, events=tuple(events))


def _write_heads(conn: sqlite3.Connection, snaps: list[tuple[str, bytes, bytes]], features: int,
                 last_seq: int) -> None:
    conn.executemany("INSERT OR REPLACE INTO heads (model, dim, last_label_seq, W, S, updated) "
                     "VALUES (?, ?, ?, ?, ?, ?)", [(n, features, last_seq, w, s, now()) for n, w, s in snaps])


def _request_row(r: tuple[Any, ...]) -> RequestRow:
    return RequestRow(request_id=r[0], tenant=r[1], t=r[2], served_model=r[3],
                      invoked=tuple(m for m in r[4].split("\n") if m), exploration=bool(r[5]), cost=r[6],
                      cost_raw=r[7], alpha=r[8], embedding=r[9], p_served=r[10], target=r[11])

