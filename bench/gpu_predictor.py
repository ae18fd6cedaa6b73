"""The predictor and the Route path on a GPU: ONNX Runtime's CUDA execution provider, batch 1 to 256.

    pip uninstall -y onnxruntime && pip install onnxruntime-gpu     (in .venv, on a machine with an NVIDIA GPU)
    python -m bench.gpu_predictor [--seconds 5] [--json docs/bench/gpu.json]

1. The predictor alone (tokeniser, ONNX Runtime on CUDA, heads) at batch 1, 2, 4, ..., 256: prompts per second
   and batch latency, on the same prompt sequence as the CPU suite.
2. The Route path with it: a `messplus serve` process whose predictor runs on CUDA (`[predictor] providers`),
   micro-batching up to 256, under the closed-loop load generator at 1, 8, 64 and 256 clients, with the echo
   servicer's throughput as the gRPC ceiling of the same host.

It exits with status 2, measuring nothing, where the CUDA provider is not available (a CPU-only ONNX Runtime,
no GPU, or CUDA libraries missing): it never reports CPU numbers as GPU ones. The CPU path stays the default.
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


def predictor_sweep(onnx: Path, prompts: list[str], seconds: float) -> dict[str, object]:
    from .predictor_bench import load_predictor, measure

    pred = load_predictor(onnx, providers=[CUDA, "CPUExecutionProvider"])
    providers = pred.encoder.providers  # type: ignore[attr-defined]
    if providers[0] != CUDA:
        raise RuntimeError(f"ONNX Runtime fell back to {providers}: the CUDA provider did not load")
    rows = []
    for b in BATCHES:
        r = measure(pred, prompts, b, seconds=seconds, min_batches=3)
        print(f"predictor (CUDA) B={b:4d}: {r.prompts_per_s:9.1f} prompts/s  p50 {r.p50_ms:8.2f} ms  "
              f"p99 {r.p99_ms:8.2f} ms", flush=True)
        rows.append(asdict(r))
    return {"providers": providers, "results": rows}


def route_sweep(onnx: Path, prompts: list[str], seconds: float, work: Path) -> dict[str, object]:
    from messplus.service.demo.repository import build_demo_repository
    from messplus.service.triton_server import TritonServer

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
    p.add_argument("--skip-route", action="store_true", help="only the predictor sweep")
    args = p.parse_args(argv)
    if not cuda_available():
        print("gpu_predictor: ONNX Runtime's CUDAExecutionProvider is not available here (no GPU, a CPU-only "
              "onnxruntime, or missing CUDA libraries); nothing measured.", file=sys.stderr)
        return 2
    from messplus.service.encoder import ensure_exported

    from .prompts import trace_prompts
    from .run_all import machine

    onnx = ensure_exported(Path("var"))
    prompts = trace_prompts()
    res: dict[str, object] = {"machine": machine(), "command": "python -m bench.gpu_predictor"}
    began = time.monotonic()
    res["predictor"] = predictor_sweep(onnx, prompts, args.seconds)
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
