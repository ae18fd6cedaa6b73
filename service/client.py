"""gRPC channels to a running router, for the project's own clients (`messplus status`, `messplus replay --grpc`):
TLS when a CA is given (and a client certificate for mutual TLS), a bearer token on every call when one is
given. A token travels in plaintext only to this machine (`loopback`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc


def loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine (a bearer token may travel in plaintext only there)."""
    host = address.rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _CallDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    """A call's details with other metadata (gRPC's own are not to be modified)."""


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call, streaming ones (Generate) included."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), self.header],
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def channel(address: str, *, ca: bytes | None = None, client: tuple[bytes, bytes] | None = None,
            token: str = "", server_name: str = "") -> grpc.Channel:
    """A channel to the router at HOST:PORT; `client` is (private key, certificate) PEM; `server_name`, the name
    the router's certificate must carry when it is not HOST (a Service's DNS name, reached over 127.0.0.1).
    Raises ValueError for a token that would travel in plaintext off this machine."""
    if token and not ca and not loopback(address):
        raise ValueError(f"refusing to send $MESSPLUS_TOKEN in plaintext to {address}, which is not this machine: "
                         "give a CA to reach the router over TLS, or reach it over loopback")
    if ca:
        key, cert = client or (None, None)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        ch = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert),
                                 options=options)
    else:
        ch = grpc.insecure_channel(address)
    return grpc.intercept_channel(ch, _Bearer(token)) if token else ch
