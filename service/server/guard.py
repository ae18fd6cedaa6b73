"""The gate in front of every RoutingService call: authentication, tenant authorisation, per-tenant rate limits,
admission control, then latency metrics and one access-log line with the request id.

Order per call: bearer token (UNAUTHENTICATED) -> bytes that do not parse (INVALID_ARGUMENT) -> the RPC's
declared tenant scope -> the token's tenants (PERMISSION_DENIED) -> a free in-flight slot (RESOURCE_EXHAUSTED,
answered at once: no queue builds up, so admitted calls keep their latency under overload) -> the tenant's rate
limit (RESOURCE_EXHAUSTED; after admission, so a call refused for overload costs the tenant nothing) -> the
handler. Health and reflection bypass the gate: probes work without credentials and during overload; their
streams (health Watch, reflection) are capped apart (SideStreamCap). Errors are raised as domain errors;
ErrorInterceptor (server/status.py), outside this one, turns them into statuses.

Every RPC of the service declares its tenant scope in `SCOPES`: TENANT (the request's `tenant` field is checked
against the token's grant and rate-limited) or NONE (any authenticated caller). An RPC missing from `SCOPES`, or
declared TENANT with a request that has no `tenant` field, is a server bug: the call is refused (INTERNAL, the
log names the method) instead of running unscoped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import grpc

from ..errors import SHOWN_MAX, InvalidArgument, MessplusError, Overloaded, shown
from ..logs import request_id_var
from .metrics import Metrics
from .security import RateLimiter, TokenAuth
from .status import SERVICE, Undecodable, code_of, wrap_handler

log = logging.getLogger("messplus.access")
GUARDED_SERVICE = SERVICE
# a call cancelled with at most this much of its deadline left counts as DEADLINE_EXCEEDED: the caller's timer starts
# before its request leaves, so the server's copy of the deadline runs a little later, and under load the caller's
# cancellation arrived with 1-50 ms still left on it (the metric said CANCELLED)
DEADLINE_SKEW_S = 0.1


class Scope(enum.Enum):
    """Whom an RPC acts for."""

    TENANT = "the tenant its request names"
    NONE = "no tenant"


SCOPES: Mapping[str, Scope] = MappingProxyType({
    "Route": Scope.TENANT,
    "Feedback": Scope.TENANT,
    "Generate": Scope.TENANT,
    "SlaStatus": Scope.TENANT,
    "ListModels": Scope.NONE,
})


class ScopeUndeclared(RuntimeError):
    """A server bug: the RPC has no declared tenant scope, or its request lacks the tenant its scope promises."""


def tenant_of(method: str, request: Any) -> str | None:
    """The tenant `method` acts for, per its declaration in SCOPES (None: a tenant-free RPC)."""
    scope = SCOPES.get(method)
    if scope is None:
        raise ScopeUndeclared(f"{GUARDED_SERVICE}{method} declares no tenant scope in guard.SCOPES; call refused")
    if scope is Scope.NONE:
        return None
    tenant = getattr(request, "tenant", None)
    if not isinstance(tenant, str):
        raise ScopeUndeclared(f"{GUARDED_SERVICE}{method} is declared tenant-scoped but its request "
                              f"{type(request).__name__} has no tenant field; call refused")
    return tenant


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
        self.guard, self.method, self.request, self.context = guard, method, request, context
        # for the log line (admit() checks the declared scope), as a caller wrote them: escaped and cut, since an
        # unauthenticated caller's newline forged log lines and a 1 MB tenant wrote 1 MB per refused call
        self.tenant = loggable(str(getattr(request, "tenant", "")))
        self.started = time.perf_counter()
        self.admitted = False
        self.code = "OK"
        request_id_var.set(loggable(str(getattr(request, "request_id", ""))))  # each call runs in a task of its own

    def admit(self) -> None:
        g = self.guard
        grant = g.auth.grant(self.context.invocation_metadata())
        if isinstance(self.request, Undecodable):  # after the token: a caller without one learns nothing of it
            log.warning("refused a request that does not parse: %s", self.request.problem)
            raise InvalidArgument("request", self.request.problem)
        tenant = tenant_of(self.method, self.request)
        if tenant is not None:
            g.auth.authorize(grant, tenant)
        g.admission.enter()
        self.admitted = True
        if tenant is not None and tenant in g.tenants:  # after admission: a call refused as overload costs no token
            g.limiter.take(tenant)

    def saw(self, reply: Any) -> None:
        rid = getattr(reply, "request_id", "") or getattr(getattr(reply, "route", None), "request_id", "")
        if rid:
            request_id_var.set(rid)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, MessplusError):
            self.code = code_of(exc).name
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            left = self.context.time_remaining()  # grpcio cancels a call whose deadline passed, too
            self.code = "DEADLINE_EXCEEDED" if left is not None and left <= DEADLINE_SKEW_S else "CANCELLED"
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


def loggable(value: str) -> str:
    """A caller's value as the access log writes it: as is when short and printable, else quoted and cut."""
    return value if len(value) <= SHOWN_MAX and value.isprintable() else shown(value)


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
        return wrap_handler(handler, lambda fn: self._unary(method, fn), lambda fn: self._stream(method, fn))

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


SIDE_STREAMS = 64  # health Watch and reflection streams open at once, whoever the caller (they need no token)


class SideStreamCap(grpc.aio.ServerInterceptor):
    """At most SIDE_STREAMS streaming calls of the services outside the gate (health Watch, reflection) at once;
    the next is refused RESOURCE_EXHAUSTED. They need no token, and they counted against gRPC's server-wide
    maximum_concurrent_rpcs (now a per-connection stream limit, app.py): a caller without a token holding
    enough Watch streams made every call refused, the liveness probe's health Check included. Unary calls
    (health Check) are never counted.

    close() ends the open streams UNAVAILABLE at a stop, once their watchers were sent NOT_SERVING: a Watch
    never ends by itself, and a stop that waited for it took the whole `grace_s` (gRPC clients' own health
    checking keeps one open per connection)."""

    def __init__(self, limit: int = SIDE_STREAMS) -> None:
        self.admission = Admission(limit)
        self._closing: asyncio.Event | None = None  # made on the server's loop, at the first stream or close()

    def close(self) -> None:
        """End every open side stream (and refuse new ones) UNAVAILABLE: the server is stopping."""
        self._closed().set()

    def _closed(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def _until_closed(self, step: Awaitable[Any], context: grpc.aio.ServicerContext) -> Any:
        """`step`'s result, unless close() comes first: then the step is cancelled and the call ends UNAVAILABLE."""
        work = asyncio.ensure_future(step)
        closing = asyncio.ensure_future(self._closed().wait())
        try:
            await asyncio.wait((work, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the caller gone (this task cancelled) cancels both too
            closing.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; reconnect (to another "
                                "replica)")
        return work.result()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(GUARDED_SERVICE):
            return handler
        kw = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._capped(handler.unary_stream), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._capped(handler.stream_stream), **kw)
        return handler

    @contextlib.asynccontextmanager
    async def _slot(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        if self._closed().is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; use another replica")
        try:
            self.admission.enter()
        except Overloaded:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.admission.limit} health and reflection "
                                "streams are open, the most this server keeps; retry with backoff")
        try:
            yield
        finally:
            self.admission.leave()

    def _capped(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(fn):
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._slot(context):
                    items = fn(request, context)
                    try:
                        while True:
                            try:
                                item = await self._until_closed(items.__anext__(), context)
                            except StopAsyncIteration:
                                return
                            yield item
                    finally:
                        await items.aclose()

            return stream

        async def written(request: Any, context: grpc.aio.ServicerContext) -> Any:  # writes with context.write
            async with self._slot(context):
                return await self._until_closed(fn(request, context), context)

        return written
