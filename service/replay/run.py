"""`messplus replay`: a routing trace replayed as a request stream through the service's own router core.

Per alpha and seed: the prompts are shuffled by the seed (within each trace file, whose order is kept: drift);
with `--warm-start F` a random fraction F of them trains the predictor's heads offline and the rest is replayed.
A fresh `Router` (in-memory inline store, fresh heads) routes one prompt at a time: predict from the cached
embedding, `decide`, `record` with the recorded cost of every invoked model, then feedback. The router is given
a price list, as an operator configures one: per model a price per request and a price per input token (the
prompt's characters / 4), fitted to the trace's recorded costs (`Trace.price_list`; `--flat-costs`: one price
per model, its mean recorded cost). It never sees a prompt's recorded cost or a label it was not given.
Feedback is the recorded label of what was served (of every invoked model on an exploration step); an empty
label is no feedback for that model, never 0.

Conditions: `--feedback-rate R` (each request gets its feedback with probability R, a seeded coin),
`--feedback-delay D` (the feedback of request i arrives after D more requests were routed: just before request
i + D + 1; delay 0 is just before the next one), `--outage MODEL:START:END` (MODEL unavailable for stream positions
START <= i < END: two integers are request indices, otherwise fractions of the replayed stream in [0, 1];
MODEL `@cheapest` is the cheapest single model meeting alpha), `--replicas N --sync-lag L` (N routers on one
shared state, Route round-robin, Feedback to a random one, every replica seeing the label log L requests late:
replicas.py; the MESS+ reference runs under the same condition).

The judge sees everything: satisfaction is the mean recorded label of the served model over all requests
(requests whose served model has no label are left out and counted as `unjudged`; a request no model could
take counts as 0, `unrouted`), and cost is the sum of recorded costs of every invoked model, exploration
included, per request. `sla_met` is satisfaction >= alpha - 1e-9.
"""


from __future__ import annotations

import json
import logging
import math
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from typing import Any

import numpy as np

from ..config import TENANT_KNOBS, TenantConfig
from ..routing.reference import reference_tenant
from ..trace import Trace, TraceError
from .baselines import stream_baselines
from .drivers import TENANT, Driver, InProcess
from .pretrain import train_heads
from .replicas import Replicas

log = logging.getLogger("messplus.replay")
SLA_TOL = 1e-9


@dataclass(frozen=True)
class Outage:
    model: str
    start: float
    end: float
    indices: bool  # True: request indices; False: fractions of the replayed stream

    @classmethod
    def parse(cls, text: str) -> Outage:
        try:
            model, start, end = text.rsplit(":", 2)
            indices = start.strip().lstrip("-").isdigit() and end.strip().lstrip("-").isdigit()
            s, e = float(start), float(end)
        except ValueError:
            raise ValueError(f"outage {text!r}: expected MODEL:START:END") from None
        if not model or not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e < s or (not indices and e > 1):
            raise ValueError(f"outage {text!r}: need 0 <= START <= END (fractions: END <= 1)")
        return cls(model, s, e, indices)

    def window(self, n: int) -> tuple[int, int]:
        if self.indices:
            return int(self.start), int(self.end)
        return int(round(self.start * n)), int(round(self.end * n))


@dataclass(frozen=True, kw_only=True)
class Condition:
    feedback_rate: float = 1.0
    feedback_delay: int = 0
    outages: tuple[Outage, ...] = ()
    warm_start: float = 0.0
    order: str = "shuffle"  # shuffle | source (by source_benchmark, first appearance) | file
    flat_costs: bool = False  # the router gets one price per model (its mean cost), not the trace's price list
    replicas: int = 0  # > 0: that many routers on one shared state (replicas.py); 0: one router on its own
    sync_lag: int = 0  # with replicas: every replica sees the label log this many requests late
    first: int = 0  # > 0: only the first this many requests of the replayed stream


def _overrides_type() -> type:
    """TenantOverrides: one optional field per tenant knob (config.TENANT_KNOBS); None = the service default."""
    spec = [(k.name, f"{k.type} | None", field(default=None, metadata=k.metadata)) for k in TENANT_KNOBS]

    def tenant(self: Any, alpha: float, seed: int) -> TenantConfig:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        return TenantConfig(name=TENANT, alpha=alpha, seed=seed, **given)

    return make_dataclass("TenantOverrides", spec, namespace={"tenant": tenant, "__module__": __name__},
                          frozen=True, kw_only=True)


TenantOverrides: Any = _overrides_type()  # the tenant knobs of the router under test (also `replay --<knob>`)
POLICY_KEYS = tuple(k.name for k in TENANT_KNOBS)


def split_stream(trace: Trace, seed: int, cond: Condition) -> tuple[np.ndarray, np.ndarray]:
    """(rows that train the heads offline, rows replayed in order) for one seed."""
    rng = np.random.default_rng([seed, 1])
    parts = []
    for s in range(int(trace.segment.max()) + 1 if len(trace) else 0):
        rows = np.flatnonzero(trace.segment == s)
        if cond.order == "source":
            src = np.array([trace.sources[r] for r in rows])
            _, first = np.unique(src, return_index=True)
            rows = np.concatenate([rng.permutation(rows[src == src[f]]) for f in np.sort(first)])
        elif cond.order == "shuffle":
            rows = rng.permutation(rows)
        parts.append(rows)
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    train = np.zeros(stream.size, np.bool_)
    train[rng.choice(stream.size, int(round(cond.warm_start * stream.size)), replace=False)] = True
    rows = stream[~train]
    return stream[train], rows[:cond.first] if cond.first else rows


@dataclass
class RunArrays:
    rows: np.ndarray
    served: np.ndarray      # -1: no model available
    exploration: np.ndarray
    cost: np.ndarray        # recorded cost charged per request
    sat: np.ndarray         # judge: label of the served model (NaN: no label)
    queue: np.ndarray       # Q when the decision was made
    invoked: np.ndarray     # [n, K] bool: models called for the request
    extra: dict[str, Any] = field(default_factory=dict)


def run_stream(driver: Driver, trace: Trace, rows: np.ndarray, emb: np.ndarray | None, cond: Condition,
               seed: int, *, progress: bool = False, desc: str = "replay") -> RunArrays:
    """Route every prompt of `rows` in order through `driver`, with the condition's feedback and outages."""
    from tqdm import tqdm

    n, K = rows.size, len(trace.models)
    coin = np.random.default_rng([seed, 2]).random(n) < cond.feedback_rate
    windows = [(trace.models.index(o.model), *o.window(n)) for o in cond.outages]
    a = RunArrays(rows=rows, served=np.full(n, -1, np.int64), exploration=np.zeros(n, np.bool_),
                  cost=np.zeros(n), sat=np.full(n, np.nan), queue=np.zeros(n), invoked=np.zeros((n, K), np.bool_))
    pending: deque[tuple[int, str, int, dict[int, float]]] = deque()
    fed = labels_given = 0
    run_id = uuid.uuid4().hex[:10]
    zero = np.zeros(0, np.float32)
    for i in tqdm(range(n), desc=desc, unit="req", disable=not progress, file=sys.stderr, leave=False):
        while pending and pending[0][0] <= i:
            _, rid, served, lab = pending.popleft()
            driver.feedback(rid, served, lab)
        r = int(rows[i])
        avail = np.ones(K, np.bool_)
        for k, s, e in windows:
            avail[k] &= not (s <= i < e)
        rid = f"replay-{run_id}-{i}"
        e_r = emb[r] if emb is not None else zero
        step = driver.route(rid, trace.prompts[r], e_r, avail)
        if step is None:
            a.sat[i] = 0.0
            continue
        a.served[i], a.exploration[i], a.queue[i] = step.served, step.exploration, step.queue
        a.cost[i] = float(trace.costs[r, list(step.invoked)].sum())
        a.invoked[i, list(step.invoked)] = True
        driver.record(step, e_r, a.cost[i])
        a.sat[i] = trace.labels[r, step.served]
        told = step.invoked if step.exploration else (step.served,)
        lab = {k: float(trace.labels[r, k]) for k in told if not math.isnan(trace.labels[r, k])}
        if coin[i] and lab:
            pending.append((i + cond.feedback_delay + 1, rid, step.served, lab))
            fed += step.served in lab
            labels_given += len(lab)
    while pending:
        _, rid, served, lab = pending.popleft()
        driver.feedback(rid, served, lab)
    a.extra = {"feedback_requests": fed, "labels_given": labels_given, "queue_end": driver.queue(),
               "invoked_share": {m: float(a.invoked[:, k].sum() / max(n, 1)) for k, m in enumerate(trace.models)}}
    return a


def run_summary(a: RunArrays, trace: Trace, alpha: float, seed: int, wall_s: float) -> dict[str, Any]:
    n = a.rows.size
    judged = ~np.isnan(a.sat)
    sat = float(a.sat[judged].mean()) if judged.any() else float("nan")
    return {"seed": seed, "satisfaction": sat, "mean_cost": float(a.cost.sum() / max(n, 1)),
            "exploration_fraction": float(a.exploration.mean()) if n else 0.0,
            "sla_met": bool(judged.any() and sat >= alpha - SLA_TOL),
            "model_share": {m: float((a.served == k).sum() / max(n, 1)) for k, m in enumerate(trace.models)},
            "requests": n, "judged": int(judged.sum()), "unjudged": int((~judged).sum()),
            "unrouted": int((a.served < 0).sum()), "cost_total": float(a.cost.sum()), **a.extra,
            "wall_s": round(wall_s, 3)}


def _resolve(cond: Condition, trace: Trace, base: dict[str, Any]) -> Condition:
    outages = []
    for o in cond.outages:
        name = o.model
        if name == "@cheapest":
            name = base["cheapest_single"]["model"]
            if name is None:
                log.warning("outage @cheapest: no single model reaches alpha; no outage")
                continue
        if name not in trace.models:
            raise TraceError(f"outage: unknown model {name!r} (trace models: {', '.join(trace.models)})")
        outages.append(replace(o, model=name))
    return replace(cond, outages=tuple(outages))


def _ratio(x: float, y: float | None) -> float | None:
    return x / y if y and math.isfinite(x) and y > 0 else None


@dataclass(frozen=True, kw_only=True)
class ReplaySetup:
    alphas: tuple[float, ...]
    seeds: tuple[int, ...]
    cond: Condition = Condition()
    policy: Any = TenantOverrides()
    reference: bool = True
    progress: bool = False


def replay(trace: Trace, emb: np.ndarray | None, setup: ReplaySetup, *, grpc_driver: Driver | None = None,
           curves: dict[float, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every alpha x seed; returns the summary.json list. `curves` (optional) gets the first seed's arrays.

    With `grpc_driver` the router under test is the running service; the MESS+ reference still runs in-process
    (it needs `emb`). `emb` may be None only when nothing runs in-process."""
    out = []
    for alpha in setup.alphas:
        runs, refs, bases, conds = [], [], [], []
        for seed in setup.seeds:
            train, rows = split_stream(trace, seed, setup.cond)
            base = stream_baselines(trace.models, trace.costs[rows], trace.labels[rows], alpha,
                                    [trace.sources[r] for r in rows])
            cond = _resolve(setup.cond, trace, base)
            bases.append(base)
            conds.append(cond)
            for ref in (False, True) if setup.reference else (False,):
                summary, arrays = _one_run(trace, emb, setup, alpha, seed, (train, rows), cond,
                                           None if ref else grpc_driver, ref)
                (refs if ref else runs).append(summary)
                if curves is not None and seed == setup.seeds[0]:
                    cv = curves.setdefault(alpha, {"alpha": alpha, "seed": seed, "base": base, "trace": trace})
                    cv["reference" if ref else "messplus"] = arrays
        out.append(_entry(trace, alpha, runs, refs, bases, replace(setup, cond=conds[0])))
    return _finite(out)  # type: ignore[no-any-return]


def _one_run(trace: Trace, emb: np.ndarray | None, setup: ReplaySetup, alpha: float, seed: int,
             split: tuple[np.ndarray, np.ndarray], cond: Condition, remote: Driver | None,
             ref: bool) -> tuple[dict[str, Any], RunArrays]:
    """One stream through one router: the remote service, else a fresh in-process Router (warm-started)."""
    train, rows = split
    driver: Any = remote
    trained = 0
    if driver is None:
        if emb is None:
            raise ValueError("an in-process replay needs the prompt embeddings")
        tenant = setup.policy.tenant(alpha, seed)
        tenant = reference_tenant(tenant) if ref else tenant
        if cond.replicas:
            driver = Replicas(trace, tenant, emb.shape[1], replicas=cond.replicas, sync_lag=cond.sync_lag,
                              seed=seed, reference=ref, flat_costs=cond.flat_costs)
            trained = driver.train(emb, trace.labels, train)
        else:
            driver = InProcess(trace, tenant, emb.shape[1], reference=ref, flat_costs=cond.flat_costs)
            trained = train_heads(driver.router.heads, emb, trace.labels, train)
    started = time.perf_counter()
    try:
        arrays = run_stream(driver, trace, rows, emb, cond, seed, progress=setup.progress,
                            desc=f"{'reference' if ref else 'messplus'} alpha={alpha:g} seed={seed}")
    finally:
        if isinstance(driver, InProcess | Replicas):
            driver.close()
    summary = run_summary(arrays, trace, alpha, seed, time.perf_counter() - started)
    summary["warm_start_labels"] = trained
    return summary, arrays


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(vals)) if len(vals) == len(xs) and vals else None


def _entry(trace: Trace, alpha: float, runs: list[dict[str, Any]], refs: list[dict[str, Any]],
           bases: list[dict[str, Any]], setup: ReplaySetup) -> dict[str, Any]:
    baselines = dict(bases[0])
    # these differ by seed with a warm start
    for name in ("cheapest_single", "best_single", "static_mixture", "oracle", "task_oracle"):
        if len({json.dumps(b[name], sort_keys=True) for b in bases}) > 1:
            baselines[name] = {**bases[0][name], "mean_cost": _mean([b[name]["mean_cost"] for b in bases]),
                               "satisfaction": _mean([b[name]["satisfaction"] for b in bases]),
                               "per_seed": [b[name] for b in bases]}
    baselines["messplus_reference"] = None if not refs else {
        "satisfaction": _mean([r["satisfaction"] for r in refs]), "mean_cost": _mean([r["mean_cost"] for r in refs]),
        "exploration_fraction": _mean([r["exploration_fraction"] for r in refs]),
        "sla_met": all(r["sla_met"] for r in refs), "runs": refs}
    for i, run in enumerate(runs):
        run["cost_vs_static_mixture"] = _ratio(run["mean_cost"], bases[i]["static_mixture"]["mean_cost"])
        run["cost_vs_oracle"] = _ratio(run["mean_cost"], bases[i]["oracle"]["mean_cost"])
        run["cost_vs_task_oracle"] = _ratio(run["mean_cost"], bases[i]["task_oracle"]["mean_cost"])
        run["best_single_satisfaction"] = bases[i]["best_single"]["satisfaction"]
        run["cost_vs_reference"] = _ratio(run["mean_cost"], refs[i]["mean_cost"]) if refs else None
    c, tenant = setup.cond, setup.policy.tenant(alpha, 0)
    return {"trace": trace.name, "alpha": alpha, "runs": runs, "baselines": baselines,
            "condition": {"feedback_rate": c.feedback_rate, "feedback_delay": c.feedback_delay,
                          "outages": [asdict(o) for o in c.outages], "warm_start": c.warm_start, "order": c.order,
                          **({"first": c.first} if c.first else {}),
                          **({"replicas": c.replicas, "sync_lag": c.sync_lag} if c.replicas else {})},
            "policy": {k: getattr(tenant, k) for k in POLICY_KEYS},
            "models": [{"name": m, "mean_cost": float(mc), "accuracy": None if math.isnan(ac) else float(ac)}
                       for m, mc, ac in zip(trace.models, trace.mean_cost, trace.accuracy)],
            "cost_unit": trace.cost_unit, "prompts": len(trace)}


def _finite(obj: Any) -> Any:
    """NaN and inf become null (JSON has neither); NumPy scalars become Python numbers."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
