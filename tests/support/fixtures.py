"""The fixtures both test tiers use, registered for all of tests/ by tests/conftest.py: one real Triton with the
demo zoo per session, the ONNX predictor exported once per session, and routers against them, in this process
(`router_app`) or in processes of their own (`router_process`)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from messplus.service.demo.repository import DEFAULT_TRACE, DemoModel, build_demo_repository
from messplus.service.zoo.embedded import INSTALL_HINT, TritonServer

from .config import TEST_SERVER, TEST_TENANTS, TEST_TRITON, serve_toml
from .inprocess import AppThread
from .procs import ServerProcess, messplus_serve


@dataclass(frozen=True)
class DemoZoo:
    """A running Triton serving the demo repository built from `trace`."""

    server: TritonServer
    models: list[DemoModel]
    repository: Path
    trace: Path

    @property
    def priced(self) -> list[tuple[str, float]]:
        """(Triton model name, mean cost per request) of every model: the zoo as a router config lists it."""
        return [(m.triton_name, m.mean_cost) for m in self.models]


def router_toml(state_dir: Path, zoo: DemoZoo, onnx: Path, *, triton_url: str | None = None,
                server: Mapping[str, Any] | None = None, security: Mapping[str, Any] | None = None,
                tenants: Sequence[Mapping[str, Any]] = (), triton: Mapping[str, Any] | None = None) -> str:
    """The tests' router config: `zoo` on its Triton (or at `triton_url`), the tests' tenants plus `tenants`,
    `server`, `security` and `triton` keys on top of the tests' defaults."""
    return serve_toml(state_dir, triton_url or zoo.server.grpc_url, onnx, zoo.priced,
                      server={**TEST_SERVER, **(server or {})}, security=security,
                      tenants=[*TEST_TENANTS, *tenants], triton={**TEST_TRITON, **(triton or {})})


@pytest.fixture(scope="session")
def demo_zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoZoo]:
    """Triton on free ports with the default demo zoo (5 replay models); stopped at the end of the session."""
    if importlib.util.find_spec("pytriton") is None:
        if os.environ.get("CI"):  # CI must never pass by skipping the real-Triton tests
            pytest.fail(f"the real Triton binary is missing: {INSTALL_HINT}")
        pytest.skip(f"the real Triton binary is missing: {INSTALL_HINT}")
    root = tmp_path_factory.mktemp("triton")
    models = build_demo_repository(root / "models", DEFAULT_TRACE)
    server = TritonServer(root / "models", work_dir=root / "work")
    with server:
        yield DemoZoo(server, models, root / "models", DEFAULT_TRACE)


@pytest.fixture(scope="session")
def encoder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX once per session (no torch: built from the packaged weights)."""
    from messplus.service.encoder import ensure_exported

    return ensure_exported(tmp_path_factory.mktemp("predictor"), None)


@pytest.fixture
def router_app(tmp_path: Path, demo_zoo: DemoZoo, encoder_onnx: Path) -> Iterator[Callable[..., AppThread]]:
    """Start routers in this process (default: against the session's Triton, state in tmp_path/state), each
    serving once the health name `ready` says SERVING; all are drained after the test."""
    started: list[AppThread] = []

    def make(name: str = "app", *, zoo: DemoZoo | None = None, triton_url: str | None = None,
             state_dir: Path | None = None, server: Mapping[str, Any] | None = None,
             security: Mapping[str, Any] | None = None, tenants: Sequence[Mapping[str, Any]] = (),
             env: dict[str, str] | None = None, client_tls: grpc.ChannelCredentials | None = None,
             ready: str = "", triton: Mapping[str, Any] | None = None) -> AppThread:
        text = router_toml(state_dir or tmp_path / "state", zoo or demo_zoo, encoder_onnx, triton_url=triton_url,
                           server=server, security=security, tenants=tenants, triton=triton)
        app = AppThread(tmp_path / name, text, env=env, client_tls=client_tls)
        started.append(app)
        try:
            return app.start(ready=ready)
        except BaseException:
            started.remove(app)  # start() raised what went wrong and asked the App to stop
            raise

    yield make
    failures = []
    for app in started:
        try:
            app.stop()
        except RuntimeError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def router_process(tmp_path: Path, demo_zoo: DemoZoo, encoder_onnx: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `messplus serve` processes (default: against the session's Triton, state in tmp_path/state); any
    still running after the test is killed."""
    started: list[ServerProcess] = []

    def make(name: str = "router", *, zoo: DemoZoo | None = None, triton_url: str | None = None,
             state_dir: Path | None = None, server: Mapping[str, Any] | None = None,
             security: Mapping[str, Any] | None = None, tenants: Sequence[Mapping[str, Any]] = (),
             env: dict[str, str] | None = None, client_tls: grpc.ChannelCredentials | None = None,
             ready: str = "") -> ServerProcess:
        text = router_toml(state_dir or tmp_path / "state", zoo or demo_zoo, encoder_onnx, triton_url=triton_url,
                           server=server, security=security, tenants=tenants)
        proc = messplus_serve(tmp_path / name, text, env=env, client_tls=client_tls)
        started.append(proc)
        return proc.start(ready=ready)

    yield make
    for proc in started:
        if proc.running():
            proc.kill()
