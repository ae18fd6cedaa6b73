"""RoutingService handlers: parse and validate the request, call the router or the zoo, build the reply.

Handlers raise domain errors (service.errors); server/status.py maps them to statuses. The routing core names
its fields as its own API does (`allowed`, `excluded`); `REQUEST_FIELDS` turns them into the request's paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..config import ROUTE_ONLY
from ..errors import (AlreadyExists, DeadlineTooShort, InvalidArgument, NoModelAvailable, NotFound, Overloaded,
                      Unsupported)
from ..routing.pricing import input_tokens
from ..routing.router import Router
from ..routing.types import REQUEST_ID, Decision, FeedbackResult, RouteItem, Routed
from ..zoo.monitor import TritonMonitor
from ..zoo.triton import TritonZoo
from .batcher import MicroBatcher
from .generate import Calls, sampling_parameters
from .metrics import Metrics

REQUEST_FIELDS = {"allowed": "overrides.allowed_models", "excluded": "overrides.excluded_models"}


def chat_to_text(messages: Sequence[Any]) -> str:
    """Chat messages as one prompt text, `role: content` per line (the predictor keeps the tail)."""
    return "\n".join(f"{m.role}: {m.content}" if m.role else m.content for m in messages)


def prompt_text(request: pb.RouteRequest | pb.GenerateRequest, max_chars: int) -> str:
    kind = request.WhichOneof("prompt")
    if kind == "text":
        text = request.text
        if not text.strip():
            raise InvalidArgument("text", "prompt text must not be empty")
    elif kind == "chat":
        if not request.chat.messages:
            raise InvalidArgument("chat.messages", "at least one message is needed")
        for i, m in enumerate(request.chat.messages):
            if not m.content.strip():
                raise InvalidArgument(f"chat.messages[{i}].content", "must not be empty")
        text = chat_to_text(request.chat.messages)
    else:
        raise InvalidArgument("prompt", "set either text or chat")
    if len(text) > max_chars:
        raise InvalidArgument("text" if kind == "text" else "chat",
                              f"prompt has {len(text)} characters; the limit is {max_chars}")
    return text


def route_item(request: pb.RouteRequest | pb.GenerateRequest, router: Router, text: str,
               triton_problem: str = "") -> RouteItem:
    """The request as the router takes it; `triton_problem` is why Triton cannot serve now ("" if it can), the
    error's text when no model at all is available."""
    rid = request.request_id
    if rid and not REQUEST_ID.fullmatch(rid):
        raise InvalidArgument("request_id", "must be 1-128 printable ASCII characters without spaces")
    ov = request.overrides
    if ov.exploration not in (pb.EXPLORATION_MODE_DEFAULT, pb.EXPLORATION_MODE_NEVER, pb.EXPLORATION_MODE_ALWAYS):
        raise InvalidArgument("overrides.exploration", f"unknown value {ov.exploration}")
    item = RouteItem(tenant=request.tenant, request_id=rid, allowed=tuple(ov.allowed_models),
                     excluded=tuple(ov.excluded_models), exploration=int(ov.exploration),
                     input_tokens=input_tokens(text))
    router.tenant(item.tenant)
    try:  # first: an unknown name is the problem to report, whatever else the overrides say
        mask = router.mask(item)
    except InvalidArgument as exc:
        raise InvalidArgument(REQUEST_FIELDS.get(exc.field, exc.field), exc.problem) from None
    left = set(item.allowed or router.names) - set(item.excluded)
    if not left:
        raise InvalidArgument("overrides.excluded_models", "the overrides exclude every model they allow")
    if not mask.any():
        if not router.available.any():  # the cause is Triton, not the request
            raise NoModelAvailable(triton_problem or "no zoo model is ready on Triton now")
        raise NoModelAvailable("no zoo model is available for this request after the overrides "
                               f"(available now: {', '.join(router.available_names())})")
    if rid and not router.reserve(rid):  # last: a refused request holds no id; the caller releases it on error
        raise AlreadyExists(f"request_id {rid!r} was already routed, or is being routed by another call; "
                            "use a new id per request")
    return item


def route_reply(router: Router, d: Decision) -> pb.RouteReply:
    scale = router.cost_scale()
    preds = [pb.ModelPrediction(model=n, p_hat=float(d.p_hat[k]), cost=float(d.model_costs[k] / scale),
                                cost_raw=float(d.model_costs[k]), available=bool(d.available[k]))
             for k, n in enumerate(router.names)]
    return pb.RouteReply(request_id=d.request_id, model=router.names[d.served], exploration=d.exploration,
                         explored_models=[router.names[k] for k in d.invoked] if d.exploration else [],
                         predictions=preds, queue=d.queue, cost=d.cost, cost_raw=d.cost_raw, alpha=d.alpha,
                         tenant_request_index=d.t)


def remaining(context: grpc.aio.ServicerContext, default: float) -> float:
    """The time budget of this call: the caller's deadline if set, else the configured Triton timeout."""
    left = context.time_remaining()
    if left is None:
        return default
    if left <= 0.01:
        raise DeadlineTooShort("the call's deadline expired before the model could be called")
    return min(left, default)


class RoutingServicer(pb_grpc.RoutingServiceServicer):
    def __init__(self, router: Router, batcher: MicroBatcher[tuple[str, RouteItem], Routed | Exception],
                 zoo: TritonZoo | None, *, max_prompt_chars: int, triton_timeout_s: float, cost_unit: str,
                 metrics: Metrics | None = None, triton: TritonMonitor | None = None, max_streams: int = 0,
                 record_wait_s: float = 0.0) -> None:
        self.metrics = metrics or Metrics()
        self.max_streams = max_streams  # Triton streams open beyond which Generate is refused (0: no limit)
        self.record_wait_s = record_wait_s  # shared store: how long Feedback looks for another replica's record
        self.triton = triton
        self.router = router
        self.batcher = batcher
        self.zoo = zoo
        self.max_prompt_chars = max_prompt_chars
        self.triton_timeout_s = triton_timeout_s
        self.cost_unit = cost_unit

    def triton_problem(self) -> str:
        """Why Triton cannot serve now, as the last poll saw it ("" when it can, or when nothing polls it)."""
        return self.triton.state.problem if self.triton is not None else ""

    async def _route(self, request: pb.RouteRequest | pb.GenerateRequest) -> tuple[str, Routed]:
        text = prompt_text(request, self.max_prompt_chars)
        item = route_item(request, self.router, text, self.triton_problem())
        try:
            if item.request_id and self.router.store.shared \
                    and await asyncio.to_thread(self.router.routed_before, item.request_id):
                raise AlreadyExists(f"request_id {item.request_id!r} was already routed (by this or another "
                                    "replica); use a new id per request")
            return text, await self.batcher.submit((text, item))
        except BaseException as exc:  # cancelled, or the batch failed: nothing was routed under this id
            self.router.release(item.request_id)
            if isinstance(exc, NoModelAvailable) and not self.router.available.any() and self.triton_problem():
                raise NoModelAvailable(self.triton_problem()) from None  # every model went away meanwhile
            raise

    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteReply:
        _, routed = await self._route(request)
        self.router.record(routed.decision, routed.embedding)  # releases the id: it is now a routed request
        self.metrics.routed(routed.decision)
        return route_reply(self.router, routed.decision)

    async def Feedback(self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext) -> pb.FeedbackReply:
        satisfaction = request.satisfaction if request.HasField("satisfaction") else None
        labels = [(x.model, x.satisfaction) for x in request.labels]
        args = (request.tenant, request.request_id, satisfaction, labels)
        if self.router.store.shared:
            left = context.time_remaining()
            fut = await self._feedback_shared(args, self.record_wait_s if left is None else min(left, self.record_wait_s))
        else:
            fut = self.router.feedback(*args)
        result = await asyncio.wrap_future(fut)
        if result.applied:
            self.metrics.labelled(request.request_id, satisfaction, labels)
        return pb.FeedbackReply(request_id=result.request_id, duplicate=result.applied == 0,
                                labels_applied=result.applied, labels_duplicate=result.duplicate,
                                queue=result.queue, queue_updated=result.queue_updated)

    async def _feedback_shared(self, args: tuple, budget: float) -> Future[FeedbackResult]:
        """Router.feedback with a shared store: its reads off the event loop, and a record another replica may
        still be committing looked for again for up to record_wait_s (within the caller's deadline), the waits
        between reads (20 ms doubling to 200 ms) on the event loop, not on a thread."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + min(self.record_wait_s, budget), 0.02
        while True:
            try:
                return await asyncio.to_thread(self.router.feedback, *args)
            except NotFound:
                if loop.time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.2)

    async def SlaStatus(self, request: pb.SlaStatusRequest, context: grpc.aio.ServicerContext) -> pb.SlaStatusReply:
        self.router.tenant(request.tenant)  # an unknown tenant is refused before any database read
        st = await asyncio.to_thread(self.router.status, request.tenant) if self.router.store.shared \
            else self.router.status(request.tenant)
        n = max(st.requests, 1)
        models = [pb.ModelShare(model=name, served=int(st.served[k]), share=float(st.served[k]) / n,
                                invoked=int(st.invoked[k])) for k, name in enumerate(self.router.names)]
        return pb.SlaStatusReply(tenant=st.cfg.name, alpha=st.cfg.alpha, queue=st.queue, requests=st.requests,
                                 labelled=st.labelled, satisfaction=st.satisfaction, mean_cost=st.cost_sum / n,
                                 mean_cost_raw=st.cost_raw_sum / n, exploration_steps=st.explore_steps,
                                 models=models, sla_met=st.sla_met)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsReply:
        costs = self.router.costs()
        st = self.triton.state if self.triton is not None else None
        triton = (pb.TritonStatus(address=st.url, reachable=st.reachable, state=st.kind, problem=st.problem)
                  if st is not None else pb.TritonStatus(state=ROUTE_ONLY) if self.zoo is None else None)
        return pb.ListModelsReply(cost_unit=self.cost_unit, triton=triton, models=[
            pb.ZooModel(name=m.name, triton_model=m.triton_model, cost=float(costs[k]),
                        cost_raw=float(self.router.cost_raw[k]), available=bool(self.router.available[k]))
            for k, m in enumerate(self.router.models)])

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateReply]:
        if self.zoo is None:
            raise Unsupported("this router runs Route-only (triton.url = \"none\"): call Route, serve the routed "
                              "model yourself, then send Feedback")
        sampling = sampling_parameters(request.sampling)  # a refused call is not routed: nothing counted
        if self.max_streams and self.zoo.open_streams >= self.max_streams:
            # a cancelled Generate frees its admission slot while its Triton stream is read to its end (zoo._pump):
            # without this bound, callers that cancel at once kept any number of generations running
            raise Overloaded(f"{self.zoo.open_streams} Triton streams are open (server.max_inflight: "
                             f"{self.max_streams}), abandoned calls' answers among them; retry with backoff")
        text, routed = await self._route(request)
        d = routed.decision
        try:
            yield pb.GenerateReply(route=route_reply(self.router, d))
            budget = remaining(context, self.triton_timeout_s)
            call = Calls(self.router, self.zoo, self.metrics, text, sampling, budget,
                         callers_deadline=budget < self.triton_timeout_s)
            async for reply in call.run(d):
                yield reply
        except BaseException:  # no model answered, or the caller went away: the id may be used again
            self.router.release(d.request_id)
            raise
        self.router.record(d, routed.embedding, served=call.served, invoked=tuple(sorted(call.invoked)),
                           cost=call.cost, cost_raw=call.cost_raw)
        self.metrics.routed(d, served=call.served)
        yield pb.GenerateReply(done=pb.GenerateDone(served_model=self.router.names[call.served], cost=call.cost,
                                                    cost_raw=call.cost_raw))
