"""`messplus status` (the real command, in a process of its own) against a real router: the Triton line and one SLA
line per tenant, with the numbers SlaStatus answers; every tenant of the configuration when none is named."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.inprocess import AppThread

pytestmark = pytest.mark.triton
NEVER = pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "messplus.service.cli", "status", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_status_prints_triton_and_each_tenants_sla_line(router_app: Callable[..., AppThread]) -> None:
    r = router_app()
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for i in range(4):
            reply = stub.Route(pb.RouteRequest(tenant="acme", text=f"status {i}", overrides=NEVER), timeout=10)
            stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id=reply.request_id, satisfaction=float(i < 3)),
                          timeout=10)
        acme = stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)

    named = status("--address", r.address, "--tenant", "acme")
    assert named.returncode == 0, named.stderr
    print(named.stdout)
    first, header, row = named.stdout.splitlines()
    assert r.app is not None
    assert first == f"router at {r.address}; Triton at {r.app.triton_url}: up, 5/5 zoo models ready"
    assert header.split()[:4] == ["tenant", "alpha", "satisfaction", "SLA"]
    cells = row.split()
    assert cells[:4] == ["acme", "0.75", f"{acme.satisfaction:.3f}", "met" if acme.sla_met else "AT"]
    assert f"{acme.queue:.3f}" in cells and str(acme.requests) in cells and f"{acme.mean_cost:.4f}" in cells
    assert (acme.requests, acme.labelled) == (4, 4) and "USD per request" in row

    every = status("--address", r.address, "--config", str(r.config))  # the configuration's tenants
    assert every.returncode == 0, every.stderr
    rows = every.stdout.splitlines()[2:]
    assert [ln.split()[0] for ln in rows] == ["acme", "beta"]
    assert rows[1].split()[1:4] == ["0.6", "-", "no"]  # beta: nothing routed, nothing labelled yet

    unknown = status("--address", r.address, "--tenant", "nobody", "--tenant", "acme")
    assert unknown.returncode == 1 and "tenant 'nobody': INVALID_ARGUMENT" in unknown.stderr
    assert unknown.stdout.splitlines()[2].startswith("acme")

    gone = status("--address", "127.0.0.1:1", "--tenant", "acme", "--timeout", "2")
    assert gone.returncode == 1 and "router at 127.0.0.1:1: UNAVAILABLE" in gone.stderr
