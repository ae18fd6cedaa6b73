"""A tenant's state (its SLA's ledger) and the pure math of its virtual queue.

On the served answer's first label s, the n-th of the tenant:
    Q <- max(-reserve, Q + alpha + margin / (2 sqrt(n)) - s)      (kernels.queue_update)
reserve 0 and margin 0 is the MESS+ queue. With an unlimited reserve the queue keeps the surplus of a good
stretch instead of losing it at the floor, and the decaying margin keeps the running satisfaction on the safe
side of alpha by a total of margin * sqrt(n) labels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from messplus import kernels

from ..config import TenantConfig

BIAS_PRIOR_N = 20.0  # pseudo-labels of zero error behind the predictor's bias estimate


@dataclass
class Window:
    """The predictions of a tenant's latest requests as they were routed (memory only; policy.price_floor): the
    rating each decision used, the predicted satisfaction, the cost in the policy's unit and the models it
    could use; a ring of `floor_window` rows."""

    q: np.ndarray
    p: np.ndarray
    cost: np.ndarray
    mask: np.ndarray
    n: int = 0
    next: int = 0

    @classmethod
    def empty(cls, size: int, K: int) -> Window:
        return cls(np.zeros((size, K)), np.zeros((size, K)), np.zeros((size, K)), np.zeros((size, K), np.bool_))

    def push(self, q: np.ndarray, p: np.ndarray, cost: np.ndarray, mask: np.ndarray) -> None:
        i, size = self.next, self.q.shape[0]
        self.q[i], self.p[i], self.cost[i], self.mask[i] = q, p, cost, mask
        self.next, self.n = (i + 1) % size, min(self.n + 1, size)


FLIGHT_AGE = 2.0  # a served answer's label not back within this many times the mean delay seen is presumed lost
FLIGHT_MAX = 4096  # at most this many of a tenant's served-but-unlabelled requests are remembered as in flight


@dataclass
class Flight:
    """A tenant's served answers whose label is on its way, per model (memory only: empty after a restart).

    An answer counts until its label lands, or until it is older than FLIGHT_AGE times the mean label delay
    the tenant has shown (in its requests; before its first label every unlabelled answer counts): with sparse
    feedback the answers that never get a label stop counting, and one label a day late does not make them
    count for a day. At most FLIGHT_MAX are remembered, and as many of those presumed lost: a label that lands
    after all still counts in the mean delay (were it left out, varied delays would ratchet the mean down)."""

    counts: np.ndarray  # [K] answers in flight per model
    order: deque[tuple[int, str]] = field(default_factory=deque)  # (t, request id), oldest first
    live: dict[str, tuple[int, int]] = field(default_factory=dict)  # request id -> (t, served model) in flight
    gone: dict[str, int] = field(default_factory=dict)  # request id -> t, presumed lost (oldest first)
    delay_sum: float = 0.0  # the label delays seen, in the tenant's requests
    delay_n: int = 0

    @property
    def delay(self) -> float:
        """The mean label delay seen, in the tenant's requests (-1: no label yet)."""
        return self.delay_sum / self.delay_n if self.delay_n else -1.0

    def add(self, request_id: str, t: int, model: int) -> None:
        self.drop(request_id)  # an id routed again after its record was refused counts once
        self.order.append((t, request_id))
        self.live[request_id] = (t, model)
        self.counts[model] += 1

    def drop(self, request_id: str) -> None:
        """Forget an answer that will never be labelled here (its record was not stored)."""
        x = self.live.pop(request_id, None)
        if x is not None:
            self.counts[x[1]] -= 1

    def landed(self, request_id: str, now: int) -> None:
        """The served answer's label of `request_id` came back while `now` was the tenant's latest request."""
        x = self.live.pop(request_id, None)
        if x is not None:
            self.counts[x[1]] -= 1
            t: int | None = x[0]
        else:
            t = self.gone.pop(request_id, None)
        if t is not None:
            self.delay_sum += now - t
            self.delay_n += 1

    def expire(self, now: int) -> np.ndarray:
        """The per-model counts of answers still in flight as request `now` is decided."""
        age = FLIGHT_AGE * self.delay if self.delay >= 0 else math.inf
        while self.order and (now - self.order[0][0] > age or len(self.order) > FLIGHT_MAX):
            _, rid = self.order.popleft()
            x = self.live.pop(rid, None)
            if x is not None:
                self.counts[x[1]] -= 1
                self.gone[rid] = x[0]
                if len(self.gone) > FLIGHT_MAX:
                    del self.gone[next(iter(self.gone))]
        return self.counts


@dataclass
class TenantState:
    cfg: TenantConfig
    index: int
    queue: float = 0.0
    queue_seq: int = 0  # the label whose transaction left the queue at `queue`
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
    window: Window | None = None  # recent requests' predictions (memory only: refills after a restart)
    flight: Flight | None = None  # served answers whose label is on its way (memory only)

    @property
    def satisfaction(self) -> float:
        """The running mean satisfaction of the served answers that have feedback (0 before the first)."""
        return self.sat_sum / self.labelled if self.labelled else 0.0

    @property
    def sla_met(self) -> bool:
        """Satisfaction so far >= alpha; True while nothing is labelled."""
        return self.labelled == 0 or self.satisfaction >= self.cfg.alpha


@dataclass(frozen=True)
class Counters:
    """The counters a policy reads as it decides one of the tenant's requests, copied under the router's lock:
    the writer thread moves them as records and labels land, and the policy runs outside the lock, so field by
    field it could read a cost sum from one moment and a request count from the next."""
    requests: int
    labelled: int
    cost_raw_sum: float
    explore_cost_raw: float
    pending_n: int
    bias: float  # predictor_bias

    @classmethod
    def of(cls, st: TenantState) -> Counters:
        return cls(st.requests, st.labelled, st.cost_raw_sum, st.explore_cost_raw, st.pending_n, predictor_bias(st))


@dataclass(frozen=True)
class Counted:
    """What one routed request adds to its tenant's counters (taken back when the store did not keep it)."""
    gap: float  # its target - p_served, while its label is awaited
    cost: float
    cost_raw: float
    explored: int
    extra: float  # raw cost of exploration's models beyond the exploit choice
    served: int
    invoked: tuple[int, ...]

    def add(self, st: TenantState, sign: int = 1) -> None:
        st.pending_sum += sign * self.gap
        st.pending_n += sign
        st.requests += sign
        st.cost_sum += sign * self.cost
        st.cost_raw_sum += sign * self.cost_raw
        st.explore_steps += sign * self.explored
        st.explore_cost_raw += sign * self.extra
        st.served[self.served] += sign
        st.invoked[list(self.invoked)] += sign


def expected_pending(st: TenantState) -> float:
    """The deficit the tenant's routed-but-unlabelled requests are expected to add to the queue (pending_mean),
    plus `confidence` standard errors of that estimate (pending_allowance). Zero when every request is
    labelled."""
    return pending_mean(st) + pending_allowance(st)


def pending_mean(st: TenantState) -> float:
    """The deficit the tenant's routed-but-unlabelled requests are expected to add to the queue: each one's target
    minus its predicted satisfaction, corrected by the predictor's mean error on the labelled ones (shrunk
    towards 0 by BIAS_PRIOR_N pseudo-labels)."""
    return st.pending_sum - predictor_bias(st) * st.pending_n if st.pending_n > 0 else 0.0


def pending_allowance(st: TenantState) -> float:
    """`confidence` standard errors of pending_mean's estimate. Its error has two parts: the n unlabelled
    outcomes' own spread (variance n s2) and the error of the bias estimate, which every one of them shares
    (n^2 s2 / m, from m labels); s2 is the labelled residuals' variance (a prior of 1/4, the most a label's can
    be, weighs BIAS_PRIOR_N labels). With sparse feedback (n ~ 4m) the second part grows like n and the router
    holds the stream above alpha by what it cannot see; with full feedback n is the requests in flight and it
    all but vanishes. The answers whose label is on its way count too: a stream is judged while the latest
    ones are still unlabelled (docs/ROUTING-VARIANTS.md)."""
    n = st.pending_n
    if n <= 0:
        return 0.0
    m = st.resid_n + BIAS_PRIOR_N
    bias = predictor_bias(st)
    s2 = max(st.resid_sq - st.resid_sum * bias + 0.25 * BIAS_PRIOR_N, 0.0) / m
    return st.cfg.confidence * math.sqrt(s2 * (n + n * n / m))


def predictor_bias(st: TenantState) -> float:
    """The predictor's mean error on the tenant's labelled requests (satisfaction - predicted), shrunk towards 0
    by BIAS_PRIOR_N pseudo-labels. Predicted is prequential: the served model's prediction as the label came,
    before the heads learned it (stored with the label), not the one the request was routed on. With labels
    late the routed predictions are as old as the delay and judge heads that have learned since: on
    RouterBench with labels 200 requests late, the bias of the first labels (+0.14 to +0.16) credited the next
    unlabelled answers with a surplus they did not have (docs/ROUTING.md, late feedback)."""
    return st.resid_sum / (st.resid_n + BIAS_PRIOR_N)


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
