"""Every bad input gets its gRPC status and a message naming what to fix, over a real connection (to one App in
this process for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo, router_toml
from ..support.inprocess import AppThread

pytestmark = pytest.mark.triton
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def app_channel(tmp_path_factory: pytest.TempPathFactory, demo_zoo: DemoZoo,
                encoder_onnx: Path) -> Iterator[grpc.Channel]:
    root = tmp_path_factory.mktemp("invalid")
    text = router_toml(root / "state", demo_zoo, encoder_onnx,
                       server={"max_prompt_chars": 5000, "max_message_bytes": 65536})
    with AppThread(root, text) as app, grpc.insecure_channel(app.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(app_channel: grpc.Channel) -> pb_grpc.RoutingServiceStub:
    return pb_grpc.RoutingServiceStub(app_channel)


def expect(call: object, request: object, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        result = call(request, timeout=10)  # type: ignore[operator]
        if not isinstance(result, pb.RouteReply | pb.FeedbackReply | pb.SlaStatusReply):
            list(result)  # a stream: errors arrive while reading it
    assert err.value.code() == code, err.value.details()
    assert words in err.value.details()


ROUTE_CASES = [
    (pb.RouteRequest(text="hi"), INVALID, "tenant: must not be empty"),
    (pb.RouteRequest(tenant="nobody", text="hi"), INVALID, "tenant: unknown tenant 'nobody'"),
    (pb.RouteRequest(tenant="acme"), INVALID, "prompt: set either text or chat"),
    (pb.RouteRequest(tenant="acme", text="   "), INVALID, "text: prompt text must not be empty"),
    (pb.RouteRequest(tenant="acme", text="x" * 5001), INVALID, "text: prompt has 5001 characters"),
    (pb.RouteRequest(tenant="acme", chat=pb.Chat()), INVALID, "chat.messages: at least one message"),
    (pb.RouteRequest(tenant="acme", chat=pb.Chat(messages=[pb.ChatMessage(role="user")])), INVALID,
     "chat.messages[0].content"),
    (pb.RouteRequest(tenant="acme", text="hi", request_id="has space"), INVALID, "request_id"),
    (pb.RouteRequest(tenant="acme", text="hi", request_id="ends-in-newline\n"), INVALID, "request_id"),
    (pb.RouteRequest(tenant="acme", text="hi", request_id="x" * 129), INVALID, "request_id"),
    # a long value is quoted cut short: repeated whole, the message would overflow gRPC's metadata limit and the
    # caller would get RESOURCE_EXHAUSTED, which tells it to retry
    (pb.RouteRequest(tenant="t" * 20000, text="hi"), INVALID, "... (20000 characters) (configured:"),
    (pb.RouteRequest(tenant="acme", text="hi", overrides=pb.RouteOverrides(allowed_models=["m" * 20000])), INVALID,
     "... (20000 characters) (zoo:"),
    (pb.RouteRequest(tenant="acme", text="hi", overrides=pb.RouteOverrides(allowed_models=["gpt-9"])), INVALID,
     "overrides.allowed_models: unknown model 'gpt-9'"),
    (pb.RouteRequest(tenant="acme", text="hi", overrides=pb.RouteOverrides(excluded_models=["nope"])), INVALID,
     "overrides.excluded_models"),
    # an unknown name is the problem, not that it excludes what it allows
    (pb.RouteRequest(tenant="acme", text="hi", overrides=pb.RouteOverrides(allowed_models=["gpt-9"],
                                                                          excluded_models=["gpt-9"])), INVALID,
     "overrides.allowed_models: unknown model 'gpt-9'"),
]


@pytest.mark.parametrize(("request_", "code", "words"), ROUTE_CASES)
def test_bad_route_and_generate_requests(stub: pb_grpc.RoutingServiceStub, request_: pb.RouteRequest,
                                         code: grpc.StatusCode, words: str) -> None:
    expect(stub.Route, request_, code, words)
    gen = pb.GenerateRequest()
    gen.ParseFromString(request_.SerializeToString())  # same field numbers for the shared fields
    expect(stub.Generate, gen, code, words)


def test_oversized_message_is_refused_by_grpc(stub: pb_grpc.RoutingServiceStub) -> None:
    expect(stub.Route, pb.RouteRequest(tenant="acme", text="x" * 70000), grpc.StatusCode.RESOURCE_EXHAUSTED,
           "larger than max")


def test_reused_request_id_is_already_exists(stub: pb_grpc.RoutingServiceStub) -> None:
    stub.Route(pb.RouteRequest(tenant="acme", text="first", request_id="dup-1"), timeout=10)
    expect(stub.Route, pb.RouteRequest(tenant="acme", text="second", request_id="dup-1"),
           grpc.StatusCode.ALREADY_EXISTS, "dup-1")


def test_bytes_that_do_not_parse_are_invalid_argument(stub: pb_grpc.RoutingServiceStub,
                                                     app_channel: grpc.Channel) -> None:
    """Invalid UTF-8 in a string field (what a client sending a lone surrogate produces) is the caller's error,
    not grpcio's UNKNOWN."""
    tenant_field = b"\x12\x02\xff\xfe"  # RouteRequest.tenant (field 2), two bytes that are not UTF-8
    raw = app_channel.unary_unary("/messplus.v1.RoutingService/Route")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        raw(tenant_field, timeout=10)
    assert err.value.code() == INVALID, err.value.details()
    assert "do not parse as its protobuf message" in err.value.details()


def test_all_models_excluded_is_invalid_argument(stub: pb_grpc.RoutingServiceStub) -> None:
    """Overrides that leave no model can never be served: the request is wrong, not the zoo unavailable."""
    names = [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models]
    expect(stub.Route, pb.RouteRequest(tenant="acme", text="hi", overrides=pb.RouteOverrides(excluded_models=names)),
           INVALID, "overrides.excluded_models: the overrides exclude every model they allow")


@pytest.fixture
def routed(stub: pb_grpc.RoutingServiceStub) -> pb.RouteReply:
    return stub.Route(pb.RouteRequest(tenant="acme", text="Name a prime number.",
                                      overrides=pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)), timeout=10)


def feedback_cases(r: pb.RouteReply) -> list[tuple[pb.FeedbackRequest, grpc.StatusCode, str]]:
    rid, other = r.request_id, next(p.model for p in r.predictions if p.model != r.model)
    return [
        (pb.FeedbackRequest(tenant="acme", request_id="no-such-id", satisfaction=1.0), NOT_FOUND, "no-such-id"),
        (pb.FeedbackRequest(tenant="acme", request_id="r" * 20000, satisfaction=1.0), NOT_FOUND,
         "... (20000 characters) is not a request"),
        (pb.FeedbackRequest(tenant="beta", request_id=rid, satisfaction=1.0), NOT_FOUND, "tenant 'beta'"),
        (pb.FeedbackRequest(tenant="", request_id=rid, satisfaction=1.0), INVALID, "tenant: must not be empty"),
        (pb.FeedbackRequest(tenant="acme", request_id="", satisfaction=1.0), INVALID, "request_id: must not be empty"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, satisfaction=float("nan")), INVALID, "satisfaction"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, satisfaction=1.5), INVALID, "satisfaction"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, satisfaction=-0.01), INVALID, "satisfaction"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, satisfaction=float("inf")), INVALID, "satisfaction"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid), INVALID, "satisfaction: give satisfaction"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, labels=[pb.ModelSatisfaction(model="gpt-9",
                                                                                       satisfaction=1)]),
         INVALID, "labels[0].model: unknown model 'gpt-9'"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, labels=[pb.ModelSatisfaction(model=other,
                                                                                       satisfaction=1)]),
         INVALID, "labels[0].model: model " + repr(other) + " gave no answer for this request"),
        (pb.FeedbackRequest(tenant="acme", request_id=rid, labels=[pb.ModelSatisfaction(model=r.model,
                                                                                       satisfaction=2)]),
         INVALID, "labels[0].satisfaction"),
    ]


def test_bad_feedback(stub: pb_grpc.RoutingServiceStub, routed: pb.RouteReply) -> None:
    for request, code, words in feedback_cases(routed):
        expect(stub.Feedback, request, code, words)
    status = stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
    assert status.labelled == 0, "a refused feedback changed the books"


def test_conflicting_feedback_is_failed_precondition(stub: pb_grpc.RoutingServiceStub, routed: pb.RouteReply) -> None:
    stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id=routed.request_id, satisfaction=1.0), timeout=10)
    expect(stub.Feedback, pb.FeedbackRequest(tenant="acme", request_id=routed.request_id, satisfaction=0.0),
           grpc.StatusCode.FAILED_PRECONDITION, "write-once")


@pytest.mark.parametrize(("tenant", "words"), [("", "tenant: must not be empty"), ("ghost", "unknown tenant")])
def test_bad_sla_status(stub: pb_grpc.RoutingServiceStub, tenant: str, words: str) -> None:
    expect(stub.SlaStatus, pb.SlaStatusRequest(tenant=tenant), INVALID, words)


def test_bad_sampling_parameters_are_refused_before_anything_is_routed(stub: pb_grpc.RoutingServiceStub) -> None:
    before = stub.Route(pb.RouteRequest(tenant="beta", text="hi"), timeout=10).tenant_request_index
    req = pb.GenerateRequest(tenant="beta", text="hi", sampling=pb.SamplingParameters(top_p=1.5))
    expect(stub.Generate, req, INVALID, "sampling.top_p")
    after = stub.Route(pb.RouteRequest(tenant="beta", text="hi"), timeout=10).tenant_request_index
    assert after == before + 1, "a refused Generate moved the tenant's request clock"
