"""Fault tests: real router processes, real Triton servers (the session's demo zoo, or one of a test's own when
the test unloads models, kills Triton or needs slow models), real SQLite files, real signals.

Measured figures go to $RELIABILITY_FIGURES_JSON when it is set (bench/reliability.py sets it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from messplus.service.demo.repository import DEFAULT_TRACE, build_demo_repository
from messplus.service.zoo.embedded import TritonServer

from ..integration.conftest import DemoZoo, demo_zoo, encoder_onnx  # noqa: F401 - fixtures, re-used here
from .harness import Router, router_config


@pytest.fixture
def start_zoo(tmp_path: Path, demo_zoo: DemoZoo) -> Iterator[Callable[..., DemoZoo]]:  # noqa: F811
    """A Triton of the test's own with the demo zoo; `latency_ms` slows every model down."""
    servers: list[TritonServer] = []

    def start(latency_ms: float = 0.0, name: str = "triton") -> DemoZoo:
        root = tmp_path / name
        models = build_demo_repository(root / "models", DEFAULT_TRACE, latency_ms=latency_ms)
        server = TritonServer(root / "models", work_dir=root / "work").start()
        servers.append(server)
        return DemoZoo(server, models, root / "models", DEFAULT_TRACE)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def router(tmp_path: Path, demo_zoo: DemoZoo, encoder_onnx: Path) -> Iterator[Callable[..., Router]]:  # noqa: F811
    """Start `messplus serve` processes (default: against the session's Triton); all are killed after the test."""
    started: list[Router] = []

    def make(name: str = "router", *, zoo: DemoZoo | None = None, state_dir: Path | None = None,
             server: dict[str, Any] | None = None, security: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, client_tls: Any = None, start: bool = True) -> Router:
        text = router_config(state_dir or tmp_path / "state", zoo or demo_zoo, encoder_onnx, server or {},
                             security or {})
        proc = Router(tmp_path / name, text, env=env, client_tls=client_tls)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with what it measured; merged into $RELIABILITY_FIGURES_JSON under the test's name."""
    out: dict[str, Any] = {}
    yield out
    path = os.environ.get("RELIABILITY_FIGURES_JSON")
    if path and out:
        file = Path(path)
        data = json.loads(file.read_text()) if file.exists() else {}
        data.setdefault(re.sub(r"\[.*\]$", "", request.node.name), {}).update(out)
        file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
