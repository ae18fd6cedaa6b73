"""The scale-out table of docs/SCALING.md: `messplus replay --replicas N --sync-lag L` on the shared traces.

    .venv/bin/python bench/scaling_table.py [--runs 4] [--jobs 2] [--mmlu-rows 3000] [--out var/scaling]
    (or python -m bench.scaling_table)

Each (trace, N, L) is one replay through the service's own router core (service/replay/replicas.py: N `Router`s
on one shared in-process state, Route round-robin, Feedback to a seeded random replica, every replica seeing the
label log L requests late), cold start, full feedback, every alpha of bench/routing_table.py's CASES and enough
seeds for `--runs` (alpha, seed) runs per trace and cell (RouterBench: 4 alphas x 1 seed; MMLU, GSM8K: 2 x 2),
the same seeded streams for every N and L. No MESS+ reference runs: each cell is compared with N = 1, L = 0 on the same
stream (which is the single-router replay exactly: tests/unit/test_replay_replicas.py). RouteLLM MMLU is
replayed on a seeded random subset of `--mmlu-rows` prompts (every one of its 57 subjects), for time. Every run
writes OUT/<trace>-n<N>-l<L>/summary.json; the tables between the `scaling-table` markers of the doc are
regenerated from those summaries. Embeddings come from var/embeddings (bench/routing_table.py fills it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.routing_table import CASES, DATA, ROOT, Case, _replace  # noqa: E402 - the repository's bench package

REPLICAS = (1, 3, 10, 30)
LAGS = (0, 100, 1000)
MMLU_SEED = 20261205  # which MMLU prompts the subset keeps
ROWS = {"routerbench": 3164, "mmlu": 14042, "gsm8k": 1319}  # prompts per trace (to run the longest jobs first)


def _subset(trace: Any, n: int) -> tuple[Any, Any]:
    """A seeded random subset of n rows (in file order), and the row indices."""
    import numpy as np

    rows = np.sort(np.random.default_rng(MMLU_SEED).choice(len(trace), n, replace=False))
    pick = [int(r) for r in rows]
    sub = replace(trace, prompt_ids=tuple(trace.prompt_ids[r] for r in pick),
                  prompts=tuple(trace.prompts[r] for r in pick), sources=tuple(trace.sources[r] for r in pick),
                  labels=trace.labels[rows].copy(), costs=trace.costs[rows].copy(), segment=trace.segment[rows].copy(),
                  file_rows=((0, n),))
    return sub, rows


def load(case: Case, mmlu_rows: int, emb_cache: Path) -> tuple[Any, Any]:
    """The case's trace (MMLU: the subset) and its prompt embeddings."""
    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.encoder import ensure_exported
    from messplus.service.trace import load_traces

    trace = load_traces([DATA / f for f in case.files])
    onnx = ensure_exported(ROOT / "var", lambda m: print(f"scaling_table: {m}", file=sys.stderr))
    emb = R.embed_prompts(trace, onnx, PredictorConfig().max_tokens, 1, emb_cache, progress=False)
    if case.key == "mmlu" and 0 < mmlu_rows < len(trace):
        trace, rows = _subset(trace, mmlu_rows)
        emb = emb[rows]
    return trace, emb


def seeds(case: Case, runs: int) -> int:
    """Seeds per alpha for `runs` runs of the case per cell."""
    return max(1, -(-runs // len(case.alphas)))


def run(job: tuple[Case, int, int, int, Path, int, Path]) -> str:
    """One (trace, N, L) replay, every alpha and seed; writes its summary.json."""
    from messplus.service import replay as R

    case, n, lag, n_seeds, out, mmlu_rows, emb_cache = job
    trace, emb = load(case, mmlu_rows, emb_cache)
    setup = R.ReplaySetup(alphas=case.alphas, seeds=tuple(range(n_seeds)), reference=False,
                          cond=R.Condition(replicas=n, sync_lag=lag))
    started = time.perf_counter()
    summary = R.replay(trace, emb, setup)
    R.write_outputs(out / f"{case.key}-n{n}-l{lag}", summary, plots=False)
    return f"scaling_table: {case.key} N={n} L={lag}: {time.perf_counter() - started:.0f}s"


def _runs(out: Path, key: str, n: int, lag: int) -> dict[tuple[float, int], dict[str, Any]]:
    path = out / f"{key}-n{n}-l{lag}" / "summary.json"
    if not path.exists():
        return {}
    return {(e["alpha"], r["seed"]): {**r, "alpha": e["alpha"]} for e in json.loads(path.read_text()) for r in e["runs"]}


def _cell(out: Path, keys: Sequence[str], n: int, lag: int) -> dict[str, Any] | None:
    """SLA met, the worst satisfaction - alpha, and cost against N = 1, L = 0 on the same (trace, alpha, seed)."""
    met = total = 0
    ratios: list[float] = []
    margins: list[float] = []
    explore: list[float] = []
    for key in keys:
        base, runs = _runs(out, key, 1, 0), _runs(out, key, n, lag)
        for k, r in runs.items():
            if k not in base:
                continue
            total += 1
            met += bool(r["sla_met"])
            margins.append(r["satisfaction"] - r["alpha"])
            ratios.append(r["mean_cost"] / base[k]["mean_cost"])
            explore.append(r["exploration_fraction"])
    if not total:
        return None
    return {"met": met, "total": total, "ratio": sum(ratios) / total, "max": max(ratios), "min": min(ratios),
            "margin": min(margins), "explore": sum(explore) / total}


def table(out: Path, mmlu_rows: int) -> str:
    """Markdown: the pooled N x L grid, then one row per trace, N and L."""
    keys = [c.key for c in CASES]
    lines = ["All three traces pooled (SLA met over trace x alpha x seed runs; cost: the mean of each run's cost",
             "over the N = 1, L = 0 run's on the same stream, their range in brackets):", "",
             "| replicas N | " + " | ".join(f"sync lag L = {lag}" for lag in LAGS) + " |",
             "|---|" + "---|" * len(LAGS)]
    for n in REPLICAS:
        cells = []
        for lag in LAGS:
            c = _cell(out, keys, n, lag)
            cells.append("–" if c is None else f"{c['met']}/{c['total']} met, cost {c['ratio']:.3f}x "
                                               f"({c['min']:.2f}–{c['max']:.2f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "| trace | N | L | SLA met | worst satisfaction - alpha | cost / N = 1, L = 0: mean | range | "
                  "exploration |", "|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        label = case.key + (f" ({mmlu_rows} of 14042 prompts)" if case.key == "mmlu" and mmlu_rows else "")
        for n in REPLICAS:
            for lag in LAGS:
                c = _cell(out, [case.key], n, lag)
                if c is not None:
                    lines.append(f"| {label} | {n} | {lag} | {c['met']}/{c['total']} | {c['margin']:+.4f} | "
                                 f"{c['ratio']:.3f}x | {c['min']:.2f}–{c['max']:.2f} | {c['explore']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4, help="(alpha, seed) runs per trace and cell")
    ap.add_argument("--jobs", type=int, default=2, help="replays run at once (processes)")
    ap.add_argument("--mmlu-rows", type=int, default=3000, help="MMLU prompts replayed (0: all 14042)")
    ap.add_argument("--out", default=str(ROOT / "var" / "scaling"))
    ap.add_argument("--cache-dir", default=str(ROOT / "var" / "embeddings"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "SCALING.md"))
    ap.add_argument("--table-only", action="store_true", help="regenerate the doc's tables from OUT, run nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    if not args.table_only:
        jobs = [(case, n, lag, seeds(case, args.runs), out, args.mmlu_rows, Path(args.cache_dir))
                for case in CASES for n in REPLICAS for lag in LAGS]
        rows = {**ROWS, "mmlu": args.mmlu_rows or ROWS["mmlu"]}
        jobs.sort(key=lambda j: -(j[1] + 4) * len(j[0].alphas) * j[3] * rows[j[0].key])  # longest first
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for line in pool.map(run, jobs):
                print(line, file=sys.stderr, flush=True)
    command = "python bench/scaling_table.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("runs", args.runs), ("mmlu_rows", args.mmlu_rows))
        if v != ap.get_default(k))
    doc = Path(args.doc)
    doc.write_text(_replace(doc.read_text(encoding="utf-8"), "scaling-table", table(out, args.mmlu_rows), command),
                   encoding="utf-8")
    print(table(out, args.mmlu_rows))
    print(f"scaling_table: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
