"""Why Triton cannot serve, as one poll (service/zoo/monitor.py) tells it, caused for real: a refused port, a name
that does not resolve, a socket that never answers, a zoo model Triton's repository does not have; and the log
line, once per change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time

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


@pytest.mark.triton
def test_a_triton_back_after_an_outage_is_seen_at_the_next_poll(demo_zoo: DemoZoo) -> None:
    """Triton's address refuses connections (each one accepted and reset, so the attempts can be counted) until
    the zoo's channel has backed off for some 10 s, then forwards them to a real Triton. The zoo must see it
    within about a second; gRPC's default backoff, past 6 s by then, kept Route and Generate refusing calls."""
    host, port = demo_zoo.server.grpc_url.rsplit(":", 1)
    gate = socket.socket()
    gate.bind(("127.0.0.1", 0))
    gate.listen(16)
    gate.settimeout(0.05)
    attempts: list[float] = []
    forwarding, stop = threading.Event(), threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with a, b, contextlib.suppress(OSError):  # either side may go away first
            while data := a.recv(65536):
                b.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = gate.accept()
            except TimeoutError:
                continue
            if not forwarding.is_set():
                attempts.append(time.monotonic())
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                if attempts[-1] - attempts[0] >= 10:  # backed off for 10 s: forward from now on, just after an
                    forwarding.set()  # attempt, so that the next one is a whole backoff away
                continue
            upstream = socket.create_connection((host, int(port)))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pipe, args=(a.dup(), b.dup()), daemon=True).start()
            conn.close()
            upstream.close()

    async def body() -> float:
        async with TritonZoo(f"127.0.0.1:{gate.getsockname()[1]}") as zoo:
            began = time.monotonic()
            while not forwarding.is_set():  # the gate flips after a refused attempt 10 s past the first
                assert time.monotonic() - began < 60, f"the zoo stopped trying: attempts at {attempts}"
                ready = await zoo.server_ready(timeout_s=0.5)
                assert not ready or forwarding.is_set()  # never through the gate while it refuses
                await asyncio.sleep(0.1)
            back = attempts[-1]
            while not await zoo.server_ready(timeout_s=0.5):
                assert time.monotonic() - back < 30, "the zoo never saw Triton again"
                await asyncio.sleep(0.1)
            return time.monotonic() - back

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        late = asyncio.run(body())
    finally:
        stop.set()
        worker.join()
        gate.close()
    assert len(attempts) >= 5  # it did back off while refused
    assert late < 3.0, f"Triton was seen {late:.1f} s after it came back"
