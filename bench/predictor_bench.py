"""The model ceiling: the predictor alone (encoder + heads, as one Route batch pays for it) at each batch size.

For each batch size B, consecutive batches of B prompts are taken from the shared prompt sequence and run through
`Predictor.predict` (tokenise, ONNX Runtime, heads) for at least `seconds` and `min_batches` batches. Reported
per B: prompts per second, and the batch latency p50/p99. Nothing else runs in this process, so the best
prompts per second over B is the most the Route path could reach with this predictor on this machine.

    python -m bench.predictor_bench --batches 1,8,32,64 --seconds 5 [--providers CUDAExecutionProvider] --json OUT
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from messplus.service.encoder import Encoder, default_model_dir, ensure_exported
from messplus.service.routing.heads import Heads
from messplus.service.routing.predictor import Predictor

from .prompts import trace_prompts

DEMO_MODELS = 5  # heads: one per demo zoo model, as the router runs them


@dataclass
class BatchResult:
    batch: int
    batches: int
    prompts_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_tokens: float


def load_predictor(onnx: Path, *, threads: int = 0, providers: Sequence[str] | None = None,
                   heads: int = DEMO_MODELS, tokenizer: Path | None = None, sub_batch: int | None = None) -> Predictor:
    """`tokenizer`: the model's tokenizer.json (default: the weights package's), for a host that has only the
    exported model."""
    enc = Encoder.load(onnx, tokenizer or default_model_dir() / "tokenizer.json", threads=threads or None,
                       providers=list(providers) if providers else None, sub_batch=sub_batch)
    return Predictor(enc, Heads([f"m{k}" for k in range(heads)], enc.dim))


def measure(pred: Predictor, prompts: Sequence[str], batch: int, *, seconds: float, min_batches: int = 3,
            start: int = 0, warm: bool = True) -> BatchResult:
    """Run batches of `batch` consecutive prompts (from `start`, wrapping) for `seconds` and >= min_batches,
    after one untimed batch when `warm` (the session's first run allocates; later sizes need no warm-up)."""
    n = len(prompts)

    def take(i: int) -> list[str]:
        return [prompts[(start + i * batch + j) % n] for j in range(batch)]
    if warm:
        pred.predict(take(0))
    lat, tokens, i = [], [], 1
    began = time.perf_counter()
    while i <= min_batches or time.perf_counter() - began < seconds:
        texts = take(i)
        t0 = time.perf_counter()
        pred.predict(texts)
        lat.append(time.perf_counter() - t0)
        tokens.append(np.mean([len(s) for s in pred.encoder.token_ids(texts)]))  # type: ignore[attr-defined]
        i += 1
    a = np.array(lat)
    return BatchResult(batch=batch, batches=a.size, prompts_per_s=batch * a.size / a.sum(),
                       p50_ms=float(np.percentile(a, 50) * 1e3), p99_ms=float(np.percentile(a, 99) * 1e3),
                       max_ms=float(a.max() * 1e3),
                       mean_tokens=float(np.mean(tokens)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default="", help="exported model (default: var/minilm-l6-v2.onnx, exported if absent)")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--min-batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    p.add_argument("--providers", default="", help="comma-separated ONNX Runtime providers (default: CUDA if any)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    onnx = Path(args.onnx) if args.onnx else ensure_exported(Path("var"))
    pred = load_predictor(onnx, threads=args.threads, providers=[x for x in args.providers.split(",") if x])
    prompts = trace_prompts()
    out = {"providers": pred.encoder.providers, "threads": args.threads, "results": []}  # type: ignore[attr-defined]
    for i, b in enumerate(int(x) for x in args.batches.split(",")):
        r = measure(pred, prompts, b, seconds=args.seconds, min_batches=args.min_batches, warm=i == 0)
        print(f"predictor B={r.batch:4d}: {r.prompts_per_s:8.1f} prompts/s  batch p50 {r.p50_ms:9.1f} ms  "
              f"p99 {r.p99_ms:9.1f} ms  ({r.batches} batches, {r.mean_tokens:.0f} tokens/prompt)", flush=True)
        out["results"].append(asdict(r))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
