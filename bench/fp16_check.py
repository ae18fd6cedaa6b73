"""The float16 encoder against the fp32 one, on the CPU: do they embed alike, and does the router decide alike?

    python -m bench.fp16_check [--trace routerbench_arc_wino_mbpp.csv] [--json docs/bench/fp16.json]
                               [--reference-out .gpu/reference.npz --reference-prompts 1024]

The float16 copy is the GPU's file: var/minilm-l6-v2.fp16-fused.onnx, written by service/encoder/half.py (ONNX
Runtime's BERT fusions, then float16 with float32 I/O and a float32 pooling tail). ONNX Runtime's CPU provider
runs it too, so its agreement is measured here; its speed is the GPU's business (bench/gpu_route.py). On one
shared trace, every prompt embedded by both (through the embedding cache of `messplus replay`):
1. cosine between the two embeddings of each prompt (min, 1st percentile, median);
2. the heads trained on the warm-start half with each embedding, then their predicted satisfaction on the other
   half (the largest difference), and the exploit choice there (same decide, the two embeddings);
3. the whole replay (cold start, `--alphas` x seeds 0-2) on each: the same requests served by the same model, and
   satisfaction, SLA and cost against the static mixture.
`--reference-out` also writes fp32 reference embeddings of the benchmark prompts (bench/prompts.py's order) for
the GPU run's agreement check (bench/gpu_route.py --reference).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "service" / "demo" / "traces"
OUT = ROOT / "docs" / "bench" / "fp16.json"


def fp16_model(say: Any = print) -> tuple[Path, Path]:
    """(the fp32 export, its fused float16 copy), both in var/, written when absent or stale."""
    from messplus.service.encoder import ensure_exported
    from messplus.service.encoder.half import ensure_float16

    fp32 = ensure_exported(ROOT / "var", say)
    return fp32, ensure_float16(fp32, say)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "p01": float(np.percentile(cos, 1)), "median": float(np.median(cos)),
            "max_abs_diff": float(np.max(np.abs(a - b)))}


def heads_compare(trace: Any, e32: np.ndarray, e16: np.ndarray) -> dict[str, float]:
    """Heads trained on the warm-start half with each embedding; predictions and exploit choices on the rest."""
    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.routing.heads import Heads

    train, test = R.split_stream(trace, 0, R.Condition(warm_start=0.5))
    preds = []
    for emb in (e32, e16):
        heads = Heads(trace.models, emb.shape[1], prior_var=PredictorConfig().prior_var)
        R.train_heads(heads, emb, trace.labels, train)
        preds.append(heads.predict(emb[test])[0])
    p32, p16 = preds
    cost = trace.costs[test].mean(0)
    # the exploit choice of a fixed price of satisfaction: argmin cost - lam * p, over a range of prices
    lams = np.geomspace(cost.min(), cost.max() * 100, 25)
    same = [np.mean(np.argmin(cost - lam * p32, 1) == np.argmin(cost - lam * p16, 1)) for lam in lams]
    return {"test_prompts": int(test.size), "max_abs_p_diff": float(np.max(np.abs(p32 - p16))),
            "mean_abs_p_diff": float(np.mean(np.abs(p32 - p16))), "same_choice_min": float(min(same)),
            "same_choice_mean": float(np.mean(same))}


def replay_compare(trace: Any, e32: np.ndarray, e16: np.ndarray, alphas: tuple[float, ...],
                   seeds: int) -> list[dict[str, Any]]:
    from messplus.service import replay as R

    rows = []
    for alpha in alphas:
        for seed in range(seeds):
            out = {}
            for name, emb in (("fp32", e32), ("fp16", e16)):
                curves: dict[float, dict[str, Any]] = {}
                setup = R.ReplaySetup(alphas=(alpha,), seeds=(seed,), cond=R.Condition(), reference=False,
                                      progress=False)
                entry = R.replay(trace, emb, setup, curves=curves)[0]
                out[name] = (entry["runs"][0], curves[alpha]["messplus"].served)
            (r32, s32), (r16, s16) = out["fp32"], out["fp16"]
            diverge = np.flatnonzero(s32 != s16)
            rows.append({"alpha": alpha, "seed": seed, "same_served": float(np.mean(s32 == s16)),
                         "first_difference": int(diverge[0]) if diverge.size else None,
                         **{f"{k}_{n}": r[k] for n, r in (("fp32", r32), ("fp16", r16))
                            for k in ("satisfaction", "sla_met", "cost_vs_static_mixture")}})
    return rows


def reference(path: Path, fp32: Path, n: int, say: Any = print) -> None:
    """fp32 embeddings (CPU) of the first n benchmark prompts, for the GPU run's agreement check."""
    from messplus.service.encoder import Encoder, default_model_dir

    from .prompts import trace_prompts

    prompts = trace_prompts(limit=n)
    enc = Encoder.load(fp32, default_model_dir() / "tokenizer.json", providers=["CPUExecutionProvider"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, prompts=np.array(prompts), embeddings=enc.encode(prompts),
                        model=np.array(f"{fp32.name} (fp32, CPU provider)"))
    say(f"reference embeddings of {len(prompts)} prompts: {path}")


def main(argv: list[str] | None = None) -> int:
    from messplus.service import replay as R
    from messplus.service.config import PredictorConfig
    from messplus.service.trace import load_traces

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="routerbench_arc_wino_mbpp.csv")
    ap.add_argument("--alphas", default="0.7,0.75")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache-dir", default=str(ROOT / "var" / "embeddings"))
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--reference-out", type=Path, help="also write fp32 reference embeddings here (.npz)")
    ap.add_argument("--reference-prompts", type=int, default=1024)
    args = ap.parse_args(argv)
    began = time.monotonic()
    fp32, fp16 = fp16_model()
    if args.reference_out:
        reference(args.reference_out, fp32, args.reference_prompts)
    trace = load_traces([TRACES / args.trace])
    tokens = PredictorConfig().max_tokens
    e32 = R.embed_prompts(trace, fp32, tokens, 0, Path(args.cache_dir), progress=True)
    e16 = R.embed_prompts(trace, fp16, tokens, 0, Path(args.cache_dir), progress=True)
    res: dict[str, Any] = {"trace": trace.name, "prompts": len(trace), "model": fp16.name,
                           "bytes": {"fp32": fp32.stat().st_size, "fp16": fp16.stat().st_size},
                           "cosine": cosines(e32, e16), "heads": heads_compare(trace, e32, e16)}
    print(f"cosine fp16 vs fp32 on {len(trace)} prompts: {res['cosine']}")
    print(f"heads: {res['heads']}")
    res["replays"] = replay_compare(trace, e32, e16, tuple(float(a) for a in args.alphas.split(",")), args.seeds)
    for r in res["replays"]:
        print(f"alpha {r['alpha']} seed {r['seed']}: same served {r['same_served']:.1%}, satisfaction "
              f"{r['satisfaction_fp32']:.4f} / {r['satisfaction_fp16']:.4f}, cost/static "
              f"{r['cost_vs_static_mixture_fp32']:.2f} / {r['cost_vs_static_mixture_fp16']:.2f}")
    from .host import machine

    res.update(machine=machine(), total_s=round(time.monotonic() - began, 1),
               command="python -m bench.fp16_check" + (f" --trace {args.trace}" if args.trace != ap.get_default(
                   "trace") else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
