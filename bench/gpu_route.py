"""The whole Route path on a GPU, in one run: a real `messplus serve` whose predictor runs on ONNX Runtime's CUDA
execution provider, Route-only (`triton.url = "none"`: no Triton anywhere), under the project's load generator,
beside the two ceilings it is judged against, measured in the same run.

    python -m bench.gpu_route [--onnx MODEL.onnx] [--tokenizer tokenizer.json] [--reference REF.npz]
                              [--json docs/bench/gpu_route.json] [--no-docs] [--smoke]
    make bench-gpu            (the same, with the defaults)

1. agreement: the embeddings of this run's model and provider against fp32 reference embeddings of the same
   prompts (`--reference`, written on the CPU by `python -m bench.fp16_check --reference-out`), as cosines;
2. the gRPC ceiling: bench/echo_server.py under the load generator at 1, 64, 256 and 1,024 clients;
3. the encoder's ceiling: ONNX Runtime alone on token ids tokenised beforehand (the GPU's share), and the
   predictor as a Route batch pays for it (tokeniser, ONNX Runtime, five heads), at batch 1 to 1,024;
4. Route: one Route-only router (predictor on CUDA, micro-batches of up to `--batch-max`, default settings
   otherwise) under the load generator at 1, 64, 256 and 1,024 clients: req/s, p50/p95/p99.
The JSON holds every number; unless --no-docs, docs/BENCHMARKS.md is re-rendered (its GPU section reads the JSON).

The model: `--onnx` (on a GPU box, the fused float16 copy carried there: scripts/gpu_payload.py), else the fp32
export in var/ converted here by service/encoder/half.py (fused float16 for CUDA; the CPU keeps fp32). It exits
with status 2, measuring nothing, where the CUDA provider is not available, unless `--smoke`: then everything
runs on the CPU provider with two clients, tiny batches and sub-second windows (tests/integration runs that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "gpu_route.json"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...] = (1, 64, 256, 1024)
    batches: tuple[int, ...] = (1, 16, 64, 256, 512, 1024)
    echo_s: float = 4.0
    route_s: float = 8.0
    warmup_s: float = 2.0
    sweep_s: float = 3.0
    batch_max: int = 256
    sub_batch: int = 0  # the router's predictor.sub_batch (0: the provider's default)
    threads: int = 0
    prompts: int = 0  # 0: all of the trace's
    provider: str = CUDA


SMOKE = Plan(clients=(1, 2), batches=(1, 4), echo_s=0.4, route_s=0.6, warmup_s=0.2, sweep_s=0.1, batch_max=4,
             threads=1, prompts=40, provider=CPU)


def agreement(enc: Any, ref_path: Path, limit: int) -> dict[str, Any]:
    """Cosines between this encoder's embeddings and the reference's (fp32 on the CPU) on its prompts."""
    ref = np.load(ref_path, allow_pickle=False)
    prompts, want = [str(p) for p in ref["prompts"][: limit or None]], ref["embeddings"][: limit or None]
    got = enc.encode(prompts)
    cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return {"prompts": len(prompts), "reference": str(ref.get("model", "")), "min_cosine": float(cos.min()),
            "p01_cosine": float(np.percentile(cos, 1)), "median_cosine": float(np.median(cos)),
            "max_abs_diff": float(np.max(np.abs(got - want)))}


def encoder_sweep(pred: Any, whole: Any, prompts: Sequence[str], batches: Sequence[int], seconds: float,
                  say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per batch size: ONNX Runtime alone on pre-tokenised ids, the whole batch in one call (`whole`: an Encoder of
    the same session whose sub-batch is the largest batch), then the predictor as the router runs it."""
    from .predictor_bench import measure

    enc = whole
    ids = enc.token_ids(list(prompts))
    rows = []
    for b in batches:
        take = [[ids[(i * b + j) % len(ids)] for j in range(b)] for i in range(64)]
        enc.encode_ids(take[0])  # allocations of a new shape happen outside the timing
        lat, i, began = [], 1, time.perf_counter()
        while i <= 3 or time.perf_counter() - began < seconds:
            t0 = time.perf_counter()
            enc.encode_ids(take[i % len(take)])
            lat.append(time.perf_counter() - t0)
            i += 1
        a = np.array(lat)
        full = measure(pred, prompts, b, seconds=seconds, min_batches=3)
        row = {"batch": b, "encoder_prompts_per_s": b * a.size / a.sum(), "encoder_p50_ms": float(np.median(a) * 1e3),
               "predictor_prompts_per_s": full.prompts_per_s, "predictor_p50_ms": full.p50_ms,
               "predictor_p99_ms": full.p99_ms, "mean_tokens": full.mean_tokens}
        say(f"   B={b:5d}: encoder {row['encoder_prompts_per_s']:9.0f} prompts/s (p50 {row['encoder_p50_ms']:.1f} ms)"
            f"  predictor {full.prompts_per_s:9.0f} prompts/s (p50 {full.p50_ms:.1f} ms, p99 {full.p99_ms:.1f})")
        rows.append(row)
    return rows


class Run:
    def __init__(self, plan: Plan, onnx: Path, tokenizer: Path | None, work: Path,
                 say: Callable[[str], None] = print) -> None:
        from .prompts import trace_prompts

        self.plan, self.onnx, self.tokenizer, self.work, self.say = plan, onnx, tokenizer, work, say
        self.prompts = trace_prompts(limit=plan.prompts)
        self.res: dict[str, Any] = {"plan": asdict(plan), "model": str(onnx), "phases": {}}
        self.began = time.monotonic()

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        self.say(f"== {name} (at {t0 - self.began:.0f} s)")
        value = fn()
        self.res["phases"][name] = round(time.monotonic() - t0, 1)
        return value

    def load(self, address: str, clients: int, seconds: float) -> dict[str, Any]:
        from .loadgen import run_load

        r = asyncio.run(run_load(address, "route", self.prompts, clients, duration_s=seconds,
                                 warmup_s=self.plan.warmup_s, max_warmup_s=20.0, drain_s=20.0))
        self.say("   " + r.line())
        return asdict(r)

    def predictor(self, reference: Path | None) -> None:
        from .predictor_bench import load_predictor

        providers = [self.plan.provider] + ([CPU] if self.plan.provider != CPU else [])
        pred = load_predictor(self.onnx, threads=self.plan.threads, providers=providers, tokenizer=self.tokenizer,
                              sub_batch=self.plan.sub_batch or None)
        loaded = pred.encoder.providers  # type: ignore[attr-defined]
        if loaded[0] != self.plan.provider:
            raise RuntimeError(f"ONNX Runtime fell back to {loaded}: {self.plan.provider} did not load the model")
        self.res["providers"] = loaded
        if reference is not None:
            a = agreement(pred.encoder, reference, 0 if self.plan.prompts == 0 else self.plan.prompts)
            self.say(f"   agreement with {a['reference'] or reference.name} on {a['prompts']} prompts: min cosine "
                     f"{a['min_cosine']:.5f}, median {a['median_cosine']:.6f}")
            self.res["agreement"] = a
        enc = pred.encoder  # type: ignore[attr-defined]
        whole = enc.with_sub_batch(max(self.plan.batches))
        self.res["sub_batch"] = enc.sub_batch
        self.res["encoder"] = encoder_sweep(pred, whole, self.prompts, self.plan.batches, self.plan.sweep_s,
                                            self.say)

    def echo(self) -> None:
        from .procs import echo_server

        with echo_server(self.work / "echo") as srv:
            self.res["echo"] = [self.load(srv.address, n, self.plan.echo_s) for n in self.plan.clients]

    def route(self) -> None:
        from messplus.service.demo.repository import build_demo_repository

        from .batching_ab import mean_batch
        from .procs import route_only_config, router_server

        models = build_demo_repository(self.work / "models")
        cfg = route_only_config(self.work / "state", self.onnx, [(m.triton_name, m.mean_cost) for m in models])
        providers = ",".join([self.plan.provider] + ([CPU] if self.plan.provider != CPU else []))
        env = {"MESSPLUS_PREDICTOR_PROVIDERS": providers, "MESSPLUS_PREDICTOR_BATCH_MAX": str(self.plan.batch_max),
               "MESSPLUS_PREDICTOR_THREADS": str(self.plan.threads), "MESSPLUS_SERVER_MAX_INFLIGHT": "2048",
               "MESSPLUS_PREDICTOR_SUB_BATCH": str(self.plan.sub_batch),
               **({"MESSPLUS_PREDICTOR_TOKENIZER": str(self.tokenizer)} if self.tokenizer else {})}
        srv = router_server(self.work / "router", cfg, env=env).start()
        self.say(f"   router serving after {srv.start_s:.1f} s")
        if f"predictor on {self.plan.provider}" not in srv.log_text():  # ONNX Runtime fell back to another one
            srv.stop()
            raise RuntimeError(f"the router's predictor is not on {self.plan.provider}:\n{srv.log_tail()}")
        try:
            self.res["route"] = [self.load(srv.address, n, self.plan.route_s) for n in self.plan.clients]
        finally:
            srv.stop()
        log = srv.log_text()
        self.res["router"] = {"start_s": round(srv.start_s, 1), "mean_batch": mean_batch(log),
                              "predictor_line": next((ln for ln in log.splitlines() if "predictor on" in ln), "")}

    def run(self, reference: Path | None) -> dict[str, Any]:
        from .host import machine

        self.res["machine"] = machine()
        self.res["gpu"] = gpu_name()
        self.phase("predictor", lambda: self.predictor(reference))
        self.phase("echo", self.echo)
        self.phase("route", self.route)
        self.res["total_s"] = round(time.monotonic() - self.began, 1)
        self.res["judged"] = judge(self.res)
        return self.res


def judge(res: dict[str, Any]) -> dict[str, Any]:
    """Route against min(echo ceiling, predictor ceiling) per client count, and the encoder's best batch."""
    enc = max(res["encoder"], key=lambda r: r["encoder_prompts_per_s"])
    pred = max(res["encoder"], key=lambda r: r["predictor_prompts_per_s"])
    rows = []
    for r, e in zip(res["route"], res["echo"]):
        ceiling = min(e["throughput_rps"], pred["predictor_prompts_per_s"])
        rows.append({"clients": r["clients"], "route_rps": r["throughput_rps"], "echo_rps": e["throughput_rps"],
                     "ceiling_rps": ceiling, "ratio": r["throughput_rps"] / ceiling})
    return {"encoder_best_batch": enc["batch"], "encoder_best_prompts_per_s": enc["encoder_prompts_per_s"],
            "predictor_best_batch": pred["batch"], "predictor_best_prompts_per_s": pred["predictor_prompts_per_s"],
            "route": rows}


def gpu_name() -> str:
    from .gpu_predictor import gpu_name as name

    return name()


def default_model(provider: str, say: Callable[[str], None]) -> Path:
    """fp32 export in var/ (from the packaged weights); on CUDA its fused float16 copy beside it."""
    from messplus.service.encoder import ensure_exported

    fp32 = ensure_exported(ROOT / "var", say)
    if provider == CPU:
        return fp32
    from messplus.service.encoder.half import ensure_float16

    return ensure_float16(fp32, say)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, help="the model (default: var/'s export, fused float16 on CUDA)")
    ap.add_argument("--tokenizer", type=Path, help="its tokenizer.json (default: the weights package's)")
    ap.add_argument("--reference", type=Path, help="fp32 reference embeddings (.npz: prompts, embeddings)")
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument("--no-docs", action="store_true", help="do not re-render docs/BENCHMARKS.md")
    ap.add_argument("--smoke", action="store_true", help="CPU provider, 2 clients, sub-second windows (a test)")
    ap.add_argument("--batch-max", type=int, default=Plan.batch_max, help="the router's predictor.batch_max")
    ap.add_argument("--sub-batch", type=int, default=0, help="the router's predictor.sub_batch (0: its default)")
    args = ap.parse_args(argv)
    plan = SMOKE if args.smoke else Plan(batch_max=args.batch_max, sub_batch=args.sub_batch)
    if plan.provider == CUDA:
        from .gpu_predictor import cuda_available

        if not cuda_available():
            print("gpu_route: ONNX Runtime's CUDAExecutionProvider is not available here (no GPU, a CPU-only "
                  "onnxruntime, or missing CUDA libraries); nothing measured. `--smoke` runs it on the CPU.",
                  file=sys.stderr)
            return 2
    say = lambda m: print(m, flush=True)  # noqa: E731
    onnx = (args.onnx or default_model(plan.provider, say)).resolve()
    with tempfile.TemporaryDirectory(prefix="messplus-gpu-route-") as work:
        res = Run(plan, onnx, args.tokenizer, Path(work), say).run(args.reference)
    res["command"] = " ".join(["python -m bench.gpu_route", *(argv if argv is not None else sys.argv[1:])])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    for row in res["judged"]["route"]:
        say(f"Route at {row['clients']:5d} clients: {row['route_rps']:8.0f} req/s = {row['ratio']:.0%} of "
            f"min(echo {row['echo_rps']:.0f}, predictor {res['judged']['predictor_best_prompts_per_s']:.0f})")
    say(f"results: {args.json} ({res['total_s']:.0f} s)")
    if not (args.no_docs or args.smoke):
        from . import report

        report.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
