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
MODEL `@cheapest` is the cheapest single model meeting alpha).

The judge sees everything: satisfaction is the mean recorded label of the served model over all requests
(requests whose served model has no label are left out and counted as `unjudged`; a request no model could
take counts as 0, `unrouted`), and cost is the sum of recorded costs of every invoked model, exploration
included, per request. `sla_met` is satisfaction >= alpha - 1e-9.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .baselines import ReferenceRouter, reference_tenant, stream_baselines
from ..config import ModelConfig, PredictorConfig, TenantConfig
from ..errors import NoModelAvailable
from ..routing.heads import Heads
from ..routing.router import Decision, RouteItem, Router, input_tokens
from ..state.sqlite import Store
from ..trace import Trace, TraceError

log = logging.getLogger("messplus.replay")
TENANT = "replay"
SLA_TOL = 1e-9


# ------------------------------------------------------------------------------------------ conditions
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
        if not model or s < 0 or e < s or (not indices and e > 1):
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


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Tenant settings of the router under test; None = the service's TenantConfig default."""

    V: float | None = None
    c: float | None = None
    explore_models: int | None = None
    explore_budget: float | None = None
    optimism: float | None = None
    margin: float | None = None
    reserve: float | None = None
    confidence: float | None = None
    debt_gain: float | None = None

    def tenant(self, alpha: float, seed: int) -> TenantConfig:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        return TenantConfig(name=TENANT, alpha=alpha, seed=seed, **given)

    def reference(self, alpha: float, seed: int) -> TenantConfig:
        t = self.tenant(alpha, seed)
        return reference_tenant(t)


POLICY_KEYS = tuple(f.name for f in fields(Policy))  # also the `replay` option names (--explore-budget: explore_budget)


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
    return stream[train], stream[~train]


def train_heads(heads: Heads, emb: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                columns: Sequence[int] | None = None) -> int:
    """Learn every recorded label of `rows`, in order (the offline warm start; also `messplus pretrain`).

    `columns[k]` is the label column of head k (default: the same index; -1: no column)."""
    columns = list(range(heads.W.shape[0])) if columns is None else list(columns)
    n = 0
    for r in rows:
        for k, j in enumerate(columns):
            if j >= 0 and not math.isnan(labels[r, j]):
                heads.update(emb[r], k, float(labels[r, j]))
                n += 1
    return n


# --------------------------------------------------------------------------------------------- drivers
@dataclass(frozen=True)
class Step:
    served: int
    invoked: tuple[int, ...]
    exploration: bool
    queue: float
    handle: Any = None


class Driver(Protocol):
    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None: ...
    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None: ...
    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None: ...
    def queue(self) -> float: ...


class InProcess:
    """The service's Router (or the MESS+ reference subclass) over an in-memory store, run inline."""

    def __init__(self, trace: Trace, tenant: TenantConfig, dim: int, *, reference: bool = False,
                 flat_costs: bool = False) -> None:
        per_request, per_token = (trace.mean_cost, np.zeros(len(trace.models))) if flat_costs else trace.price_list()
        models = [ModelConfig(name=n, triton_model=n, cost_per_request=float(c), cost_per_input_token=float(t))
                  for n, c, t in zip(trace.models, per_request, per_token)]
        heads = Heads(trace.models, dim, prior_var=PredictorConfig().prior_var)  # the service's default prior
        cls = ReferenceRouter if reference else Router
        self.router = cls(models, [tenant], heads, Store(":memory:", inline=True), cache_size=len(trace) + 1,
                          snapshot_every=1 << 62)
        self._avail = np.ones(len(models), np.bool_)

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        for k in np.flatnonzero(avail != self._avail):
            self.router.set_available(int(k), bool(avail[k]))
        self._avail = avail.copy()
        p, var = self.router.heads.predict(emb[None, :])
        (d,) = self.router.decide([RouteItem(tenant=TENANT, request_id=rid, input_tokens=input_tokens(text))], p, var)
        if isinstance(d, NoModelAvailable):
            return None
        return Step(d.served, d.invoked, d.exploration, d.queue, d)

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        """Count the request as the service's Route does: at the router's own cost estimate (the price list
        and the prompt's length), never the prompt's recorded cost, which only the judge sees."""
        d: Decision = step.handle
        self.router.record(d, emb).result()

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        others = [(self.router.names[k], s) for k, s in labels.items() if k != served]
        self.router.feedback(TENANT, rid, labels.get(served), others).result()

    def queue(self) -> float:
        return self.router.tenants[TENANT].queue

    def close(self) -> None:
        self.router.store.close()


# ------------------------------------------------------------------------------------------- the replay
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
    policy: Policy = Policy()
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
            base = stream_baselines(trace.models, trace.costs[rows], trace.labels[rows], alpha)
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
        tenant = setup.policy.reference(alpha, seed) if ref else setup.policy.tenant(alpha, seed)
        driver = InProcess(trace, tenant, emb.shape[1], reference=ref, flat_costs=cond.flat_costs)
        trained = train_heads(driver.router.heads, emb, trace.labels, train)
    started = time.perf_counter()
    try:
        arrays = run_stream(driver, trace, rows, emb, cond, seed, progress=setup.progress,
                            desc=f"{'reference' if ref else 'messplus'} alpha={alpha:g} seed={seed}")
    finally:
        if isinstance(driver, InProcess):
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
    for name in ("cheapest_single", "static_mixture", "oracle"):  # differ by seed only with a warm start
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
        run["cost_vs_reference"] = _ratio(run["mean_cost"], refs[i]["mean_cost"]) if refs else None
    c, tenant = setup.cond, setup.policy.tenant(alpha, 0)
    return {"trace": trace.name, "alpha": alpha, "runs": runs, "baselines": baselines,
            "condition": {"feedback_rate": c.feedback_rate, "feedback_delay": c.feedback_delay,
                          "outages": [asdict(o) for o in c.outages], "warm_start": c.warm_start, "order": c.order},
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


def write_outputs(out_dir: Path, summary: list[dict[str, Any]], curves: dict[float, dict[str, Any]] | None = None,
                  *, plots: bool = True) -> list[Path]:
    """DIR/summary.json, DIR/runs/*.npz (per-request arrays of the first seed) and the PNG plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    written = [path]
    for alpha, cv in (curves or {}).items():
        for kind in ("messplus", "reference"):
            if kind in cv:
                a = cv[kind]
                npz = out_dir / "runs" / f"alpha{alpha:g}-{kind}-seed{cv['seed']}.npz"
                npz.parent.mkdir(exist_ok=True)
                np.savez_compressed(npz, rows=a.rows, served=a.served, exploration=a.exploration, cost=a.cost,
                                    sat=a.sat, queue=a.queue, invoked=a.invoked)
                written.append(npz)
    if plots and curves:
        from .plots import plot_all

        written += plot_all(out_dir, curves)
    return written


# ------------------------------------------------------------------------------- a running service (gRPC)
def match_models(service: Sequence[tuple[str, str]], trace_models: Sequence[str]) -> list[int]:
    """For each service model (name, triton_model), the trace column it replays (-1: none). A trace model
    matches by its own name or by the Triton name the demo zoo gives it."""
    from ..demo.repository import triton_model_name

    out = []
    for name, triton in service:
        wanted = {name, triton}
        out.append(next((j for j, t in enumerate(trace_models) if t in wanted or triton_model_name(t) in wanted), -1))
    return out


class GrpcDriver:
    """Drives a running messplus through Route and Feedback (the service records and learns on its side)."""

    def __init__(self, addr: str, tenant: str, trace_models: Sequence[str], *, timeout_s: float = 30.0) -> None:
        import grpc

        from messplus.v1 import routing_pb2 as pb
        from messplus.v1 import routing_pb2_grpc as pb_grpc

        self.grpc, self.pb, self.tenant, self.timeout_s = grpc, pb, tenant, timeout_s
        self.channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        self.stub = pb_grpc.RoutingServiceStub(self.channel)
        zoo = self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s).models
        cols = match_models([(m.name, m.triton_model) for m in zoo], trace_models)
        lost = [m.name for m, j in zip(zoo, cols) if j < 0]
        if lost:
            raise TraceError(f"the service's models {lost} have no columns in the trace ({', '.join(trace_models)})")
        self.names = [m.name for m in zoo]
        self.trace_models = [trace_models[j] for j in cols]  # the trace, restricted to the zoo, in zoo order
        self.index = {n: k for k, n in enumerate(self.names)}
        status = self.stub.SlaStatus(pb.SlaStatusRequest(tenant=tenant), timeout=timeout_s)
        self.alpha = status.alpha
        if status.requests:
            log.warning("tenant %r has already routed %d requests: the service's state carries over", tenant,
                        status.requests)

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        pb = self.pb
        ov = pb.RouteOverrides(excluded_models=[self.names[k] for k in np.flatnonzero(~avail)])
        try:
            reply = self.stub.Route(pb.RouteRequest(tenant=self.tenant, text=text, request_id=rid, overrides=ov),
                                    timeout=self.timeout_s)
        except self.grpc.RpcError as exc:
            code, codes = exc.code(), self.grpc.StatusCode
            no_model = code == codes.UNAVAILABLE and "no zoo model" in (exc.details() or "")
            if code == codes.INVALID_ARGUMENT or no_model:
                log.warning("request %s not routed: %s", rid, exc.details())
                return None
            raise
        served = self.index[reply.model]
        invoked = tuple(sorted(self.index[m] for m in reply.explored_models)) if reply.exploration else (served,)
        return Step(served, invoked or (served,), reply.exploration, reply.queue)

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        """Nothing: Route recorded the request (at the service's own cost estimate)."""

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        pb = self.pb
        req = pb.FeedbackRequest(tenant=self.tenant, request_id=rid, labels=[
            pb.ModelSatisfaction(model=self.names[k], satisfaction=s) for k, s in labels.items() if k != served])
        if served in labels:
            req.satisfaction = labels[served]
        self.stub.Feedback(req, timeout=self.timeout_s)

    def queue(self) -> float:
        return float(self.stub.SlaStatus(self.pb.SlaStatusRequest(tenant=self.tenant), timeout=self.timeout_s).queue)

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------------------------- pretrain
def service_models(cfg: Any) -> tuple[ModelConfig, ...]:
    """The service's zoo: the configured models, else the embedded demo zoo's (named as `messplus serve` names them)."""
    if cfg.zoo.models:
        return tuple(cfg.zoo.models)
    from ..demo.repository import DEFAULT_MODELS, DEFAULT_TRACE, trace_models, triton_model_name

    have = trace_models(DEFAULT_TRACE)
    names, taken, out = (DEFAULT_MODELS if set(DEFAULT_MODELS) <= set(have) else have), set(), []
    for m in names:
        t = triton_model_name(m, taken)
        taken.add(t)
        out.append(ModelConfig(name=t, triton_model=t, cost_per_request=1.0))
    return tuple(out)


def _write_pretrained(heads: Heads):  # type: ignore[no-untyped-def]
    """A store job: every head's snapshot, at a label seq the Router restores from.

    The Router reads a snapshot at seq 0 as "no snapshot" (and starts from the prior), so a state without any
    label gets its label counter moved to 1 (sqlite_sequence, SQLite's documented AUTOINCREMENT counter): the
    snapshot says "labels up to 1 are in", and the first real label gets seq 2 and is replayed after a crash."""
    from ..state.sqlite import now

    def job(conn: Any) -> int:
        (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM labels").fetchone()
        seq = max(int(heads.last_seq), int(top), 1)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'labels'").fetchone()
        if row is None:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('labels', ?)", (seq,))
        elif row[0] < seq:
            conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'labels'", (seq,))
        conn.executemany("INSERT OR REPLACE INTO heads (model, dim, last_label_seq, W, S, updated) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [(n, heads.features, seq, *heads.snapshot(k), now()) for k, n in enumerate(heads.models)])
        return seq

    return job


def pretrain(cfg: Any, trace: Trace, emb: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Warm-start the service's heads (in its SQLite state) from every label of a trace, like `--warm-start`.

    The heads the service would start with (its snapshot plus the labels since) learn the trace's labels in a
    seeded shuffled order and are written back as a snapshot. Run it while the service is stopped."""
    models = service_models(cfg)
    columns = match_models([(m.name, m.triton_model) for m in models], trace.models)
    if all(j < 0 for j in columns):
        raise TraceError(f"no model of the service's zoo ({', '.join(m.name for m in models)}) is in the trace "
                         f"({', '.join(trace.models)})")
    store = Store(cfg.state_dir / "messplus.sqlite3", synchronous=cfg.state.synchronous, inline=True)
    try:
        heads = Heads([m.name for m in models], emb.shape[1], prior_var=cfg.predictor.prior_var,
                      prior_accuracy=[m.prior_accuracy for m in models])
        Router(models, (), heads, store)  # restores the heads exactly as the service would at start
        rows = np.random.default_rng([seed, 1]).permutation(len(trace))
        n = train_heads(heads, emb, trace.labels, rows, columns)
        seq = store.submit(_write_pretrained(heads)).result()
    finally:
        store.close()
    return {"labels": n, "snapshot_seq": seq, "models": {m.name: (trace.models[j] if j >= 0 else None)
                                                         for m, j in zip(models, columns)}}


# --------------------------------------------------------------------------------------- command line
def add_commands(sub: Any) -> None:
    """Register `messplus replay` and `messplus pretrain`."""
    p = sub.add_parser("replay", help="replay routing traces through the router; baselines, summary.json, plots",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", action="append", required=True, help="trace CSV; repeat to concatenate (drift)")
    p.add_argument("--alpha", action="append", type=float, required=True, help="SLA target; repeat for a sweep")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--out", required=True, help="output folder (summary.json, runs/, *.png)")
    p.add_argument("--feedback-rate", type=float, default=1.0, help="fraction of requests given feedback")
    p.add_argument("--feedback-delay", type=int, default=0, help="feedback arrives this many requests late")
    p.add_argument("--outage", action="append", default=[], metavar="MODEL:START:END",
                   help="model unavailable in [START, END): two integers = request indices, else fractions of "
                        "the replayed stream; MODEL @cheapest = the cheapest single model meeting alpha")
    p.add_argument("--warm-start", type=float, default=0.0, metavar="F",
                   help="train the heads offline on a random fraction F of the prompts, replay the rest")
    p.add_argument("--order", choices=("shuffle", "source", "file"), default="shuffle",
                   help="stream order within each trace: seeded shuffle (default), by source_benchmark, as in the file")
    p.add_argument("--flat-costs", action="store_true",
                   help="give the router one price per model (its mean cost) instead of the trace's price list "
                        "(per request plus per input token)")
    p.add_argument("--V", type=float, help="tenant V (default: the service default)")
    p.add_argument("--c", type=float, help="exploration constant c (default: the service default)")
    p.add_argument("--explore-models", type=int, help="models invoked per exploration step (0: all)")
    p.add_argument("--explore-budget", type=float, help="fraction of spend exploration's extra models may cost")
    p.add_argument("--optimism", type=float, help="tenant optimism (sigmas of the logit added in decisions)")
    p.add_argument("--margin", type=float, help="tenant safety margin (the n-th label is held to alpha + m/(2 sqrt n))")
    p.add_argument("--reserve", type=float, help="satisfaction the queue may bank below 0 (-1: unlimited, 0: MESS+)")
    p.add_argument("--confidence", type=float,
                   help="sigmas of the unlabelled requests' estimated satisfaction the queue also covers")
    p.add_argument("--debt-gain", type=float,
                   help="how much more the queue weighs past half the margin's surplus (0: MESS+'s linear queue)")
    p.add_argument("--no-reference", action="store_true", help="skip the MESS+ reference runs")
    p.add_argument("--grpc", metavar="ADDR", help="route through a running service (Route/Feedback) at HOST:PORT")
    p.add_argument("--tenant", default="default", help="the service tenant to drive with --grpc")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows of each trace file")
    p.add_argument("--models", help="comma-separated trace models to route among (default: all of the trace's)")
    _encoder_args(p, cache_default="var/embeddings")
    p.add_argument("--encoder-dir", default="var", help="folder of the exported ONNX encoder (default var)")
    p.add_argument("--onnx", help="use this ONNX encoder file instead")
    p.add_argument("--max-tokens", type=int, default=PredictorConfig().max_tokens)
    p.add_argument("--threads", type=int, default=0, help="encoder threads (0: all cores)")
    p.set_defaults(func=_cmd_replay)

    q = sub.add_parser("pretrain", help="warm-start the service's predictor heads from a trace's labels")
    q.add_argument("--trace", action="append", required=True, help="trace CSV; repeat for several")
    q.add_argument("--config", help="the service's TOML config (default: $MESSPLUS_CONFIG, else the embedded one)")
    q.add_argument("--state-dir", help="the service's state folder (default: the config's state.dir)")
    q.add_argument("--seed", type=int, default=0, help="seed of the training order")
    q.add_argument("--limit", type=int, default=0, help="only the first N rows of each trace file")
    _encoder_args(q, cache_default=None)
    q.set_defaults(func=_cmd_pretrain)


def _encoder_args(p: argparse.ArgumentParser, cache_default: str | None) -> None:
    p.add_argument("--cache-dir", default=cache_default,
                   help="prompt embedding cache (default: var/embeddings; pretrain: STATE_DIR/embeddings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _embeddings(trace: Trace, onnx: Path, max_tokens: int, threads: int, cache_dir: Path | None,
                progress: bool) -> np.ndarray:
    from ..encoder.encoder import Encoder, default_model_dir
    from ..trace import embed_trace, file_sha256

    encoder = Encoder.load(onnx, default_model_dir() / "tokenizer.json", max_tokens=max_tokens, threads=threads or None)
    return embed_trace(trace, encoder, f"{file_sha256(onnx)}:{max_tokens}", cache_dir, progress=progress)


def _say(msg: str) -> None:
    print(f"messplus: {msg}", file=sys.stderr, flush=True)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ..encoder.encoder import ensure_exported
    from ..trace import load_traces

    if not all(0 < a < 1 for a in args.alpha) or args.seeds < 1 or not 0 <= args.feedback_rate <= 1 \
            or args.feedback_delay < 0 or not 0 <= args.warm_start < 1 or args.limit < 0:
        raise SystemExit("messplus replay: need 0 < alpha < 1, seeds >= 1, 0 <= feedback-rate <= 1, "
                         "feedback-delay >= 0, 0 <= warm-start < 1, limit >= 0")
    cond = Condition(feedback_rate=args.feedback_rate, feedback_delay=args.feedback_delay,
                     outages=tuple(Outage.parse(o) for o in args.outage), warm_start=args.warm_start,
                     order=args.order, flat_costs=args.flat_costs)
    setup = ReplaySetup(alphas=tuple(args.alpha), seeds=tuple(range(args.seeds)), cond=cond,
                        policy=Policy(**{k: getattr(args, k) for k in POLICY_KEYS}),
                        reference=not args.no_reference, progress=not args.quiet)
    started = time.perf_counter()
    trace = load_traces(args.trace, limit=args.limit)
    if args.models:
        trace = trace.select_models([m.strip() for m in args.models.split(",") if m.strip()])
    driver = None
    if args.grpc:
        if args.warm_start or len(args.alpha) != 1 or args.seeds != 1:
            raise SystemExit("messplus replay --grpc: one alpha, one seed, no --warm-start (restart the service "
                             "between runs; warm-start it with `messplus pretrain`)")
        if any(getattr(args, k) is not None for k in POLICY_KEYS):
            raise SystemExit(f"messplus replay --grpc: the policy ({', '.join(POLICY_KEYS)}) is the service tenant's; "
                             "set it in its config")
        if args.flat_costs:
            raise SystemExit("messplus replay --grpc: the prices are the service's; set them in its config")
        driver = GrpcDriver(args.grpc, args.tenant, trace.models)
        if abs(driver.alpha - args.alpha[0]) > 1e-9:
            raise SystemExit(f"messplus replay --grpc: tenant {args.tenant!r} has alpha {driver.alpha}, not "
                             f"{args.alpha[0]}")
        trace = trace.select_models(driver.trace_models)
    emb = None
    if driver is None or setup.reference:
        onnx = Path(args.onnx) if args.onnx else ensure_exported(Path(args.encoder_dir), _say)
        emb = _embeddings(trace, onnx, args.max_tokens, args.threads, Path(args.cache_dir) if args.cache_dir else None,
                          not args.quiet)
    _say(f"{trace.name}: {len(trace)} prompts, {len(trace.models)} models; ready in "
         f"{time.perf_counter() - started:.1f}s")
    curves: dict[float, dict[str, Any]] = {}
    try:
        summary = replay(trace, emb, setup, grpc_driver=driver, curves=curves)
    finally:
        if driver is not None:
            driver.close()
    for path in write_outputs(Path(args.out), summary, curves, plots=not args.no_plots):
        _say(f"wrote {path}")
    print(format_table(summary))
    _say(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .. import config
    from ..encoder.encoder import ensure_exported
    from ..trace import load_traces

    cfg = config.load(args.config)
    if args.state_dir:
        cfg = replace(cfg, state=replace(cfg.state, dir=args.state_dir))
    trace = load_traces(args.trace, limit=args.limit)
    onnx = Path(cfg.predictor.onnx) if cfg.predictor.onnx else ensure_exported(cfg.state_dir, _say)
    cache = Path(args.cache_dir) if args.cache_dir else cfg.state_dir / "embeddings"
    emb = _embeddings(trace, onnx, cfg.predictor.max_tokens, cfg.predictor.threads, cache, not args.quiet)
    result = pretrain(cfg, trace, emb, seed=args.seed)
    print(json.dumps(result, indent=1))
    return 0


def format_table(summary: list[dict[str, Any]]) -> str:
    """A plain-text table of a summary: one line per run, then the baselines."""
    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(x, spec)

    lines = []
    for e in summary:
        b = e["baselines"]
        lines.append(f"{e['trace']}  alpha={e['alpha']:g}  (cost unit: {e['cost_unit'] or 'trace'})")
        for r in e["runs"]:
            lines.append(f"  seed {r['seed']}: satisfaction {f(r['satisfaction'], '.4f')} sla_met {r['sla_met']} "
                         f"mean_cost {f(r['mean_cost'])} explore {f(r['exploration_fraction'], '.3f')} "
                         f"x static {f(r['cost_vs_static_mixture'], '.3f')} x oracle {f(r['cost_vs_oracle'], '.3f')} "
                         f"x reference {f(r['cost_vs_reference'], '.3f')}")
        ref = b["messplus_reference"] or {}
        lines.append(f"  cheapest single {b['cheapest_single']['model']} {f(b['cheapest_single']['mean_cost'])}; "
                     f"static mixture {f(b['static_mixture']['mean_cost'])}; oracle {f(b['oracle']['mean_cost'])}; "
                     f"MESS+ reference {f(ref.get('mean_cost'))} (satisfaction {f(ref.get('satisfaction'), '.4f')})")
    return "\n".join(lines)
