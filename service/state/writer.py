"""Group commit: one writer thread owns one connection and runs every mutation as a job.

The thread drains all pending jobs into one transaction, each job in a savepoint (a failing job rolls back alone
and fails only its own future). A job's future resolves only after that transaction has committed, and the job's
`after_commit(result)` runs on the writer thread right after the commit and before the future resolves: that is
where in-memory state follows the durable state, in commit order.

When the commit itself fails (disk full, I/O error, the database unreachable), every job of the batch fails with
errors.StorageUnavailable and nothing is applied, except jobs submitted with `retry=True`: those (a routed
request's record) are kept, in order, and committed when the database answers again (`reconnect`: a fresh
connection for each try). At most `max_buffered` of them wait; past that, `submit` refuses at once. A job that
fails with an error of the database rather than of the job (`transient(exc)`: a lock or statement timeout, a
full disk, the connection lost mid-batch) fails the batch the same way: a record is kept, a Feedback answers
UNAVAILABLE, instead of the job alone failing with the driver's error.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from ..errors import StorageUnavailable

log = logging.getLogger("messplus.store")
Job = Callable[[Any], Any]
STALL_S = 10.0  # a commit waiting this long on the database is reported (the store's error: health, metrics)


@dataclass
class _Item:
    job: Job
    after: Callable[[Any], None] | None
    fut: Future[Any]
    retry: bool


class GroupCommit:
    """The writer thread and its connection (`connect()` opens it; `begin` starts a write transaction)."""

    def __init__(self, connect: Callable[[], Any], *, begin: str = "BEGIN", max_batch: int = 512,
                 inline: bool = False, reconnect: bool = False, max_buffered: int = 0, multi: bool = False,
                 retry_delay_s: float = 0.5, on_rollback: Callable[[], None] | None = None,
                 transient: Callable[[BaseException], bool] = lambda exc: False,
                 name: str = "messplus-store-writer") -> None:
        self._connect, self._begin, self._max_batch = connect, begin, max_batch
        # the connection runs several statements in one call (PostgreSQL): the savepoints then travel with the
        # statements around them, one round trip between two jobs instead of two
        self._multi = multi
        self._on_rollback, self._transient = on_rollback, transient
        self._busy_since = 0.0  # when the batch being committed began (0: none is)
        self.inline, self._reconnect, self._max_buffered = inline, reconnect, max_buffered
        self._retry_delay_s = retry_delay_s
        self.conn = connect()
        self.error = ""  # why the last commit failed; "" once one succeeds again
        self.buffered = 0  # retry jobs waiting to commit
        self.batch = 0  # the number of the batch being committed (its jobs read it: one transaction each)
        self._items: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def submit(self, job: Job, after_commit: Callable[[Any], None] | None = None, *,
               retry: bool = False) -> Future[Any]:
        """Run `job(conn)` inside the next transaction; the future holds its result once committed."""
        fut: Future[Any] = Future()
        item = _Item(job, after_commit, fut, retry)
        with self._cv:
            if self._closed:
                raise RuntimeError("store is closed")
            if retry and self._max_buffered and self.buffered >= self._max_buffered:
                raise StorageUnavailable(f"the state store has been unreachable ({self.error}) and "
                                         f"{self.buffered} records wait for it: refusing more; retry later")
            self.buffered += retry
            if not self.inline:
                self._items.append(item)
                self._cv.notify()
                return fut
        self._commit([item])
        return fut

    def _next_batch(self) -> list[_Item] | None:
        with self._cv:
            while not self._items and not self._closed:
                self._cv.wait()
            if not self._items:
                return None
            n = min(len(self._items), self._max_batch)
            return [self._items.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            kept = self._commit(batch)
            if kept:
                with self._cv:
                    self._items.extendleft(reversed(kept))
                    until = time.monotonic() + self._retry_delay_s  # a submit's notify must not cut it short
                    while not self._closed and (left := until - time.monotonic()) > 0:
                        self._cv.wait(left)  # close() ends it
                    closing = self._closed
                if closing:
                    self._fail(self._take_all(), "the router stopped before the state store came back")
                    return
                self._reopen()
            elif self._reconnect and self.error:  # nothing to retry, but the connection may be dead: a fresh one
                self._reopen()

    def _commit(self, batch: list[_Item]) -> list[_Item]:
        """Commit one batch; returns the retry jobs to try again when the commit failed."""
        conn = self.conn
        results: list[tuple[Any, BaseException | None]] = []
        self._busy_since = time.monotonic()
        multi = self._multi
        self.batch += 1
        try:
            conn.execute(f"{self._begin}; SAVEPOINT job" if multi else self._begin)
            for i, item in enumerate(batch):
                # outside the job's try: a failed RELEASE or SAVEPOINT fails the batch, and no job gets two results
                # (each later job its neighbour's). With `multi` the savepoint of the job before (released
                # as it was, or rolled back to) is released here, and the last one with the COMMIT
                if not multi:
                    conn.execute("SAVEPOINT job")
                elif i:
                    conn.execute("RELEASE SAVEPOINT job; SAVEPOINT job")
                try:
                    res = item.job(conn)
                except Exception as exc:  # noqa: BLE001 - a failing job must not take its batch down ...
                    if self._transient(exc):  # ... unless the database failed it: then the batch fails
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT job")
                    if not multi:
                        conn.execute("RELEASE SAVEPOINT job")
                    results.append((None, exc))
                    continue
                if not multi:
                    conn.execute("RELEASE SAVEPOINT job")
                results.append((res, None))
            conn.execute("RELEASE SAVEPOINT job; COMMIT" if multi else "COMMIT")
        except Exception as exc:  # noqa: BLE001 - the commit itself failed (disk full, I/O error, no database)
            return self._failed_commit(batch, exc)
        finally:
            self._busy_since = 0.0
        if self.error:
            log.debug("state store: commits succeed again")
            self.error = ""
        for item, (res, err) in zip(batch, results):
            self._resolve(item, res, err)
        return []

    def _failed_commit(self, batch: list[_Item], exc: BaseException) -> list[_Item]:
        if not self.error:  # the first of a stretch (the router says when the store is unavailable and back)
            log.warning("state store: a commit failed (%s); nothing of its batch was applied", exc)
        elif self.error != str(exc):
            log.debug("store commit failed: %s", exc)
        self.error = str(exc) or type(exc).__name__
        try:
            self.conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - the connection may be gone
            pass
        if self._on_rollback is not None:
            self._on_rollback()
        kept = [item for item in batch if item.retry and self._reconnect]
        self._fail([item for item in batch if item not in kept],
                   f"the state store could not commit ({exc}); nothing was applied: retry")
        return kept

    def stall(self) -> str:
        """Why the writer is stuck: the batch being committed has waited STALL_S or more on the database ("" if
        not). A database that hangs (a server that stopped answering, a lock held elsewhere) fails nothing by
        itself while it hangs."""
        since = self._busy_since
        waited = time.monotonic() - since if since else 0.0
        # the same words while it lasts: the start of a stall is logged once, not each second it grows
        return f"a commit has waited over {STALL_S:g} s on the state database" if waited >= STALL_S else ""

    def _resolve(self, item: _Item, res: Any, err: BaseException | None) -> None:
        if item.retry:
            with self._cv:
                self.buffered -= 1
        if err is None and item.after is not None:
            try:  # the memory follows the commit whether or not anyone still waits for the future
                item.after(res)
            except Exception as exc:  # noqa: BLE001
                log.exception("after-commit callback failed")
                err = exc
        # a caller may have cancelled its future (it is never marked running): setting it then raises, and that
        # ended this thread, leaving every later write unanswered
        with contextlib.suppress(InvalidStateError):
            if err is not None:
                item.fut.set_exception(err)
            else:
                item.fut.set_result(res)

    def _fail(self, items: list[_Item], why: str) -> None:
        failure = StorageUnavailable(why)
        for item in items:
            self._resolve(item, None, failure)

    def _take_all(self) -> list[_Item]:
        with self._cv:
            items = list(self._items)
            self._items.clear()
        return items

    def _reopen(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.conn = self._connect()
        except Exception as exc:  # noqa: BLE001 - still down: the next commit fails and tries again
            self.error = str(exc) or type(exc).__name__
            self.conn = _Down(self.error)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every job submitted so far has committed."""
        self.submit(lambda conn: None).result(timeout)

    def close(self) -> None:
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


class _Down:
    """The connection while the database cannot be reached: every statement fails, so the batch is retried."""

    def __init__(self, why: str) -> None:
        self.why = why

    def execute(self, *args: Any) -> Any:
        raise ConnectionError(self.why)

    def close(self) -> None:
        pass
