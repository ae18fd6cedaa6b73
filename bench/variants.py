"""Routing variants tried for issue 17 and not kept as defaults: each one against the defaults on the same
streams, in one run (3 seeds cold; 12 seeds of the first 160 requests).

    .venv/bin/python bench/variants.py [--only NAME ...] > var/variants.md

Each variant is a tenant knob or a module switch of the policy or the predictor (off by default); the summary per (variant, case) is
SLA met / runs, mean and max cost against the static mixture, and for the short streams the eligible runs
(most accurate model alone >= alpha + 0.03) that met the SLA.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CASES = {"routerbench": ("routerbench_arc_wino_mbpp.csv", (0.65, 0.70, 0.75, 0.80)),
         "mmlu": ("routellm_mmlu.csv", (0.72, 0.76)), "gsm8k": ("routellm_gsm8k.csv", (0.70, 0.78)),
         "bbh": ("openllm_bbh_dev.csv", (0.50, 0.55, 0.60, 0.65))}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "price of satisfaction from the latest 256 predictions, deficit paid back over max(50, n)": {"_payback": 50},
    "V ramped as sqrt(n / 500) over the first 500 requests": {"_ramp": 500},
    "a shared head under every model's": {"_shared": True},
    "prior accuracy rising with log price (slope 1 sd)": {"_price_prior": 1.0},
    "prior accuracy rising with log price (slope 2 sd)": {"_price_prior": 2.0},
    "no optimism (--optimism 0)": {"optimism": 0.0},
    "heads' prior variance 0.3": {"_pv": 0.3},
}


def run_variant(knobs: dict[str, Any], cases: list[str]) -> dict[str, Any]:
    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.encoder import ensure_exported
    from messplus.service.replay import drivers as D
    from messplus.service.routing import heads as H
    from messplus.service.routing import policy as P
    from messplus.service.trace import load_traces

    knobs = dict(knobs)
    H.SHARED = knobs.pop("_shared", False)
    P.PAYBACK, P.RAMP = float(knobs.pop("_payback", 0.0)), float(knobs.pop("_ramp", 0.0))
    slope, pv = knobs.pop("_price_prior", 0.0), knobs.pop("_pv", None)
    mc, pc, cur = D.ModelConfig, D.PredictorConfig, {}

    def model_config(**kw: Any) -> Any:
        if slope:
            z = np.log(cur["cost"])
            z = (z - z.mean()) / max(z.std(), 1e-9)
            kw["prior_accuracy"] = float(1 / (1 + np.exp(-slope * z[cur["names"].index(kw["name"])])))
        return mc(**kw)

    D.ModelConfig = model_config
    D.PredictorConfig = (lambda: types.SimpleNamespace(prior_var=pv)) if pv is not None else pc
    onnx = ensure_exported(ROOT / "var", lambda m: None)
    out: dict[str, Any] = {}
    try:
        for case in cases:
            name, cond = case.rsplit("-", 1)
            f, alphas = CASES[name]
            t = load_traces([ROOT / "service" / "demo" / "traces" / f])
            cur.update(cost=t.mean_cost, names=list(t.models))
            emb = R.embed_prompts(t, onnx, PredictorConfig().max_tokens, 0, ROOT / "var" / "embeddings", progress=False)
            short = cond == "short"
            setup = R.ReplaySetup(alphas=alphas, seeds=tuple(range(12 if short else 3)),
                                  cond=R.Condition(first=160 if short else 0), policy=R.TenantOverrides(**knobs),
                                  reference=False)
            runs = [(r, e["alpha"]) for e in R.replay(t, emb, setup) for r in e["runs"]]
            ratios = [r["cost_vs_static_mixture"] for r, _ in runs if r["cost_vs_static_mixture"] is not None]
            elig = [r for r, a in runs if (r["best_single_satisfaction"] or 0) >= a + 0.03 - 1e-9]
            out[case] = {"met": sum(r["sla_met"] for r, _ in runs), "runs": len(runs),
                         "cost_mean": float(np.mean(ratios)), "cost_max": float(np.max(ratios)),
                         "eligible": len(elig), "eligible_met": sum(r["sla_met"] for r in elig)}
            print(f"  {case}: {out[case]}", file=sys.stderr, flush=True)
    finally:
        D.ModelConfig, D.PredictorConfig, H.SHARED, P.PAYBACK, P.RAMP = mc, pc, False, 0.0, 0.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--cases", default="routerbench-cold,mmlu-cold,gsm8k-cold,bbh-cold,routerbench-short,"
                                       "mmlu-short,gsm8k-short,bbh-short")
    ap.add_argument("--json", default=str(ROOT / "var" / "variants.json"))
    args = ap.parse_args()
    cases = args.cases.split(",")
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name, knobs in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        print(name, file=sys.stderr, flush=True)
        results[name] = run_variant(knobs, cases)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    print("| variant | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for name, res in results.items():
        cells = []
        for c in cases:
            r = res.get(c)
            if r is None:
                cells.append("–")
            elif c.endswith("short"):
                cells.append(f"{r['eligible_met']}/{r['eligible']}, {r['cost_mean']:.2f}x")
            else:
                cells.append(f"{r['met']}/{r['runs']}, {r['cost_mean']:.2f}x ({r['cost_max']:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
