"""`async with App(cfg)`, the block `messplus serve` runs between its signal handlers, entered in this process:
a start that fails half-way still runs the drain over what it had started, and raises why it failed."""

from __future__ import annotations

import socket
from collections.abc import Callable

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
