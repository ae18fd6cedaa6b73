"""The router as users call it: a real Triton with the demo zoo, real gRPC. What the router answers is checked on
an App in this process (tests/support/inprocess.py); the crash and restart on a real `messplus serve` process."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from messplus.service.demo.repository import TraceGrader
from messplus.service.trace import load_trace
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo
from ..support.inprocess import AppThread
from ..support.procs import ServerProcess

pytestmark = pytest.mark.triton
Apps = Callable[..., AppThread]
Processes = Callable[..., ServerProcess]


def trace_prompts(zoo: DemoZoo, n: int, seed: int = 0) -> list[str]:
    """n prompts of the demo zoo's trace, sampled by seed from its rows sorted by prompt id."""
    trace = load_trace(zoo.trace)
    text = dict(zip(trace.prompt_ids, trace.prompts))
    return [text[k] for k in random.Random(seed).sample(sorted(text), n)]


def test_health_says_serving_and_reflection_lists_the_service(router_app: Apps) -> None:
    router = router_app()
    with grpc.insecure_channel(router.address) as ch:
        for service in ("", "messplus.v1.RoutingService"):
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        (answer,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert {"messplus.v1.RoutingService", "grpc.health.v1.Health"} <= names


def test_route_list_models_and_sla_status_answer(router_app: Apps, demo_zoo: DemoZoo) -> None:
    router = router_app()
    with grpc.insecure_channel(router.address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        models = stub.ListModels(pb.ListModelsRequest(), timeout=5)
        assert [m.name for m in models.models] == [m.triton_name for m in demo_zoo.models]
        assert all(m.available for m in models.models) and max(m.cost for m in models.models) == 1.0
        reply = stub.Route(pb.RouteRequest(tenant="acme", text="Which gas do plants absorb?", request_id="r-1"),
                           timeout=10)
        assert reply.request_id == "r-1" and reply.model in {m.name for m in models.models}
        assert len(reply.predictions) == len(models.models) and all(0 < p.p_hat < 1 for p in reply.predictions)
        assert reply.alpha == 0.75 and reply.tenant_request_index == 1
        chat = pb.Chat(messages=[pb.ChatMessage(role="user", content="Hi"), pb.ChatMessage(role="user", content="2+2?")])
        assert stub.Route(pb.RouteRequest(tenant="beta", chat=chat), timeout=10).model
        fb = stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id="r-1", satisfaction=0.0), timeout=10)
        first = 0.75 + 0.3 / 2  # alpha plus the default margin 0.3 / (2 sqrt(1)), minus satisfaction 0
        assert fb.labels_applied == 1 and fb.queue == pytest.approx(first) and fb.queue_updated
        again = stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id="r-1", satisfaction=0.0), timeout=10)
        assert again.duplicate and again.labels_applied == 0 and again.queue == pytest.approx(first)
        status = stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
        assert (status.requests, status.labelled, status.satisfaction) == (1, 1, 0.0)
        assert status.queue == pytest.approx(first)


async def _drive(address: str, prompts: list[str], grader: TraceGrader, names: dict[str, str]) -> dict:
    """Generate every prompt (8 in flight), then label what was served, in a known order, and keep books."""
    books: dict = {"served": Counter(), "explore": 0, "cost_raw": 0.0, "labels": [], "queue": 0.0}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        sem = asyncio.Semaphore(8)

        async def one(prompt: str) -> tuple[str, pb.RouteReply, pb.GenerateDone, dict[str, str]]:
            async with sem:
                route, done, answers, text = None, None, {}, []
                async for msg in stub.Generate(pb.GenerateRequest(tenant="acme", text=prompt), timeout=60):
                    kind = msg.WhichOneof("event")
                    if kind == "route":
                        route = msg.route
                    elif kind == "text":
                        text.append(msg.text)
                    elif kind == "answer":
                        answers[msg.answer.model] = msg.answer.text
                    else:
                        done = msg.done
                assert route is not None and done is not None and "".join(text)
                return prompt, route, done, answers

        results = await asyncio.gather(*(one(p) for p in prompts))
        for prompt, route, done, answers in results:
            books["served"][done.served_model] += 1
            books["explore"] += int(route.exploration)
            books["cost_raw"] += done.cost_raw
            served_label = grader.label(prompt, names[done.served_model])
            labels = [pb.ModelSatisfaction(model=m, satisfaction=grader.label(prompt, names[m]))
                      for m in answers if grader.label(prompt, names[m]) is not None]
            if served_label is None and not labels:
                continue
            req = pb.FeedbackRequest(tenant="acme", request_id=route.request_id, labels=labels)
            if served_label is not None:
                req.satisfaction = served_label
                books["labels"].append(served_label)
                n = len(books["labels"])  # the default policy: margin 0.3, no floor
                books["queue"] = books["queue"] + 0.75 + 0.3 / (2 * math.sqrt(n)) - served_label
            reply = await stub.Feedback(req, timeout=10)
            assert reply.labels_applied == len(labels) + (served_label is not None)
            assert reply.queue == pytest.approx(books["queue"], abs=1e-9)
    return books


def test_300_trace_prompts_through_generate_and_feedback_match_sla_status(router_app: Apps,
                                                                          demo_zoo: DemoZoo) -> None:
    router = router_app()
    grader = TraceGrader(demo_zoo.trace)
    names = {m.triton_name: m.trace_name for m in demo_zoo.models}
    books = asyncio.run(_drive(router.address, trace_prompts(demo_zoo, 300), grader, names))
    with grpc.insecure_channel(router.address) as ch:
        status = pb_grpc.RoutingServiceStub(ch).SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
    assert status.requests == 300
    assert status.labelled == len(books["labels"]) > 280
    assert status.satisfaction == pytest.approx(sum(books["labels"]) / len(books["labels"]), abs=1e-12)
    assert status.queue == pytest.approx(books["queue"], abs=1e-9)
    assert status.exploration_steps == books["explore"] > 0
    assert {m.model: m.served for m in status.models} == {n: books["served"][n] for n in names}
    assert status.mean_cost_raw == pytest.approx(books["cost_raw"] / 300, rel=1e-9)
    assert len([m for m in status.models if m.served]) >= 2, "the router never left one model"


def test_kill_and_restart_keeps_every_queue_and_count(router_process: Processes, demo_zoo: DemoZoo,
                                                      tmp_path: Path) -> None:
    router = router_process()
    prompts = trace_prompts(demo_zoo, 40, seed=1)
    with grpc.insecure_channel(router.address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        ids = []
        for i, p in enumerate(prompts):
            tenant = "acme" if i % 3 else "beta"
            r = stub.Route(pb.RouteRequest(tenant=tenant, text=p), timeout=10)
            ids.append((tenant, r.request_id))
            if i < 30:
                stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=r.request_id, satisfaction=float(i % 2)),
                              timeout=10)
        # Route acknowledges before its record commits (group commit); Feedback waits for its own commit, and the
        # writer commits in order, so labelling the last request makes every routed record durable first.
        stub.Feedback(pb.FeedbackRequest(tenant=ids[-1][0], request_id=ids[-1][1], satisfaction=0.5), timeout=10)
        before = {t: stub.SlaStatus(pb.SlaStatusRequest(tenant=t), timeout=5) for t in ("acme", "beta")}
    router.kill()
    again = router_process(name="again", state_dir=tmp_path / "state")
    with grpc.insecure_channel(again.address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for t in ("acme", "beta"):
            after = stub.SlaStatus(pb.SlaStatusRequest(tenant=t), timeout=5)
            assert (after.queue, after.requests, after.labelled) == (before[t].queue, before[t].requests,
                                                                      before[t].labelled)
            assert [m.served for m in after.models] == [m.served for m in before[t].models]
        tenant, rid = ids[35]  # routed before the crash, labelled after the restart
        reply = stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=rid, satisfaction=1.0), timeout=10)
        assert reply.labels_applied == 1
