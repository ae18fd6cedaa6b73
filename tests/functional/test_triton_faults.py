"""Triton faults caused for real: a zoo model unloaded mid-load through Triton's model control API, and Triton
killed outright (SIGKILL of its process group). The router is an App in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo
from ..support.inprocess import AppThread
from ..support.target import NOT_SERVING, SERVING

pytestmark = pytest.mark.triton
POLL_S = 0.5  # triton.ready_poll_s in the tests' router config


class Load:
    """Generate calls from `workers` concurrent clients until stopped; every outcome kept with its time."""

    def __init__(self, stub: pb_grpc.RoutingServiceStub) -> None:
        self.stub = stub
        self.done: list[tuple[float, str, str, str]] = []  # (finished, status, served model, request id)
        self.started: dict[str, float] = {}  # request id -> when its call began
        self.running = True

    async def one(self, i: int) -> None:
        served, rid, status, began = "", "", "OK", time.monotonic()
        try:
            async for msg in self.stub.Generate(pb.GenerateRequest(tenant="acme", text=f"load {i}: name a colour"),
                                                timeout=20):
                if msg.WhichOneof("event") == "route":
                    rid = msg.route.request_id
                    self.started[rid] = began
                elif msg.WhichOneof("event") == "done":
                    served = msg.done.served_model
        except grpc.RpcError as err:
            status = f"{err.code().name}: {err.details()}"
        self.done.append((time.monotonic(), status, served, rid))

    async def worker(self, w: int) -> None:
        i = 0
        while self.running:
            i += 1
            await self.one(w * 100_000 + i)

    def served_between(self, t0: float, t1: float) -> Counter[str]:
        return Counter(m for t, s, m, _ in self.done if t0 <= t <= t1 and s == "OK")


async def wait_for(predicate: Callable[[], object], timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until `predicate()` is true (awaiting it if it is a coroutine); fails after timeout_s."""
    began = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - began
        assert time.monotonic() - began < timeout_s, "timed out"
        await asyncio.sleep(step_s)


async def unload_and_reload(r: AppThread, zoo: DemoZoo) -> dict:
    async with r.aio_channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        load = Load(stub)

        async def available(model: str) -> bool:
            models = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
            return next(m.available for m in models if m.name == model)

        workers = [asyncio.create_task(load.worker(w)) for w in range(12)]
        await asyncio.sleep(2.0)
        victim = load.served_between(0, time.monotonic()).most_common(1)[0][0]
        t_unload = time.monotonic()
        await asyncio.to_thread(zoo.server.unload_model, victim)
        await wait_for(lambda: _not(available(victim)), 10)
        t_masked = time.monotonic()
        await asyncio.sleep(2.0)
        t_load = time.monotonic()
        await asyncio.to_thread(zoo.server.load_model, victim)  # returns once Triton reports it ready
        t_ready = time.monotonic()
        readmit_s = await wait_for(lambda: available(victim), 10)
        t_admitted = time.monotonic()
        reselect_s = await wait_for(lambda: load.served_between(t_admitted, time.monotonic())[victim] > 0, 20) \
            + readmit_s
        load.running = False
        await asyncio.gather(*workers)
        outage = [rid for t, s, m, rid in load.done if t_unload <= t <= t_ready and s == "OK"]
        queue_moves = 0
        for rid in outage[:50]:  # outcomes during the outage are charged to the SLA queue as usual
            fb = await stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id=rid, satisfaction=0.0), timeout=10)
            queue_moves += fb.queue_updated
        status = await stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
    failed = [s for _, s, _, _ in load.done if s != "OK"]
    return {"victim": victim, "requests": len(load.done), "failed": failed, "outage_requests": len(outage),
            "served_by_victim_while_masked": sum(1 for _, s, m, rid in load.done  # calls begun once masked
                                                 if m == victim and t_masked <= load.started.get(rid, 0) <= t_load),
            "masked_after_unload_s": t_masked - t_unload, "readmitted_after_ready_s": readmit_s,
            "reselected_after_ready_s": reselect_s, "queue_moves": queue_moves, "checked": min(50, len(outage)),
            "status_requests": status.requests}


async def _not(value: object) -> bool:
    return not await value  # type: ignore[misc]


def test_unloaded_model_is_masked_out_and_readmitted_while_no_request_fails(
        start_zoo: Callable[..., DemoZoo], router_app: Callable[..., AppThread], figures: dict) -> None:
    zoo = start_zoo(latency_ms=20)
    r = router_app(zoo=zoo)
    out = asyncio.run(unload_and_reload(r, zoo))
    figures.update(failed_requests=len(out["failed"]), requests=out["requests"],
                   requests_during_outage=out["outage_requests"],
                   masked_after_unload_s=round(out["masked_after_unload_s"], 3),
                   readmitted_after_ready_s=round(out["readmitted_after_ready_s"], 3),
                   reselected_after_ready_s=round(out["reselected_after_ready_s"], 3))
    assert out["failed"] == [], f"{len(out['failed'])} failed, e.g. {out['failed'][:3]}"
    assert out["outage_requests"] > 50, "too little load during the outage to prove anything"
    assert out["served_by_victim_while_masked"] == 0
    assert out["readmitted_after_ready_s"] <= POLL_S + 2.0
    assert out["queue_moves"] == out["checked"] > 0
    assert out["status_requests"] == out["requests"]


def test_triton_killed_gives_unavailable_quickly_and_health_not_serving(
        start_zoo: Callable[..., DemoZoo], router_app: Callable[..., AppThread], figures: dict) -> None:
    zoo = start_zoo()
    r = router_app(zoo=zoo)
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        assert list(stub.Generate(pb.GenerateRequest(tenant="acme", text="still there?"), timeout=10))
        assert zoo.server.pid is not None
        os.killpg(zoo.server.pid, signal.SIGKILL)
        killed = time.monotonic()
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:  # before the poller notices: the call itself fails fast
            list(stub.Generate(pb.GenerateRequest(tenant="acme", text="hi?"), timeout=30))
        generate_s = time.monotonic() - began
        # a dying server refuses the connection, or resets or closes it while its sockets go: each said plainly
        down = {f"Triton at {zoo.server.grpc_url} unreachable ({why})"
                for why in ("connection refused", "connection reset by peer", "connection closed by the server")}
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert err.value.details() in down, err.value.details()
        while r.health() != NOT_SERVING:
            assert time.monotonic() - killed < 10, "health never went NOT_SERVING"
            time.sleep(0.02)
        health_s = time.monotonic() - killed
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Route(pb.RouteRequest(tenant="acme", text="anyone?"), timeout=30)
        route_s = time.monotonic() - began
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and err.value.details() in down, err.value.details()
    assert r.health() != SERVING
    figures.update(generate_unavailable_s=round(generate_s, 3), route_unavailable_s=round(route_s, 3),
                   health_not_serving_after_s=round(health_s, 3))
    assert generate_s < 2.0 and route_s < 1.0 and health_s < POLL_S + 3.0


def test_a_routed_model_that_fails_before_answering_gets_its_answer_event_and_cannot_be_labelled(
        start_zoo: Callable[..., DemoZoo], router_app: Callable[..., AppThread]) -> None:
    """An exploration step whose routed model fails before its first chunk (unloaded on Triton, before the
    router's poll has seen it): another explored model serves, the stream still carries one `answer` per other
    explored model (the routed one's with its error), and Feedback for the failed model says why it is refused."""
    zoo = start_zoo()
    r = router_app(zoo=zoo, triton={"ready_poll_s": 3600.0})  # the router will not notice the unload by polling
    (cheap, _), (dear, _) = sorted(zoo.priced, key=lambda m: m[1])[::len(zoo.priced) - 1]
    zoo.server.unload_model(dear)
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        events = list(stub.Generate(pb.GenerateRequest(
            tenant="beta", text="Name a colour.",
            overrides=pb.RouteOverrides(allowed_models=[cheap, dear], exploration=pb.EXPLORATION_MODE_ALWAYS)),
            timeout=30))
        route = events[0].route
        # a new tenant's models are all rated alike, and an exploration step serves the dearer of a tie
        assert (route.model, sorted(route.explored_models)) == (dear, sorted([cheap, dear]))
        answers = [e.answer for e in events if e.WhichOneof("event") == "answer"]
        assert [(a.model, a.text) for a in answers] == [(dear, "")] and "unavailable" in answers[0].error
        assert answers[0].latency_ms > 0  # how long the failed call took (it was 0: only the others were timed)
        assert events[-1].done.served_model == cheap
        with pytest.raises(grpc.RpcError) as err:
            stub.Feedback(pb.FeedbackRequest(tenant="beta", request_id=route.request_id, satisfaction=1.0,
                                             labels=[pb.ModelSatisfaction(model=dear, satisfaction=0.0)]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"labels[0].model: model {dear!r} gave no answer for this request" in (err.value.details() or "")
        fb = stub.Feedback(pb.FeedbackRequest(tenant="beta", request_id=route.request_id, satisfaction=1.0),
                           timeout=10)
        assert fb.queue_updated
