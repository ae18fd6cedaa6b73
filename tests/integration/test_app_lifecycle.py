"""`async with App(cfg)`, the block `messplus serve` runs between its signal handlers, entered in this process:
a start that fails half-way still runs the drain over what it had started, and raises why it failed."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest

from ..support.inprocess import AppThread

pytestmark = pytest.mark.triton


def test_a_start_that_cannot_listen_raises_and_still_drains_what_it_started(
        router_app: Callable[..., AppThread]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="the App did not start") as err:
            router_app(server={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
    cause = err.value.__cause__
    assert isinstance(cause, OSError | RuntimeError) and "127.0.0.1" in str(cause), repr(cause)
    progress = str(err.value)  # the App's progress lines, as `messplus serve` prints them
    assert "loading the predictor" in progress and "listening on" not in progress
    assert "drained and flushed" in progress, "the failed start did not run the drain (store, Triton left open)"


def test_a_metrics_address_that_cannot_be_served_names_its_key(router_app: Callable[..., AppThread]) -> None:
    """A bad `server.metrics_listen` stops the start with a message naming the address and the key, not the
    socket's bare errno ("OSError: [Errno 98] Address already in use", "gaierror: Name or service not known")."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for listen, why in ((f"127.0.0.1:{port}", "Address already in use"),
                            ("no-such-host.invalid:9479", "")):
            with pytest.raises(RuntimeError, match="the App did not start") as err:
                router_app(server={"metrics_listen": listen})
            cause = str(err.value.__cause__)
            assert f"cannot serve metrics on {listen}: {why}" in cause and "set server.metrics_listen" in cause, cause


def test_an_address_another_grpc_server_holds_refuses_the_start(router_app: Callable[..., AppThread]) -> None:
    """gRPC binds with SO_REUSEPORT on Linux unless told not to: a second router on a running one's address
    started, and the kernel split the calls between two routers with two states."""
    other = grpc.server(futures.ThreadPoolExecutor(1))  # gRPC's defaults: SO_REUSEPORT on, as a router had it
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        with pytest.raises(RuntimeError, match="the App did not start") as err:
            router_app(server={"listen": f"127.0.0.1:{port}"})
        cause = err.value.__cause__
        assert isinstance(cause, OSError) and f"cannot listen on 127.0.0.1:{port}: the address is in use" in str(
            cause), repr(cause)
    finally:
        other.stop(None)
