"""The encoder's token budget (`predictor.max_tokens`) as a measured choice: the tail tokens a prompt keeps, against
the encoder's speed on this CPU and the routing quality on every shared trace.

    .venv/bin/python bench/token_budget.py [--budgets 256,128,64] [--seeds 3] [--out var/token-budget]
                                           [--speed-only | --table-only]

Per budget:
- speed: the predictor alone (tokeniser, ONNX Runtime on all cores, five heads; bench.predictor_bench) on the
  benchmark prompts (RouterBench, bench/prompts.py) at batch 1 and 64, the budgets interleaved over two rounds so
  that the shared machine's load drifts over all of them alike;
- quality: `messplus replay`'s in-process router, cold start with full feedback, on each shared trace at its alphas
  (docs/ROUTING.md's, and issue 17's for openllm_bbh_dev), seeds 0..N-1, with the MESS+ reference and every
  baseline, in docs/ROUTING.md's table format. Embeddings are cached per (ONNX file, max_tokens) in var/embeddings.
The tables go between the `token-budget` markers of docs/PREDICTOR.md, with this command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.routing_table import DATA, TABLE_HEAD, Case, _replace, table_row  # noqa: E402

CASES = (
    Case("routerbench", ("routerbench_arc_wino_mbpp.csv",), (0.65, 0.70, 0.75, 0.80)),
    Case("mmlu", ("routellm_mmlu.csv",), (0.72, 0.76)),
    Case("gsm8k", ("routellm_gsm8k.csv",), (0.70, 0.78)),
    Case("bbh", ("openllm_bbh_dev.csv",), (0.50, 0.55, 0.60, 0.65)),
)


def speed(budgets: list[int], seconds: float, rounds: int = 2) -> dict[int, dict[str, float]]:
    """prompts/s of the predictor at batch 1 and 64 per budget, best of `rounds` interleaved rounds."""
    from messplus.service.encoder import Encoder, default_model_dir, ensure_exported
    from messplus.service.routing.heads import Heads
    from messplus.service.routing.predictor import Predictor

    from bench.predictor_bench import DEMO_MODELS, measure
    from bench.prompts import trace_prompts

    onnx, prompts = ensure_exported(ROOT / "var"), trace_prompts()
    preds = {}
    for b in budgets:
        enc = Encoder.load(onnx, default_model_dir() / "tokenizer.json", max_tokens=b)
        preds[b] = Predictor(enc, Heads([f"m{k}" for k in range(DEMO_MODELS)], enc.dim))
    out: dict[int, dict[str, float]] = {b: {} for b in budgets}
    for r in range(rounds):
        for b in budgets if r % 2 == 0 else budgets[::-1]:
            for batch in (1, 64):
                m = measure(preds[b], prompts, batch, seconds=seconds, min_batches=2, start=r * 997)
                key = f"b{batch}"
                out[b][key] = max(out[b].get(key, 0.0), m.prompts_per_s)
                out[b]["tokens"] = m.mean_tokens if batch == 64 else out[b].get("tokens", m.mean_tokens)
                print(f"token_budget: {b} tokens, batch {batch}: {m.prompts_per_s:.1f} prompts/s "
                      f"({m.mean_tokens:.0f} tokens/prompt)", file=sys.stderr, flush=True)
    return out


def replay_case(case: Case, budget: int, seeds: int, out: Path, cache: Path) -> None:
    from messplus.service import replay as R
    from messplus.service.encoder import ensure_exported
    from messplus.service.trace import load_traces

    trace = load_traces([DATA / f for f in case.files])
    onnx = ensure_exported(ROOT / "var")
    emb = R.embed_prompts(trace, onnx, budget, 0, cache, progress=True)
    setup = R.ReplaySetup(alphas=case.alphas, seeds=tuple(range(seeds)), cond=R.Condition(), progress=False)
    t0 = time.perf_counter()
    summary = R.replay(trace, emb, setup)
    R.write_outputs(out / str(budget) / case.key, summary, {}, plots=False)
    print(f"token_budget: {case.key} at {budget} tokens: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def moved(budgets: list[int], cache: Path) -> list[str]:
    """Per trace, how far each smaller budget moves the embeddings from the largest one's (cached ones only)."""
    import numpy as np

    from messplus.service import replay as R
    from messplus.service.encoder import ensure_exported
    from messplus.service.trace import load_traces

    onnx, top = ensure_exported(ROOT / "var"), max(budgets)
    lines = ["| trace | " + " | ".join(f"{b}: median cosine with {top}, prompts changed" for b in budgets if b != top)
             + " |", "|---|" + "---|" * (len(budgets) - 1)]
    for case in CASES:
        trace = load_traces([DATA / f for f in case.files])
        ref = R.embed_prompts(trace, onnx, top, 0, cache, progress=False)
        cells = []
        for b in (b for b in budgets if b != top):
            cos = np.sum(ref * R.embed_prompts(trace, onnx, b, 0, cache, progress=False), axis=1)
            cells.append(f"{np.median(cos):.3f}, {np.mean(cos < 0.9999):.0%}")
        lines.append(f"| {case.key} | " + " | ".join(cells) + " |")
    return lines


def tables(out: Path, budgets: list[int], cache: Path) -> str:
    sp = json.loads((out / "speed.json").read_text()) if (out / "speed.json").is_file() else {}
    lines = ["| max_tokens | tokens/prompt (RouterBench) | predictor prompts/s, batch 1 | batch 64 |", "|---|---|---|---|"]
    for b in budgets:
        s = sp.get(str(b))
        if s:
            lines.append(f"| {b} | {s['tokens']:.0f} | {s['b1']:.1f} | {s['b64']:.1f} |")
    lines += ["", *moved(budgets, cache), "", *TABLE_HEAD]
    summary: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for case in CASES:
        for b in budgets:
            path = out / str(b) / case.key / "summary.json"
            if path.is_file():
                summary[case.key, b] = json.loads(path.read_text())
                lines += [table_row(case.key, f"max_tokens {b}, cold start", e) for e in summary[case.key, b]]
    lines += ["", "| trace | alpha | " + " | ".join(f"{b}: SLA met, cost / static mix" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for case in CASES:
        for i, alpha in enumerate(case.alphas):
            cells = []
            for b in budgets:
                runs = summary.get((case.key, b), [{}] * len(case.alphas))[i].get("runs", [])
                cells.append(f"{sum(r['sla_met'] for r in runs)}/{len(runs)}, "
                             f"{sum(r['cost_vs_static_mixture'] for r in runs) / len(runs):.2f}x" if runs else "–")
            lines.append(f"| {case.key} | {alpha:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="256,128,64")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="per speed measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "token-budget")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "embeddings")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "PREDICTOR.md")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        (args.out / "speed.json").write_text(json.dumps(speed(budgets, args.seconds), indent=1))
        if not args.speed_only:
            for case in CASES:
                for b in budgets:
                    replay_case(case, b, args.seeds, args.out, args.cache_dir)
    command = "python bench/token_budget.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
    body = tables(args.out, budgets, args.cache_dir)
    args.doc.write_text(_replace(args.doc.read_text(encoding="utf-8"), "token-budget", body, command),
                        encoding="utf-8")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
