"""The one mapping from domain errors (service/errors.py, which draws the tree) to gRPC status codes.

`STATUS` is the table; `code_of` reads it (the nearest mapped class of the error wins, so a subclass gets its
parent's status); `status_of` gives the code and the message that go on the wire; `ErrorInterceptor` applies it
to every handler, so handlers raise domain errors and never call `context.abort` themselves. Any exception that
is not a MessplusError becomes INTERNAL with a generic message; its stack trace goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import grpc

from ..errors import (AlreadyExists, Conflict, DeadlineTooShort, InvalidArgument, MessplusError, NoModelAvailable,
                      NotFound, Overloaded, PermissionDenied, StorageUnavailable, Unauthenticated, Unsupported)

log = logging.getLogger("messplus.errors")

STATUS: Mapping[type[MessplusError], grpc.StatusCode] = MappingProxyType({
    MessplusError: grpc.StatusCode.INTERNAL,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NoModelAvailable: grpc.StatusCode.UNAVAILABLE,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    DeadlineTooShort: grpc.StatusCode.DEADLINE_EXCEEDED,
})
INTERNAL_MESSAGE = "internal error; the server log has the details"
MESSAGE_MAX = 2000  # characters of a status message; gRPC refuses trailers past its metadata limit
SERVICE = "/messplus.v1.RoutingService/"  # the methods these interceptors wrap (not health, not reflection)


def code_of(exc: MessplusError) -> grpc.StatusCode:
    """The status of a domain error: that of its nearest class in `STATUS`."""
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place where an exception becomes a gRPC status and message."""
    if isinstance(exc, MessplusError):
        message = exc.message
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX] + "... (cut)"
        return code_of(exc), message
    log.exception("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class Undecodable:
    """What a request whose bytes do not parse as its message becomes (invalid UTF-8 in a string field, a
    truncated message): the handler answers INVALID_ARGUMENT instead of grpcio's UNKNOWN."""

    def __init__(self, exc: Exception) -> None:
        self.problem = f"the request's bytes do not parse as its protobuf message ({type(exc).__name__}: {exc})"


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bytes
            return Undecodable(exc)

    return parse


def _unparsed(request: Any, exc: Exception) -> Exception:
    """The error to answer: INVALID_ARGUMENT for a request that does not parse whatever a handler made of it
    (a server without the guard, which refuses such requests after the token, hands it on as it is)."""
    if isinstance(request, Undecodable) and not isinstance(exc, MessplusError):
        return InvalidArgument("request", request.problem)
    return exc


def _wrap_unary(fn: Unary) -> Unary:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)  # the guard refuses bytes that do not parse, after the token
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - domain errors get their status, every other failure INTERNAL
            code, message = status_of(_unparsed(request, exc))
        await context.abort(code, message)

    return handler


def _wrap_stream(fn: Streaming) -> Streaming:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
            return
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in _wrap_unary
            code, message = status_of(_unparsed(request, exc))
        left = context.time_remaining()
        if context.done() or (left is not None and left <= 0):
            # the deadline passed while the answer streamed: gRPC has ended the call (DEADLINE_EXCEEDED), no
            # status can be sent any more, and grpcio logged a traceback (ExecuteBatchError) for each such call
            # (aborting, or ending the stream, tries to send one)
            raise asyncio.CancelledError
        await context.abort(code, message)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors raised by the RoutingService's handlers to gRPC statuses, so handlers never call
    `abort` themselves; a request that does not parse gets INVALID_ARGUMENT. Other services (health,
    reflection) keep their own handlers: grpcio's health Watch is not an async generator."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.request_deserializer or not handler_call_details.method.startswith(SERVICE):
            return handler
        return wrap_handler(handler, _wrap_unary, _wrap_stream, _tolerant(handler.request_deserializer))


def wrap_handler(handler: grpc.RpcMethodHandler, unary: Callable[[Unary], Unary],
                 stream: Callable[[Streaming], Streaming],
                 deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """The same RPC handler with its unary-unary or unary-stream behaviour wrapped (interceptors use it), and
    its request deserializer replaced where one is given."""
    kw = {"request_deserializer": deserializer or handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    return handler
