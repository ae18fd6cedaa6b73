"""Micro-batching before and after `predictor.batch_gather`, side by side in one run (Route, 64 clients).

    python -m bench.batching_ab [--reps 3] [--seconds 30] [--json docs/bench/batching_ab.json]

"before" is `batch_gather = 0`: a batch waits `batch_delay_ms` from its first queued caller, so a caller whose
answer and next call take longer than that misses its cohort's batch and waits for two. "after" is the default:
while callers keep coming back, the predictor waits for them up to a tenth of its last batch's time. Each rep runs
one fresh router per setting, alternating which goes first (ABBA), so that the shared machine's load drifts over
both alike. The routers are Route-only (`triton.url = "none"`: no Triton processes beside them; Route does not
call Triton) with the demo zoo's five models and default settings otherwise; the load generator is the suite's
(closed loop, its own process). Per run: req/s, p50/p95/p99/max, p99 over p50 (a call that waits for two
batches takes about twice the median) and the router's mean batch from its stop log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "batching_ab.json"


def came_during(log: str) -> int | None:
    """Calls that came while a batch ran, from the router's stop log (at N <= batch_max clients: the callers
    that missed their cohort's batch)."""
    m = re.findall(r"micro-batching: .*; (\d+) came while a batch ran", log)
    return int(m[-1]) if m else None


def mean_batch(log: str) -> float | None:
    m = re.findall(r"micro-batching: (\d+) batches, (\d+) items", log)
    if not m:
        return None
    batches, items = map(int, m[-1])
    return items / max(batches, 1)


def run(reps: int, seconds: float, clients: int, work: Path, say: Any = print) -> dict[str, Any]:
    from messplus.service.config import PredictorConfig
    from messplus.service.demo.repository import build_demo_repository
    from messplus.service.encoder import ensure_exported

    from .host import machine
    from .loadgen import run_load
    from .procs import route_only_config, router_server
    from .prompts import trace_prompts

    settings = {"before": 0.0, "after": PredictorConfig().batch_gather}
    load0 = os.getloadavg()[0]
    onnx = ensure_exported(ROOT / "var")
    models = build_demo_repository(work / "models")
    prompts = trace_prompts()
    runs: list[dict[str, Any]] = []
    began = time.monotonic()
    for rep in range(reps):
        order = list(settings.items()) if rep % 2 == 0 else list(settings.items())[::-1]
        for name, gather in order:
            cfg = route_only_config(work / f"{name}-{rep}" / "state", onnx,
                                    [(m.triton_name, m.mean_cost) for m in models])
            srv = router_server(work / f"{name}-{rep}", cfg,
                                env={"MESSPLUS_PREDICTOR_BATCH_GATHER": str(gather)}).start()
            try:
                r = asdict(asyncio.run(run_load(srv.address, "route", prompts, clients, duration_s=seconds,
                                                warmup_s=2.0)))
            finally:
                srv.stop()
            log = srv.log_text()
            items = re.findall(r"micro-batching: \d+ batches, (\d+) items", log)
            r.update(setting=name, batch_gather=gather, rep=rep, mean_batch=mean_batch(log),
                     missed_share=(came_during(log) or 0) / max(int(items[-1]) if items else 1, 1))
            say(f"   {name:6s} rep {rep}: {r['throughput_rps']:.1f} req/s  p50 {r['p50_ms']:.0f}  p99 "
                f"{r['p99_ms']:.0f} ms  p99/p50 {r['p99_ms'] / r['p50_ms']:.2f}  over 1.5x p50 {r['slow_share']:.1%}"
                f"  missed their batch {r['missed_share']:.1%}  mean batch {r['mean_batch']:.1f}", flush=True)
            runs.append(r)
    return {"machine": machine(), "clients": clients, "seconds": seconds, "reps": reps, "settings": settings,
            "runs": runs, "total_s": round(time.monotonic() - began, 1), "load": [load0, os.getloadavg()[0]]}


def summary(res: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per setting: the mean over reps of req/s, p50, p99, p99/p50 and the mean batch."""
    out = {}
    for name in res["settings"]:
        rows = [r for r in res["runs"] if r["setting"] == name]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float:
            xs = [r[key] for r in rows if r.get(key) is not None]
            return sum(xs) / len(xs) if xs else float("nan")
        out[name] = {"rps": mean("throughput_rps"), "p50_ms": mean("p50_ms"), "p99_ms": mean("p99_ms"),
                     "tail": sum(r["p99_ms"] / r["p50_ms"] for r in rows) / len(rows),
                     "worst_tail": max(r["p99_ms"] / r["p50_ms"] for r in rows), "mean_batch": mean("mean_batch"),
                     "slow_share": mean("slow_share"), "missed_share": mean("missed_share")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="messplus-batching-ab-") as work:
        res = run(args.reps, args.seconds, args.clients, Path(work))
    res["command"] = "python -m bench.batching_ab" + (f" --reps {args.reps}" if args.reps != 3 else "") + (
        f" --seconds {args.seconds:g}" if args.seconds != 30 else "")
    for name, s in summary(res).items():
        print(f"{name}: {s['rps']:.1f} req/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, p99/p50 "
              f"{s['tail']:.2f} (worst {s['worst_tail']:.2f}), over 1.5x p50 {s['slow_share']:.1%}, missed their "
              f"batch {s['missed_share']:.1%}, mean batch {s['mean_batch']:.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"results: {args.json} ({res['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
