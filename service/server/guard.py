"""The gate in front of every RoutingService call: authentication, tenant authorisation, per-tenant rate limits,
admission control, then latency metrics and one access-log line with the request id.

Order per call: bearer token (UNAUTHENTICATED) -> the token's tenants (PERMISSION_DENIED) -> the tenant's rate
limit (RESOURCE_EXHAUSTED) -> a free in-flight slot (RESOURCE_EXHAUSTED, answered at once: no queue builds up, so
admitted calls keep their latency under overload) -> the handler. Health and reflection bypass the gate: probes
work without credentials and during overload. Errors are raised as domain errors; ErrorInterceptor, outside
this one, turns them into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import Any

import grpc

from ..errors import MessplusError, Overloaded
from ..logs import request_id_var
from .metrics import Metrics
from .security import RateLimiter, TokenAuth

log = logging.getLogger("messplus.access")
GUARDED_SERVICE = "/messplus.v1.RoutingService/"


class Admission:
    """At most `limit` calls in flight; the next one is refused at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    def enter(self) -> None:
        if self.inflight >= self.limit:
            raise Overloaded(f"server is at its limit of {self.limit} calls in flight; retry with backoff")
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1


class _Call:
    """Book-keeping of one guarded call: the checks before, the metric and the log line after."""

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Admit the call, then record how it ended (failure included) and release its slot, whatever happens."""
        try:
            self.admit()
            yield
        except BaseException as exc:
            self.failed(exc)
            raise
        finally:
            self.finish()

    def __init__(self, guard: GuardInterceptor, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.guard, self.method, self.context = guard, method, context
        self.tenant = str(getattr(request, "tenant", ""))
        self.started = time.perf_counter()
        self.admitted = False
        self.code = "OK"
        request_id_var.set(str(getattr(request, "request_id", "")))  # each call runs in a task of its own

    def admit(self) -> None:
        g = self.guard
        grant = g.auth.grant(self.context.invocation_metadata())
        g.auth.authorize(grant, self.tenant)
        if self.tenant in g.tenants:
            g.limiter.take(self.tenant)
        g.admission.enter()
        self.admitted = True

    def saw(self, reply: Any) -> None:
        rid = getattr(reply, "request_id", "") or getattr(getattr(reply, "route", None), "request_id", "")
        if rid:
            request_id_var.set(rid)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, MessplusError):
            self.code = exc.code.name
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = "CANCELLED"
        else:
            self.code = "INTERNAL"

    def finish(self) -> None:
        if self.admitted:
            self.guard.admission.leave()
        took = time.perf_counter() - self.started
        self.guard.metrics.rpc.labels(self.method, self.code).observe(took)
        log.info("%s %s %.1f ms tenant=%s request_id=%s", self.method, self.code, took * 1e3, self.tenant,
                 request_id_var.get(), extra={"rpc": self.method, "code": self.code, "ms": round(took * 1e3, 3),
                                              "tenant": self.tenant})


class GuardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, *, auth: TokenAuth, limiter: RateLimiter, admission: Admission, metrics: Metrics,
                 tenants: Collection[str]) -> None:
        self.auth, self.limiter, self.admission, self.metrics = auth, limiter, admission, metrics
        self.tenants = frozenset(tenants)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        name = handler_call_details.method
        if handler is None or not name.startswith(GUARDED_SERVICE):
            return handler
        method = name[len(GUARDED_SERVICE):]
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream), **kw)
        return handler

    def _unary(self, method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self, method, request, context)
            with call.guarded():
                reply = await fn(request, context)
                call.saw(reply)
                return reply

        return handler

    def _stream(self, method: str, fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(self, method, request, context)
            with call.guarded():
                async for reply in fn(request, context):
                    call.saw(reply)
                    yield reply

        return handler
