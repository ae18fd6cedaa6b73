"""Closed-loop gRPC load generator: N concurrent asyncio clients calling Route or Generate for a fixed time.

Each client sends its next request as soon as the previous one answered (closed loop), on prompts taken in turn
from one shared sequence (bench.prompts). The measurement window opens once every client has had an answer
and the warm-up time has passed (at 256 clients the first wave alone takes seconds), and lasts `duration_s`.
The calls *issued* in the window are the sample: clients stop issuing when it closes, and the run waits for
those calls to finish (at most `drain_s`; any still running then are cancelled and counted as unfinished).
Choosing calls by their start, not by their end, keeps long calls in the sample: a window shorter than a few
latencies would otherwise keep mostly the short ones.

Reported per run: throughput, latency p50/p95/p99/max, errors by status code and, for Generate, the time to
the first text chunk. Throughput is N / (mean latency + mean client gap between an answer and the next call),
Little's law for a closed loop: exact whatever the arrival pattern, where a count of answers in a window is
not (a micro-batching server answers in bursts: 64 answers every few seconds at 64 clients on this CPU).

Bounded: loopback addresses only, at most MAX_CLIENTS clients, every call has a deadline, the warm-up and the
drain have caps, and calls still running after the drain are cancelled (the server drops a cancelled Route
from its batch queue).

    python -m bench.loadgen --address 127.0.0.1:50051 --rpc route --clients 1,8,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

MAX_CLIENTS = 1024
MAX_SECONDS = 900.0
CLIENTS_PER_CHANNEL = 64  # each channel is its own HTTP/2 connection (local subchannel pool)


@dataclass
class LoadResult:
    rpc: str
    clients: int
    window_s: float
    completed: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    error_rate: float = 0.0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    slow_share: float = 0.0  # calls over 1.5x the median latency (with micro-batching: they waited for two batches)

    def line(self) -> str:
        err = f" errors {self.errors}" if self.errors else ""
        return (f"{self.rpc:8s} N={self.clients:<4d} {self.throughput_rps:9.1f} req/s  p50 {self.p50_ms:8.1f} ms  "
                f"p95 {self.p95_ms:8.1f}  p99 {self.p99_ms:8.1f}  n={self.completed}{err}")


def check_loopback(address: str) -> None:
    """Refuse any target that is not this machine's loopback."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load tests target loopback only (127.0.0.0/8, ::1, localhost), not {address!r}")


class _Recorder:
    def __init__(self, clients: int, warmup_s: float, duration_s: float) -> None:
        self.clients, self.duration = clients, duration_s
        self.t0 = time.perf_counter()
        self.warm_until = self.t0 + warmup_s
        self.start = self.end = float("inf")
        self.last_end: dict[int, float] = {}
        self.latency: list[float] = []
        self.gaps: list[float] = []
        self.ttft: list[float] = []
        self.errors: Counter[str] = Counter()
        self.issued = 0
        self.finished = 0

    def open_window(self, now: float) -> None:
        if self.start == float("inf") and len(self.last_end) == self.clients and now >= self.warm_until:
            self.start, self.end = now, now + self.duration

    def in_window(self, began: float) -> bool:
        return self.start <= began < self.end

    def begin(self, client: int, began: float) -> None:
        if self.in_window(began):
            self.issued += 1
            if client in self.last_end:
                self.gaps.append(began - self.last_end[client])

    def done(self, client: int, began: float, ended: float, first: float | None, error: str | None) -> None:
        self.last_end[client] = ended
        self.open_window(ended)
        if not self.in_window(began):
            return
        self.finished += 1
        if error is not None:
            self.errors[error] += 1
            return
        self.latency.append(ended - began)
        if first is not None:
            self.ttft.append(first - began)

    def result(self, rpc: str, clients: int) -> LoadResult:
        lat = np.array(self.latency) * 1e3
        ttft = np.array(self.ttft) * 1e3
        unfinished = self.issued - self.finished
        errors = dict(self.errors) | ({"UNFINISHED": unfinished} if unfinished else {})
        cycle = (float(np.mean(self.latency)) + (float(np.mean(self.gaps)) if self.gaps else 0.0)) if lat.size \
            else float("inf")

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if a.size else float("nan")
        return LoadResult(
            rpc=rpc, clients=clients, window_s=self.duration, completed=int(lat.size),
            throughput_rps=clients / cycle * lat.size / max(self.issued, 1),
            p50_ms=pct(lat, 50), p95_ms=pct(lat, 95), p99_ms=pct(lat, 99),
            mean_ms=float(lat.mean()) if lat.size else float("nan"), max_ms=float(lat.max()) if lat.size else 0.0,
            errors=errors, error_rate=(self.issued - lat.size) / max(self.issued, 1),
            ttft_p50_ms=pct(ttft, 50) if ttft.size else None, ttft_p99_ms=pct(ttft, 99) if ttft.size else None,
            slow_share=float(np.mean(lat > 1.5 * np.median(lat))) if lat.size else 0.0)


async def _call(stub: pb_grpc.RoutingServiceStub, rpc: str, tenant: str, text: str,
                deadline_s: float) -> float | None:
    """One call; returns the time of the first text chunk (Generate) or None (Route)."""
    if rpc == "route":
        await stub.Route(pb.RouteRequest(tenant=tenant, text=text), timeout=deadline_s)
        return None
    first = None
    done = False
    req = pb.GenerateRequest(tenant=tenant, text=text, sampling=pb.SamplingParameters(max_tokens=64))
    async for reply in stub.Generate(req, timeout=deadline_s):
        kind = reply.WhichOneof("event")
        if kind == "text" and first is None:
            first = time.perf_counter()
        done = done or kind == "done"
    if not done:
        raise RuntimeError("Generate stream ended without `done`")
    return first


async def run_load(address: str, rpc: str, prompts: Sequence[str], clients: int, *, duration_s: float,
                   warmup_s: float = 1.0, tenant: str = "acme", deadline_s: float = 60.0,
                   max_warmup_s: float = 30.0, drain_s: float = 40.0) -> LoadResult:
    """Drive `clients` closed-loop clients through the warm-up (at least warmup_s, until every client had an
    answer, at most max_warmup_s), then measure `duration_s`."""
    check_loopback(address)
    if rpc not in ("route", "generate"):
        raise ValueError(f"rpc must be route or generate, not {rpc!r}")
    if not 1 <= clients <= MAX_CLIENTS:
        raise ValueError(f"clients must be in [1, {MAX_CLIENTS}]")
    if not 0 < warmup_s + duration_s <= MAX_SECONDS:
        raise ValueError(f"a run lasts at most {MAX_SECONDS:.0f} s")
    if not prompts:
        raise ValueError("no prompts")
    n_channels = -(-clients // CLIENTS_PER_CHANNEL)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 16 << 20)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(n_channels)]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 30) for ch in channels))
        stubs = [pb_grpc.RoutingServiceStub(ch) for ch in channels]
        rec = _Recorder(clients, warmup_s, duration_s)
        cursor = itertools.count()

        async def client(i: int) -> None:
            stub = stubs[i % len(stubs)]
            while time.perf_counter() < rec.end:
                text = prompts[next(cursor) % len(prompts)]
                began, error, first = time.perf_counter(), None, None
                rec.begin(i, began)
                try:
                    first = await _call(stub, rpc, tenant, text, deadline_s)
                except grpc.aio.AioRpcError as exc:
                    error = exc.code().name
                except RuntimeError:
                    error = "INCOMPLETE_STREAM"
                rec.done(i, began, time.perf_counter(), first, error)

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        warm_limit = rec.t0 + max(warmup_s, max_warmup_s)
        while time.perf_counter() < rec.end:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            rec.open_window(now)
            if rec.start == float("inf") and now > warm_limit:  # some client is still waiting: start anyway
                rec.start, rec.end = now, now + duration_s
        _, late = await asyncio.wait(tasks, timeout=drain_s)  # the calls issued in the window finish
        for t in late:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return rec.result(rpc, clients)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def main(argv: Sequence[str] | None = None) -> int:
    from .prompts import trace_prompts

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True)
    p.add_argument("--rpc", choices=("route", "generate"), default="route")
    p.add_argument("--clients", default="1,8,64,256", help="comma-separated client counts, one run each")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--drain", type=float, default=40.0)
    p.add_argument("--tenant", default="acme")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    prompts = trace_prompts()
    results = []
    for n in (int(x) for x in args.clients.split(",")):
        r = asyncio.run(run_load(args.address, args.rpc, prompts, n, duration_s=args.duration,
                                 warmup_s=args.warmup, tenant=args.tenant,
                                 drain_s=args.drain))
        print(r.line(), flush=True)
        results.append(asdict(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
