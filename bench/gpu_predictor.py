"""The predictor and the Route path on a GPU: ONNX Runtime's CUDA execution provider, batch 1 to 256.

    pip uninstall -y onnxruntime && pip install onnxruntime-gpu     (in .venv, on a machine with an NVIDIA GPU)
    python -m bench.gpu_predictor [--seconds 5] [--json docs/bench/gpu.json] [--skip-route]
                                  [--onnx var/minilm-l6-v2.onnx --tokenizer PATH/tokenizer.json]

1. Agreement: the CUDA provider's prompt embeddings against the CPU provider's on the same prompts (the largest
   absolute difference and the smallest cosine), so a GPU box routes on the same predictions.
2. The predictor alone (tokeniser, ONNX Runtime, heads) at batch 1, 2, 4, ..., 256 on the CUDA provider, and the
   same sweep on the CPU provider of the same host with all its cores, in the same run: prompts per second and
   batch latency on the same prompt sequence as the CPU suite, with the CUDA/CPU ratio per batch size.
3. The Route path with it: a `messplus serve` process whose predictor runs on CUDA (`[predictor] providers`),
   micro-batching up to 256, under the closed-loop load generator at 1, 8, 64 and 256 clients, with the echo
   servicer's throughput as the gRPC ceiling of the same host. It needs the Triton server of nvidia-pytriton;
   `--skip-route` leaves it out.

`--onnx` and `--tokenizer` take an exported model and its tokenizer.json, for a GPU host without the weights
package (the default exports from it). It exits with status 2, measuring nothing, where the CUDA provider is not
available (a CPU-only ONNX Runtime, no GPU, or CUDA libraries missing): it never reports CPU numbers as GPU ones.
The CPU path stays the default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

CUDA = "CUDAExecutionProvider"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CLIENTS = (1, 8, 64, 256)


def cuda_available() -> bool:
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21: CUDA/cuDNN from the nvidia-* wheels
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - the check below decides
            pass
    return CUDA in ort.get_available_providers()


def gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def agreement(onnx: Path, tokenizer: Path | None, prompts: list[str]) -> dict[str, object]:
    """Embeddings of the same prompts on CUDA and on CPU: the largest absolute difference, the smallest cosine."""
    import numpy as np

    from .predictor_bench import load_predictor

    gpu = load_predictor(onnx, providers=[CUDA, "CPUExecutionProvider"], tokenizer=tokenizer).encoder
    cpu = load_predictor(onnx, providers=["CPUExecutionProvider"], tokenizer=tokenizer).encoder
    a, b = gpu.encode(prompts), cpu.encode(prompts)  # type: ignore[attr-defined]
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out = {"prompts": len(prompts), "max_abs_diff": float(np.max(np.abs(a - b))), "min_cosine": float(cos.min())}
    print(f"agreement CUDA vs CPU on {len(prompts)} prompts: max |diff| {out['max_abs_diff']:.2e}, "
          f"min cosine {out['min_cosine']:.6f}", flush=True)
    return out


def predictor_sweep(onnx: Path, tokenizer: Path | None, prompts: list[str], seconds: float,
                    provider: str) -> dict[str, object]:
    from .predictor_bench import load_predictor, measure

    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    pred = load_predictor(onnx, providers=providers, tokenizer=tokenizer)
    loaded = pred.encoder.providers  # type: ignore[attr-defined]
    if loaded[0] != provider:
        raise RuntimeError(f"ONNX Runtime fell back to {loaded}: the {provider} did not load")
    rows = []
    for b in BATCHES:
        r = measure(pred, prompts, b, seconds=seconds, min_batches=3)
        print(f"predictor ({provider}) B={b:4d}: {r.prompts_per_s:9.1f} prompts/s  p50 {r.p50_ms:8.2f} ms  "
              f"p99 {r.p99_ms:8.2f} ms", flush=True)
        rows.append(asdict(r))
    return {"providers": loaded, "results": rows}


def route_sweep(onnx: Path, prompts: list[str], seconds: float, work: Path) -> dict[str, object]:
    from messplus.service.demo.repository import build_demo_repository
    from messplus.service.zoo.embedded import TritonServer

    from .loadgen import run_load
    from .procs import echo_server, router_config, router_server

    def load(address: str, n: int) -> dict[str, object]:
        r = asyncio.run(run_load(address, "route", prompts, n, duration_s=seconds, warmup_s=2))
        print("   " + r.line(), flush=True)
        return asdict(r)

    out: dict[str, object] = {}
    with echo_server(work / "echo") as echo:
        out["echo"] = [load(echo.address, n) for n in CLIENTS]
    models = build_demo_repository(work / "models")
    with TritonServer(work / "models", work_dir=work / "triton") as triton:
        cfg = router_config(work / "state", triton.grpc_url, onnx, [(m.triton_name, m.mean_cost) for m in models])
        env = {"MESSPLUS_PREDICTOR_PROVIDERS": f"{CUDA},CPUExecutionProvider", "MESSPLUS_PREDICTOR_BATCH_MAX": "256"}
        with router_server(work / "router", cfg, env=env) as router:
            out["route"] = [load(router.address, n) for n in CLIENTS]
        out["router_log_tail"] = router.log_tail(5)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "docs" / "bench" / "gpu.json"))
    p.add_argument("--skip-route", action="store_true", help="only the agreement check and the predictor sweeps")
    p.add_argument("--onnx", type=Path, help="an exported model (default: export to var/ from the weights package)")
    p.add_argument("--tokenizer", type=Path, help="its tokenizer.json (default: the weights package's)")
    args = p.parse_args(argv)
    if not cuda_available():
        print("gpu_predictor: ONNX Runtime's CUDAExecutionProvider is not available here (no GPU, a CPU-only "
              "onnxruntime, or missing CUDA libraries); nothing measured.", file=sys.stderr)
        return 2
    from messplus.service.encoder import ensure_exported

    from .host import machine
    from .prompts import trace_prompts

    onnx = args.onnx or ensure_exported(Path("var"))
    prompts = trace_prompts()
    given = argv if argv is not None else sys.argv[1:]
    res: dict[str, object] = {"machine": machine(), "gpu": gpu_name(),
                              "command": " ".join(["python -m bench.gpu_predictor", *given])}
    began = time.monotonic()
    res["agreement"] = agreement(onnx, args.tokenizer, prompts[:512])
    cuda = predictor_sweep(onnx, args.tokenizer, prompts, args.seconds, CUDA)
    cpu = predictor_sweep(onnx, args.tokenizer, prompts, args.seconds / 2, "CPUExecutionProvider")
    for g, c in zip(cuda["results"], cpu["results"]):  # type: ignore[arg-type]
        g["cpu_prompts_per_s"] = c["prompts_per_s"]
        g["speedup_vs_cpu"] = g["prompts_per_s"] / c["prompts_per_s"]
        print(f"B={g['batch']:4d}: CUDA {g['prompts_per_s']:9.1f} / CPU {c['prompts_per_s']:8.1f} prompts/s "
              f"= {g['speedup_vs_cpu']:.1f}x", flush=True)
    res["predictor"], res["predictor_cpu"] = cuda, cpu
    if not args.skip_route:
        with tempfile.TemporaryDirectory(prefix="messplus-gpu-bench-") as work:
            res["route"] = route_sweep(onnx.resolve(), prompts, 2 * args.seconds, Path(work))
    res["total_s"] = round(time.monotonic() - began, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
