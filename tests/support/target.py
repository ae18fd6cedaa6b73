"""The client side of a running router, wherever it runs: its address, channels (plaintext, or TLS with the
credentials given), the standard health service, and readiness by that service."""

from __future__ import annotations

import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from messplus.v1 import routing_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Target:
    """A gRPC server on 127.0.0.1:`port`; `client_tls` (grpc.ChannelCredentials) when it speaks TLS."""

    def __init__(self, client_tls: grpc.ChannelCredentials | None = None) -> None:
        self.client_tls = client_tls
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        if self.client_tls is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.client_tls)

    def aio_channel(self, **options: Any) -> grpc.aio.Channel:
        opts = list(options.items())
        if self.client_tls is None:
            return grpc.aio.insecure_channel(self.address, options=opts)
        return grpc.aio.secure_channel(self.address, self.client_tls, options=opts)

    def stub(self, channel: grpc.Channel) -> routing_pb2_grpc.RoutingServiceStub:
        return routing_pb2_grpc.RoutingServiceStub(channel)

    def health(self, service: str = "", timeout_s: float = 2.0) -> int:
        """The status of a health name ("" = overall readiness), a health_pb2.HealthCheckResponse.ServingStatus."""
        with self.channel() as ch:
            return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                            timeout=timeout_s).status)

    def wait_serving(self, timeout_s: float, service: str = "") -> None:
        """Until `service` says SERVING; RuntimeError with the server's log tail after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.health(service) == SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.address} never reported {service or 'readiness'} SERVING:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n: int = 40) -> str:
        return "(no log)"
