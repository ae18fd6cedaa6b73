"""Every RPC of messplus.v1.RoutingService states its tenant scope, and the guard enforces it: a tenant-scoped
call is authorised for the tenant its request names, a tenant-free one needs only a valid token, and an RPC
without a declaration (a server bug) is refused instead of running unscoped. No sockets: the two interceptors
are driven directly, in the order the server stacks them (ErrorInterceptor outside the guard)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from messplus.service.server import guard
from messplus.service.server.guard import SCOPES, Admission, GuardInterceptor, Scope
from messplus.service.server.metrics import Metrics
from messplus.service.server.security import Grant, RateLimiter, TokenAuth
from messplus.service.server.status import INTERNAL_MESSAGE, ErrorInterceptor
from messplus.v1 import routing_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["RoutingService"]
METHODS = list(SERVICE.methods)
ACME = "a" * 20  # a token that may act for tenant acme only
S = grpc.StatusCode


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class Context:
    def __init__(self, token: str | None) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def done(self) -> bool:  # a call still open, with no deadline
        return False

    def time_remaining(self) -> float | None:
        return None


class Details:
    def __init__(self, method: str) -> None:
        self.method = f"/{SERVICE.full_name}/{method}"
        self.invocation_metadata = ()


def _handler(streaming: bool) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: Any) -> str:
        return "ok"

    async def stream(request: Any, context: Any) -> AsyncIterator[str]:
        yield "ok"

    kw = {"request_deserializer": bytes, "response_serializer": bytes}
    if streaming:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def call(method: str, request: Any, *, token: str | None = ACME, streaming: bool = False,
         metrics: Metrics | None = None) -> tuple[grpc.StatusCode, str]:
    """Serve one call through ErrorInterceptor(guard(handler)), as the server stacks them."""
    auth = TokenAuth([(ACME.encode(), Grant(frozenset({"acme"})))])
    gate = GuardInterceptor(auth=auth, limiter=RateLimiter(0.0), admission=Admission(4),
                            metrics=metrics or Metrics(), tenants={"acme", "beta"})

    async def inner(details: Any) -> grpc.RpcMethodHandler:
        return _handler(streaming)

    async def guarded(details: Any) -> grpc.RpcMethodHandler:
        return await gate.intercept_service(inner, details)

    async def run() -> tuple[grpc.StatusCode, str]:
        handler = await ErrorInterceptor().intercept_service(guarded, Details(method))
        try:
            if streaming:
                assert [x async for x in handler.unary_stream(request, Context(token))] == ["ok"]
            else:
                assert await handler.unary_unary(request, Context(token)) == "ok"
        except Aborted as exc:
            return exc.code, exc.details
        return S.OK, ""

    return asyncio.run(run())


def _tenant_field(method: MethodDescriptor) -> FieldDescriptor | None:
    return method.input_type.fields_by_name.get("tenant")


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_every_rpc_declares_a_tenant_scope_that_matches_its_request(method: MethodDescriptor) -> None:
    assert method.name in SCOPES, f"{SERVICE.full_name}/{method.name}: declare its tenant scope in guard.SCOPES"
    field = _tenant_field(method)
    if SCOPES[method.name] is Scope.TENANT:
        assert field is not None and field.type == FieldDescriptor.TYPE_STRING, \
            f"{method.name} is tenant-scoped, so {method.input_type.name} needs a string field 'tenant'"
    else:  # a tenant-free RPC must not carry a tenant that nobody would authorise
        assert field is None, f"{method.name} is tenant-free but {method.input_type.name} has a 'tenant' field"


def test_the_declaration_names_only_rpcs_of_the_service() -> None:
    assert set(SCOPES) == {m.name for m in METHODS}


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_every_rpc_is_served_within_its_scope(method: MethodDescriptor) -> None:
    request_type = getattr(pb, method.input_type.name)
    streaming = method.server_streaming
    if SCOPES[method.name] is Scope.TENANT:
        assert call(method.name, request_type(tenant="acme"), streaming=streaming) == (S.OK, "")
        code, details = call(method.name, request_type(tenant="beta"), streaming=streaming)
        assert (code, details) == (S.PERMISSION_DENIED, "tenant: this token may not act for tenant 'beta'")
    else:
        assert call(method.name, request_type(), streaming=streaming) == (S.OK, "")
    assert call(method.name, request_type(), token=None, streaming=streaming)[0] is S.UNAUTHENTICATED


def test_an_undeclared_rpc_is_refused_as_a_server_bug(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.INFO):
        assert call("Bogus", pb.RouteRequest(tenant="acme"), metrics=metrics) == (S.INTERNAL, INTERNAL_MESSAGE)
    assert "RoutingService/Bogus declares no tenant scope" in caplog.text  # the log names it; the wire does not
    assert metrics.registry.get_sample_value("messplus_rpc_duration_seconds_count",
                                             {"method": "Bogus", "code": "INTERNAL"}) == 1
    assert call("Bogus", pb.RouteRequest(tenant="acme"), token=None)[0] is S.UNAUTHENTICATED  # auth comes first


def test_a_tenant_scoped_rpc_whose_request_has_no_tenant_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert call("Route", pb.ListModelsRequest()) == (S.INTERNAL, INTERNAL_MESSAGE)
    assert "declared tenant-scoped but its request ListModelsRequest has no tenant field" in caplog.text


def test_a_new_rpc_without_a_declaration_would_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "SCOPES", {k: v for k, v in SCOPES.items() if k != "ListModels"})
    assert call("ListModels", pb.ListModelsRequest()) == (S.INTERNAL, INTERNAL_MESSAGE)


def gate_calls(gate: GuardInterceptor, requests: list[Any], token: str | None = ACME,
               method: str = "Route") -> list[tuple[grpc.StatusCode, str]]:
    """Serve each request through ErrorInterceptor(gate(handler)) with one gate (its limiter and admission)."""
    async def inner(details: Any) -> grpc.RpcMethodHandler:
        return _handler(False)

    async def guarded(details: Any) -> grpc.RpcMethodHandler:
        return await gate.intercept_service(inner, details)

    async def run() -> list[tuple[grpc.StatusCode, str]]:
        out = []
        for request in requests:
            handler = await ErrorInterceptor().intercept_service(guarded, Details(method))
            try:
                await handler.unary_unary(request, Context(token))
                out.append((S.OK, ""))
            except Aborted as exc:
                out.append((exc.code, exc.details))
        return out

    return asyncio.run(run())


def test_a_call_refused_for_overload_costs_the_tenant_no_rate_limit_token() -> None:
    """The rate limit is taken after admission: three calls refused because the server was full left acme's
    bucket empty, and its next call was refused for a rate limit it had not used."""
    auth = TokenAuth([(ACME.encode(), Grant(frozenset({"acme"})))])
    gate = GuardInterceptor(auth=auth, limiter=RateLimiter(0.001, burst=3), admission=Admission(0),
                            metrics=Metrics(), tenants={"acme"})
    assert [c for c, _ in gate_calls(gate, [pb.RouteRequest(tenant="acme")] * 3)] == [S.RESOURCE_EXHAUSTED] * 3
    gate.admission.limit = 4
    got = gate_calls(gate, [pb.RouteRequest(tenant="acme")] * 4)
    assert [c for c, _ in got] == [S.OK] * 3 + [S.RESOURCE_EXHAUSTED] and "rate limit" in got[-1][1]


def test_bytes_that_do_not_parse_are_refused_after_the_token(caplog: pytest.LogCaptureFixture) -> None:
    """A caller without a token learned how its bytes parsed (INVALID_ARGUMENT before UNAUTHENTICATED), and
    such a call left no access record."""
    from messplus.service.server.status import Undecodable

    junk = Undecodable(ValueError("truncated message"))
    auth = TokenAuth([(ACME.encode(), Grant(frozenset({"acme"})))])
    gate = GuardInterceptor(auth=auth, limiter=RateLimiter(0.0), admission=Admission(4), metrics=Metrics(),
                            tenants={"acme"})
    with caplog.at_level(logging.INFO, logger="messplus.access"):
        (anonymous,) = gate_calls(gate, [junk], token=None)
        (known,) = gate_calls(gate, [junk])
    assert anonymous[0] == S.UNAUTHENTICATED
    assert known[0] == S.INVALID_ARGUMENT and known[1].startswith("request: the request's bytes do not parse")
    assert [r.code for r in caplog.records if hasattr(r, "rpc")] == ["UNAUTHENTICATED", "INVALID_ARGUMENT"]


def test_the_access_line_quotes_and_cuts_a_callers_values(caplog: pytest.LogCaptureFixture) -> None:
    """An unauthenticated caller's tenant with a newline forged a second log line; a 1 MB one wrote 1 MB."""
    gate = GuardInterceptor(auth=TokenAuth([(ACME.encode(), Grant(frozenset({"acme"})))]), limiter=RateLimiter(0.0),
                            admission=Admission(4), metrics=Metrics(), tenants={"acme"})
    forged = "acme 0.1 ms tenant=acme request_id=x\nRoute OK 0.1 ms tenant=acme request_id=forged"
    with caplog.at_level(logging.INFO, logger="messplus.access"):
        gate_calls(gate, [pb.RouteRequest(tenant=forged, request_id="r" * 100_000),
                          pb.RouteRequest(tenant="acme", request_id="plain-1")], token=None)
    first, second = (r for r in caplog.records if r.name == "messplus.access")
    assert "\n" not in first.getMessage() and len(first.getMessage()) < 400 and "characters)" in first.getMessage()
    assert "\n" not in first.tenant  # type: ignore[attr-defined]
    assert second.getMessage().endswith("tenant=acme request_id=plain-1")


@pytest.mark.parametrize(("left", "code"), [(-0.01, "DEADLINE_EXCEEDED"), (0.03, "DEADLINE_EXCEEDED"),
                                            (5.0, "CANCELLED"), (None, "CANCELLED")])
def test_a_cancelled_call_is_labelled_by_the_deadline_it_had_left(left: float | None, code: str) -> None:
    """grpcio cancels a call whose deadline passed as it cancels one the caller gave up: the time left tells them
    apart, and the caller's cancellation reaches the server with a few ms still left on the server's copy of the
    deadline (CI under load labelled a 0.4 s deadline CANCELLED)."""

    class Remaining:
        def time_remaining(self) -> float | None:
            return left

    call = guard._Call.__new__(guard._Call)
    call.context = Remaining()  # type: ignore[assignment]
    call.failed(asyncio.CancelledError())
    assert call.code == code
