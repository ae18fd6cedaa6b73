"""The router in this process: `async with App(cfg)` on an event loop of its own in a thread. The gRPC server is
real (a free loopback port, the interceptors, health, reflection, TLS when configured), and so are Triton and the
ONNX predictor it is given; only the process around it is the test's. Start-up costs about a second instead of a
process's ten (imports, kernels and ONNX Runtime are loaded once per test session).

Tests of what the router answers use this; tests where the process is the point (signals, kill -9, a disk full
under it, its log output, the embedded default) use procs.ServerProcess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import grpc

from messplus.service import config as config_mod
from messplus.service.server.app import App

from .target import Target


class AppThread(Target):
    """An App started from `config_text` (written to workdir/messplus.toml and read as `messplus serve` reads it,
    MESSPLUS_* variables from `env` on top of this process's)."""

    def __init__(self, workdir: Path, config_text: str, env: Mapping[str, str] | None = None,
                 client_tls: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(client_tls)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "messplus.toml"
        self.config.write_text(config_text)
        self.env = {**os.environ, **(env or {})}
        self.app: App | None = None
        self.progress: list[str] = []  # what `messplus serve` would print on stderr
        self.metrics_port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leave: asyncio.Event | None = None
        self._entered = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout_s: float = 120.0, ready: str = "") -> AppThread:
        """Enter the App's block and wait until the health name `ready` ("" = overall readiness) says SERVING."""
        cfg = config_mod.load(self.config, self.env)
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(cfg),), name="messplus-app", daemon=True)
        self._thread.start()
        if not self._entered.wait(timeout_s):
            self._leave_soon()  # drains once the start is done
            raise RuntimeError(f"the App did not start within {timeout_s}s:\n{self.log_tail()}")
        if self.app is None:
            self._thread.join(timeout_s)
            raise RuntimeError(f"the App did not start:\n{self.log_tail()}") from self._error
        try:
            self.wait_serving(timeout_s, ready)
        except RuntimeError:
            self.stop()
            raise
        return self

    async def _run(self, cfg: config_mod.Config) -> None:
        self._loop, self._leave = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with App(cfg, progress=self.progress.append) as app:
                self.app, self.port, self.metrics_port = app, app.port, app.metrics_port
                self._entered.set()
                await self._leave.wait()
                # The drain, awaited here so that its failure fails the test (__aexit__ would log it; its stop()
                # is a no-op after this one).
                await app.stop()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which raises it
            self._error = exc
        finally:
            self._entered.set()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _leave_soon(self) -> None:
        """Ask the App's thread to leave the block: now, or as soon as the App has started."""
        if self._loop is not None and self._leave is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the thread is done already
                self._loop.call_soon_threadsafe(self._leave.set)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Leave the App's block (the drain) and wait for it; raises what the App's thread raised."""
        if self._thread is not None and self._thread.is_alive():
            self._leave_soon()
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"the App did not stop within {timeout_s}s:\n{self.log_tail()}")
        if self._error is not None:
            raise RuntimeError(f"the App failed:\n{self.log_tail()}") from self._error

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.progress[-n:]) or "(no progress lines)"

    def __enter__(self) -> AppThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
