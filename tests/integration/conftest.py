"""Fixtures that start real components: one Triton with the demo zoo per test session."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from messplus.service.demo.repository import DEFAULT_TRACE, DemoModel, build_demo_repository
from messplus.service.zoo.embedded import INSTALL_HINT, TritonServer

from .router_process import RouterProcess, config_toml


@dataclass(frozen=True)
class DemoZoo:
    """A running Triton serving the demo repository built from `trace`."""

    server: TritonServer
    models: list[DemoModel]
    repository: Path
    trace: Path


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
def router_factory(tmp_path: Path, demo_zoo: DemoZoo, encoder_onnx: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start `messplus serve` processes against the session's Triton; all are stopped after the test."""
    started: list[RouterProcess] = []

    def make(name: str = "router", extra: str = "", state_dir: Path | None = None) -> RouterProcess:
        state = state_dir or tmp_path / "state"
        text = config_toml(state, demo_zoo.server.grpc_url, encoder_onnx, demo_zoo.models, extra)
        proc = RouterProcess(tmp_path / name, text)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
