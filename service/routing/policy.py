"""Routing policies: how a batch of requests is decided from predictions, costs and the tenants' queues.

`Policy` is messplus's production MESS+ policy; a policy is a subclass that overrides public hooks (`tenant`,
`cost_unit`, `v_unit`, `learns`, `plan`) and is registered by name in `registry.py` (config key
`routing.policy`). The router (router.py) owns the bookkeeping; a policy owns only the math. docs/ROUTING.md
explains each choice below and what it measured.

Per request of tenant k (alpha, V, c, explore_models, explore_budget, optimism, margin, reserve, confidence,
debt_gain, floor_window, caution from its config):
  1. explore with probability min(1, c / t^(1/4)) at the tenant's request t (a counter-based draw: reproducible
     by seed), STUCK_EXPLORE times that while the request is stuck: its price pushed past the plain queue's
     (the queue past the margin's bank, or the price floor; step 3) and even the optimistic choice predicted
     below alpha.
  2. decisions use the optimistic p_opt = sigmoid(mu + optimism * sqrt(v)) of each model's predicted logit mean
     mu and variance v (heads.py), so a model the router knows little about is tried when the queue asks for
     satisfaction, and a dominated one stops being tried once it is known. v counts the tenant's answers from
     that model whose label is on its way as labels in (in_flight, tenant.Flight): while labels are late, a
     model being served stops looking as promising as the untried ones.
  3. exploit: argmin_m V' * cost_m + P * (alpha - p_opt_m) over the available models (kernels.decide_batch),
     with V' = V per unit of the tenant's mean cost per request so far, and P the pressure of the queue:
     max(0, Q + E), and debt_gain times more past half the surplus the margin has banked (debt_pressure). E is
     what the routed requests still without a label are expected to add to Q (tenant.expected_pending): so
     late feedback does not make the queue overshoot, and requests that never get feedback still count.
     P is at least V' times the price floor (price_floor): the price at which the tenant's latest
     floor_window requests' predictions reach the next label's target, so satisfaction is bought before a
     deficit has to build, and the price moves with the predictions rather than with each label. E's allowance
     for the answers whose label is on its way raises the floor's target instead of the queue's price. For its
     first `caution` labels a tenant's floor target is one standard error higher, and where no price reaches
     it the request goes to the model likeliest to satisfy, favouring dearer models (cautious_choice).
  4. explore: invoke the exploit choice plus the explore_models - 1 runners-up of step 3's objective with every
     model at its plausible best (sigmoid(mu + EXPLORE_SIGMAS sigma), counting exploration labels still in
     flight as if they had arrived), among its neighbours in cost, the models the exploration budget affords
     and those the queue could justify (0: all models); serve the invoked answer predicted most satisfying
     (they are all paid for); every answer can be labelled.
  5. the queue moves on the served answer's first label (tenant.queue_step); every label trains its model's head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from messplus import kernels

from ..config import TenantConfig
from .pricing import Pricing
from .tenant import Counters, TenantState, Window, label_target, pending_allowance, pending_mean
from .types import EXPLORE_ALWAYS, EXPLORE_DEFAULT

SCALE_WARMUP = 20  # requests before a tenant's own mean cost sets the unit of V
EXPLORE_COST_RATIO = 2.0  # exploration steps learn models at most this much dearer than the exploit choice
EXPLORE_SIGMAS = 3.0  # exploration ranks each model at sigmoid(mu + 3 sigma): what it might plausibly be
DEBT_BANK = 0.5  # the queue runs at its plain slope up to this share of the margin's surplus (margin sqrt(n))
STUCK_EXPLORE = 4.0  # exploration is this much likelier while the tenant is stuck in debt (see Policy.plan)
PRICE_HI = 1e4  # the dearest price of satisfaction the floor tries, in cost units per unit of satisfaction
PRICE_PAST = 1e-6  # the floor sits this far past the crossing it found, so decide_batch's rounding lands past it
SURPLUS_HORIZON = 50  # a banked surplus lowers the floor's target spread over max(this, n) requests
CAUTION_SLOPE = 1.0  # a cautious decision adds this to a model's logit per standard deviation of log cost above the mean


@dataclass(frozen=True, kw_only=True)
class Batch:
    """One batch of requests as the router hands it to a policy; rows are requests, columns zoo models."""

    tenants: list[TenantState]
    modes: np.ndarray      # [B] EXPLORE_DEFAULT / _NEVER / _ALWAYS, the caller's exploration override
    t: np.ndarray          # [B] int64, each request's index in its tenant's stream
    expected: np.ndarray   # [B] the queue plus what the unlabelled requests are expected to add (Q + E)
    allowance: np.ndarray  # [B] the part of E that allows for the error of its estimate
    counters: list[Counters]  # [B] the tenant's counters, copied under the router's lock
    awaiting: list[np.ndarray]  # [B] of [K] bool: exploration labels still in flight
    flight: np.ndarray     # [B, K] the tenant's served answers whose label is on its way (tenant.Flight)
    masks: np.ndarray      # [B, K] bool: models this request may use
    p_hat: np.ndarray      # [B, K] predicted satisfaction
    var: np.ndarray        # [B, K] logit variance of the prediction
    raw: np.ndarray        # [B, K] cost estimates in the zoo's unit
    costs: np.ndarray      # [B, K] the same in the policy's unit (cost_unit)
    unit: float            # the policy's cost unit, in the zoo's unit

    @property
    def labelled(self) -> np.ndarray:
        """[B] each row's tenant's labelled requests."""
        return np.array([c.labelled for c in self.counters], np.float64)


@dataclass(frozen=True)
class Plan:
    """One request's decision: the exploit choice, whether it explores, the models invoked, the one served."""

    choice: int
    exploration: bool
    invoked: tuple[int, ...]
    served: int


class Policy:
    """messplus's MESS+ policy (the module docstring); subclasses override the hooks."""

    name = "messplus"

    def tenant(self, cfg: TenantConfig) -> TenantConfig:
        """The tenant's knobs as this policy runs them (a policy may fix some)."""
        return cfg

    def learns(self, exploration: bool) -> bool:
        """Whether labels of a request (an exploration step or not) train the heads."""
        return True

    def expected(self, st: TenantState) -> tuple[float, float]:
        """The queue the decisions start from, Q plus what the unlabelled requests are expected to add (E, its
        allowance included), and the part of E that allows for the error of its estimate
        (tenant.pending_allowance): the queue's steep slope starts that much later."""
        allowance = pending_allowance(st)
        return st.queue + pending_mean(st) + allowance, allowance

    def cost_unit(self, pricing: Pricing) -> float:
        """The unit of normalised costs: the dearest model's cost for a typical request, so V is unitless."""
        return float(pricing.cost_raw.max())

    def v_unit(self, counters: Counters, pricing: Pricing) -> float:
        """V is per unit of the tenant's own mean cost per request so far (the zoo's median model cost for its
        first SCALE_WARMUP requests): this converts it to the units of `cost_unit`, where the dearest model is 1.

        So V means the same at any alpha and in any cost unit: a model dearer than another by twice the
        tenant's going rate must be 2 V / Q likelier to satisfy to be chosen."""
        going = counters.cost_raw_sum / counters.requests if counters.requests >= SCALE_WARMUP else 0.0
        if not (going > 0 and math.isfinite(going)):
            going = float(np.median(pricing.cost_raw))
        return self.cost_unit(pricing) / going

    def plan(self, batch: Batch, pricing: Pricing) -> list[Plan | None]:
        """Decide every row of the batch; None where no model is available."""
        states, B = batch.tenants, len(batch.tenants)
        cfgs = [st.cfg for st in states]
        alpha = np.array([c.alpha for c in cfgs], np.float64)
        V = np.array([c.V * self.v_unit(n, pricing) for c, n in zip(cfgs, batch.counters)], np.float64)
        c = np.array([c.c for c in cfgs], np.float64)
        kappa = np.array([c.optimism for c in cfgs], np.float64)
        streams = np.array([st.index for st in states], np.uint64)
        var = in_flight(batch.var, batch.flight)  # labels on their way count as if they had arrived
        p_dec = optimistic(batch.p_hat, batch.var, kappa, var)
        margin = np.array([c.margin for c in cfgs], np.float64)
        gain = np.array([c.debt_gain for c in cfgs], np.float64)
        # the queue's price, floored by what the latest requests' predictions say reaches the next label's target;
        # the share of E's allowance for labels on their way is the floor's to hold: the queue's price leaves it out
        floor, cautious, held = price_floor(batch, p_dec)
        pressure = np.maximum(debt_pressure(batch.expected - held, margin, batch.labelled, gain,
                                            batch.allowance - held), 0.0)
        pressure = np.maximum(pressure, V * floor)
        choice = kernels.decide_batch(p_dec, batch.costs, batch.masks, pressure, alpha, V)
        for b in np.flatnonzero(cautious & (choice >= 0)):
            choice[b] = cautious_choice(p_dec[b], batch.costs[b], batch.masks[b])
        # stuck: the price is past the plain queue's (the queue past the margin's bank, or the floor) and even the
        # optimistic choice is predicted below alpha: the router pays for satisfaction it does not expect to get
        stuck = (pressure > np.maximum(batch.expected, 0.0)) & (p_dec[np.arange(B), np.maximum(choice, 0)] < alpha)
        c = np.where(stuck, c * STUCK_EXPLORE, c)
        explore = draw_explore(np.array([c.seed for c in cfgs], np.uint64), streams, batch.t, c)
        out: list[Plan | None] = []
        for b in range(B):
            if choice[b] < 0:
                out.append(None)
                continue
            mode = int(batch.modes[b])
            ex = mode == EXPLORE_ALWAYS or (mode == EXPLORE_DEFAULT and bool(explore[b]))
            invoked: tuple[int, ...] = (int(choice[b]),)
            if ex:
                # exploration ranks models by the decision's own objective with each one at its plausible best
                p_best = optimistic(batch.p_hat[b:b + 1], batch.var[b:b + 1], np.array([EXPLORE_SIGMAS]),
                                    in_flight(var[b:b + 1], batch.awaiting[b]))[0]
                rank = V[b] * batch.costs[b] + pressure[b] * (alpha[b] - p_best)
                # the dearest model the queue could justify: what a perfect answer would be worth over the choice
                worth = pressure[b] * (1.0 - p_dec[b, choice[b]]) / V[b] if V[b] > 0 else math.inf
                invoked = self.explored(states[b].cfg, batch.counters[b], int(choice[b]), rank, batch.masks[b],
                                        worth, batch.raw[b], batch.unit)
            p, raw = batch.p_hat[b], batch.raw[b]
            served = max(invoked, key=lambda k: (p[k], raw[k]))  # ties: the dearer, more capable
            out.append(Plan(int(choice[b]), ex, invoked, served))
        return out

    def explored(self, cfg: TenantConfig, counters: Counters, choice: int, rank: np.ndarray, mask: np.ndarray,
                 worth: float, raw: np.ndarray, unit: float) -> tuple[int, ...]:
        """The exploit choice plus the explore_models - 1 best-ranked models (lowest `rank`) among those it can
        afford: its neighbours in cost (at most EXPLORE_COST_RATIO times as dear, and at least the next dearer
        one), any model at most `worth` (in units of `unit`) dearer than the choice, and any model whose cost
        fits in what is left of the exploration budget (explore_budget times all the tenant has spent, minus
        what exploration's extra models have cost so far). The budget and `worth` are what keep a dear model
        that started badly from being locked out: the first at a bounded price, the second when the queue says
        the SLA needs it. `raw` is each model's cost for this request."""
        idx = np.flatnonzero(mask)
        n = cfg.explore_models
        if n == 0 or n >= len(idx):
            return tuple(int(i) for i in idx)
        cost = raw[idx]
        dearer = cost[cost > raw[choice]]
        limit = max(EXPLORE_COST_RATIO * raw[choice], dearer.min() if dearer.size else 0.0, raw[choice] + worth * unit)
        left = cfg.explore_budget * counters.cost_raw_sum - counters.explore_cost_raw
        near = idx[(cost <= limit) | (cost <= left)]
        others = [int(i) for i in near[np.argsort(rank[near], kind="stable")] if i != choice]
        return tuple(sorted([choice, *others[: n - 1]]))


def price_floor(batch: Batch, p_dec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the price of satisfaction (cost units per unit of satisfaction; kernels.price_for_target's
    bisection, the lowest such price where the ratings rank models as the predictions do) at which the tenant's
    latest `floor_window` requests, this batch's included, decided on `p_dec`, are predicted to reach the next
    label's target (alpha plus the safety margin; a surplus the queue has banked lowers it, spread over
    max(SURPLUS_HORIZON, n) requests). 0 where the tenant's floor_window is 0 or no price reaches the target
    (then the queue's price alone decides, as in MESS+). Predicted satisfaction is p_hat corrected by the
    predictor's mean error on the tenant's labels; a model unavailable to the whole batch is out of every row.

    The queue's price is set by a deficit: it rises only after satisfaction has fallen short, and swings with
    each label. The floor is set by the predictions: where they say a mix of models reaches the target at
    some price, the router pays that price from the start (a new tenant meets alpha sooner), and it moves
    only as the predictions do (on a many-model zoo the decisions stop swinging between the cheapest and the
    dearest models). A deficit is the queue's to answer: the floor never rises above the target.

    The second array flags the rows decided for caution (cautious_choice): while the tenant has fewer than
    `caution` labels, its target is raised by one standard error of the satisfaction of the labels it has
    (caution_allowance), the floor is the price that reaches the raised target, and where no price does the
    request goes to the model likeliest to satisfy. The promise is judged on the first requests' realised
    labels, whose mean spreads by about that error around what the router expected.

    The third array is the part of E's allowance (Batch.allowance) the floor holds: once the tenant is past
    `caution`, the allowance's share for the served answers whose label is on its way (Batch.flight, of all its
    unlabelled ones) is left out of the queue's price and raises the floor's target instead, spread like a
    surplus over max(SURPLUS_HORIZON, n) requests. With labels late the allowance is a surplus to hold while they
    travel, not a deficit: the queue's price bought it on the dearest models at once, the floor buys it evenly on
    the cheapest mix that reaches it. Where no price reaches the raised target (while the first labels come
    back, most models still at their prior) nothing buys it: the queue answers those answers' realised error when
    their labels land. On the queue's price the share had bought the dearest model there (docs/ROUTING.md, late
    feedback). Answers never to be labelled are not in flight: with sparse feedback the queue keeps it all."""
    floor = np.zeros(len(batch.tenants))
    cautious = np.zeros(len(batch.tenants), np.bool_)
    held = np.zeros(len(batch.tenants))
    up = batch.masks.any(axis=0)
    seen: dict[int, tuple[float, bool, float]] = {}
    for b, st in enumerate(batch.tenants):
        size = st.cfg.floor_window
        if size <= 0:
            continue
        if id(st) not in seen:
            if st.window is None or st.window.q.shape != (size, p_dec.shape[1]):
                st.window = Window.empty(size, p_dec.shape[1])
            p_sat = np.clip(batch.p_hat + batch.counters[b].bias, 0.0, 1.0)
            for r in np.flatnonzero([s is st for s in batch.tenants]):
                st.window.push(p_dec[r], p_sat[r], batch.costs[r], batch.masks[r])
            w, n = st.window, st.window.n
            labels = batch.counters[b].labelled
            spread = max(SURPLUS_HORIZON, float(batch.t[b]))
            target = min(label_target(st.cfg, labels + 1) + min(float(batch.expected[b]), 0.0) / spread, 1.0)
            q, p, cost, avail = w.q[:n], w.p[:n], w.cost[:n], w.mask[:n] & up
            lam, careful, share = math.inf, False, 0.0
            travelling = float(batch.flight[b].sum())
            pending = batch.counters[b].pending_n
            if labels >= st.cfg.caution and pending > 0 and travelling > 0 and batch.allowance[b] > 0:
                share = float(batch.allowance[b]) * min(travelling / pending, 1.0)
                banked = min(float(batch.expected[b]) - share, 0.0) + share
                held_target = min(label_target(st.cfg, labels + 1) + banked / spread, 1.0)
                lam = kernels.price_for_target(q, p, cost, avail, held_target, PRICE_HI)
            if labels < st.cfg.caution:  # a raised target reachable at some price: the plain one is too
                raised = min(target + caution_allowance(st.cfg.alpha, labels), 1.0)
                lam = kernels.price_for_target(q, p, cost, avail, raised, PRICE_HI)
                careful = not np.isfinite(lam)
            if not np.isfinite(lam):
                lam = kernels.price_for_target(q, p, cost, avail, target, PRICE_HI)
            seen[id(st)] = (lam * (1 + PRICE_PAST) if np.isfinite(lam) else 0.0, careful, share)
        floor[b], cautious[b], held[b] = seen[id(st)]
    return floor, cautious, held


def caution_allowance(alpha: float, labels: int) -> float:
    """One standard error of the mean of `labels` labels at satisfaction alpha: how far the first requests'
    realised satisfaction spreads around what the router expected of them."""
    return math.sqrt(alpha * (1.0 - alpha) / max(labels, 1))


def cautious_choice(p_dec: np.ndarray, costs: np.ndarray, mask: np.ndarray) -> int:
    """The available model likeliest to satisfy, with the belief that a dearer model is likelier the better one:
    each model's logit plus CAUTION_SLOPE per standard deviation of log cost above the available models' mean
    (ties: the cheaper). Used where no mix of models is predicted to reach a cautious tenant's raised target,
    also where the plain target is reachable (dropping the bonus there held 134 of 136 short streams instead
    of 136): a new tenant's optimistic estimates are as high for an untried cheap model as for an untried dear
    one, and serving the cheap ones first is what let the first requests fall short (docs/ROUTING.md). The bonus
    is fixed: a cheaper model is taken only when predicted clearly better."""
    lc = np.log(np.maximum(costs, 1e-300))
    z = (lc - lc[mask].mean()) / max(float(lc[mask].std()), 1e-9)
    q = np.clip(p_dec, 1e-9, 1 - 1e-9)
    score = np.where(mask, np.log(q) - np.log1p(-q) + CAUTION_SLOPE * z - 1e-12 * costs, -np.inf)
    return int(np.argmax(score))


def draw_explore(seeds: np.ndarray, streams: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each row's exploration coin (kernels.draw_explore_batch) with its own tenant's seed: a batch mixes tenants,
    and drawing every row with the first row's seed made a tenant's draws depend on who shared its batch."""
    out = np.zeros(len(seeds), np.bool_)
    for seed in np.unique(seeds):
        rows = np.flatnonzero(seeds == seed)
        out[rows] = kernels.draw_explore_batch(np.uint64(seed), np.ascontiguousarray(streams[rows]),
                                               np.ascontiguousarray(t[rows]), np.ascontiguousarray(c[rows]))
    return out


def optimistic(p: np.ndarray, var: np.ndarray, kappa: np.ndarray, bonus_var: np.ndarray | None = None) -> np.ndarray:
    """sigmoid(mu + kappa * sqrt(bonus_var)) per row with kappa > 0, mu recovered from the heads' moderated
    prediction p = sigmoid(mu / sqrt(1 + pi var / 8)); bonus_var (default var) is the variance the bonus is taken
    at, smaller where labels on their way count (in_flight): the mean stays the heads'. A row with kappa 0 is p
    itself, whatever the other rows of the batch are."""
    if not p.size or not kappa.any():
        return np.ascontiguousarray(p, dtype=np.float64)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    mu = (np.log(q) - np.log1p(-q)) * np.sqrt(1 + np.pi * var / 8)
    bonus = np.sqrt(np.maximum(var if bonus_var is None else bonus_var, 0.0))
    up = 1 / (1 + np.exp(-(mu + kappa[:, None] * bonus)))
    return np.ascontiguousarray(np.where(kappa[:, None] > 0, up, p), dtype=np.float64)


def in_flight(var: np.ndarray, awaiting: np.ndarray) -> np.ndarray:
    """Logit variances with the `awaiting` labels of each model counted as if they had arrived: a logistic
    label adds at most 1/4 to the precision (p (1 - p) <= 1/4), so n of them give v -> v / (1 + n v / 4).

    For exploration's awaited labels (a flag per model): without it, while labels are late the same least-known
    model stays the runner-up and is explored again and again until its first label lands; with a 200-request
    delay the router learned one model per 200 requests, and GPT-4, the dearest of 11, only after some 2,000.
    For the served answers' labels on their way (Batch.flight), in every decision: without it, while no label
    has come back every model is predicted alike and the cheapest is served until its labels land, on BBH with
    labels 200 requests late gemma-2b (accuracy 0.31) for 188 of the first 250 requests (docs/ROUTING.md)."""
    return var / (1.0 + awaiting * var / 4.0)


def debt_pressure(expected: np.ndarray, margin: np.ndarray, labelled: np.ndarray, gain: np.ndarray,
                  allowance: np.ndarray | float = 0.0) -> np.ndarray:
    """The queue the decisions weigh satisfaction by: the expected queue Q + E, and `gain` times more beyond
    DEBT_BANK of the surplus the safety margin has banked (margin sqrt(n) after n labels) plus E's allowance for
    the error of its estimate; per row.

    MESS+'s linear queue settles where the cost of lifting satisfaction balances it (Q* ~ V' dcost / dp), a
    standing deficit that only vanishes as Q*/T over an infinite horizon. When lifting satisfaction takes a
    much dearer model for a small gain, Q* outgrows the margin's surplus and the stream ends below alpha; the
    steeper slope past the bank holds Q near it instead, so the margin's surplus pays the standing deficit.

    The allowance is a surplus to bank, not a deficit that has built up: it appears at once with sparse
    feedback, and on the steep slope it bought the dearest model until it was banked, then the surplus went on
    the cheapest ones (docs/ROUTING.md, `confidence`)."""
    bank = DEBT_BANK * margin * np.sqrt(np.maximum(labelled, 1.0)) + allowance
    return expected + gain * np.maximum(expected - bank, 0.0)
