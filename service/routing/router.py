"""The router core: MESS+ decisions, the per-tenant virtual queues, feedback and learning.

The service and `messplus replay` both run this class; neither re-implements any of it. docs/ROUTING.md
explains each choice below and what it measured.

Per tenant k (alpha, V, c, explore_models, explore_budget, optimism, margin, reserve, confidence, debt_gain
from config):
  1. t <- t + 1; explore with probability min(1, c / t^(1/4)) (a counter-based draw: reproducible by seed),
     STUCK_EXPLORE times that while the tenant is stuck: its queue past the margin's bank (step 3) and even
     the optimistic choice predicted below alpha.
  2. every model's satisfaction is predicted as a logit mean mu and variance v (heads.py); decisions use the
     optimistic p_opt = sigmoid(mu + optimism * sqrt(v)), so a model the router knows little about is tried
     when the queue asks for satisfaction, and a dominated one stops being tried once it is known.
  3. exploit: argmin_m V' * cost_m + P * (alpha - p_opt_m) over the available models (kernels.decide_batch),
     with V' = V per unit of the tenant's mean cost per request so far, and P the pressure of the queue:
     max(0, Q + E), and debt_gain times more past half the surplus the margin has banked (debt_pressure). E is
     what the routed requests still without a label are expected to add to Q (their targets minus their
     predicted satisfaction, corrected by the predictor's measured bias, plus `confidence` standard errors of
     that estimate): so late feedback does not make the queue overshoot, and requests that never get feedback
     still count, as the SLA counts them.
  4. explore: invoke the exploit choice plus the explore_models - 1 runners-up of step 3's objective with every
     model at its plausible best (sigmoid(mu + EXPLORE_SIGMAS sigma), counting exploration labels still in
     flight as if they had arrived), among its neighbours in cost, the models the exploration budget affords
     and those the queue could justify (0: all models); serve the invoked answer predicted most satisfying
     (they are all paid for); every answer can be labelled.
  5. on the served answer's first label s, the n-th of the tenant:
        Q <- max(-reserve, Q + alpha + margin / (2 sqrt(n)) - s)      (kernels.queue_update), durably.
     reserve 0 and margin 0 is the MESS+ queue. With an unlimited reserve the queue keeps the surplus of a
     good stretch instead of losing it at the floor, and the decaying margin keeps the running satisfaction
     on the safe side of alpha by a total of margin * sqrt(n) labels.
  6. every label (served or not, exploration or not) trains that model's head.

Order of effects for feedback, on the store's writer thread: read the request's stored labels, insert the new
ones and the tenant's new queue in one transaction, commit, then update memory (queue, counters, heads),
then the RPC acknowledges.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from messplus import kernels

from ..config import ModelConfig, TenantConfig
from ..errors import Conflict, InvalidArgument, NoModelAvailable, NotFound
from .heads import Heads
from ..state.sqlite import RequestRow, Store, now

log = logging.getLogger("messplus.router")

EXPLORE_DEFAULT, EXPLORE_NEVER, EXPLORE_ALWAYS = 0, 1, 2
SCALE_WARMUP = 20  # requests before a tenant's own mean cost sets the unit of V
BIAS_PRIOR_N = 20.0  # pseudo-labels of zero error behind the predictor's bias estimate
EXPLORE_COST_RATIO = 2.0  # exploration steps learn models at most this much dearer than the exploit choice
EXPLORE_SIGMAS = 3.0  # exploration ranks each model at sigmoid(mu + 3 sigma): what it might plausibly be
DEBT_BANK = 0.5  # the queue runs at its plain slope up to this share of the margin's surplus (margin sqrt(n))
STUCK_EXPLORE = 4.0  # exploration is this much likelier while the tenant is stuck in debt (see decide)
CHARS_PER_TOKEN = 4.0  # input tokens are estimated from the prompt's length, as the service charges them
OUTPUT_TOKENS_PRIOR = 256.0  # output tokens per call assumed for cost_per_output_token until calls are observed
TYPICAL_TOKENS_PRIOR = 256.0  # input tokens of a typical request, until requests say otherwise
TYPICAL_TOKENS_EMA = 0.01  # weight of each request in the running typical input length


def input_tokens(text: str) -> float:
    """The input tokens a prompt will be charged for, estimated as characters / CHARS_PER_TOKEN."""
    return len(text) / CHARS_PER_TOKEN


@dataclass
class TenantState:
    cfg: TenantConfig
    index: int
    queue: float = 0.0
    next_t: int = 1
    requests: int = 0
    labelled: int = 0
    sat_sum: float = 0.0
    cost_sum: float = 0.0
    cost_raw_sum: float = 0.0
    explore_steps: int = 0
    explore_cost_raw: float = 0.0  # spent on exploration steps' models beyond the exploit choice
    pending_sum: float = 0.0  # sum of target - p_served over routed requests whose served answer is unlabelled
    pending_n: int = 0
    resid_sum: float = 0.0    # sum of satisfaction - p_served over those that are labelled (predictor bias)
    resid_sq: float = 0.0     # sum of (satisfaction - p_served)^2 over the same (the predictor's error spread)
    resid_n: int = 0
    served: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    invoked: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # models an exploration step invoked whose label has not come back yet (memory only: clear after a restart)
    awaiting: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))


@dataclass(frozen=True, kw_only=True)
class RouteItem:
    tenant: str
    request_id: str = ""
    allowed: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    exploration: int = EXPLORE_DEFAULT
    input_tokens: float | None = None  # the prompt's input tokens (input_tokens()); None: a typical request


@dataclass(frozen=True, kw_only=True)
class Decision:
    request_id: str
    tenant: str
    t: int
    served: int
    exploration: bool
    invoked: tuple[int, ...]
    choice: int  # the exploit decision (== served unless exploring)
    p_hat: np.ndarray
    var: np.ndarray
    available: np.ndarray
    queue: float
    alpha: float
    cost: float
    cost_raw: float
    model_costs: np.ndarray  # [K] what each model would cost for this request, in the zoo's unit (raw)


@dataclass(frozen=True, kw_only=True)
class FeedbackResult:
    request_id: str
    applied: int
    duplicate: int
    queue: float
    queue_updated: bool


@dataclass
class _Pending:
    tenant: str
    served: int
    invoked: tuple[int, ...]
    embedding: np.ndarray
    p_served: float | None = None
    target: float | None = None


class Router:
    """Decisions, queues, feedback and learning for every tenant over one zoo."""

    def __init__(self, models: Sequence[ModelConfig], tenants: Sequence[TenantConfig], heads: Heads, store: Store,
                 *, cost_ema: float = 0.05, cache_size: int = 50_000, snapshot_every: int = 500) -> None:
        self.models = tuple(models)
        self.names = tuple(m.name for m in self.models)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.heads = heads
        self.store = store
        self.cost_ema = cost_ema
        # a model's price for a request: a part per call (its cost_per_request plus its output tokens, learned
        # from observed calls) and a part per input token, known from the prompt's length before the call
        self.cost_fixed = np.array([m.cost_per_request + m.cost_per_output_token * OUTPUT_TOKENS_PRIOR
                                    for m in self.models], dtype=np.float64)
        self.cost_input = np.array([m.cost_per_input_token for m in self.models], dtype=np.float64)
        self.typical_tokens = TYPICAL_TOKENS_PRIOR  # memory only, as the per-call part: relearned after a restart
        self._reprice()
        self.available = np.ones(len(self.models), dtype=np.bool_)
        self.tenants = {t.name: TenantState(cfg=t, index=i) for i, t in enumerate(tenants)}
        self._cache: OrderedDict[str, _Pending] = OrderedDict()
        self._cache_size = cache_size
        self._snapshot_every = snapshot_every
        self._labels_since_snapshot = 0
        self._lock = threading.Lock()  # guards tenant counters shared by the event loop and the writer thread
        self._load()

    # -- start-up ----------------------------------------------------------------------------------------------
    def _load(self) -> None:
        K = len(self.models)
        for st in self.tenants.values():
            st.served, st.invoked = np.zeros(K, np.int64), np.zeros(K, np.int64)
            st.awaiting = np.zeros(K, np.bool_)
        self.store.submit(_ensure_tenants(tuple(self.tenants))).result()
        for name, row in self.store.tenants().items():
            st = self.tenants.get(name)
            if st is None:
                continue
            st.queue, st.requests, st.labelled, st.sat_sum = row.queue, row.requests, row.labelled, row.sat_sum
            st.cost_sum, st.cost_raw_sum, st.explore_steps = row.cost_sum, row.cost_raw_sum, row.explore_steps
            st.explore_cost_raw = row.explore_cost_raw
            st.next_t = row.requests + 1
        for name, (pending_sum, pending_n, resid_sum, resid_sq, resid_n) in self.store.expectations().items():
            if name in self.tenants:
                st = self.tenants[name]
                st.pending_sum, st.pending_n = pending_sum, pending_n
                st.resid_sum, st.resid_sq, st.resid_n = resid_sum, resid_sq, resid_n
        for (tenant, model), (served, invoked) in self.store.model_counts().items():
            if tenant in self.tenants and model in self.index:
                self.tenants[tenant].served[self.index[model]] = served
                self.tenants[tenant].invoked[self.index[model]] = invoked
        self._restore_heads()

    def _restore_heads(self) -> None:
        seq, complete = 0, True
        for k, name in enumerate(self.names):
            snap = self.store.head(name)
            if snap is None or snap[0] != self.heads.features:
                seq, complete = 0, False
                break
            self.heads.restore(k, snap[2], snap[3])
            seq = snap[1] if k == 0 else min(seq, snap[1])
        if not complete:  # no snapshot of every head: start from the prior and learn every stored label
            fresh = Heads(self.names, self.heads.dim, prior_var=self.heads.prior_var,
                          prior_accuracy=[m.prior_accuracy for m in self.models])
            self.heads.W[:], self.heads.S[:] = fresh.W, fresh.S
        replayed = 0
        for s, model, sat, emb in self.store.labels_since(seq):
            if model in self.index and emb is not None:
                self.heads.update(np.frombuffer(emb, dtype=np.float32), self.index[model], sat)
                replayed += 1
            self.heads.last_seq = s
        self.heads.last_seq = max(self.heads.last_seq, seq)
        if replayed:
            log.info("predictor heads: replayed %d labels since snapshot seq %d", replayed, seq)

    # -- costs and availability ----------------------------------------------------------------------------------
    def _reprice(self) -> None:
        """`cost_raw`: each model's cost estimate for a typical request (the running mean input length), in the
        zoo's unit; recomputed once per decided batch and per observed call, not on every read."""
        self.cost_raw = self.request_costs(np.array([self.typical_tokens]))[0]

    def request_costs(self, tokens: np.ndarray) -> np.ndarray:
        """[B, K] cost estimates, in the zoo's unit, of requests with these input tokens ([B])."""
        return np.maximum(self.cost_fixed[None, :] + self.cost_input[None, :] * tokens[:, None], 1e-12)

    def cost_scale(self) -> float:
        """The unit of normalised costs: the dearest model's cost for a typical request, so V is unitless."""
        return float(self.cost_raw.max())

    def costs(self) -> np.ndarray:
        """Normalised cost estimates of a typical request: the most expensive model costs 1."""
        return self.cost_raw / self.cost_scale()

    def v_scale(self, st: TenantState) -> float:
        """V is per unit of the tenant's own mean cost per request so far (the zoo's median model cost for its
        first SCALE_WARMUP requests): this converts it to the units of `costs()`, where the dearest model is 1.

        So V means the same at any alpha and in any cost unit: a model twice the tenant's going rate dearer
        than another must be V / (Q * 2) likelier to satisfy to be chosen."""
        going = st.cost_raw_sum / st.requests if st.requests >= SCALE_WARMUP else 0.0
        if not (going > 0 and math.isfinite(going)):
            going = float(np.median(self.cost_raw))
        return self.cost_scale() / going

    def observe_cost(self, model: int, cost_raw: float, tokens: float = 0.0) -> None:
        """Move the model's per-call cost estimate towards what a real call of `tokens` input tokens cost, less
        its input tokens' price (which is known)."""
        if cost_raw > 0 and math.isfinite(cost_raw):
            per_call = cost_raw - self.cost_input[model] * tokens
            self.cost_fixed[model] += self.cost_ema * (per_call - self.cost_fixed[model])
            self._reprice()

    def set_available(self, model: int, ok: bool) -> None:
        self.available[model] = ok

    # -- routing -------------------------------------------------------------------------------------------------
    def tenant(self, name: str) -> TenantState:
        if not name:
            raise InvalidArgument("tenant", "must not be empty")
        st = self.tenants.get(name)
        if st is None:
            raise InvalidArgument("tenant", f"unknown tenant {name!r} (configured: {', '.join(self.tenants)})")
        return st

    def _mask(self, item: RouteItem) -> np.ndarray:
        mask = self.available.copy()
        for fld, names in (("overrides.allowed_models", item.allowed), ("overrides.excluded_models", item.excluded)):
            for n in names:
                if n not in self.index:
                    raise InvalidArgument(fld, f"unknown model {n!r} (zoo: {', '.join(self.names)})")
        if item.allowed:
            allowed = np.zeros_like(mask)
            allowed[[self.index[n] for n in item.allowed]] = True
            mask &= allowed
        for n in item.excluded:
            mask[self.index[n]] = False
        return mask

    def decide(self, items: Sequence[RouteItem], p_hat: np.ndarray,
               var: np.ndarray) -> list[Decision | NoModelAvailable]:
        """Decide a batch of requests from their predictions (rows in item order); a row with no model left
        available gets a NoModelAvailable in its place instead of failing the batch."""
        B, K = len(items), len(self.models)
        states = [self.tenant(it.tenant) for it in items]
        masks = np.stack([self._mask(it) for it in items]) if B else np.zeros((0, K), np.bool_)
        with self._lock:
            ts = np.empty(B, np.int64)
            for b, st in enumerate(states):
                ts[b], st.next_t = st.next_t, st.next_t + 1
            queue = np.array([st.queue for st in states], np.float64)
            expected = np.array([st.queue + expected_pending(st) for st in states], np.float64)
            labelled = np.array([st.labelled for st in states], np.float64)
            awaiting = [st.awaiting.copy() for st in states]
        tokens = np.array([self.typical_tokens if it.input_tokens is None else it.input_tokens for it in items],
                          np.float64)
        for it in items:
            if it.input_tokens is not None:
                self.typical_tokens += TYPICAL_TOKENS_EMA * (it.input_tokens - self.typical_tokens)
        self._reprice()
        raw = self.request_costs(tokens)
        costs = raw / self.cost_scale()
        alpha = np.array([st.cfg.alpha for st in states], np.float64)
        V = np.array([st.cfg.V * self.v_scale(st) for st in states], np.float64)
        c = np.array([st.cfg.c for st in states], np.float64)
        kappa = np.array([st.cfg.optimism for st in states], np.float64)
        streams = np.array([st.index for st in states], np.uint64)
        seed = np.uint64(states[0].cfg.seed if states else 0)
        p_dec = optimistic(p_hat, var, kappa)
        margin = np.array([st.cfg.margin for st in states], np.float64)
        gain = np.array([st.cfg.debt_gain for st in states], np.float64)
        pressure = np.maximum(debt_pressure(expected, margin, labelled, gain), 0.0)
        choice = kernels.decide_batch(p_dec, costs, masks, pressure, alpha, V)
        # stuck: the queue is past the margin's bank and even the optimistic choice is predicted below alpha
        stuck = (pressure > np.maximum(expected, 0.0)) & (p_dec[np.arange(B), np.maximum(choice, 0)] < alpha)
        c = np.where(stuck, c * STUCK_EXPLORE, c)
        explore = kernels.draw_explore_batch(seed, streams, ts, c) if B else np.zeros(0, np.bool_)
        out: list[Decision | NoModelAvailable] = []
        for b, it in enumerate(items):
            if choice[b] < 0:
                out.append(NoModelAvailable("no zoo model is available for this request (available now: "
                                            f"{', '.join(self._available_names()) or 'none'})"))
                continue
            ex = it.exploration == EXPLORE_ALWAYS or (it.exploration == EXPLORE_DEFAULT and bool(explore[b]))
            invoked: tuple[int, ...] = (int(choice[b]),)
            if ex:
                # exploration ranks models by the decision's own objective with each one at its plausible best
                p_best = optimistic(p_hat[b:b + 1], in_flight(var[b:b + 1], awaiting[b]),
                                    np.array([EXPLORE_SIGMAS]))[0]
                rank = V[b] * costs[b] + pressure[b] * (alpha[b] - p_best)
                # the dearest model the queue could justify: what a perfect answer would be worth over the choice
                worth = pressure[b] * (1.0 - p_dec[b, choice[b]]) / V[b] if V[b] > 0 else math.inf
                invoked = self._explored(states[b], int(choice[b]), rank, masks[b], worth, raw[b])
            out.append(self._decision(it, states[b], int(ts[b]), ex, int(choice[b]), invoked, p_hat[b], var[b],
                                      masks[b], float(queue[b]), costs[b], raw[b]))
        return out

    def _available_names(self) -> list[str]:
        return [n for n, ok in zip(self.names, self.available) if ok]

    def _explored(self, st: TenantState, choice: int, rank: np.ndarray, mask: np.ndarray,
                  worth: float, raw: np.ndarray) -> tuple[int, ...]:
        """The exploit choice plus the explore_models - 1 best-ranked models (lowest `rank`) among those it can
        afford: its neighbours in cost (at most EXPLORE_COST_RATIO times as dear, and at least the next dearer
        one), any model at most `worth` (in units of the dearest model's cost) dearer than the choice, and any
        model whose cost fits in what is left of the exploration budget (explore_budget times all the tenant
        has spent, minus what exploration's extra models have cost so far). The budget and `worth` are what keep
        a dear model that started badly from being locked out: the first at a bounded price, the second when
        the queue says the SLA needs it. `raw` is each model's cost for this request."""
        idx = np.flatnonzero(mask)
        n = st.cfg.explore_models
        if n == 0 or n >= len(idx):
            return tuple(int(i) for i in idx)
        cost = raw[idx]
        dearer = cost[cost > raw[choice]]
        limit = max(EXPLORE_COST_RATIO * raw[choice], dearer.min() if dearer.size else 0.0,
                    raw[choice] + worth * self.cost_scale())
        left = st.cfg.explore_budget * st.cost_raw_sum - st.explore_cost_raw
        near = idx[(cost <= limit) | (cost <= left)]
        others = [int(i) for i in near[np.argsort(rank[near], kind="stable")] if i != choice]
        return tuple(sorted([choice, *others[: n - 1]]))

    def _decision(self, it: RouteItem, st: TenantState, t: int, explore: bool, choice: int,
                  invoked: tuple[int, ...], p: np.ndarray, var: np.ndarray, mask: np.ndarray,
                  queue: float, costs: np.ndarray, raw: np.ndarray) -> Decision:
        served = max(invoked, key=lambda k: (p[k], raw[k]))  # ties: the dearer, more capable
        return Decision(request_id=it.request_id or uuid.uuid4().hex, tenant=it.tenant, t=t, served=served,
                        exploration=explore, invoked=invoked, choice=choice, p_hat=p.copy(), var=var.copy(),
                        available=mask.copy(),
                        queue=queue, alpha=st.cfg.alpha, cost=float(costs[list(invoked)].sum()),
                        cost_raw=float(raw[list(invoked)].sum()), model_costs=raw.copy())

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
        self._remember(d.request_id, _Pending(d.tenant, served, invoked, emb, p_served, target))
        with self._lock:
            st.pending_sum += target - p_served
            st.pending_n += 1
            st.requests += 1
            st.cost_sum += cost
            st.cost_raw_sum += cost_raw
            st.explore_steps += int(d.exploration)
            st.explore_cost_raw += extra
            st.served[served] += 1
            st.invoked[list(invoked)] += 1
            st.awaiting[extras] = True
        row = RequestRow(request_id=d.request_id, tenant=d.tenant, t=d.t, served_model=self.names[served],
                         invoked=tuple(self.names[k] for k in invoked), exploration=d.exploration, cost=cost,
                         cost_raw=cost_raw, alpha=d.alpha, embedding=emb.tobytes(), explore_cost_raw=extra,
                         p_served=p_served, target=target)
        fut = self.store.submit(_insert_request(row))
        fut.add_done_callback(_log_failure)
        return fut

    def _remember(self, request_id: str, pending: _Pending) -> None:
        self._cache[request_id] = pending
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def known(self, request_id: str) -> bool:
        """Was this id routed before: in memory (the last cache_size requests), else in the state file (older
        ones, and those routed before a restart)."""
        return request_id in self._cache or self.store.request_exists(request_id)

    # -- feedback ------------------------------------------------------------------------------------------------
    def _pending(self, tenant: str, request_id: str) -> _Pending:
        if not request_id:
            raise InvalidArgument("request_id", "must not be empty")
        pending = self._cache.get(request_id)
        if pending is None:
            row = self.store.request(request_id)
            if row is not None and row.served_model in self.index:
                emb = np.frombuffer(row.embedding or b"", dtype=np.float32)
                pending = _Pending(row.tenant, self.index[row.served_model],
                                   tuple(self.index[m] for m in row.invoked if m in self.index), emb, row.p_served,
                                   row.target)
        if pending is None or pending.tenant != tenant:
            raise NotFound(f"request_id {request_id!r} is not a request of tenant {tenant!r}")
        return pending

    def feedback(self, tenant: str, request_id: str, satisfaction: float | None,
                 labels: Sequence[tuple[str, float]]) -> Future[FeedbackResult]:
        """Validate, then durably apply labels; the future resolves after commit and in-memory update."""
        st = self.tenant(tenant)
        pending = self._pending(tenant, request_id)
        by_model = _validated_labels(self, pending, satisfaction, labels)
        job = _FeedbackJob(self, st, request_id, pending, by_model)
        return self.store.submit(job, job.after_commit)

    def _learn(self, pending: _Pending, new: dict[int, float], last_seq: int) -> None:
        if pending.embedding.size == self.heads.dim:
            for k, s in new.items():
                self.heads.update(pending.embedding, k, s)
        self.heads.last_seq = max(self.heads.last_seq, last_seq)
        self._labels_since_snapshot += len(new)
        if self._labels_since_snapshot >= self._snapshot_every:
            self._labels_since_snapshot = 0
            self.snapshot()

    def snapshot(self) -> Future[None]:
        """Persist the heads with the last label they have learned (replayed after a crash)."""
        snaps = [(n, *self.heads.snapshot(k)) for k, n in enumerate(self.names)]
        return self.store.submit(_write_heads(snaps, self.heads.features, self.heads.last_seq))


def optimistic(p: np.ndarray, var: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """sigmoid(mu + kappa * sqrt(var)) per row, from the moderated p = sigmoid(mu / sqrt(1 + pi var / 8))."""
    if not p.size or not kappa.any():
        return np.ascontiguousarray(p, dtype=np.float64)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    mu = (np.log(q) - np.log1p(-q)) * np.sqrt(1 + np.pi * var / 8)
    return np.ascontiguousarray(1 / (1 + np.exp(-(mu + kappa[:, None] * np.sqrt(var)))))


def in_flight(var: np.ndarray, awaiting: np.ndarray) -> np.ndarray:
    """Logit variances with each awaited exploration label counted as if it had arrived: one logistic label
    adds at most 1/4 to the precision (p (1 - p) <= 1/4), so v -> v / (1 + v / 4).

    Without it, while labels are late the same least-known model stays the runner-up and is explored again and
    again until its first label lands: with a 200-request delay the router learned one model per 200 requests,
    and GPT-4, the dearest of 11, only after some 2,000 (docs/ROUTING.md)."""
    return var / (1.0 + awaiting * var / 4.0)


def expected_pending(st: TenantState) -> float:
    """The deficit the tenant's routed-but-unlabelled requests are expected to add to the queue, plus
    `confidence` standard errors of that estimate. Zero when every request is labelled.

    The estimate is each one's target minus its predicted satisfaction, corrected by the predictor's mean error
    on the labelled ones (shrunk towards 0 by BIAS_PRIOR_N pseudo-labels). Its error has two parts: the n
    unlabelled outcomes' own spread (variance n s2) and the error of the bias estimate, which every one of them
    shares (n^2 s2 / m, from m labels); s2 is the labelled residuals' variance (a prior of 1/4, the most a
    label's can be, weighs BIAS_PRIOR_N labels). With sparse feedback (n ~ 4m) the second part grows like n and
    the router holds the stream above alpha by what it cannot see; with full feedback n is the requests in
    flight and it all but vanishes."""
    n = st.pending_n
    if n <= 0:
        return 0.0
    m = st.resid_n + BIAS_PRIOR_N
    bias = st.resid_sum / m
    s2 = max(st.resid_sq - st.resid_sum * bias + 0.25 * BIAS_PRIOR_N, 0.0) / m
    return st.pending_sum - bias * n + st.cfg.confidence * math.sqrt(s2 * (n + n * n / m))


def debt_pressure(expected: np.ndarray, margin: np.ndarray, labelled: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The queue the decisions weigh satisfaction by: the expected queue Q + E, and `gain` times more beyond
    DEBT_BANK of the surplus the safety margin has banked (margin sqrt(n) after n labels); per row.

    MESS+'s linear queue settles where the cost of lifting satisfaction balances it (Q* ~ V' dcost / dp), a
    standing deficit that only vanishes as Q*/T over an infinite horizon. When lifting satisfaction takes a
    much dearer model for a small gain, Q* outgrows the margin's surplus and the stream ends below alpha; the
    steeper slope past the bank holds Q near it instead, so the margin's surplus pays the standing deficit."""
    bank = DEBT_BANK * margin * np.sqrt(np.maximum(labelled, 1.0))
    return expected + gain * np.maximum(expected - bank, 0.0)


def queue_floor(cfg: TenantConfig) -> float:
    return -math.inf if cfg.reserve < 0 else -cfg.reserve


def label_target(cfg: TenantConfig, n: int) -> float:
    """What the tenant's n-th label is held to: alpha plus the decaying safety margin."""
    return cfg.alpha + cfg.margin / (2 * math.sqrt(max(n, 1)))


def queue_step(cfg: TenantConfig, queue: float, n: int, satisfaction: float) -> float:
    """The queue after the tenant's n-th queue-moving label (n >= 1)."""
    return kernels.queue_update(queue, label_target(cfg, n), satisfaction, queue_floor(cfg))


def fold_queue(cfg: TenantConfig, satisfactions: Sequence[float]) -> float:
    """The queue recomputed from the tenant's queue-moving labels in commit order (the labels table)."""
    q = 0.0
    for n, s in enumerate(satisfactions, start=1):
        q = queue_step(cfg, q, n, float(s))
    return q


def _log_failure(fut: Future[None]) -> None:
    if fut.exception() is not None:
        log.error("storing a routed request failed: %s", fut.exception())


def _validated_labels(router: Router, pending: _Pending, satisfaction: float | None,
                      labels: Sequence[tuple[str, float]]) -> dict[int, float]:
    out: dict[int, float] = {}
    if satisfaction is not None:
        _check_satisfaction("satisfaction", satisfaction)
        out[pending.served] = float(satisfaction)
    for i, (model, s) in enumerate(labels):
        fld = f"labels[{i}]"
        k = router.index.get(model)
        if k is None:
            raise InvalidArgument(f"{fld}.model", f"unknown model {model!r} (zoo: {', '.join(router.names)})")
        if k not in pending.invoked:
            raise InvalidArgument(f"{fld}.model", f"model {model!r} was not invoked for this request")
        _check_satisfaction(f"{fld}.satisfaction", s)
        if k in out and out[k] != s:
            raise InvalidArgument(f"{fld}.satisfaction", f"contradicts another label for {model!r} in this call")
        out[k] = float(s)
    if not out:
        raise InvalidArgument("satisfaction", "give satisfaction (served model) or at least one entry in labels")
    return out


def _check_satisfaction(fld: str, s: float) -> None:
    if not (isinstance(s, float | int) and math.isfinite(s) and 0.0 <= s <= 1.0):
        raise InvalidArgument(fld, f"must be a number in [0, 1], got {s!r}")


class _FeedbackJob:
    """Runs on the writer thread inside a transaction; `after_commit` then updates memory in commit order."""

    def __init__(self, router: Router, st: TenantState, request_id: str, pending: _Pending,
                 labels: dict[int, float]) -> None:
        self.router, self.st, self.request_id, self.pending, self.labels = router, st, request_id, pending, labels

    def __call__(self, conn: sqlite3.Connection) -> FeedbackResult:
        names = self.router.names
        stored = dict(conn.execute("SELECT model, satisfaction FROM labels WHERE request_id = ?", (self.request_id,)))
        new: dict[int, float] = {}
        for k, s in self.labels.items():
            if names[k] in stored:
                if abs(stored[names[k]] - s) > 1e-12:
                    raise Conflict(f"request {self.request_id!r} already has satisfaction {stored[names[k]]} for "
                                   f"model {names[k]!r}; feedback is write-once")
            else:
                new[k] = s
        queue, labelled = conn.execute("SELECT queue, labelled FROM tenants WHERE name = ?",
                                       (self.st.cfg.name,)).fetchone()
        moves = self.pending.served in new
        if moves:
            queue = queue_step(self.st.cfg, float(queue), int(labelled) + 1, new[self.pending.served])
            conn.execute("UPDATE tenants SET queue = ?, labelled = labelled + 1, sat_sum = sat_sum + ? "
                         "WHERE name = ?", (queue, new[self.pending.served], self.st.cfg.name))
        last_seq = 0
        for k, s in new.items():
            served = k == self.pending.served
            cur = conn.execute("INSERT INTO labels (request_id, model, satisfaction, moves_queue, queue_after, created)"
                               " VALUES (?, ?, ?, ?, ?, ?)", (self.request_id, names[k], s, int(served),
                                                              queue if served else None, now()))
            last_seq = max(last_seq, int(cur.lastrowid or 0))
        self.new, self.last_seq, self.queue, self.moves = new, last_seq, queue, moves
        return FeedbackResult(request_id=self.request_id, applied=len(new), duplicate=len(self.labels) - len(new),
                              queue=queue, queue_updated=moves)

    def after_commit(self, result: FeedbackResult) -> None:
        st = self.st
        with self.router._lock:
            st.awaiting[list(self.new)] = False
            if self.moves:
                s = self.new[self.pending.served]
                st.queue = self.queue
                st.labelled += 1
                st.sat_sum += s
                p, target = self.pending.p_served, self.pending.target
                if p is not None and target is not None:  # it leaves the pending expectation for the queue
                    st.pending_sum -= target - p
                    st.pending_n -= 1
                    st.resid_sum += s - p
                    st.resid_sq += (s - p) ** 2
                    st.resid_n += 1
        if self.new:
            self.router._learn(self.pending, self.new, self.last_seq)


def _ensure_tenants(names: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR IGNORE INTO tenants (name) VALUES (?)", [(n,) for n in names])
    return job


def _insert_request(row: RequestRow):  # type: ignore[no-untyped-def]
    def job(conn: sqlite3.Connection) -> None:
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
    return job


def _write_heads(snaps: list[tuple[str, bytes, bytes]], dim: int, last_seq: int):  # type: ignore[no-untyped-def]
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT OR REPLACE INTO heads (model, dim, last_label_seq, W, S, updated) "
                         "VALUES (?, ?, ?, ?, ?, ?)", [(n, dim, last_seq, w, s, now()) for n, w, s in snaps])
    return job


def summary_json(d: Decision, names: Sequence[str]) -> str:
    """A one-line JSON of a decision, for structured logs."""
    return json.dumps({"request_id": d.request_id, "tenant": d.tenant, "t": d.t, "model": names[d.served],
                       "exploration": d.exploration, "queue": round(d.queue, 6)})
