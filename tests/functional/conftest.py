"""Fault tests: real Triton servers (the session's demo zoo, or one of a test's own when the test unloads models,
kills Triton or needs slow models), real SQLite files, real signals. Routers run in processes of their own where
the process is the point (SIGTERM, kill -9, a disk filling under it, its log output, overload measured without
the load generator in its process), in this process otherwise (`router_app`; both fixtures: tests/support).

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

from ..support.fixtures import DemoZoo


@pytest.fixture
def start_zoo(tmp_path: Path, demo_zoo: DemoZoo) -> Iterator[Callable[..., DemoZoo]]:
    """A Triton of the test's own with the demo zoo; `latency_ms` slows every model down (after `demo_zoo`, which
    fails or skips the test when the Triton binary is missing)."""
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
