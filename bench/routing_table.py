"""The routing-quality tables of docs/ROUTING.md: every shared trace x alpha x condition, 3 seeds, with baselines;
the short-stream tables (each trace's first 100, SHORT and 300 requests, SHORT_SEEDS seeds, cold; and, in the
caution table, the first SHORT on a warm router: a new tenant's first day where other tenants' labels have trained
the heads); the ablation table;
and docs/ROUTING-LIMITS.md's tables.

    .venv/bin/python bench/routing_table.py --ablations [--jobs 2] [--seeds 3] [--out var/routing] [--only CASE ...]

Each (trace, condition) is one `messplus replay` run through the service's own router core (the in-process
path of service/replay/, so exactly what `messplus replay` does), with the MESS+ reference semantics in the
same run. Every run writes OUT/<trace>-<condition>/summary.json and its plots; the tables between the doc's
`routing-table`, `routing-horizons`, `routing-caution` and `routing-ablations` markers (docs/ROUTING.md) and
`routing-short`, `routing-surplus` and `routing-sparse` (docs/ROUTING-LIMITS.md) are regenerated from those
summaries, so every number there has this command behind it; the `routing-limits` and `routing-task` tables
(docs/ROUTING-LIMITS.md) are computed afresh each time. Embeddings are cached in var/embeddings (the first run
encodes ~21k prompts with MiniLM: about 20 minutes on 2 cores; later runs read the cache). The caution table runs
the short streams with the tenant knob `caution` at CAUTION, and the whole streams cold with it off and on
(OUT/caution, OUT/caution-off; `--only TRACE-caution` runs one trace's). `--only NONE --ablations` runs just the
ablations; `--table-only` rewrites the doc from OUT. A run into another OUT writes the pages only when --doc and
--limits-doc are given. `--jobs N` runs the replays in N processes (each replay is one core's work; the traces'
embeddings are made first, once), and every summary is the one a serial run writes (each replay is seeded): on 2
cores the whole command with `--ablations --jobs 2` took 40.6 minutes (2026-12-07), where serially its 114 replays
alone took 68 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "service" / "demo" / "traces"
VAR = ROOT / "var"  # where the predictor is exported to ONNX
TARGET_STEP = 0.0025  # the task-headroom table raises a training-half mix's target in these steps
SPEND_MODELS = 5  # the spend table covers the traces of several tasks with at least this many models
SPEND_SHOWN = 0.02  # ... and in it the models with at least this share of requests or of spend, either way
SPEND_EARLY = 800  # ... and how often the first seed's cold run invoked each in its first this many requests
KNN = 50  # neighbours of the nearest-neighbour predictor in the limits table (10 had a worse log loss on every trace)


@dataclass(frozen=True)
class Case:
    key: str
    files: tuple[str, ...]
    alphas: tuple[float, ...]


CASES = (
    Case("routerbench", ("routerbench_arc_wino_mbpp.csv",), (0.65, 0.70, 0.75, 0.80)),
    Case("mmlu", ("routellm_mmlu.csv",), (0.72, 0.76)),
    Case("gsm8k", ("routellm_gsm8k.csv",), (0.70, 0.78)),
    Case("bbh", ("openllm_bbh_dev.csv",), (0.50, 0.55, 0.60, 0.65)),
)
SHORT = 160  # requests of the short-stream table: a new tenant's first day
SHORT_SEEDS = 12
SHORT_ELIGIBLE = 0.03  # a short stream can be promised alpha where its most accurate model alone reaches alpha + this
CAUTION = SHORT  # the caution table's tenant setting (`caution`, labels): a new tenant's first day
CAUTION_SEEDS = 12  # the caution table's seeds, short and whole streams alike: the whole streams' cost spreads widely
DRIFT = (
    Case("routerbench-by-benchmark", ("routerbench_arc_wino_mbpp.csv",), (0.70, 0.75)),
    Case("mmlu-then-gsm8k", ("routellm_mmlu.csv", "routellm_gsm8k.csv"), (0.72,)),
)
# name -> (Condition keyword arguments, label in the table)
CONDITIONS: dict[str, tuple[dict[str, Any], str]] = {
    "cold": ({}, "cold start"),
    "warm": ({"warm_start": 0.5}, "--warm-start 0.5"),
    "rate": ({"feedback_rate": 0.2}, "--feedback-rate 0.2"),
    "delay": ({"feedback_delay": 200}, "--feedback-delay 200"),
    "outage": ({"outages": "@cheapest:0.45:0.55"}, "--outage @cheapest:0.45:0.55"),
}
# conditions only the ablations run
ABLATION_CONDITIONS: dict[str, tuple[dict[str, Any], str]] = {
    "flat": ({"flat_costs": True}, "cold start, one price per model"),
}


# the short-stream tables' conditions: the first N requests of each seed's stream, cold (SHORT: the detailed table)
SHORT_CONDITIONS: dict[str, tuple[dict[str, Any], str]] = {
    "short100": ({"first": 100}, "first 100 requests, cold start"),
    "short": ({"first": SHORT}, f"first {SHORT} requests, cold start"),
    "short300": ({"first": 300}, "first 300 requests, cold start"),
}
# a new tenant on a router whose heads other tenants' labels have trained (`--warm-start 0.5`: the heads learn a
# random half of the trace, and the tenant's first SHORT requests are the other half's first)
WARM_SHORT: dict[str, tuple[dict[str, Any], str]] = {
    "short-warm": ({"first": SHORT, "warm_start": 0.5}, f"first {SHORT} requests, --warm-start 0.5"),
}
SHORT_RUNS = {**SHORT_CONDITIONS, **WARM_SHORT}  # every short stream run, SHORT_SEEDS seeds each


# name -> (tenant policy changes from the defaults (service/config.py TenantConfig), condition), on every case
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "defaults": ({}, "cold"),
    "no safety margin (--margin 0)": ({"margin": 0.0}, "cold"),
    "MESS+ queue floor (--reserve 0)": ({"reserve": 0.0}, "cold"),
    "MESS+ linear queue (--debt-gain 0)": ({"debt_gain": 0.0}, "cold"),
    "no price floor (--floor-window 0)": ({"floor_window": 0}, "cold"),
    "no optimism (--optimism 0)": ({"optimism": 0.0}, "cold"),
    "no exploration budget (--explore-budget 0)": ({"explore_budget": 0.0}, "cold"),
    "explore every model (--explore-models 0)": ({"explore_models": 0}, "cold"),
    "V = 1 (--V 1)": ({"V": 1.0}, "cold"),
    "c = 0.5 (--c 0.5)": ({"c": 0.5}, "cold"),
    "one price per model, not per input token (--flat-costs)": ({}, "flat"),
    "defaults, sparse feedback": ({}, "rate"),
    "no allowance for unlabelled requests (--confidence 0)": ({"confidence": 0.0}, "rate"),
}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.split(" (")[0].lower()).strip("-")


def embeddings(case: Case, emb_cache: Path, data: Path | None = None, var: Path | None = None) -> tuple[Any, Any]:
    """The case's trace and its prompt embeddings (encoded once, then read from the cache)."""
    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.encoder import ensure_exported
    from messplus.service.trace import load_traces

    trace = load_traces([(data or DATA) / f for f in case.files])
    onnx = ensure_exported(var or VAR, lambda m: print(f"routing_table: {m}", file=sys.stderr))
    return trace, R.embed_prompts(trace, onnx, PredictorConfig().max_tokens, 0, emb_cache, progress=True)


def run(case: Case, cond_name: str, seeds: int, out: Path, emb_cache: Path,
        policy: dict[str, Any] | None = None, reference: bool = True, data: Path | None = None,
        var: Path | None = None) -> list[dict[str, Any]]:
    from messplus.service import replay as R

    kwargs, _ = {**CONDITIONS, **ABLATION_CONDITIONS, **SHORT_RUNS}.get(cond_name, ({}, ""))
    order = "source" if case.key == "routerbench-by-benchmark" else "shuffle"
    outages = tuple(R.Outage.parse(o) for o in [kwargs["outages"]]) if "outages" in kwargs else ()
    cond = R.Condition(feedback_rate=kwargs.get("feedback_rate", 1.0), feedback_delay=kwargs.get("feedback_delay", 0),
                       warm_start=kwargs.get("warm_start", 0.0), outages=outages, order=order,
                       flat_costs=kwargs.get("flat_costs", False), first=kwargs.get("first", 0))
    trace, emb = embeddings(case, emb_cache, data, var)
    setup = R.ReplaySetup(alphas=case.alphas, seeds=tuple(range(seeds)), cond=cond,
                          policy=R.TenantOverrides(**(policy or {})),
                          reference=reference)
    curves: dict[float, dict[str, Any]] = {}
    started = time.perf_counter()
    summary = R.replay(trace, emb, setup, curves=curves)
    R.write_outputs(out / f"{case.key}-{cond_name}", summary, curves, plots=reference)
    print(f"routing_table: {case.key} {cond_name}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return summary


Task = tuple[Case, str, int, Path, Path, "dict[str, Any] | None", bool, Path, Path]  # run()'s arguments


def _run_task(task: Task) -> None:
    run(*task)


def execute(tasks: list[Task], jobs: int) -> None:
    """Every replay of `tasks`, in `jobs` processes (spawned: the parent's ONNX Runtime threads are not forked).
    The embeddings are made here first, one trace at a time, so that no two processes encode or cache the same
    trace at once."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            _run_task(task)
        return
    for case, cache, data, var in {(t[0].key, t[4], t[7]): (t[0], t[4], t[7], t[8]) for t in tasks}.values():
        embeddings(case, cache, data, var)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_run_task, task) for task in tasks]:
            done.result()  # a replay that failed fails the command


def _f(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


TABLE_HEAD = ["| trace | condition | alpha | satisfaction (min of seeds) | SLA met | cost / static mix | "
              "cost / task oracle | cost / oracle | cost / MESS+ reference |",
              "|---|---|---|---|---|---|---|---|---|"]


def table_row(key: str, label: str, e: dict[str, Any]) -> str:
    """One summary.json entry (an alpha, every seed) as a row of the table: means over seeds, the worst case
    where it matters."""
    runs = e["runs"]

    def mean(k: str) -> float | None:
        xs = [r[k] for r in runs if r.get(k) is not None]
        return sum(xs) / len(xs) if xs else None

    met = sum(r["sla_met"] for r in runs)
    worst = max(r["cost_vs_static_mixture"] for r in runs)
    return (f"| {key} | {label} | {e['alpha']:.2f} | {_f(mean('satisfaction'), '.4f')} "
            f"({_f(min(r['satisfaction'] for r in runs), '.4f')}) | {met}/{len(runs)} | "
            f"{_f(mean('cost_vs_static_mixture'), '.2f')}x (max {_f(worst, '.2f')}) | "
            f"{_f(mean('cost_vs_task_oracle'), '.2f')}x | {_f(mean('cost_vs_oracle'), '.1f')}x | "
            f"{_f(mean('cost_vs_reference'), '.2f')}x |")


def _have(path: Path) -> bool:
    """Whether a run's summary is there; a missing one is said on stderr (its rows are left out of the page)."""
    if path.exists():
        return True
    print(f"routing_table: no {path}: its rows are left out", file=sys.stderr)
    return False


def table(out: Path, seeds: int) -> str:
    """Markdown: one row per (trace, condition, alpha), means over seeds, worst case where it matters."""
    lines = list(TABLE_HEAD)
    for case in (*CASES, *DRIFT):
        for cond_name, (_, label) in CONDITIONS.items():
            path = out / f"{case.key}-{cond_name}" / "summary.json"
            if not (_have(path) if case in CASES else path.exists()):  # a drift case runs some conditions only
                continue
            lines += [table_row(case.key, label, e) for e in json.loads(path.read_text())]
    return "\n".join(lines)


def _eligible(run: dict[str, Any], alpha: float) -> bool:
    """Whether a short run is promised alpha: its most accurate model alone reaches alpha + SHORT_ELIGIBLE."""
    best = run.get("best_single_satisfaction")
    return best is not None and best >= alpha + SHORT_ELIGIBLE - 1e-9


def _static_reaches(e: dict[str, Any], i: int) -> bool:
    """Whether run i's static mix reaches alpha on its stream: on a short window even the most accurate model
    may fall short, and a cost against a mix short of alpha is not a saving (those runs are left out of the
    short tables' cost columns)."""
    mix = e["baselines"].get("static_mixture") or {}
    return bool(mix.get("per_seed", [mix] * len(e["runs"]))[i].get("feasible", True))


def horizons_table(out: Path) -> str:
    """Per trace and horizon (each SHORT_CONDITIONS stream), over every alpha and seed: the eligible runs that
    met the SLA, the worst eligible shortfall, and the cost against each run's static mix where that mix
    reaches alpha."""
    lines = ["| trace | first N requests | SLA met, eligible | worst eligible satisfaction - alpha | "
             "cost / static mix reaching alpha (max) | reference: SLA met, eligible |", "|---|---|---|---|---|---|"]
    for case in CASES:
        for cond_name, (kwargs, _) in SHORT_CONDITIONS.items():
            path = out / f"{case.key}-{cond_name}" / "summary.json"
            if not _have(path):
                continue
            el, ratios, ref_met = [], [], 0
            for e in json.loads(path.read_text()):
                refs = (e["baselines"]["messplus_reference"] or {}).get("runs", [None] * len(e["runs"]))
                for i, (r, rf) in enumerate(zip(e["runs"], refs)):
                    if r["cost_vs_static_mixture"] is not None and _static_reaches(e, i):
                        ratios.append(r["cost_vs_static_mixture"])
                    if _eligible(r, e["alpha"]):
                        el.append((r, e["alpha"]))
                        ref_met += bool(rf and rf["sla_met"])
            met = sum(r["sla_met"] for r, _ in el)
            worst = min((r["satisfaction"] - a for r, a in el), default=None)
            mean = sum(ratios) / len(ratios) if ratios else None
            lines.append(f"| {case.key} | {kwargs['first']} | {met}/{len(el)} | {_f(worst, '+.4f')} | "
                         f"{_f(mean, '.2f')}x ({_f(max(ratios, default=None), '.2f')}) | {ref_met}/{len(el)} |")
    return "\n".join(lines)


def short_table(out: Path) -> str:
    """The short-stream table: per trace and alpha, over SHORT_SEEDS seeds of the first SHORT requests, the
    runs whose most accurate model alone reaches alpha + SHORT_ELIGIBLE on those requests (eligible: the
    promise applies) and how many of them met the SLA, beside the others and the MESS+ reference."""
    lines = [f"| trace | alpha | eligible runs | SLA met, eligible | worst eligible satisfaction - alpha | "
             f"SLA met, not eligible | cost / static mix reaching alpha (max) | reference: SLA met, eligible | "
             f"reference cost / static mix |", "|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        path = out / f"{case.key}-short" / "summary.json"
        if not _have(path):
            continue
        for e in json.loads(path.read_text()):
            runs, a = e["runs"], e["alpha"]
            refs = (e["baselines"]["messplus_reference"] or {}).get("runs", [])
            ok = [_eligible(r, a) for r in runs]
            el = [r for r, o in zip(runs, ok) if o]
            other = [r for r, o in zip(runs, ok) if not o]
            reach = [_static_reaches(e, i) for i in range(len(runs))]
            ratios = [r["cost_vs_static_mixture"] for r, ok_mix in zip(runs, reach)
                      if r["cost_vs_static_mixture"] is not None and ok_mix]
            statics = [r["mean_cost"] / r["cost_vs_static_mixture"] if r["cost_vs_static_mixture"] and ok_mix
                       else None for r, ok_mix in zip(runs, reach)]  # each seed's static mix, where it reaches alpha
            ref_ratios = [rf["mean_cost"] / s for rf, s in zip(refs, statics) if s]
            worst = min((r["satisfaction"] - a for r in el), default=None)
            mean = sum(ratios) / len(ratios) if ratios else None
            ref_mean = sum(ref_ratios) / len(ref_ratios) if ref_ratios else None
            met = sum(r["sla_met"] for r in el)
            lines.append(f"| {case.key} | {a:.2f} | {len(el)}/{len(runs)} | {met}/{len(el)} | "
                         f"{_f(worst, '+.4f')} | {sum(r['sla_met'] for r in other)}/{len(other)} | "
                         f"{_f(mean, '.2f')}x ({_f(max(ratios, default=None), '.2f')}) | "
                         f"{sum(rf['sla_met'] for rf, o in zip(refs, ok) if o)}/{len(el) if refs else 0} | "
                         f"{_f(ref_mean, '.2f')}x |")
    return "\n".join(lines)


def caution_table(out: Path) -> str:
    """Per trace: the eligible short runs that met the SLA and their cost, with `caution` off (the short-stream
    runs of the main command) and at CAUTION; and the whole stream, cold, over CAUTION_SEEDS seeds, off and on."""
    lines = ["| trace | first 100: SLA met, eligible (off → on) | first 160 | first 300 | "
             "first 160: cost / static mix reaching alpha (off → on) | first 160, warm router: SLA met, eligible | "
             "its cost | whole stream: SLA met (off → on) | whole stream: cost / static mix, mean (max), off | on |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def load(path: Path) -> list[dict[str, Any]] | None:
        return json.loads(path.read_text()) if path.exists() else None

    def eligible_met(summary: list[dict[str, Any]] | None) -> str:
        if summary is None:
            return "–"
        el = [r for e in summary for r in e["runs"] if _eligible(r, e["alpha"])]
        return f"{sum(r['sla_met'] for r in el)}/{len(el)}"

    def cost(summary: list[dict[str, Any]] | None, worst: bool = False) -> str:
        ratios = [r["cost_vs_static_mixture"] for e in summary or [] for i, r in enumerate(e["runs"])
                  if r["cost_vs_static_mixture"] is not None and _static_reaches(e, i)]
        if not ratios:
            return "–"
        mean = f"{sum(ratios) / len(ratios):.2f}x"
        return f"{mean} ({max(ratios):.2f})" if worst else mean

    def met(summary: list[dict[str, Any]] | None) -> str:
        runs = [r for e in summary or [] for r in e["runs"]]
        return f"{sum(r['sla_met'] for r in runs)}/{len(runs)}" if runs else "–"

    for case in CASES:
        off = {k: load(out / f"{case.key}-{k}" / "summary.json") for k in SHORT_RUNS}
        on = {k: load(out / "caution" / f"{case.key}-{k}" / "summary.json") for k in SHORT_RUNS}
        whole = [load(out / d / f"{case.key}-cold" / "summary.json") for d in ("caution-off", "caution")]
        if all(v is None for v in on.values()):
            continue
        lines.append(f"| {case.key} | " + " | ".join(f"{eligible_met(off[k])} → {eligible_met(on[k])}"
                                                      for k in SHORT_CONDITIONS) +
                     f" | {cost(off['short'])} → {cost(on['short'])} | "
                     f"{eligible_met(off['short-warm'])} → {eligible_met(on['short-warm'])} | "
                     f"{cost(off['short-warm'])} → {cost(on['short-warm'])} | {met(whole[0])} → {met(whole[1])} | "
                     f"{cost(whole[0], True)} | {cost(whole[1], True)} |")
    return "\n".join(lines)


def ablation_table(out: Path) -> str:
    """One row per ablation: over every (trace, alpha, seed) run of its condition, SLA met and cost against the
    static mix."""
    lines = ["| policy | condition | SLA met | cost / static mix: mean | max | worst satisfaction - alpha |",
             "|---|---|---|---|---|---|"]
    for name, (_, cond) in ABLATIONS.items():
        runs = []
        for case in CASES:
            path = out / "ablations" / _slug(name) / f"{case.key}-{cond}" / "summary.json"
            if path.exists():
                runs += [(r, e["alpha"]) for e in json.loads(path.read_text()) for r in e["runs"]]
        if not runs:
            continue
        ratios = [r["cost_vs_static_mixture"] for r, _ in runs]
        met = sum(r["sla_met"] for r, _ in runs)
        label = {**CONDITIONS, **ABLATION_CONDITIONS}[cond][1]
        lines.append(f"| {name} | {label} | {met}/{len(runs)} | {sum(ratios) / len(ratios):.2f}x | "
                     f"{max(ratios):.2f}x | {min(r['satisfaction'] - a for r, a in runs):+.4f} |")
    return "\n".join(lines)


def _threshold_cost(cost_dec: Any, cost_true: Any, labels: Any, p: Any, alpha: float) -> float:
    """The cheapest mean recorded cost reaching alpha (recorded labels) when every prompt goes to
    argmin_k cost_dec - lam * p over one price of satisfaction lam, mixing two lams: the best a router with
    these predictions and these cost estimates could do, with lam tuned in hindsight. inf if none reaches it."""
    import numpy as np

    rows = np.arange(len(cost_true))
    lams = np.concatenate([[0.0], np.geomspace(cost_dec.min() * 1e-2, cost_dec.max() * 1e3, 800)])
    pts = np.array([(labels[rows, ch].mean(), cost_true[rows, ch].mean())
                    for ch in (np.argmin(cost_dec - lam * p, axis=1) for lam in lams)])
    lo, hi = pts[pts[:, 0] <= alpha], pts[pts[:, 0] >= alpha]
    if not len(lo) or not len(hi):
        return float(hi[:, 1].min()) if len(hi) else float("inf")
    span = hi[None, :, 0] - lo[:, None, 0]
    t = np.where(span > 0, (alpha - lo[:, None, 0]) / np.where(span > 0, span, 1.0), 0.0)
    return float((lo[:, None, 1] + t * (hi[None, :, 1] - lo[:, None, 1])).min())


def _knn_predict(train_x: Any, train_labels: Any, test_x: Any, k: int, prior_n: float = 2.0) -> Any:
    """[T, K] satisfaction per test row and model: the mean recorded label of its k most cosine-similar
    training rows, shrunk towards the model's mean training label by `prior_n` pseudo-labels; missing (NaN)
    labels are skipped. A predictor of another kind than the heads, on the same embeddings."""
    import numpy as np

    train_x = np.asarray(train_x, np.float32)
    test_x = np.asarray(test_x, np.float32)
    if not len(train_x) or k < 1:
        raise ValueError("_knn_predict: needs training rows and k >= 1")
    k = min(k, len(train_x))
    seen = ~np.isnan(train_labels)
    y = np.where(seen, train_labels, 0.0)
    prior = y.sum(0) / np.maximum(seen.sum(0), 1)
    out = np.empty((len(test_x), train_labels.shape[1]))
    unit = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    for lo in range(0, len(test_x), 1024):
        q = test_x[lo:lo + 1024]
        sim = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)) @ unit.T
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        n = seen[near].sum(1) + prior_n
        out[lo:lo + len(q)] = np.where(n > 0, (y[near].sum(1) + prior_n * prior) / np.maximum(n, 1e-12), prior)
    return out


def per_source_limits(emb_cache: Path) -> str:
    """What knowing each source benchmark's accuracies would save over the static mixture (the hindsight
    assignment restricted to per-benchmark means), beside the per-prompt oracle: how much there is to learn.
    And what the router's own predictor could give: its heads trained on the warm-start half (seed 0), the
    other half routed by `_threshold_cost` with the router's price list (no queue, exploration or margin); and
    the same for two other predictors, to tell this predictor's limit from the embedding's: the heads given the
    prompt's length as one more feature, and the KNN nearest neighbours in the embedding."""
    import numpy as np

    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.replay.baselines import min_cost_assignment
    from messplus.service.encoder import ensure_exported
    from messplus.service.routing.heads import Heads
    from messplus.service.routing.pricing import input_tokens
    from messplus.service.trace import load_traces

    lines = ["| trace | alpha | static mixture | per-benchmark oracle / static | per-prompt oracle / static | "
             "warm-start heads, offline / static | heads with the prompt's length, offline / static | "
             f"{KNN} nearest neighbours, offline / static |", "|---|---|---|---|---|---|---|---|"]
    onnx = ensure_exported(VAR, lambda m: print(f"routing_table: {m}", file=sys.stderr))
    for case in CASES:
        t = load_traces([DATA / f for f in case.files])
        emb = R.embed_prompts(t, onnx, PredictorConfig().max_tokens, 0, emb_cache, progress=False)
        train, test = R.split_stream(t, 0, R.Condition(warm_start=0.5))

        def heads_on(x: Any) -> Any:
            """Predictions for the test half of heads over features x, trained on the warm-start half."""
            heads = Heads(t.models, x.shape[1], prior_var=PredictorConfig().prior_var)
            R.train_heads(heads, x, t.labels, train)
            return heads.predict(x[test])[0]

        p_test = heads_on(emb)
        # two other predictors on the same half: the heads with the prompt's log length as one more feature
        # (standardised on the training half), and nearest neighbours in the embedding
        loglen = np.log([max(len(p), 1) for p in t.prompts])
        z = (loglen - loglen[train].mean()) / max(loglen[train].std(), 1e-12)
        p_len = heads_on(np.hstack([emb, z[:, None].astype(emb.dtype)]))
        p_knn = _knn_predict(emb[train], t.labels[train], emb[test], KNN)
        tokens = np.array([input_tokens(t.prompts[r]) for r in test])
        # the replay router's own estimate for each prompt: the trace's price list and the prompt's length
        driver = R.InProcess(t, R.TenantOverrides().tenant(0.7, 0), emb.shape[1])
        cost_dec = driver.router.pricing.request_costs(tokens)
        driver.close()  # its in-memory store is not needed past the price list
        lab_test = np.nan_to_num(t.labels[test], nan=0.0)
        src = np.array(t.sources)
        lab = np.nan_to_num(t.labels, nan=0.0)
        n, k = lab.shape
        acc, cost = np.zeros((n, k)), np.zeros((n, k))
        for s in np.unique(src):
            m = src == s
            acc[m], cost[m] = lab[m].mean(0), t.costs[m].mean(0)
        for alpha in case.alphas:
            static = min_cost_assignment(np.tile(t.costs.mean(0), (n, 1)), np.tile(lab.mean(0), (n, 1)), alpha)
            group = min_cost_assignment(cost, acc, alpha)
            oracle = min_cost_assignment(t.costs, lab, alpha)
            static_test = min_cost_assignment(np.tile(t.costs[test].mean(0), (len(test), 1)),
                                              np.tile(lab_test.mean(0), (len(test), 1)), alpha)
            offline = [_threshold_cost(cost_dec, t.costs[test], lab_test, p, alpha) / static_test.mean_cost
                       for p in (p_test, p_len, p_knn)]
            lines.append(f"| {case.key} ({len(np.unique(src))} benchmarks) | {alpha:.2f} | {static.mean_cost:.3g} | "
                         f"{group.mean_cost / static.mean_cost:.2f} | {oracle.mean_cost / static.mean_cost:.2f} | "
                         + " | ".join(f"{x:.2f}" for x in offline) + " |")
    return "\n".join(lines)


def _mix_on_half(t: Any, fit: Any, test: Any, alpha: float) -> float | None:
    """The mean cost on the rows `test` of the task oracle's per-task mix solved on the rows `fit`, its target
    raised in steps of TARGET_STEP until the mix reaches alpha on `test`: the task-level routing a learner that
    knew only `fit`'s per-task accuracies could reach (with the target tuned in hindsight). None if none does."""
    import numpy as np

    from messplus.service.replay.baselines import task_oracle

    src = np.asarray(t.sources)
    target = alpha
    while target < 1.0:
        mix = task_oracle(t.models, t.costs[fit], t.labels[fit], src[fit], target)
        if not mix["feasible"]:
            return None
        sat = cost = 0.0
        for task, shares in mix["mix"].items():
            rows = test[src[test] == task]
            for name, x in shares.items():
                k = t.models.index(name)
                sat += x * np.nansum(t.labels[rows, k])
                cost += x * np.nansum(t.costs[rows, k])
        if sat >= alpha * len(test):
            return cost / len(test)
        target += TARGET_STEP
    return None


def task_headroom(out: Path, seeds: int) -> str:
    """Where the gap to the task oracle is, on each trace of several tasks, warm start (`--warm-start 0.5`):
    the task oracle is solved on the replayed half itself (in hindsight); a per-task mix solved on the other,
    training half (`_mix_on_half`) is what knowing the tasks from logged labels gives; and the router given the
    task itself as its features (one-hot `source_benchmark`, so its heads learn per-task rates exactly) shows
    what the online control costs on top, with a predictor that recognises the task perfectly; beside it the
    router with its own embedding, from OUT's warm-start runs (the main table's rows)."""
    import numpy as np

    from messplus.service import replay as R
    from messplus.service.trace import load_traces

    lines = ["| trace | alpha | task oracle (hindsight, replayed half) | task mix from the training half / task oracle "
             "| router given the task, warm start / task oracle (SLA met) | router, its embedding (the main table) |",
             "|---|---|---|---|---|---|"]
    cond = R.Condition(warm_start=0.5)
    for case in CASES:
        t = load_traces([DATA / f for f in case.files])
        src = np.asarray(t.sources)
        tasks = sorted(set(t.sources))
        if len(tasks) < 2:
            continue
        onehot = (src[:, None] == np.array(tasks)[None, :]).astype(np.float32)
        oracle: dict[float, list[float]] = {a: [] for a in case.alphas}
        fixed: dict[float, list[float]] = {a: [] for a in case.alphas}
        routed: dict[float, list[tuple[float, bool]]] = {a: [] for a in case.alphas}
        for seed in range(seeds):
            train, test = R.split_stream(t, seed, cond)
            setup = R.ReplaySetup(alphas=case.alphas, seeds=(seed,), cond=cond, policy=R.TenantOverrides())
            for e in R.replay(t, onehot, setup):  # its task oracle is solved on the replayed half, `test`
                run, alpha = e["runs"][0], e["alpha"]
                routed[alpha].append((run.get("cost_vs_task_oracle") or float("nan"), bool(run["sla_met"])))
                best = e["baselines"]["task_oracle"]["mean_cost"]
                oracle[alpha].append(best)
                cost = _mix_on_half(t, train, test, alpha)
                fixed[alpha].append(cost / best if cost is not None and best else float("nan"))
        path = out / f"{case.key}-warm" / "summary.json"
        own = {e["alpha"]: [r.get("cost_vs_task_oracle") or float("nan") for r in e["runs"]]
               for e in (json.loads(path.read_text()) if path.exists() else [])}
        for alpha in case.alphas:
            r = np.array([x for x, _ in routed[alpha]])
            mine = f"{np.nanmean(own[alpha]):.2f}x" if alpha in own else "-"
            met = sum(ok for _, ok in routed[alpha])
            lines.append(f"| {case.key} ({len(tasks)} benchmarks) | {alpha:.2f} | {np.mean(oracle[alpha]):.3g} | "
                         f"{np.nanmean(fixed[alpha]):.2f}x (max {np.nanmax(fixed[alpha]):.2f}) | "
                         f"{np.nanmean(r):.2f}x (max {np.nanmax(r):.2f}), {met}/{len(r)} | {mine} |")
    return "\n".join(lines)


def spend_table(out: Path) -> str:
    """Where a cold run's money goes, on each trace of several tasks and at least SPEND_MODELS models, at its
    highest alpha: per model its mean price and accuracy over the trace, the task oracle's share of the requests
    (its per-task mix weighted by the tasks' sizes) and of its spend, the cold router's share of the requests
    it served and of its spend (every model it invoked; means over OUT's cold runs; spend at each model's mean
    price), and how often the first seed's run invoked it in its first SPEND_EARLY requests (its saved arrays).
    A model under SPEND_SHOWN of all four shares is left out."""
    import numpy as np

    from messplus.service.replay.baselines import task_oracle
    from messplus.service.trace import load_traces

    lines = ["| trace | alpha | model | mean price | accuracy | task oracle: requests | task oracle: spend | "
             f"cold router: requests served | cold router: spend | invoked in the first {SPEND_EARLY} (seed 0) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        path = out / f"{case.key}-cold" / "summary.json"
        t = load_traces([DATA / f for f in case.files])
        src = np.asarray(t.sources)
        if len(set(t.sources)) < 2 or len(t.models) < SPEND_MODELS or not _have(path):
            continue
        alpha = max(case.alphas)
        runs = next(e["runs"] for e in json.loads(path.read_text()) if e["alpha"] == alpha)
        arrays = path.parent / "runs" / f"alpha{alpha:g}-messplus-seed0.npz"
        early = np.load(arrays)["invoked"][:SPEND_EARLY].sum(axis=0) if arrays.exists() else None
        mix = task_oracle(t.models, t.costs, t.labels, src, alpha)
        oracle = np.zeros(len(t.models))
        for task, shares in mix["mix"].items():
            for name, share in shares.items():
                oracle[t.models.index(name)] += share * float(np.mean(src == task))
        served = np.array([np.mean([r["model_share"][m] for r in runs]) for m in t.models])
        invoked = np.array([np.mean([r["invoked_share"][m] for r in runs]) for m in t.models])
        price = np.asarray(t.mean_cost, np.float64)
        o_spend, r_spend = oracle * price / (oracle @ price), invoked * price / (invoked @ price)
        for k in np.argsort(price, kind="stable"):
            if max(oracle[k], o_spend[k], served[k], r_spend[k]) < SPEND_SHOWN:
                continue
            lines.append(f"| {case.key} | {alpha:.2f} | {t.models[k].split('/')[-1]} | {price[k]:.3g} | "
                         f"{t.accuracy[k]:.3f} | {oracle[k]:.2f} | {o_spend[k]:.2f} | {served[k]:.2f} | "
                         f"{r_spend[k]:.2f} | {'-' if early is None else int(early[k])} |")
    return "\n".join(lines)


def surplus_table(out: Path) -> str:
    """What the satisfaction a cold run ends with above alpha is worth on the static mix (each model's true
    accuracy and mean cost over the whole trace: a cold run's baseline, as it replays every row), solved at the
    run's own final satisfaction instead of at alpha, beside the router's cost; means over OUT's cold runs of
    each alpha, the last column of each run's cost / the mix at its satisfaction. Where the static mix's price
    of satisfaction is steep, a small surplus is a large share of the router's extra cost."""
    import numpy as np

    from messplus.service.replay.baselines import static_mixture
    from messplus.service.trace import load_traces

    lines = ["| trace | alpha | satisfaction - alpha, mean (max) | static mix at alpha + 0.005 / static | "
             "static mix at the run's satisfaction / static, mean (max) | router / static, mean | "
             "router / static mix at the run's satisfaction, mean |",
             "|---|---|---|---|---|---|---|"]
    for case in CASES:
        path = out / f"{case.key}-cold" / "summary.json"
        if not _have(path):
            continue
        t = load_traces([DATA / f for f in case.files])

        def mix(level: float) -> float:
            return float(static_mixture(t.models, t.mean_cost, t.accuracy, level)["mean_cost"] or np.nan)

        for e in json.loads(path.read_text()):
            alpha, runs = e["alpha"], e["runs"]
            base = mix(alpha)
            over = np.array([r["satisfaction"] - alpha for r in runs])
            at = np.array([mix(r["satisfaction"]) / base for r in runs])
            cost = np.array([r["cost_vs_static_mixture"] for r in runs])
            lines.append(f"| {case.key} | {alpha:.2f} | {over.mean():.4f} ({over.max():.4f}) | "
                         f"{mix(alpha + 0.005) / base:.2f}x | {at.mean():.2f}x ({at.max():.2f}) | {cost.mean():.2f}x | "
                         f"{np.mean(cost / at):.2f}x |")
    return "\n".join(lines)


def sparse_table(out: Path) -> str:
    """What sparse feedback's allowance has to cost at least: with a fraction f of the N requests labelled, the
    whole stream's satisfaction is known to a standard error of sqrt((1 - f)^2 s2 / (f N) + (1 - f) s2 / N)
    (the labelled requests' mean stands in for the rest; s2 = alpha (1 - alpha), a label's variance at alpha,
    which a predictor's residuals undercut a little), and meeting alpha in nearly every run means holding about
    two of those above it. Priced on the static mix (true accuracies, as in the main table's baseline) beside
    the router's own cost with that feedback and with full feedback (OUT's rate and cold runs, means)."""
    import numpy as np

    from messplus.service.replay.baselines import static_mixture
    from messplus.service.trace import load_traces

    lines = ["| trace | alpha | labelled share | standard error (SE) of the stream's satisfaction | static mix at alpha "
             "+ 2 SE / static | router, that feedback: cost / static (satisfaction - alpha) | router, full "
             "feedback | that feedback / full |",
             "|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        rate, cold = out / f"{case.key}-rate" / "summary.json", out / f"{case.key}-cold" / "summary.json"
        if not (_have(rate) and _have(cold)):
            continue
        t = load_traces([DATA / f for f in case.files])

        def mix(level: float) -> float:
            return float(static_mixture(t.models, t.mean_cost, t.accuracy, level)["mean_cost"] or np.nan)

        full = {e["alpha"]: np.mean([r["cost_vs_static_mixture"] for r in e["runs"]])
                for e in json.loads(cold.read_text())}
        for e in json.loads(rate.read_text()):
            alpha, runs = e["alpha"], e["runs"]
            n = float(np.mean([r["requests"] for r in runs]))
            f = float(np.mean([r["feedback_requests"] / max(r["requests"], 1) for r in runs]))
            if alpha not in full or not 0 < f < 1:  # a cold run at another alpha, or no feedback to sample
                continue
            s2 = alpha * (1 - alpha)
            se = math.sqrt((1 - f) ** 2 * s2 / (f * n) + (1 - f) * s2 / n)
            cost = float(np.mean([r["cost_vs_static_mixture"] for r in runs]))
            over = float(np.mean([r["satisfaction"] - alpha for r in runs]))
            lines.append(f"| {case.key} | {alpha:.2f} | {f:.2f} | {se:.4f} | {mix(alpha + 2 * se) / mix(alpha):.2f}x | "
                         f"{cost:.2f}x ({over:+.4f}) | {full[alpha]:.2f}x | {cost / full[alpha]:.2f}x |")
    return "\n".join(lines)


def _replace(text: str, name: str, body: str, command: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"no {begin} ... {end} markers in the doc")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n<!-- generated by `{command}`; do not edit by hand -->\n\n{body}\n\n{end}{tail}"


def write_doc(doc: Path, limits_doc: Path, out: Path, seeds: int, command: str, emb_cache: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    text = _replace(text, "routing-table", table(out, seeds), command)
    text = _replace(text, "routing-horizons", horizons_table(out), command)
    text = _replace(text, "routing-caution", caution_table(out), command)
    text = _replace(text, "routing-ablations", ablation_table(out), command)
    limits = limits_doc.read_text(encoding="utf-8")
    limits = _replace(limits, "routing-limits", per_source_limits(emb_cache), command)
    limits = _replace(limits, "routing-task", task_headroom(out, seeds), command)
    limits = _replace(limits, "routing-spend", spend_table(out), command)
    limits = _replace(limits, "routing-short", short_table(out), command)
    limits = _replace(limits, "routing-surplus", surplus_table(out), command)
    limits = _replace(limits, "routing-sparse", sparse_table(out), command)
    doc.write_text(text, encoding="utf-8")
    limits_doc.write_text(limits, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "var" / "routing"))
    ap.add_argument("--cache-dir", default=str(ROOT / "var" / "embeddings"))
    ap.add_argument("--only", action="append", default=[], metavar="TRACE-CONDITION",
                    help="run only these, e.g. gsm8k-cold (repeatable); the table still shows every summary in OUT")
    ap.add_argument("--doc", help="the page to write (default: docs/ROUTING.md, only when OUT is the default: a run "
                                   "into another folder leaves the pages alone unless this is given)")
    ap.add_argument("--limits-doc", help="the page of the limits and task-headroom tables (default as for --doc: "
                                         "docs/ROUTING-LIMITS.md)")
    ap.add_argument("--table-only", action="store_true",
                    help="regenerate the docs from the summaries in OUT without replaying them (the limits and "
                         "task-headroom tables are still computed, a few minutes)")
    ap.add_argument("--ablations", action="store_true", help="also run each ABLATIONS policy under its condition on every trace")
    ap.add_argument("--ablation-seeds", type=int, default=2)
    ap.add_argument("--plots-to", help="copy the cold-start plots here (default as for --doc: docs/img)")
    ap.add_argument("--jobs", type=int, default=1, help="replays in this many processes at once (one per core)")
    args = ap.parse_args(argv)
    if bool(args.doc) != bool(args.limits_doc):  # checked before hours of replays, not after
        raise SystemExit("--doc and --limits-doc go together: the pages share the summaries in OUT")
    out = Path(args.out)
    if out.resolve() == (ROOT / "var" / "routing").resolve():
        args.doc = args.doc or str(ROOT / "docs" / "ROUTING.md")
        args.limits_doc = args.limits_doc or str(ROOT / "docs" / "ROUTING-LIMITS.md")
        args.plots_to = args.plots_to or str(ROOT / "docs" / "img")
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    if not args.table_only:
        cache, tasks = Path(args.cache_dir), list[Task]()

        def add(case: Case, cond: str, seeds: int, folder: Path, policy: dict[str, Any] | None = None,
                reference: bool = True) -> None:
            tasks.append((case, cond, seeds, folder, cache, policy, reference, DATA, VAR))

        jobs = [(c, k) for c in CASES for k in CONDITIONS] + [(c, "cold") for c in DRIFT]
        jobs += [(c, k) for c in CASES for k in SHORT_RUNS]
        for case, cond in jobs:
            if args.only and f"{case.key}-{cond}" not in args.only:
                continue
            add(case, cond, SHORT_SEEDS if cond in SHORT_RUNS else args.seeds, out)
        for case in CASES:  # the caution table: `--only TRACE-caution` runs one trace's
            if args.only and f"{case.key}-caution" not in args.only:
                continue
            for cond in SHORT_RUNS:
                add(case, cond, SHORT_SEEDS, out / "caution", {"caution": CAUTION}, reference=False)
            add(case, "cold", CAUTION_SEEDS, out / "caution", {"caution": CAUTION}, reference=False)
            add(case, "cold", CAUTION_SEEDS, out / "caution-off", reference=False)
        if args.ablations:
            for name, (policy, cond) in ABLATIONS.items():
                for case in CASES:
                    add(case, cond, args.ablation_seeds, out / "ablations" / _slug(name), policy, reference=False)
        execute(tasks, args.jobs)
    if args.plots_to:
        img = Path(args.plots_to)
        img.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            src = out / f"{case.key}-cold"
            for png in sorted(src.glob("*.png")):
                shutil.copyfile(png, img / f"{case.key}-{png.name}")
    # the stamp is the command as run: a page re-rendered with --table-only, or from --only runs, says so
    command = " ".join(["python bench/routing_table.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if args.doc and args.limits_doc:
        write_doc(Path(args.doc), Path(args.limits_doc), out, args.seeds, command, Path(args.cache_dir))
    else:
        print("the pages are left alone (OUT is not var/routing; pass --doc and --limits-doc to write them)")
    print(table(out, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
