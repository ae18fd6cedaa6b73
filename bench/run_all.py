"""The whole benchmark suite in one command (< 10 minutes on the 2-core box); regenerates docs/BENCHMARKS.md.

    make bench            (= ./scripts/setup.sh dev && .venv/bin/python -m bench.run_all)
    python -m bench.run_all --quick      a smoke run of every phase with tiny durations (numbers meaningless)

Phases, in this order, each in processes of its own (the load generator runs here, every server elsewhere):
  kernels      decision kernel K x B against its NumPy twin, head kernels, JIT cost of a first and second start
  echo         the gRPC ceiling: bench.echo_server under Route load at N clients
  predictor    the model ceiling: the predictor alone at batch sizes 1..64 (bench.predictor_bench)
  route        `messplus serve` (real Triton, demo zoo) under Route load at N clients, one fresh process per N
  generate     one router under Generate load (Route + Triton calls, streamed) at 1, 8, 64 clients
  batching     Route at 64 clients with other micro-batching settings (one process each)
  soak         Route at 64 clients for 5 minutes with the default settings: the target's throughput and p99,
               the router's resident set sampled every second (its slope), and a 10 s py-spy profile of the
               router one minute in
  predictor2   the predictor alone again, at its best batch and at the batch the router ran at in `soak`
  state        Route and Feedback on SQLite against PostgreSQL, and PostgreSQL's own count of the work behind
               each call (bench.state_bench; also runs alone: `python -m bench.state_bench`)
Results go to docs/bench/results.json (+ PNG plots); docs/BENCHMARKS.md and the README's table are rendered
from that file by bench.report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import profile as prof
from .loadgen import run_load
from .procs import ServerProcess, echo_server, router_config, router_server, rss_bytes
from .host import machine
from .prompts import trace_prompts
from .state_bench import QUICK_STATE, StateBench, StatePlan, changed_files

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench"
CLIENTS = (1, 8, 64, 256)


@dataclass(frozen=True)
class Plan:
    echo_s: float = 3.0
    route_s: float = 6.0
    generate_s: float = 6.0
    generate_clients: tuple[int, ...] = (1, 8, 64)  # 256 would not fit the 10-minute budget with its drain
    warmup_s: float = 2.0
    max_warmup_s: float = 30.0
    predictor_s: float = 4.0
    predictor_batches: tuple[int, ...] = (1, 8, 64)
    batching_s: float = 8.0
    batching: tuple[tuple[int, float], ...] = ((16, 0.5),)  # the previous defaults, against today's in the soak
    profile_at_s: float = 60.0
    profile_s: float = 10.0
    soak_s: float = 300.0
    state: StatePlan = StatePlan()


QUICK = Plan(echo_s=1.0, route_s=1.5, generate_s=1.5, warmup_s=0.5, predictor_s=0.5, predictor_batches=(1, 4),
             batching_s=1.5, batching=((1, 0.0),), profile_at_s=1.0, profile_s=1.0, soak_s=4.0, state=QUICK_STATE)


class Suite:
    def __init__(self, plan: Plan, work: Path, out: Path, say: Callable[[str], None] = print) -> None:
        self.plan, self.work, self.out, self.say = plan, work, out, say
        self.res: dict[str, Any] = {"plan": asdict(plan), "phases": {}}
        self.prompts = trace_prompts()
        self.began = time.monotonic()

    # -- helpers -------------------------------------------------------------------------------------------------
    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        t0, load0 = time.monotonic(), os.getloadavg()[0]
        self.say(f"== {name} (at {t0 - self.began:.0f} s)")
        value = fn()
        self.res["phases"][name] = {"seconds": round(time.monotonic() - t0, 1), "load_before": load0,
                                    "load_after": os.getloadavg()[0]}
        return value

    def load(self, address: str, rpc: str, clients: int, seconds: float) -> dict[str, Any]:
        r = asyncio.run(run_load(address, rpc, self.prompts, clients, duration_s=seconds,
                                 warmup_s=self.plan.warmup_s, max_warmup_s=self.plan.max_warmup_s))
        self.say("   " + r.line())
        return asdict(r)

    def run_py(self, args: list[str], timeout: float) -> None:
        subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True, timeout=timeout)

    # -- phases --------------------------------------------------------------------------------------------------
    def kernels(self) -> None:
        out = self.work / "kernels.json"
        self.run_py(["bench.kernels_bench", "--json", str(out)], 300)
        self.res["kernels"] = json.loads(out.read_text())

    def predictor(self, key: str, batches: tuple[int, ...], seconds: float) -> None:
        out = self.work / f"{key}.json"
        self.run_py(["bench.predictor_bench", "--onnx", str(self.onnx), "--batches", ",".join(map(str, batches)),
                     "--seconds", str(seconds), "--min-batches", "2" if seconds >= 2 else "1", "--json", str(out)],
                    600)
        self.res[key] = json.loads(out.read_text())

    def echo(self) -> None:
        with echo_server(self.work / "echo") as srv:
            self.res["echo"] = [self.load(srv.address, "route", n, self.plan.echo_s) for n in CLIENTS]

    def start_zoo(self) -> None:
        from messplus.service.demo.repository import build_demo_repository
        from messplus.service.encoder import ensure_exported
        from messplus.service.zoo.embedded import TritonServer

        self.onnx = ensure_exported(ROOT / "var", self.say)
        models = build_demo_repository(self.work / "models")
        self.triton = TritonServer(self.work / "models", work_dir=self.work / "triton").start()
        self.config = router_config(self.work / "state", self.triton.grpc_url, self.onnx,
                                    [(m.triton_name, m.mean_cost) for m in models])

    def router(self, name: str, env: dict[str, str] | None = None) -> ServerProcess:
        srv = router_server(self.work / name, self.config, env=env).start()
        self.say(f"   router {name} serving after {srv.start_s:.1f} s")
        return srv

    def stop_router(self, srv: ServerProcess) -> dict[str, Any]:
        srv.stop()
        log = srv.log_text()
        m = re.findall(r"micro-batching: (\d+) batches, (\d+) items", log)
        k = re.findall(r"kernels ready in ([\d.]+)s", log)
        stats: dict[str, Any] = {"start_s": round(srv.start_s, 2), "warmup_s": float(k[-1]) if k else None}
        if m:
            batches, items = map(int, m[-1])
            stats.update(batches=batches, items=items, mean_batch=items / max(batches, 1))
        return stats

    def route(self) -> None:
        rows = []
        for n in CLIENTS:
            if n == 64:
                continue  # measured for five minutes in `soak`
            srv = self.router(f"route-{n}")
            try:
                row = self.load(srv.address, "route", n, self.plan.route_s)
            finally:
                stats = self.stop_router(srv)
            rows.append({**row, "server": stats})
        self.res["route"] = rows

    def generate(self) -> None:
        srv = self.router("generate")
        try:
            self.res["generate"] = [self.load(srv.address, "generate", n, self.plan.generate_s)
                                    for n in self.plan.generate_clients]
        finally:
            self.res["generate_server"] = self.stop_router(srv)

    def batching(self) -> None:
        rows = []
        for bmax, delay in self.plan.batching:
            env = {"MESSPLUS_PREDICTOR_BATCH_MAX": str(bmax), "MESSPLUS_PREDICTOR_BATCH_DELAY_MS": str(delay)}
            srv = self.router(f"batch-{bmax}-{delay}", env)
            try:
                row = self.load(srv.address, "route", 64, self.plan.batching_s)
            finally:
                stats = self.stop_router(srv)
            rows.append({**row, "server": stats, "batch_max": bmax, "batch_delay_ms": delay})
        self.res["batching"] = rows

    def soak(self) -> None:
        srv = self.router("soak")
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, rss_bytes(srv.pid)))
                stop.wait(1.0)
        def profile() -> None:
            if stop.wait(self.plan.warmup_s + self.plan.profile_at_s):
                return
            try:
                raw = prof.record(srv.pid, self.plan.profile_s, self.work / "profile.txt")
                self.res["profile"] = prof.summarise(raw)
            except RuntimeError as exc:
                self.res["profile"] = {"error": str(exc)}
                self.say(f"   profile failed: {exc}")
        threads = [threading.Thread(target=sample), threading.Thread(target=profile)]
        for t in threads:
            t.start()
        try:
            row = self.load(srv.address, "route", 64, self.plan.soak_s)
        finally:
            stop.set()
            for t in threads:
                t.join()
            stats = self.stop_router(srv)
        self.res["soak"] = {**row, "server": stats, "rss": samples}
        from messplus.service.config import PredictorConfig
        d = PredictorConfig()
        self.res["soak_settings"] = {"batch_max": d.batch_max, "batch_delay_ms": d.batch_delay_ms}

    def state(self) -> None:
        began = time.monotonic()
        res = StateBench(self.plan.state, self.work / "backends", self.config, self.say).run()
        res.update(seconds=round(time.monotonic() - began, 1), machine=machine(), changed=changed_files(),
                   command="python -m bench.run_all" + (" --quick" if self.plan == QUICK else ""))
        self.res["state"] = res

    # -- the whole suite -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        p = self.plan
        self.res["machine"] = machine()
        self.phase("kernels", self.kernels)
        self.phase("zoo", self.start_zoo)
        try:
            self.phase("echo", self.echo)
            self.phase("predictor", lambda: self.predictor("predictor", p.predictor_batches, p.predictor_s))
            self.phase("route", self.route)
            self.phase("generate", self.generate)
            self.phase("batching", self.batching)
            self.phase("soak", self.soak)
            running = max(1, round(self.res["soak"]["server"].get("mean_batch", 1)))
            best = max(self.res["predictor"]["results"], key=lambda r: r["prompts_per_s"])["batch"]
            self.phase("predictor2", lambda: self.predictor("predictor2", tuple(sorted({running, best})),
                                                            p.predictor_s))
            self.phase("state", self.state)
        finally:
            self.triton.stop()
        self.res["total_s"] = round(time.monotonic() - self.began, 1)
        return self.res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny durations: checks that every phase runs")
    ap.add_argument("--out", default="", help="folder for results.json and the plots (default: docs/bench; "
                    "with --quick: var/bench-quick)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/BENCHMARKS.md and the README "
                    "(implied by --quick)")
    ap.add_argument("--work", default=str(ROOT / "var" / "bench-run"), help="scratch folder (emptied first)")
    args = ap.parse_args(argv)
    out = Path(args.out or (ROOT / "var" / "bench-quick" if args.quick else OUT))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    work.mkdir(parents=True)
    res = Suite(QUICK if args.quick else Plan(), work, out).run()
    res["command"] = "python -m bench.run_all" + (" --quick" if args.quick else "")
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"results: {out / 'results.json'} ({res['total_s']:.0f} s in all)")
    from . import report
    report.plots(res, out)
    if not (args.no_docs or args.quick):
        report.write_docs(res, ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
