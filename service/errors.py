"""Errors, and their one mapping to gRPC status codes.

The tree::

    MessplusError                      per-request errors, mapped to a gRPC status by `status_of`
    ├── InvalidArgument(field)         INVALID_ARGUMENT: a field of the request is wrong; names the field
    ├── NotFound                       NOT_FOUND: unknown request id (or another tenant's)
    ├── Conflict                       FAILED_PRECONDITION: write-once feedback given a different value
    ├── Unauthenticated                UNAUTHENTICATED: no or bad credentials
    ├── PermissionDenied               PERMISSION_DENIED: the caller may not act for that tenant
    ├── Overloaded                     RESOURCE_EXHAUSTED: admission control or a tenant's rate limit
    ├── NoModelAvailable               UNAVAILABLE: no zoo model can serve the request now
    ├── StorageUnavailable             UNAVAILABLE: the state store could not commit (disk full, I/O error)
    └── DeadlineTooShort               DEADLINE_EXCEEDED: the caller's deadline ran out before the work finished
    ConfigError(key)                   fatal at start-up: the configuration is wrong; names the key

Handlers raise these; `ErrorInterceptor` turns them into statuses. Any other exception becomes INTERNAL
with a generic message (the stack trace goes to the log, never onto the wire).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("messplus.errors")


class MessplusError(Exception):
    """A per-request error with a message the caller can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MessplusError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(MessplusError):
    code = grpc.StatusCode.NOT_FOUND


class Conflict(MessplusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(MessplusError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MessplusError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(MessplusError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoModelAvailable(MessplusError):
    code = grpc.StatusCode.UNAVAILABLE


class StorageUnavailable(MessplusError):
    """The durable write failed, so nothing was applied or acknowledged; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineTooShort(MessplusError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ConfigError(Exception):
    """The configuration is wrong; the server must not start. The message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place where an exception becomes a gRPC status and message."""
    if isinstance(exc, MessplusError):
        return exc.code, exc.message
    log.exception("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _wrap_unary(fn: Unary) -> Unary:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except MessplusError as exc:
            code, message = status_of(exc)
        except Exception as exc:  # noqa: BLE001 - every other failure is INTERNAL, by design
            code, message = status_of(exc)
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
        except MessplusError as exc:
            code, message = status_of(exc)
        except Exception as exc:  # noqa: BLE001
            code, message = status_of(exc)
        await context.abort(code, message)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors raised by handlers to gRPC statuses, so handlers never call `abort` themselves."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.request_deserializer:
            return handler
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream), **kw)
        return handler
