"""The health names the Kubernetes probes use (deploy/): with Triton unreachable the router is alive but not ready,
so a Triton outage takes the pod out of the Service without the liveness probe restarting the router."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from messplus.service.server.app import LIVENESS, SERVICE_NAME
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from .conftest import DemoZoo
from .router_process import RouterProcess, config_toml

pytestmark = pytest.mark.triton
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class AliveOnly(RouterProcess):
    """Started once the liveness name says SERVING: readiness is not expected here."""

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + min(timeout_s, 10)  # the port file is written after the name is set
        while check(self.address, LIVENESS) != SERVING:
            if time.monotonic() > deadline:
                raise RuntimeError(f"router never reported {LIVENESS} SERVING:\n{self.log_tail()}")
            time.sleep(0.05)


def check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return -1
        return int(reply.status)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_triton_down_means_alive_but_not_ready(tmp_path: Path, demo_zoo: DemoZoo, encoder_onnx: Path) -> None:
    text = config_toml(tmp_path / "state", f"127.0.0.1:{closed_port()}", encoder_onnx, demo_zoo.models)
    proc = AliveOnly(tmp_path / "router", text).start()
    try:
        assert check(proc.address, LIVENESS) == SERVING
        assert check(proc.address, "") == NOT_SERVING
        assert check(proc.address, SERVICE_NAME) == NOT_SERVING
        with grpc.insecure_channel(proc.address) as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.RoutingServiceStub(ch).Route(pb.RouteRequest(tenant="acme", text="hi"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert proc.stop() == 0, proc.log_tail()
