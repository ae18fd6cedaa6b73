"""The domain errors carry no transport, and server/status.py maps each to the status and message callers saw
before the split: one table, nearest class wins, anything else INTERNAL without its details on the wire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from messplus.service import errors
from messplus.service.errors import (AlreadyExists, Conflict, DeadlineTooShort, InvalidArgument, MessplusError,
                                     NoModelAvailable, NotFound, Overloaded, PermissionDenied, StorageUnavailable,
                                     Unauthenticated)
from messplus.service.server.status import INTERNAL_MESSAGE, STATUS, ErrorInterceptor, code_of, status_of
from messplus.service.state.base import then

S = grpc.StatusCode
WIRE = [  # the statuses of the wire, as they were when each error carried its own code
    (InvalidArgument("tenant", "must not be empty"), S.INVALID_ARGUMENT, "tenant: must not be empty"),
    (NotFound("unknown request id"), S.NOT_FOUND, "unknown request id"),
    (AlreadyExists("request_id 'r' was already routed"), S.ALREADY_EXISTS, "request_id 'r' was already routed"),
    (Conflict("write-once"), S.FAILED_PRECONDITION, "write-once"),
    (Unauthenticated("invalid bearer token"), S.UNAUTHENTICATED, "invalid bearer token"),
    (PermissionDenied("tenant: no"), S.PERMISSION_DENIED, "tenant: no"),
    (Overloaded("at the limit"), S.RESOURCE_EXHAUSTED, "at the limit"),
    (NoModelAvailable("none"), S.UNAVAILABLE, "none"),
    (StorageUnavailable("disk full"), S.UNAVAILABLE, "disk full"),
    (DeadlineTooShort("too late"), S.DEADLINE_EXCEEDED, "too late"),
    (MessplusError("bare"), S.INTERNAL, "bare"),
]


def test_domain_errors_carry_no_status_of_their_own() -> None:
    """The status lives in one table (that errors.py imports no gRPC is pinned by test_architecture)."""
    assert not [c for c in vars(errors).values() if isinstance(c, type) and hasattr(c, "code")]


@pytest.mark.parametrize(("exc", "code", "message"), WIRE, ids=[type(e).__name__ for e, _, _ in WIRE])
def test_each_domain_error_keeps_its_status_and_message(exc: MessplusError, code: grpc.StatusCode,
                                                        message: str) -> None:
    assert status_of(exc) == (code, message)


def test_every_error_of_the_tree_is_in_the_table() -> None:
    tree = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, MessplusError)}
    assert tree == set(STATUS)


def test_a_subclass_gets_its_nearest_mapped_status() -> None:
    class Gone(NotFound):
        pass

    assert code_of(Gone("x")) is S.NOT_FOUND


def test_an_unexpected_exception_is_internal_with_the_trace_in_the_log_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="messplus.errors"):
        code, message = status_of(ValueError("secret detail"))
    assert (code, message) == (S.INTERNAL, INTERNAL_MESSAGE) and "secret" not in message
    assert caplog.records[-1].exc_info is not None and "secret detail" in caplog.text


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class Context:
    def __init__(self, left: float | None = None) -> None:
        self.left = left  # the deadline's time left (None: no deadline)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def done(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return self.left


class Details:
    method = "/messplus.v1.RoutingService/Route"
    invocation_metadata = ()


def _intercept(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return handler

    return asyncio.run(ErrorInterceptor().intercept_service(continuation, Details()))


@pytest.mark.parametrize(("exc", "code", "message"), [WIRE[0], (KeyError("x"), S.INTERNAL, INTERNAL_MESSAGE)])
def test_the_interceptor_aborts_unary_and_streaming_calls_with_the_mapped_status(
        exc: Exception, code: grpc.StatusCode, message: str) -> None:
    async def unary(request: Any, context: Any) -> Any:
        raise exc

    async def stream(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise exc

    kw = {"request_deserializer": bytes, "response_serializer": bytes}
    wrapped = _intercept(grpc.unary_unary_rpc_method_handler(unary, **kw))
    with pytest.raises(Aborted) as err:
        asyncio.run(wrapped.unary_unary(None, Context()))
    assert (err.value.code, err.value.details) == (code, message)

    async def drain(gen: AsyncIterator[int], seen: list[int]) -> None:
        async for x in gen:
            seen.append(x)

    seen: list[int] = []
    wrapped = _intercept(grpc.unary_stream_rpc_method_handler(stream, **kw))
    with pytest.raises(Aborted) as err:
        asyncio.run(drain(wrapped.unary_stream(None, Context()), seen))
    assert seen == [1] and (err.value.code, err.value.details) == (code, message)


def test_a_stream_whose_deadline_passed_ends_without_sending_a_status() -> None:
    """The deadline passed while the answer streamed: gRPC has ended the call (DEADLINE_EXCEEDED), and aborting
    or ending the stream tried to send a status grpcio could no longer send: a traceback in the log
    (ExecuteBatchError) for each such call, 1 to 4 per 600 short-deadline Generates. It ends cancelled."""
    async def stream(request: Any, context: Any) -> AsyncIterator[int]:
        yield 1
        raise DeadlineTooShort("the call's deadline expired while the model answered")

    wrapped = _intercept(grpc.unary_stream_rpc_method_handler(stream, request_deserializer=bytes,
                                                              response_serializer=bytes))

    async def drain(context: Context) -> list[int]:
        return [x async for x in wrapped.unary_stream(None, context)]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(drain(Context(left=-0.002)))
    with pytest.raises(Aborted) as err:  # time left: the status is sent
        asyncio.run(drain(Context(left=0.5)))
    assert err.value.code == S.DEADLINE_EXCEEDED


def test_a_result_nobody_waits_for_any_more_is_dropped_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A Feedback whose caller went away (cancelled, or past its deadline) still commits; its reply is dropped
    without an error in the log ('exception calling callback')."""
    source: Future[int] = Future()
    out = then(source, lambda x: x + 1)
    assert out.cancel()
    with caplog.at_level(logging.ERROR):
        source.set_result(1)
    assert not caplog.records, caplog.text
    failing = then(done := Future(), lambda x: 1 / x)  # a failing fn reaches the waiter, not the writer's log
    done.set_result(0)
    assert isinstance(failing.exception(timeout=1), ZeroDivisionError)


def test_a_json_log_records_extras_never_replace_its_own_fields() -> None:
    import json
    import logging

    from messplus.service.logs import JsonFormatter

    record = logging.LogRecord("messplus.access", logging.INFO, __file__, 1, "Route OK", None, None)
    record.__dict__.update({"level": "FAKE", "ts": 0, "logger": "spoof", "tenant": "acme"})
    out = json.loads(JsonFormatter().format(record))
    assert (out["level"], out["logger"], out["tenant"]) == ("INFO", "messplus.access", "acme") and out["ts"] > 0
