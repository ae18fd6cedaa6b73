"""The health names the Kubernetes probes use (deploy/): with Triton unreachable the router is alive but not ready,
so a Triton outage takes the pod out of the Service without the liveness probe restarting the router."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from messplus.service.server.app import LIVENESS, SERVICE_NAME
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.inprocess import AppThread
from ..support.target import NOT_SERVING, SERVING

pytestmark = pytest.mark.triton


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_triton_down_means_alive_but_not_ready(router_app: Callable[..., AppThread]) -> None:
    app = router_app(triton_url=f"127.0.0.1:{closed_port()}", ready=LIVENESS)  # readiness is not expected here
    assert app.health(LIVENESS) == SERVING
    assert app.health("") == NOT_SERVING
    assert app.health(SERVICE_NAME) == NOT_SERVING
    with app.channel() as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.RoutingServiceStub(ch).Route(pb.RouteRequest(tenant="acme", text="hi"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    app.stop()  # the drain completes with Triton gone (raises what the App raised, if anything)


def test_health_watch_streams_the_serving_status(router_app: Callable[..., AppThread]) -> None:
    """Watch (what gRPC clients' health checking and some load balancers use) streams the status, as Check
    answers it; the router's error interceptor wraps only its own service's handlers."""
    app = router_app(triton_url=f"127.0.0.1:{closed_port()}", ready=LIVENESS)
    with app.channel() as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=10)
        first = next(stream)
        stream.cancel()
    assert first.status == SERVING
    app.stop()


def test_a_stop_ends_open_watch_streams_instead_of_waiting_out_the_grace(
        router_app: Callable[..., AppThread]) -> None:
    """A Watch never ends by itself (gRPC clients' own health checking keeps one per connection): the stop sends
    its watchers NOT_SERVING, then ends the stream UNAVAILABLE so they reconnect elsewhere. Before, the drain
    waited the whole grace for it and gRPC then cancelled it (CANCELLED), with a large grace a long stop."""
    app = router_app(triton_url=f"127.0.0.1:{closed_port()}", ready=LIVENESS, server={"grace_s": 300})
    with app.channel() as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=120)
        assert next(stream).status == SERVING
        stopping = threading.Thread(target=app.stop, kwargs={"timeout_s": 100}, daemon=True)
        stopping.start()
        assert next(stream).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        stopping.join(100)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "shutting down" in (err.value.details() or "")
    assert not stopping.is_alive()
    app.stop()  # raises what the drain raised, if anything
