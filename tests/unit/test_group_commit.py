"""The group-commit writer (service/state/writer.py) while its database fails: which errors fail a whole batch,
and the retry's backoff."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from messplus.service.errors import StorageUnavailable
from messplus.service.state.pgfaults import database_failure as _database_failure
from messplus.service.state.writer import GroupCommit


@pytest.mark.parametrize("state, transient", [
    (None, True),      # the client lost the connection: no SQLSTATE
    ("08006", True),   # connection failure
    ("53100", True),   # disk full
    ("40P01", True),   # deadlock detected
    ("55P03", True),   # lock not available (lock_timeout)
    ("57014", True),   # query canceled (statement_timeout)
    ("57P01", True),   # admin shutdown
    ("54000", False),  # program limit exceeded: the same job fails the same way again
    ("22P02", False),  # invalid text representation: a bad value
])
def test_which_database_errors_fail_the_batch(state: str | None, transient: bool) -> None:
    """A job's error of this kind fails its whole batch and keeps its records for a retry; any other fails the
    job alone. Every OperationalError counted once, so one record a program limit refuses blocked every write
    behind it for good."""
    exc = psycopg.OperationalError("boom")
    exc.sqlstate = state  # type: ignore[misc]
    assert _database_failure(exc) is transient
    assert not _database_failure(ValueError("a job's own error"))


class Down:
    """A connection whose every COMMIT fails, as a database that went away."""

    def execute(self, sql: str, *args: Any) -> None:
        if sql == "COMMIT":
            raise RuntimeError("the database is gone")

    def close(self) -> None:
        pass


def test_the_retry_backoff_holds_while_calls_keep_coming() -> None:
    """Every submit's notify woke the writer out of its 0.5 s backoff: one reconnect (a new database
    connection) per incoming call while the database was down."""
    connects = []

    def connect() -> Down:
        connects.append(time.monotonic())
        return Down()

    writer = GroupCommit(connect, reconnect=True, retry_delay_s=0.5, max_buffered=1000)
    try:
        writer.submit(lambda conn: None, retry=True)  # kept, retried every 0.5 s
        began, calls = time.monotonic(), []
        while time.monotonic() - began < 1.2:  # a Feedback every 10 ms
            calls.append(writer.submit(lambda conn: None))
            time.sleep(0.01)
        for call in calls:
            with pytest.raises(StorageUnavailable):
                call.result(5)
        assert len(calls) > 50
        assert len(connects) <= 1 + 4  # the first, then about one per backoff (1.2 s / 0.5 s), not one per call
    finally:
        done = threading.Thread(target=writer.close)
        done.start()
        done.join(10)


def test_a_future_its_caller_cancelled_does_not_stop_the_writer(tmp_path: Path) -> None:
    """A queued job's future can be cancelled (it is never marked running); setting its result then raised in
    the writer's thread and ended it: the rest of the batch unanswered and every later write hung. The job still
    commits, and its after-commit callback still runs (the memory follows the database)."""
    conn = sqlite3.connect(tmp_path / "w.sqlite3", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (x INTEGER)")
    writer = GroupCommit(lambda: conn)
    try:
        gate, after = threading.Event(), []
        first = writer.submit(lambda c: gate.wait(10))
        second = writer.submit(lambda c: c.execute("INSERT INTO t VALUES (2)").rowcount, after.append)
        assert second.cancel()  # still queued behind the first: its caller gives up on it
        gate.set()
        assert first.result(10) is True
        assert writer.submit(lambda c: c.execute("SELECT x FROM t").fetchall()).result(10) == [(2,)]
        assert after == [1]
    finally:
        writer.close()


def test_a_failing_job_between_two_rolls_back_alone_with_the_savepoints_merged(postgres_url: str) -> None:
    """On PostgreSQL the savepoints travel with the statements around them (`multi`: "RELEASE SAVEPOINT job;
    SAVEPOINT job" between two jobs, "RELEASE SAVEPOINT job; COMMIT" at the end). A job that fails in the middle
    of a batch still rolls back alone: the jobs before and after it commit, in one transaction."""
    sent: list[str] = []

    class Recorded:
        def __init__(self) -> None:
            self.raw = psycopg.connect(postgres_url, autocommit=True)

        def execute(self, query: str, params: Any = None) -> Any:
            sent.append(query)
            return self.raw.execute(query, params)

        def close(self) -> None:
            self.raw.close()

    with psycopg.connect(postgres_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    writer = GroupCommit(Recorded, multi=True)
    try:
        gate, inside = threading.Event(), threading.Event()
        first = writer.submit(lambda c: (inside.set(), gate.wait(10))[1])  # holds the writer meanwhile
        assert inside.wait(10)  # the batch below queues up behind it
        jobs = [writer.submit(lambda c, x=x: c.execute("INSERT INTO t VALUES (%s)", (x,)).rowcount)
                for x in (1, 2, 1, 3)]  # the second 1 breaks the primary key
        sent.clear()
        gate.set()
        assert first.result(10) is True
        assert [j.result(10) for j in (jobs[0], jobs[1], jobs[3])] == [1, 1, 1]
        between, insert = "RELEASE SAVEPOINT job; SAVEPOINT job", "INSERT INTO t VALUES (%s)"
        assert sent == ["RELEASE SAVEPOINT job; COMMIT",  # the gate's batch ends
                        "BEGIN; SAVEPOINT job", insert, between, insert, between, insert, "ROLLBACK TO SAVEPOINT job",
                        between, insert, "RELEASE SAVEPOINT job; COMMIT"], sent  # every savepoint released
        with pytest.raises(psycopg.errors.UniqueViolation):
            jobs[2].result(10)
        assert writer.submit(lambda c: c.execute("SELECT x FROM t ORDER BY x").fetchall()).result(10) == [
            (1,), (2,), (3,)]
        with pytest.raises(ZeroDivisionError):  # a batch of one failing job ends its transaction as well
            writer.submit(lambda c: 1 / 0).result(10)
        assert writer.submit(lambda c: c.execute("SELECT count(*) FROM t").fetchone()).result(10) == (3,)
    finally:
        writer.close()
