"""Reference points for a replay, on the same stream of prompts: what a router has to beat.

- cheapest single model whose accuracy (mean label on the stream) is at least alpha;
- static mixture: the cheapest fixed random mix of models whose mean accuracy is alpha (a point on the lower
  convex hull of (mean cost, accuracy)); it is given the true accuracies and needs nothing per request;
- hindsight oracle: the cheapest per-prompt assignment reaching alpha with every label known, the linear program

      min  sum_i sum_m c_im x_im   s.t.  sum_m x_im = 1 (each i),  (1/N) sum_i sum_m a_im x_im >= alpha,  x >= 0;

- MESS+ reference semantics: the paper's code's behaviour on the same router core (routing/reference.py).

The LP in closed form (`min_cost_assignment`). Dualising only the accuracy constraint with a multiplier
lambda >= 0, the Lagrangian separates by prompt: each prompt picks argmin_m c_im - lambda a_im. The accuracy
A(lambda) of that assignment is a non-decreasing step function. If the cheapest assignment (lambda = 0, ties to
the more accurate model) reaches alpha, it is optimal. Otherwise bisect to the breakpoint lambda* where A steps
over alpha*N: the assignments just below (A_lo < alpha*N) and just above (A_hi >= alpha*N) both minimise the
Lagrangian at lambda*, so their mix with weight theta = (alpha*N - A_lo) / (A_hi - A_lo) meets the constraint
with equality and, by complementary slackness, is optimal. The static mixture is the same LP with one "prompt"
whose costs and accuracies are the models' means.

Missing labels: a model with an empty label on a prompt is unavailable to the oracle on that prompt; a prompt
with no label at all is left out of the oracle (counted in `excluded`). Accuracies for the single model and the
static mixture are means over each model's labelled prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


MAX_BISECT = 2000


@dataclass(frozen=True, kw_only=True)
class Assignment:
    """A (fractional) assignment x[N, K] of prompts to models, from `min_cost_assignment`."""

    feasible: bool
    x: np.ndarray            # [N, K], rows sum to 1
    mean_cost: float         # sum(c * x) / N
    satisfaction: float      # sum(a * x) / N
    lam: float               # the multiplier at the breakpoint (0 when the cheapest assignment suffices)


def _pick(score: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Per row, the argmin of score; ties go to the higher accuracy, then to the lower index."""
    best = score.min(axis=1, keepdims=True)
    key = np.where(score == best, acc, -np.inf)
    return key.argmax(axis=1)


def _onehot(choice: np.ndarray, K: int) -> np.ndarray:
    x = np.zeros((choice.size, K))
    x[np.arange(choice.size), choice] = 1.0
    return x


def min_cost_assignment(cost: np.ndarray, acc: np.ndarray, alpha: float,
                        avail: np.ndarray | None = None) -> Assignment:
    """Solve the LP above exactly. cost, acc [N, K]; `avail` (bool [N, K]) marks allowed pairs (default all).

    Every row needs at least one allowed model. Infeasible (even the most accurate pick per prompt misses
    alpha): returns that most accurate, then cheapest, assignment with feasible=False.
    """
    cost, acc = np.asarray(cost, np.float64), np.asarray(acc, np.float64)
    avail = np.ones(cost.shape, np.bool_) if avail is None else np.asarray(avail, np.bool_)
    N, K = cost.shape
    if N == 0:
        return Assignment(feasible=True, x=np.zeros((0, K)), mean_cost=0.0, satisfaction=float("nan"), lam=0.0)
    if not avail.any(axis=1).all():
        raise ValueError("min_cost_assignment: every row needs at least one available model")
    c = np.where(avail, cost, np.inf)
    a = np.where(avail, acc, 0.0)
    target = alpha * N
    enough = target - 1e-9 * max(1.0, N)  # alpha * N rounds up at times (0.14 * 50 = 7.000000000000001)

    def at(lam: float) -> np.ndarray:
        return _pick(c - lam * a if lam > 0 else c, a)

    def done(choice: np.ndarray, lam: float, feasible: bool = True, x: np.ndarray | None = None) -> Assignment:
        x = _onehot(choice, K) if x is None else x
        xc = np.where(x > 0, x * np.where(avail, cost, 0.0), 0.0)
        return Assignment(feasible=feasible, x=x, mean_cost=float(xc.sum() / N), satisfaction=float((x * a).sum() / N),
                          lam=lam)

    def reached(choice: np.ndarray) -> float:
        return float(a[np.arange(N), choice].sum())

    cheapest = at(0.0)
    if reached(cheapest) >= enough:
        return done(cheapest, 0.0)
    most = _pick(np.where(avail, -a, np.inf), -c)  # most accurate, ties to the cheaper
    if reached(most) < enough:
        return done(most, float("inf"), feasible=False)
    lo, hi = 0.0, 1.0
    for _ in range(MAX_BISECT):  # grow hi until the Lagrangian assignment reaches the target
        if reached(at(hi)) >= enough:
            break
        lo, hi = hi, hi * 2.0
    else:
        return done(most, float("inf"))
    for _ in range(MAX_BISECT):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if reached(at(mid)) >= enough:
            hi = mid
        else:
            lo = mid
    x_lo, x_hi = at(lo), at(hi)
    a_lo, a_hi = reached(x_lo), reached(x_hi)
    theta = min(max((target - a_lo) / (a_hi - a_lo), 0.0), 1.0)
    x = (1.0 - theta) * _onehot(x_lo, K) + theta * _onehot(x_hi, K)
    return done(x_hi, hi, x=x)


# ------------------------------------------------------------------------------------------- baselines
def cheapest_single(names: Sequence[str], mean_cost: np.ndarray, accuracy: np.ndarray, alpha: float) -> dict[str, Any]:
    ok = [k for k in range(len(names)) if not np.isnan(accuracy[k]) and accuracy[k] >= alpha]
    if not ok:
        return {"feasible": False, "model": None, "mean_cost": None, "satisfaction": None}
    k = min(ok, key=lambda j: (mean_cost[j], -accuracy[j]))
    return {"feasible": True, "model": names[k], "mean_cost": float(mean_cost[k]),
            "satisfaction": float(accuracy[k])}


def best_single(names: Sequence[str], mean_cost: np.ndarray, accuracy: np.ndarray) -> dict[str, Any]:
    """The most accurate single model on the stream (ties: the cheaper): what the stream can promise at most
    without knowing which model is right for which prompt."""
    ok = [k for k in range(len(names)) if not np.isnan(accuracy[k])]
    if not ok:
        return {"model": None, "mean_cost": None, "satisfaction": None}
    k = max(ok, key=lambda j: (accuracy[j], -mean_cost[j]))
    return {"model": names[k], "mean_cost": float(mean_cost[k]), "satisfaction": float(accuracy[k])}


def static_mixture(names: Sequence[str], mean_cost: np.ndarray, accuracy: np.ndarray, alpha: float) -> dict[str, Any]:
    known = ~np.isnan(accuracy)
    if not known.any():
        return {"feasible": False, "mix": {}, "mean_cost": None, "satisfaction": None}
    sol = min_cost_assignment(mean_cost[None, :], np.nan_to_num(accuracy)[None, :], alpha, known[None, :])
    mix = {names[k]: float(p) for k, p in enumerate(sol.x[0]) if p > 0}
    return {"feasible": sol.feasible, "mix": mix, "mean_cost": sol.mean_cost, "satisfaction": sol.satisfaction}


@dataclass(frozen=True, kw_only=True)
class Oracle:
    solution: Assignment
    rows: np.ndarray       # the prompts it covers (those with at least one label), in stream order
    excluded: int


def oracle(costs: np.ndarray, labels: np.ndarray, alpha: float) -> Oracle:
    """The hindsight oracle on a stream: costs, labels [N, K] (NaN label = model unavailable on that prompt)."""
    avail = ~np.isnan(labels)
    rows = np.flatnonzero(avail.any(axis=1))
    sol = min_cost_assignment(costs[rows], np.nan_to_num(labels[rows]), alpha, avail[rows])
    return Oracle(solution=sol, rows=rows, excluded=int(labels.shape[0] - rows.size))


def oracle_summary(o: Oracle, names: Sequence[str]) -> dict[str, Any]:
    share = o.solution.x.mean(axis=0) if o.rows.size else np.zeros(len(names))
    return {"feasible": o.solution.feasible, "mean_cost": o.solution.mean_cost,
            "satisfaction": o.solution.satisfaction, "lambda": o.solution.lam, "excluded_prompts": o.excluded,
            "model_share": {n: float(s) for n, s in zip(names, share) if s > 0}}


def task_oracle(names: Sequence[str], costs: np.ndarray, labels: np.ndarray, sources: Sequence[str],
                alpha: float) -> dict[str, Any]:
    """The task-level oracle: the cheapest mix of models per task (`sources[i]`, the prompt's source_benchmark)
    reaching alpha over the whole stream, given each task's true per-model accuracy and mean cost; what a router
    that recognises the task, and knows nothing about the item, can reach. The linear program

        min  sum_t n_t sum_m c_tm x_tm   s.t.  sum_m x_tm = 1 (each task t),  sum_t n_t sum_m a_tm x_tm >= alpha N,

    is the item LP with every prompt given its task's means (rows of one task are identical, so the optimum
    mixes within a task the same way). A model without a label in a task is unavailable there; a task where
    no model has a label is left out (counted in `excluded_prompts`)."""
    src = np.asarray(sources)
    cost, acc = np.zeros_like(costs, dtype=np.float64), np.zeros_like(costs, dtype=np.float64)
    avail = np.zeros(costs.shape, np.bool_)
    for task in np.unique(src):
        rows = src == task
        seen = ~np.isnan(labels[rows])
        n = seen.sum(axis=0)
        cost[rows] = costs[rows].mean(axis=0)
        acc[rows] = np.where(n > 0, np.where(seen, labels[rows], 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
        avail[rows] = n > 0
    keep = np.flatnonzero(avail.any(axis=1))
    sol = min_cost_assignment(cost[keep], acc[keep], alpha, avail[keep])
    mix: dict[str, dict[str, float]] = {}
    for task in np.unique(src[keep]):
        share = sol.x[src[keep] == task].mean(axis=0)
        mix[str(task)] = {names[k]: float(s) for k, s in enumerate(share) if s > 1e-12}
    return {"feasible": sol.feasible, "mean_cost": sol.mean_cost, "satisfaction": sol.satisfaction,
            "excluded_prompts": int(len(src) - keep.size), "mix": mix}


def stream_baselines(names: Sequence[str], costs: np.ndarray, labels: np.ndarray, alpha: float,
                     sources: Sequence[str] | None = None) -> dict[str, Any]:
    """The label-based baselines on one stream (costs, labels [N, K] of the replayed prompts; `sources`, each
    prompt's source_benchmark, adds the task-level oracle)."""
    from ..trace import nanmean_cols

    mean_cost, acc = costs.mean(axis=0), nanmean_cols(labels)
    out = {"cheapest_single": cheapest_single(names, mean_cost, acc, alpha),
           "best_single": best_single(names, mean_cost, acc),
           "static_mixture": static_mixture(names, mean_cost, acc, alpha),
           "oracle": oracle_summary(oracle(costs, labels, alpha), names)}
    if sources is not None:
        out["task_oracle"] = task_oracle(names, costs, labels, sources, alpha)
    return out
