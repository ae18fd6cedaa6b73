"""The caller's deadline bounds the Triton calls (an App in this process); at 10x the sustainable load the excess
is refused at once (RESOURCE_EXHAUSTED) while admitted calls keep their latency (a `messplus serve` process, so
that the load generator does not share the router's interpreter and the latencies are the router's)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo
from ..support.inprocess import AppThread
from ..support.metrics import percentile, scrape
from ..support.procs import ServerProcess

pytestmark = pytest.mark.triton
# The zoo's service time and the router's admission limit: capacity = MAX_INFLIGHT / latency = 20 calls/s. As
# with real LLMs, the model's time bounds throughput, not the router's CPU (kept low so that a shared 2-core
# machine measures admission control, not CPU starvation of client, router and Triton).
LATENCY_MS, MAX_INFLIGHT = 200, 4
SUSTAINABLE = 10.0  # the 1x rate, half the capacity


def test_caller_deadline_bounds_the_triton_call(start_zoo: Callable[..., DemoZoo],
                                                router_app: Callable[..., AppThread], figures: dict) -> None:
    """The caller gets DEADLINE_EXCEEDED at its deadline; the Triton stream is read STREAM_GRACE_S longer (an
    answer that ends just after the deadline is not cancelled as its last responses come, which leaked model
    instances in Triton 2.51), then cancelled: a long answer nobody waits for does not run to its end."""
    from messplus.service.zoo.triton import STREAM_GRACE_S

    zoo = start_zoo(latency_ms=3000)
    r = router_app(zoo=zoo, server={"metrics_listen": "127.0.0.1:0"})
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(pb.GenerateRequest(tenant="acme", text="slow one", overrides=pb.RouteOverrides(
                exploration=pb.EXPLORATION_MODE_NEVER)), timeout=0.4))
        failed_s = time.monotonic() - began
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        open_streams = scrape(r.metrics_port)[("messplus_triton_streams_open", ())]
        ended = 0.4 + STREAM_GRACE_S + 0.6  # the model would answer only at 3 s
        time.sleep(max(0.0, ended - (time.monotonic() - began)))
        metrics = scrape(r.metrics_port)
        after = metrics[("messplus_triton_streams_open", ())]
    figures.update(deadline_s=0.4, caller_saw_error_after_s=round(failed_s, 3), stream_grace_s=STREAM_GRACE_S,
                   streams_open_at_2_s=after)
    assert failed_s < 0.6
    assert open_streams == 1, "the stream was cancelled at the caller's deadline"
    assert after == 0, "the Triton stream outlived the caller's deadline and its grace"
    codes = {dict(k[1]).get("code") for k in metrics if k[0] == "messplus_rpc_duration_seconds_count"}
    assert "DEADLINE_EXCEEDED" in codes and "CANCELLED" not in codes, codes  # the dashboards' code is the caller's


def test_the_routers_own_triton_timeout_is_unavailable_not_the_callers_deadline(
        start_zoo: Callable[..., DemoZoo], router_app: Callable[..., AppThread]) -> None:
    """No caller deadline: a model slower than triton.timeout_s is the zoo's failure (UNAVAILABLE, retry),
    and DEADLINE_EXCEEDED stays the answer to a deadline the caller set."""
    zoo = start_zoo(latency_ms=1500)
    r = router_app(zoo=zoo, env={"MESSPLUS_TRITON_TIMEOUT_S": "0.4"})
    with r.channel() as ch, pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.RoutingServiceStub(ch).Generate(pb.GenerateRequest(tenant="acme", text="slow one")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "within the router's Triton timeout (0.4 s)" in err.value.details()
    assert "did not answer within" in err.value.details()  # the model's own error, for the operator


def test_abandoned_generates_cannot_pile_up_triton_streams(start_zoo: Callable[..., DemoZoo],
                                                            router_app: Callable[..., AppThread]) -> None:
    """A cancelled Generate gives back its admission slot while its Triton stream is read to its end (Triton
    2.51 leaks an instance on a cancelled stream): past server.max_inflight open streams Generate is refused,
    so callers that cancel at once cannot keep any number of generations running."""
    zoo = start_zoo(latency_ms=4000)  # the abandoned streams outlast the calls that open them, on a busy machine too
    r = router_app(zoo=zoo, server={"max_inflight": 3})
    never = pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for i in range(3):
            call = stub.Generate(pb.GenerateRequest(tenant="acme", text=f"abandoned {i}", overrides=never))
            assert next(call).WhichOneof("event") == "route"
            time.sleep(0.2)  # the Triton call has started
            call.cancel()
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(pb.GenerateRequest(tenant="acme", text="one more", overrides=never), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "3 Triton streams are open (server.max_inflight: 3)" in err.value.details()
        assert stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5).requests == 0  # none was recorded
        while True:  # the abandoned answers end after the model's 4 s; then Generate is admitted again
            assert time.monotonic() - began < 30
            try:
                events = [m.WhichOneof("event") for m in stub.Generate(
                    pb.GenerateRequest(tenant="acme", text="later", overrides=never), timeout=10)]
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.2)
    assert events[-1] == "done"


async def open_loop(address: str, rate: float, seconds: float) -> list[tuple[str, float]]:
    """Generate calls started at a fixed rate whatever the answers (open loop): [(status, latency_s)]."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        out: list[tuple[str, float]] = []

        async def one(i: int) -> None:
            began = time.monotonic()
            try:
                async for _ in stub.Generate(pb.GenerateRequest(tenant="acme", text=f"q{i}: 2+2?", overrides=
                                             pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)), timeout=10):
                    pass
                out.append(("OK", time.monotonic() - began))
            except grpc.RpcError as err:
                out.append((err.code().name, time.monotonic() - began))

        tasks, start = [], time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return out


def summary(results: list[tuple[str, float]]) -> dict:
    ok = [t for s, t in results if s == "OK"]
    refused = [t for s, t in results if s == "RESOURCE_EXHAUSTED"]
    return {"calls": len(results), "codes": dict(Counter(s for s, _ in results)),
            "admitted_p50_ms": round(percentile(ok, 0.5) * 1e3, 1),
            "admitted_p99_ms": round(percentile(ok, 0.99) * 1e3, 1),
            "refused_p50_ms": round(percentile(refused, 0.5) * 1e3, 1) if refused else None,
            "refused_p99_ms": round(percentile(refused, 0.99) * 1e3, 1) if refused else None}


def test_ten_times_sustainable_load_is_refused_quickly_and_admitted_latency_holds(
        start_zoo: Callable[..., DemoZoo], router_process: Callable[..., ServerProcess], figures: dict) -> None:
    zoo = start_zoo(latency_ms=LATENCY_MS)
    r = router_process(zoo=zoo, server={"max_inflight": MAX_INFLIGHT})
    asyncio.run(open_loop(r.address, SUSTAINABLE, 1.0))  # warm-up
    x1 = summary(asyncio.run(open_loop(r.address, SUSTAINABLE, 6.0)))
    x10 = summary(asyncio.run(open_loop(r.address, 10 * SUSTAINABLE, 6.0)))
    figures.update({"1x": x1, "10x": x10, "rate_1x_per_s": SUSTAINABLE, "max_inflight": MAX_INFLIGHT,
                    "model_latency_ms": LATENCY_MS})
    assert x1["codes"] == {"OK": x1["calls"]}, "1x must be sustainable"
    assert set(x10["codes"]) == {"OK", "RESOURCE_EXHAUSTED"}, x10["codes"]
    assert x10["codes"]["RESOURCE_EXHAUSTED"] > x10["calls"] / 2
    # quick: a refusal never waits for a model (its median is under one model call) and never queues
    assert x10["refused_p50_ms"] < LATENCY_MS and x10["refused_p99_ms"] < 1000, "refusals must be quick"
    assert x10["admitted_p99_ms"] < 1.5 * x1["admitted_p99_ms"] + 100, "admitted calls lost their latency"
