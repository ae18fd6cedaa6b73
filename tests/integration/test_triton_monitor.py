"""Why Triton cannot serve, as one poll (service/zoo/monitor.py) tells it, caused for real: a refused port, a name
that does not resolve, a socket that never answers, a zoo model Triton's repository does not have; and the log
line, once per change."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading

import pytest

from messplus.service.zoo.embedded import free_port
from messplus.service.zoo.monitor import TritonMonitor, TritonState, probe
from messplus.service.zoo.triton import TritonZoo

from ..support.fixtures import DemoZoo


def poll(url: str, names: list[str], timeout_s: float = 1.0) -> TritonState:
    async def body() -> TritonState:
        async with TritonZoo(url) as zoo:
            return await probe(zoo, names, timeout_s)

    return asyncio.run(body())


def test_a_refused_port_an_unknown_name_and_a_silent_socket_each_say_why() -> None:
    refused = poll(f"127.0.0.1:{free_port()}", ["a"])
    assert (refused.kind, refused.reason, refused.reachable, dict(refused.ready)) == (
        "refused", "connection refused", False, {"a": False})
    dns = poll("no-such-triton.invalid:8001", ["a"])
    assert dns.kind == "dns" and "no-such-triton.invalid" in dns.reason
    assert dns.problem.startswith("Triton at no-such-triton.invalid:8001 unreachable (cannot resolve its name")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        timeout = poll(url, ["a"], timeout_s=0.5)
    assert timeout.problem == f"Triton at {url} unreachable (no answer within 0.5 s)" and timeout.kind == "timeout"


@pytest.mark.parametrize(("reset", "said"), [
    (True, {"connection reset by peer"}),
    # a clean close (FIN) races the client's first write, which the closed socket may answer with a reset
    (False, {"connection closed by the server", "connection reset by peer"}),
])
def test_a_server_that_drops_each_connection_is_said_plainly(reset: bool, said: set[str]) -> None:
    """A dying Triton resets or closes connections before its port refuses them: the reason is one plain phrase."""
    with socket.socket() as dropping:
        dropping.bind(("127.0.0.1", 0))
        dropping.listen(8)
        stop = threading.Event()

        def drop_each() -> None:
            dropping.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = dropping.accept()
                except TimeoutError:
                    continue
                if reset:  # SO_LINGER 0: close sends RST instead of FIN
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

        worker = threading.Thread(target=drop_each, daemon=True)
        worker.start()
        url = f"127.0.0.1:{dropping.getsockname()[1]}"
        try:
            state = poll(url, ["a"], timeout_s=2.0)
        finally:
            stop.set()
            worker.join()
    assert state.kind == "unreachable" and state.problem in {f"Triton at {url} unreachable ({why})" for why in said}, \
        state.problem


@pytest.mark.triton
def test_a_zoo_model_missing_from_the_repository_is_named_and_the_rest_serve(demo_zoo: DemoZoo) -> None:
    names = [m.triton_name for m in demo_zoo.models]
    state = poll(demo_zoo.server.grpc_url, [*names, "no-such-model"])
    assert state.reachable and state.kind == "not_ready"
    assert state.reason == "not ready: no-such-model (not in Triton's model repository)"
    assert state.problem == (f"Triton at {demo_zoo.server.grpc_url}: 5/6 zoo models ready; "
                             "not ready: no-such-model (not in Triton's model repository)")
    assert poll(demo_zoo.server.grpc_url, names).kind == "up"


@pytest.mark.triton
def test_the_monitor_logs_once_per_change(demo_zoo: DemoZoo, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with TritonZoo(demo_zoo.server.grpc_url) as zoo:
            monitor = TritonMonitor(zoo, [demo_zoo.models[0].triton_name])
            for _ in range(3):
                await monitor.poll()
            monitor.names.append("no-such-model")
            for _ in range(2):
                await monitor.poll()

    with caplog.at_level(logging.INFO, logger="messplus.triton"):
        asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if r.name == "messplus.triton"]
    assert lines == [f"Triton at {demo_zoo.server.grpc_url} reachable: 1/1 zoo models ready",
                     f"Triton at {demo_zoo.server.grpc_url}: 1/2 zoo models ready; not ready: no-such-model (not in "
                     "Triton's model repository): the other models serve"]
