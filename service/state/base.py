"""The router's durable state behind one interface: tenants' queues and counters, request records, the label
log and predictor-head snapshots. `state/sqlite.py` implements it on one SQLite file; another backend is one
more module beside it that implements `Store`.

Contract of every write: it returns a Future that resolves only after the write has committed; the optional
`after_commit(result)` runs right after the commit and before the future resolves, in commit order. That is
where the router's memory follows the durable state ("append feedback, commit, then update Q in memory, then
ack"). A write that cannot commit fails its future with errors.StorageUnavailable and applies nothing.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

AfterCommit = Callable[[Any], None] | None
QueueStep = Callable[[float, int, float], float]  # (queue, n-th label of the tenant, satisfaction) -> new queue


@dataclass(frozen=True, kw_only=True)
class TenantRow:
    name: str
    queue: float
    requests: int
    labelled: int
    sat_sum: float
    cost_sum: float
    cost_raw_sum: float
    explore_steps: int
    explore_cost_raw: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RequestRow:
    request_id: str
    tenant: str
    t: int
    served_model: str
    invoked: tuple[str, ...]
    exploration: bool
    cost: float
    cost_raw: float
    alpha: float
    embedding: bytes | None
    explore_cost_raw: float = 0.0  # the exploration step's models beyond the exploit choice
    p_served: float | None = None  # the predicted satisfaction of the served model when routed
    target: float | None = None    # what its label will be held to: alpha plus the margin at its index
    replica: str | None = None     # the id of the router process that routed it (Router.replica)


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """A tenant's expected-queue terms: over requests whose served answer has no label yet, the sum of
    target - p_served and their count; over those whose has, the sum of satisfaction - p_served, of its
    square, and their count. `last_t`: the highest request index t stored for the tenant (t also moves for
    requests that were decided and not recorded: no model answered, the call was cancelled)."""

    pending_sum: float = 0.0
    pending_n: int = 0
    resid_sum: float = 0.0
    resid_sq: float = 0.0
    resid_n: int = 0
    last_t: int = 0


@dataclass(frozen=True, kw_only=True)
class HeadRow:
    features: int
    last_seq: int
    W: bytes
    S: bytes


@dataclass(frozen=True, kw_only=True)
class LabelEvent:
    """One entry of the label log, with what a router needs to apply it: the tenant's queue after it (when it
    moved the queue), the request's exploration flag and embedding (to learn from it), and which router routed
    it with what prediction (that router's expected-queue terms let it go)."""

    seq: int
    tenant: str
    request_id: str
    model: str
    satisfaction: float
    moves_queue: bool
    queue_after: float | None
    exploration: bool
    embedding: bytes | None
    replica: str | None = None
    p_served: float | None = None
    target: float | None = None
    p_label: float | None = None  # the served model's predicted satisfaction when its label came (prequential)


@dataclass(frozen=True, kw_only=True)
class FeedbackCommit:
    """What one feedback transaction committed: the labels that were new (model -> satisfaction, in the order
    given) and their log entries, the tenant's queue after it, and whether the served answer's label moved it."""

    new: dict[str, float]
    given: int
    queue: float
    moved: bool
    events: tuple[LabelEvent, ...]


class Store(abc.ABC):
    """The state backend the router talks to.

    `shared` is True when other router processes write the same state: then the label log also brings their
    labels, which the store hands to `subscribe`'s callback in log order (on its writer thread). `backend` is its
    name in the configuration (state.backend)."""

    shared = False
    backend = ""

    def started(self) -> None:
        """The router has loaded its state: reads from now on answer callers (a scrape, SlaStatus, a Feedback's
        lookup), which a store may make less patient than the start-up's."""

    @property
    def error(self) -> str:
        """Why the store cannot commit now ("" when it can)."""
        return ""

    # why labels of the shared log are not taken in by this process ("" while they are): `subscribe`'s callback
    # fails on them, and they are handed to it again on every read until it takes them
    log_stuck = ""

    def subscribe(self, callback: Callable[[list[LabelEvent]], None], after: int = 0,
                  tenants: Callable[[dict[str, TenantRow]], None] | None = None) -> None:
        """Deliver the labels after seq `after` that other writers commit to `callback` (and the tenants' rows,
        now and then, to `tenants`); a store that only this process writes has none to deliver."""

    # -- writes (each: a Future resolved after commit) ------------------------------------------------------
    @abc.abstractmethod
    def ensure_tenants(self, names: tuple[str, ...]) -> Future[None]:
        """Create the tenants' rows that do not exist yet (queue 0, no requests)."""

    @abc.abstractmethod
    def insert_request(self, row: RequestRow) -> Future[None]:
        """Record a routed request and add it to its tenant's counters and per-model counts."""

    @abc.abstractmethod
    def apply_feedback(self, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                       step: QueueStep, after_commit: AfterCommit = None, *,
                       p_label: float | None = None) -> Future[FeedbackCommit]:
        """In one transaction: compare `labels` with the request's stored ones (a different value for a stored
        label raises errors.Conflict: feedback is write-once; an equal one is a duplicate), append the new ones
        to the label log and, if the served model's label is new, move the tenant's queue with `step` and store
        `p_label` with that label (the served model's predicted satisfaction as the label came)."""

    @abc.abstractmethod
    def write_heads(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[None]:
        """Snapshot every head (model, W, S), saying which label seq they have learned up to."""

    @abc.abstractmethod
    def write_pretrained(self, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> Future[int]:
        """Snapshot heads trained offline, at a label seq >= 1 that every later label lies after; returns it."""

    @abc.abstractmethod
    def expire(self) -> Future[int]:
        """Drop the request records older than the store's retention whose labels every head snapshot has learned,
        with their labels, in transactions of sql.EXPIRE_BATCH records; the future holds the first one's count.
        The store runs it every so often by itself once the router has started."""

    @abc.abstractmethod
    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every write submitted so far has committed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- reads ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def tenants(self) -> dict[str, TenantRow]: ...

    @abc.abstractmethod
    def tenants_at(self) -> tuple[dict[str, TenantRow], int]:
        """The tenants' rows and the last label seq they include, read together (one snapshot)."""

    @abc.abstractmethod
    def expectations(self, models: Sequence[str]) -> dict[str, Expectation]:
        """Per tenant; the unlabelled requests only of those served by `models` (the zoo's: the label of an
        answer of a model no longer in the zoo cannot be applied)."""

    @abc.abstractmethod
    def model_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, model) -> (served, invoked)."""

    @abc.abstractmethod
    def request_exists(self, request_id: str) -> bool: ...

    @abc.abstractmethod
    def request(self, request_id: str) -> RequestRow | None: ...

    @abc.abstractmethod
    def head(self, model: str) -> HeadRow | None: ...

    @abc.abstractmethod
    def label_events(self, after: int, limit: int = 0) -> list[LabelEvent]:
        """The labels of the log after seq `after`, in log order: every one, or the first `limit` (> 0)."""


def now() -> float:
    return time.time()


def then(fut: Future[Any], fn: Callable[[Any], Any],
         failed: Callable[[BaseException], None] | None = None) -> Future[Any]:
    """A future of fn(result), resolved when `fut` is (with its exception, if it failed, after `failed(exc)`)."""
    out: Future[Any] = Future()

    def done(f: Future[Any]) -> None:
        exc = f.exception()
        if exc is not None and failed is not None:
            failed(exc)
        if out.cancelled():  # the caller went away (its call cancelled or past its deadline): nobody waits
            return
        try:
            if exc is not None:
                out.set_exception(exc)
                return
            try:
                result = fn(f.result())
            except Exception as err:  # noqa: BLE001 - the waiter gets it, not the writer thread's log
                out.set_exception(err)
                return
            out.set_result(result)
        except InvalidStateError:  # cancelled between the check and the set
            pass

    fut.add_done_callback(done)
    return out
