"""A router pointed at a Triton that is not there says so: one log line naming the address and the reason (at
start and at each change), health NOT_SERVING, the reason in ListModels and the metrics, and Route/Generate
errors that name Triton instead of the request's overrides. Then Triton comes up on that address, and goes again.
A real `messplus serve` process (its log is the point) and a real Triton."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from messplus.service.server.app import LIVENESS, SERVICE_NAME
from messplus.service.zoo.embedded import TritonServer, free_port
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo
from ..support.metrics import scrape
from ..support.procs import ServerProcess
from ..support.target import NOT_SERVING

pytestmark = pytest.mark.triton


def lines_with(r: ServerProcess, text: str) -> list[str]:
    return [ln for ln in r.log_text().splitlines() if text in ln]


def wait_line(r: ServerProcess, text: str, timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while not (found := lines_with(r, text)):
        assert time.monotonic() < deadline, f"no log line with {text!r}:\n{r.log_tail()}"
        time.sleep(0.05)
    return found


def test_an_unreachable_triton_is_named_in_the_log_health_metrics_and_errors(
        router_process: Callable[..., ServerProcess], demo_zoo: DemoZoo, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    r = router_process(triton_url=address, server={"metrics_listen": "127.0.0.1:0"}, ready=LIVENESS)
    down = f"Triton at {address} unreachable (connection refused)"
    wait_line(r, down)
    time.sleep(1.5)  # three more polls (triton.ready_poll_s = 0.5): the line is not repeated
    (line,) = lines_with(r, down)
    assert "WARNING messplus.triton" in line and "health NOT_SERVING" in line, line
    assert r.health() == NOT_SERVING and r.health(SERVICE_NAME) == NOT_SERVING
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for call in (lambda: stub.Route(pb.RouteRequest(tenant="acme", text="anyone there?"), timeout=10),
                     lambda: list(stub.Generate(pb.GenerateRequest(tenant="acme", text="anyone?"), timeout=10))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == down  # not "after the overrides": the request sent none
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert (listed.triton.address, listed.triton.reachable, listed.triton.state, listed.triton.problem) == (
        address, False, "refused", down)
    assert not any(m.available for m in listed.models)
    m = scrape(r.metrics_port)
    assert m[("messplus_triton_up", ())] == 0
    assert {dict(k)["reason"]: v for (n, k), v in m.items() if n == "messplus_triton_problem"} == {
        "refused": 1, "dns": 0, "timeout": 0, "unreachable": 0, "not_ready": 0}

    # Triton comes up on that address: one line says so, and the router serves.
    host, _, port = address.rpartition(":")
    with TritonServer(demo_zoo.repository, work_dir=tmp_path / "late-triton", grpc_port=int(port)):
        r.wait_serving(30)
        (up,) = wait_line(r, f"Triton at {address} reachable: 5/5 zoo models ready")
        assert "INFO messplus.triton" in up
        with r.channel() as ch:
            assert pb_grpc.RoutingServiceStub(ch).Route(pb.RouteRequest(tenant="acme", text="back?"), timeout=10).model
        assert scrape(r.metrics_port)[("messplus_triton_up", ())] == 1
    # ... and goes away again: the same line a second time (a change), health follows.
    deadline = time.monotonic() + 10
    while len(lines_with(r, down)) < 2 or r.health() != NOT_SERVING:
        assert time.monotonic() < deadline, r.log_tail()
        time.sleep(0.05)
    assert len(lines_with(r, "reachable: 5/5")) == 1
