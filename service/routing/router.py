"""The router: the ledger of every tenant over one zoo. It runs a policy (policy.py) on each batch, records what
was routed, applies feedback durably through a store (state/base.py) and trains the heads.

The service and `messplus replay` both drive this class; neither re-implements any of it.

Order of effects for feedback, on the store's writer thread: read the request's stored labels, insert the new
ones and the tenant's new queue in one transaction, commit, then update memory (queue, counters, heads), then
the RPC acknowledges. `lock` guards the tenants' counters, shared by the event loop and the writer thread.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial

import numpy as np

from ..config import ModelConfig, TenantConfig
from ..errors import AlreadyExists, Conflict, InvalidArgument, NoModelAvailable, NotFound, shown
from ..state.base import FeedbackCommit, LabelEvent, RequestRow, Store, TenantRow, then
from .feedback import validated_labels
from .heads import Heads
from .learner import Learner
from .policy import Batch, Plan, Policy
from .pricing import Pricing
from .request_ids import RequestIds
from .tenant import Counted, Counters, Flight, TenantState, label_target, queue_step
from .types import REQUEST_ID, Decision, FeedbackResult, Pending, RouteItem, Routed

log = logging.getLogger("messplus.router")


class Router(RequestIds):
    """Decisions, queues, feedback and learning for every tenant over one zoo."""

    def __init__(self, models: Sequence[ModelConfig], tenants: Sequence[TenantConfig], heads: Heads, store: Store,
                 *, cost_ema: float = 0.05, cache_size: int = 50_000, snapshot_every: int = 500,
                 policy: Policy | None = None) -> None:
        self.models = tuple(models)
        self.names = tuple(m.name for m in self.models)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.policy = policy or Policy()
        self.heads = heads
        self.store = store
        self.pricing = Pricing(self.models, cost_ema=cost_ema)
        self.available = np.ones(len(self.models), dtype=np.bool_)
        self.tenants = {t.name: TenantState(cfg=self.policy.tenant(t), index=i) for i, t in enumerate(tenants)}
        self._cache: OrderedDict[str, Pending] = OrderedDict()
        # this process's name on the requests it stores: with a shared store, a label leaves the expected-queue
        # terms of the router that routed its request (new at every start: a restarted one counts from then)
        self.replica = uuid.uuid4().hex
        self._cache_size = cache_size
        self._init_ids()
        self.learner = Learner(heads, self.models, store, self.policy, snapshot_every)
        self._counted: set[int] = set()  # (shared store) own labels counted at commit, not yet seen in the log
        # (shared store) called with each delivery of the label log, after it is counted: every label reaches
        # every replica, so the one that routed a request sees its labels whichever replica took the Feedback
        self.label_listeners: list[Callable[[Sequence[LabelEvent]], None]] = []
        self._applied_through = 0  # (shared store) the last log seq apply_log has counted
        self.lock = threading.Lock()  # guards tenant counters shared by the event loop and the writer thread
        self._load()
        if store.shared:  # from the older of the two marks: labels committed between them are learned, not counted
            self._applied_through = min(self.heads.last_seq, self._counted_through)
            store.subscribe(self.apply_log, self._applied_through, self._shared_counts)

    # -- start-up ----------------------------------------------------------------------------------------------
    def _load(self) -> None:
        K = len(self.models)
        for st in self.tenants.values():
            st.served, st.invoked = np.zeros(K, np.int64), np.zeros(K, np.int64)
            st.awaiting = np.zeros(K, np.bool_)
        self.store.ensure_tenants(tuple(self.tenants)).result()
        rows, self._counted_through = self.store.tenants_at()
        for name, row in rows.items():
            st = self.tenants.get(name)
            if st is None:
                continue
            st.queue, st.requests, st.labelled, st.sat_sum = row.queue, row.requests, row.labelled, row.sat_sum
            st.cost_sum, st.cost_raw_sum, st.explore_steps = row.cost_sum, row.cost_raw_sum, row.explore_steps
            st.explore_cost_raw = row.explore_cost_raw
            st.next_t = row.requests + 1
            st.queue_seq = self._counted_through
        for name, e in self.store.expectations(self.names).items():
            if name in self.tenants:
                st = self.tenants[name]
                if not self.store.shared:  # shared: the unlabelled requests this replica routes, from now on
                    st.pending_sum, st.pending_n = e.pending_sum, e.pending_n
                st.resid_sum, st.resid_sq, st.resid_n = e.resid_sum, e.resid_sq, e.resid_n
                st.next_t = max(st.next_t, e.last_t + 1)  # t moved for decisions never recorded too: never reused
        for (tenant, model), (served, invoked) in self.store.model_counts().items():
            if tenant in self.tenants and model in self.index:
                self.tenants[tenant].served[self.index[model]] = served
                self.tenants[tenant].invoked[self.index[model]] = invoked
        self.learner.restore()
        self.store.started()

    # -- costs and availability ----------------------------------------------------------------------------------
    @property
    def cost_raw(self) -> np.ndarray:
        """Each model's cost estimate for a typical request, in the zoo's unit (the rest of the costs: pricing)."""
        return self.pricing.cost_raw

    def cost_scale(self) -> float:
        """The unit of normalised costs (the policy's; messplus: the dearest model's typical cost)."""
        return self.policy.cost_unit(self.pricing)

    def costs(self) -> np.ndarray:
        """Normalised cost estimates of a typical request (messplus: the most expensive model costs 1)."""
        return self.pricing.cost_raw / self.cost_scale()

    def charge(self, model: int, tokens: float, output: str) -> tuple[float, float]:
        """Price one finished call of `model` (input `tokens`, answer `output`) by the price list, learn from
        it, and return its cost (raw, normalised)."""
        raw = self.pricing.call_cost(model, tokens, output)
        self.pricing.observe_cost(model, raw, tokens)
        return raw, raw / self.cost_scale()

    def set_available(self, model: int, ok: bool) -> None:
        self.available[model] = ok

    def available_names(self) -> list[str]:
        return [n for n, ok in zip(self.names, self.available) if ok]

    # -- routing -------------------------------------------------------------------------------------------------
    def tenant(self, name: str) -> TenantState:
        if not name:
            raise InvalidArgument("tenant", "must not be empty")
        st = self.tenants.get(name)
        if st is None:
            raise InvalidArgument("tenant", f"unknown tenant {shown(name)} (configured: {', '.join(self.tenants)})")
        return st

    def mask(self, item: RouteItem) -> np.ndarray:
        """The models this request may use now: available, allowed, not excluded. Unknown names are invalid."""
        mask = self.available.copy()
        for fld, names in (("allowed", item.allowed), ("excluded", item.excluded)):
            for n in names:
                if n not in self.index:
                    raise InvalidArgument(fld, f"unknown model {shown(n)} (zoo: {', '.join(self.names)})")
        if item.allowed:
            allowed = np.zeros_like(mask)
            allowed[[self.index[n] for n in item.allowed]] = True
            mask &= allowed
        for n in item.excluded:
            mask[self.index[n]] = False
        return mask

    def route(self, items: Sequence[RouteItem], embeddings: np.ndarray) -> list[Routed | NoModelAvailable]:
        """Predict from the prompts' embeddings ([B, dim]) and decide: the one predict -> decide path of the
        service's micro-batches and of the replay."""
        p, var = self.heads.predict(embeddings)
        return [d if isinstance(d, Exception) else Routed(d, embeddings[b])
                for b, d in enumerate(self.decide(items, p, var))]

    def decide(self, items: Sequence[RouteItem], p_hat: np.ndarray,
               var: np.ndarray) -> list[Decision | NoModelAvailable]:
        """Decide a batch of requests from their predictions (rows in item order); a row with no model left
        available gets a NoModelAvailable in its place instead of failing the batch."""
        B, K = len(items), len(self.models)
        states = [self.tenant(it.tenant) for it in items]
        masks = np.stack([self.mask(it) for it in items]) if B else np.zeros((0, K), np.bool_)
        with self.lock:
            ts = np.empty(B, np.int64)
            for b, st in enumerate(states):
                ts[b], st.next_t = st.next_t, st.next_t + 1
            queue = np.array([st.queue for st in states], np.float64)
            expected, allowance = np.array([self.policy.expected(st) for st in states], np.float64).reshape(B, 2).T
            counters = [Counters.of(st) for st in states]  # the policy reads these, not the live counters
            awaiting = [st.awaiting.copy() for st in states]
            flight = np.stack([_flight(st, K).expire(int(ts[b])).copy() for b, st in enumerate(states)]) if B \
                else np.zeros((0, K))
        typical = self.pricing.typical_tokens
        tokens = np.array([typical if it.input_tokens is None else it.input_tokens for it in items], np.float64)
        self.pricing.observe_tokens([it.input_tokens for it in items])
        raw = self.pricing.request_costs(tokens)
        unit = self.cost_scale()
        batch = Batch(tenants=states, modes=np.array([it.exploration for it in items], np.int64), t=ts,
                      expected=expected, allowance=allowance, counters=counters, awaiting=awaiting,
                      flight=flight, masks=masks,
                      p_hat=p_hat, var=var, raw=raw, costs=raw / unit, unit=unit)
        plans = self.policy.plan(batch, self.pricing)
        return [self._decision(it, plan, batch, b, float(queue[b])) for b, (it, plan) in enumerate(zip(items, plans))]

    def _decision(self, it: RouteItem, plan: Plan | None, batch: Batch, b: int,
                  queue: float) -> Decision | NoModelAvailable:
        if plan is None:
            return NoModelAvailable("no zoo model is available for this request (available now: "
                                    f"{', '.join(self.available_names()) or 'none'})")
        invoked = list(plan.invoked)
        return Decision(request_id=it.request_id or uuid.uuid4().hex, tenant=it.tenant, t=int(batch.t[b]),
                        served=plan.served, exploration=plan.exploration, invoked=plan.invoked, choice=plan.choice,
                        p_hat=batch.p_hat[b].copy(), var=batch.var[b].copy(), available=batch.masks[b].copy(),
                        queue=queue, alpha=batch.tenants[b].cfg.alpha, cost=float(batch.costs[b][invoked].sum()),
                        cost_raw=float(batch.raw[b][invoked].sum()), model_costs=batch.raw[b].copy())

    def record(self, d: Decision, embedding: np.ndarray, *, served: int | None = None,
               invoked: tuple[int, ...] | None = None, cost: float | None = None,
               cost_raw: float | None = None) -> Future[None]:
        """Count a routed request (with what was actually served and invoked) and store it for feedback."""
        served = d.served if served is None else served
        invoked = d.invoked if invoked is None else invoked
        cost = d.cost if cost is None else cost
        cost_raw = d.cost_raw if cost_raw is None else cost_raw
        st = self.tenants[d.tenant]
        extras = [k for k in invoked if k != d.choice] if d.exploration else []
        extra = float(d.model_costs[extras].sum())
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        p_served = float(d.p_hat[served])
        target = label_target(st.cfg, d.t)
        row = RequestRow(request_id=d.request_id, tenant=d.tenant, t=d.t, served_model=self.names[served],
                         invoked=tuple(self.names[k] for k in invoked), exploration=d.exploration, cost=cost,
                         cost_raw=cost_raw, alpha=d.alpha, embedding=emb.tobytes(), explore_cost_raw=extra,
                         p_served=p_served, target=target, replica=self.replica)
        try:
            fut = self.store.insert_request(row)  # first: a store that cannot take it refuses the request here
        finally:
            self.release(d.request_id)
        pending = Pending(d.tenant, served, invoked, emb, d.exploration)
        counted = Counted(target - p_served, cost, cost_raw, int(d.exploration), extra, served, tuple(invoked))
        with self.lock:
            self._remember(d.request_id, pending)
            self._refused.pop(d.request_id, None)  # a new request under an id once refused here: its own now
            counted.add(st)
            st.awaiting[extras] = True
            _flight(st, len(self.models)).add(d.request_id, d.t, served)
        return then(fut, lambda _: None, lambda exc: self._forget(exc, d.request_id, pending, st, counted))

    def _forget(self, exc: BaseException, request_id: str, pending: Pending, st: TenantState,
                counted: Counted) -> None:
        """A record the store did not keep (a duplicate id another replica stored first, a failed commit) is
        forgotten before its future fails: its Feedback gets NOT_FOUND instead of labelling what the database
        does not hold."""
        log.error("storing request %r failed; it is forgotten, its feedback refused: %s", request_id, exc)
        with self.lock:
            if self._cache.get(request_id) is pending:
                del self._cache[request_id]
                counted.add(st, -1)
                if st.flight is not None:
                    st.flight.drop(request_id)
            if isinstance(exc, AlreadyExists):  # the stored record under this id is another request's
                self._refuse(request_id, pending.tenant)

    def _remember(self, request_id: str, pending: Pending) -> None:
        self._cache[request_id] = pending
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # -- feedback ------------------------------------------------------------------------------------------------
    def _pending(self, tenant: str, request_id: str) -> Pending:
        if not request_id:
            raise InvalidArgument("request_id", "must not be empty")
        pending = self._cache.get(request_id)
        # an id no request can have is not looked up (a NUL in it was an INTERNAL error on PostgreSQL)
        if pending is None and REQUEST_ID.fullmatch(request_id):
            row = self.store.request(request_id)
            if row is not None and row.tenant == tenant and row.served_model not in self.index:
                raise Conflict(f"request_id {shown(request_id)} was served by model {row.served_model!r}, which is "
                               "no longer in the zoo: its feedback cannot be applied")
            if row is not None and row.served_model in self.index:
                emb = np.frombuffer(row.embedding or b"", dtype=np.float32)
                pending = Pending(row.tenant, self.index[row.served_model],
                                  tuple(self.index[m] for m in row.invoked if m in self.index), emb, row.exploration)
        if pending is None or pending.tenant != tenant:
            raise NotFound(f"request_id {shown(request_id)} is not a request of tenant {tenant!r}")
        self._check_refused(request_id, pending)
        return pending

    def feedback(self, tenant: str, request_id: str, satisfaction: float | None,
                 labels: Sequence[tuple[str, float]]) -> Future[FeedbackResult]:
        """Validate, then durably apply labels; the future resolves after commit and in-memory update."""
        st = self.tenant(tenant)
        pending = self._pending(tenant, request_id)
        by_model = validated_labels(self.index, pending, satisfaction, labels)

        def after_commit(commit: FeedbackCommit) -> None:
            self._applied(pending, commit)

        named = {self.names[k]: s for k, s in by_model.items()}
        # the served label keeps the prediction it came to (tenant.predictor_bias)
        p_label = self.heads.predicted(pending.embedding, pending.served) if pending.served in by_model else None
        fut = self.store.apply_feedback(tenant, request_id, self.names[pending.served], named,
                                        partial(queue_step, st.cfg), after_commit, p_label=p_label)
        return then(fut, lambda c: FeedbackResult(request_id=request_id, applied=len(c.new),
                                                   duplicate=c.given - len(c.new), queue=c.queue,
                                                   queue_updated=c.moved))

    def _applied(self, pending: Pending, commit: FeedbackCommit) -> None:
        """Memory follows a committed feedback transaction (on the store's writer thread, in commit order): the
        tenant's counters at once; the heads at once too when this process is the only writer, else when the
        label log brings these labels in order (apply_log)."""
        self._count(commit.events)
        if self.store.shared:
            self._counted.update(ev.seq for ev in commit.events)
        else:
            own = {commit.events[0].request_id: pending.embedding} if commit.events else None
            self.learner.learn(commit.events, own)

    def apply_log(self, events: list[LabelEvent]) -> None:
        """Labels of the shared log, in order, each once: count those another process committed, learn them all
        (the learner skips those the heads have: at start-up the log is read from the tenants' rows' mark). A
        delivery that failed part-way comes again (the store reads the log from before it): what it counted is
        not counted twice (`_applied_through`), what it learned not learned twice (heads.last_seq)."""
        for ev in events:
            if ev.seq <= self._applied_through:
                continue
            if ev.seq in self._counted:
                self._counted.discard(ev.seq)
            elif ev.seq > self._counted_through:  # the tenants' rows this process loaded did not have it
                self._count((ev,))
            self._applied_through = ev.seq
        self.learner.learn(events)
        for listener in self.label_listeners:
            try:
                listener(events)
            except Exception:  # noqa: BLE001 - an observer must not make the log be read again
                log.exception("a label listener failed")

    def _shared_counts(self, rows: dict[str, TenantRow]) -> None:
        """Other replicas' requests, as the shared store counts them: a tenant's request index t (the
        exploration schedule's clock) follows the whole stream, not this replica's share of it."""
        with self.lock:
            for name, row in rows.items():
                st = self.tenants.get(name)
                if st is not None and row.requests + 1 > st.next_t:
                    st.next_t = row.requests + 1

    def _count(self, events: Sequence[LabelEvent]) -> None:
        """A label's effect on its tenant: the queue (as the transaction left it), labelled, satisfaction, and
        the expected-queue terms of the request. With a shared store only the router that routed the request
        counted it there (its `replica` on the stored request), so only that one lets it go, whichever replica
        took the Feedback and however long ago the request left its cache."""
        with self.lock:
            for ev in events:
                st, k = self.tenants.get(ev.tenant), self.index.get(ev.model)
                if st is None or k is None:
                    continue
                st.awaiting[k] = False
                if not ev.moves_queue or ev.queue_after is None:
                    continue
                _flight(st, len(self.models)).landed(ev.request_id, st.next_t - 1)
                s = ev.satisfaction
                if ev.seq > st.queue_seq:
                    st.queue, st.queue_seq = ev.queue_after, ev.seq
                st.labelled += 1
                st.sat_sum += s
                mine = not self.store.shared or ev.replica == self.replica
                p, target = ev.p_served, ev.target
                if mine and p is not None and target is not None:  # it leaves the pending expectation for the queue
                    st.pending_sum -= target - p
                    st.pending_n -= 1
                    r = s - (p if ev.p_label is None else ev.p_label)
                    st.resid_sum += r
                    st.resid_sq += r * r
                    st.resid_n += 1

    def snapshot(self) -> Future[None]:
        """Persist the heads with the last label they have learned (replayed after a crash)."""
        return self.learner.snapshot()

    def tenant_views(self, merged: bool = True) -> list[TenantState]:
        """A consistent copy of every tenant's state (for metrics and status), taken under the lock. With a
        shared store and `merged`, the counters are the database's (every replica's requests and labels; raises
        StorageUnavailable when it cannot be read); the queue is the one this replica decides with."""
        with self.lock:
            views = [_copy(st) for st in self.tenants.values()]
        if self.store.shared and merged:
            rows, counts = self.store.tenants(), self.store.model_counts()
            for v in views:
                if (row := rows.get(v.cfg.name)) is not None:
                    v.requests, v.labelled, v.sat_sum = row.requests, row.labelled, row.sat_sum
                    v.cost_sum, v.cost_raw_sum = row.cost_sum, row.cost_raw_sum
                    v.explore_steps, v.explore_cost_raw = row.explore_steps, row.explore_cost_raw
                for k, name in enumerate(self.names):
                    v.served[k], v.invoked[k] = counts.get((v.cfg.name, name), (0, 0))
        return views

    def status(self, name: str) -> TenantState:
        """One tenant's state for SlaStatus: a copy taken under the lock (the writer thread moves labelled and
        sat_sum one after the other), or with a shared store its merged view (above)."""
        st = self.tenant(name)
        if self.store.shared:
            return next(v for v in self.tenant_views() if v.cfg.name == name)
        with self.lock:
            return _copy(st)


def _copy(st: TenantState) -> TenantState:
    return replace(st, served=st.served.copy(), invoked=st.invoked.copy(), awaiting=st.awaiting.copy())


def _flight(st: TenantState, K: int) -> Flight:
    if st.flight is None:
        st.flight = Flight(np.zeros(K))
    return st.flight
