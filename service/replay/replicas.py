"""`messplus replay --replicas N --sync-lag L`: N router cores on one shared state, the requests spread
round-robin, each replica seeing the label log L requests late.

Built on the production path, not beside it: N `Router`s (each with its own heads, request cache and memory of
the tenants) over one `SharedMemoryStore`, an in-memory SQLite store that says it is `shared`. So each Router
runs the code it runs on PostgreSQL: the labels of a feedback it takes count (the queue as the transaction left
it, labelled, the expected-queue terms) at commit; its heads, and the labels other replicas took, arrive only
through `Router.apply_log`, in seq order; the tenants' rows advance its request clock (`_shared_counts`). Where
PostgreSQL has a tail thread, this store has `deliver`: before each request, every replica gets the log entries
committed at least L requests ago and the tenants' rows as they were then (L = 0: everything committed so far,
the tail caught up). Every replica thus learns the same prefix of the log at the same time (their heads agree)
and lags it by L requests, its own labels included: the pessimistic model. The real tail reads the log on every
label commit's NOTIFY and at least every `poll_s`, so L requests of lag are L / throughput seconds of it.

Feedback goes to a replica drawn at random (seeded), as behind a load balancer that spreads Feedback like Route:
production allows any replica, and the random one exercises the path where the replica taking a label did not
route its request (the request's record comes from the shared store). `GrpcDriver` does the same across real
replicas, so the two replays are comparable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..config import TenantConfig
from ..routing.router import Router
from ..state.base import AfterCommit, FeedbackCommit, LabelEvent, QueueStep, TenantRow
from ..state.sqlite import SqliteStore
from ..trace import Trace
from .drivers import TENANT, InProcess, Step
from .pretrain import train_heads


@dataclass
class Subscriber:
    callback: Callable[[list[LabelEvent]], None]
    tenants: Callable[[dict[str, TenantRow]], None] | None
    cursor: int  # the last label seq delivered


class SharedMemoryStore(SqliteStore):
    """One in-memory SQLite state that several routers of this process share, with the label log delivered
    to them by `deliver` (what PostgresStore's tail does), a chosen number of requests late.

    `position` is the number of requests routed so far (the driver sets it); each feedback transaction's log
    entries (what sql.apply_feedback returns: the rows it appended to the log, as `label_events` reads them back)
    are kept with the position at which it committed, until delivered."""

    shared = True

    def __init__(self) -> None:
        super().__init__(":memory:", inline=True)
        self.position = 0
        self.subscribers: list[Subscriber] = []
        self._commits: deque[tuple[int, tuple[LabelEvent, ...]]] = deque()  # (position, its log entries)
        self._rows: deque[tuple[int, dict[str, TenantRow]]] = deque()  # the tenants' rows seen at each position
        self._through_rows: dict[str, TenantRow] | None = None

    def subscribe(self, callback: Callable[[list[LabelEvent]], None], after: int = 0,
                  tenants: Callable[[dict[str, TenantRow]], None] | None = None) -> None:
        """A router's subscription (one per replica, in the order they were built)."""
        self.subscribers.append(Subscriber(callback, tenants, after))

    def apply_feedback(self, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                       step: QueueStep, after_commit: AfterCommit = None, *,
                       p_label: float | None = None) -> Future[FeedbackCommit]:
        def after(commit: FeedbackCommit) -> None:
            if commit.events:
                self._commits.append((self.position, commit.events))
            if after_commit is not None:
                after_commit(commit)

        return super().apply_feedback(tenant, request_id, served_model, labels, step, after, p_label=p_label)

    def deliver(self, through: int) -> None:
        """Hand every subscriber, in seq order, the labels committed at positions <= `through` that it has not
        had, then the tenants' rows as they were at position `through` (nothing while `through` < 0)."""
        self._rows.append((self.position, self.tenants()))
        due: list[LabelEvent] = []
        while self._commits and self._commits[0][0] <= through:
            due.extend(self._commits.popleft()[1])
        while self._rows and self._rows[0][0] <= through:
            self._through_rows = self._rows.popleft()[1]
        for sub in self.subscribers:
            events = [ev for ev in due if ev.seq > sub.cursor]
            if events:
                sub.cursor = events[-1].seq
                sub.callback(events)
            if self._through_rows is not None and sub.tenants is not None:
                sub.tenants(self._through_rows)


class Replicas:
    """N in-process routers (`InProcess`) on one `SharedMemoryStore`: Route round-robin, each Feedback to a
    replica drawn at random (seeded by `seed`), the log delivered `sync_lag` requests late."""

    def __init__(self, trace: Trace, tenant: TenantConfig, dim: int, *, replicas: int, sync_lag: int, seed: int,
                 reference: bool = False, flat_costs: bool = False) -> None:
        if replicas < 1 or sync_lag < 0:
            raise ValueError("Replicas: need replicas >= 1 and sync_lag >= 0")
        self.store = SharedMemoryStore()
        self.replicas = [InProcess(trace, tenant, dim, reference=reference, flat_costs=flat_costs, store=self.store)
                         for _ in range(replicas)]
        self.lag = sync_lag
        self.position = 0
        self._routed_by: dict[str, InProcess] = {}
        self._rng = np.random.default_rng([seed, 3])

    @property
    def routers(self) -> list[Router]:
        return [r.router for r in self.replicas]

    def train(self, emb: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> int:
        """The offline warm start: the first replica's heads learn `rows`; the others start from a copy of them
        (as a replica starts from the latest snapshot). Returns the labels learned."""
        n = train_heads(self.replicas[0].router.heads, emb, labels, rows)
        first = self.replicas[0].router.heads
        for r in self.replicas[1:]:
            heads = r.router.heads
            heads.W[:], heads.S[:], heads.labels[:] = first.W, first.S, first.labels
        return n

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        self.store.position = self.position
        self.store.deliver(self.position - self.lag)
        replica = self.replicas[self.position % len(self.replicas)]
        self.position += 1
        self.store.position = self.position  # feedback from here on commits after this request
        step = replica.route(rid, text, emb, avail)
        if step is not None:
            self._routed_by[step.handle.request_id] = replica
        return step

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        self._routed_by.pop(step.handle.request_id).record(step, emb, cost_raw)

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        n = len(self.replicas)
        self.replicas[int(self._rng.integers(n)) if n > 1 else 0].feedback(rid, served, labels)

    def queue(self) -> float:
        """The tenant's one queue: the value the last queue-moving transaction left, which the replica that
        committed it holds (the store's row has the same number, but SQLite keeps no sign on a zero)."""
        return max((r.tenants[TENANT] for r in self.routers), key=lambda st: st.queue_seq).queue

    def close(self) -> None:
        self.store.close()
