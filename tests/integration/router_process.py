"""A real `messplus serve` process for tests: config file, free port, readiness by health, kill or stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from messplus.service.demo.repository import DemoModel
from messplus.v1 import routing_pb2_grpc

TENANTS = """
[[tenants]]
name = "acme"
alpha = 0.75
V = 1.0
c = 0.5
seed = 7

[[tenants]]
name = "beta"
alpha = 0.6
"""


def config_toml(state_dir: Path, triton_url: str, onnx: Path, models: Sequence[DemoModel], extra: str = "") -> str:
    lines = ["[server]", 'listen = "127.0.0.1:0"', "grace_s = 5", "", "[state]", f'dir = "{state_dir}"', "",
             "[predictor]", f'onnx = "{onnx}"', "threads = 1", "", "[triton]", f'url = "{triton_url}"',
             "timeout_s = 10", "ready_poll_s = 0.5", "", "[zoo]", 'cost_unit = "USD per request"']
    for m in models:
        lines += ["", "[[zoo.models]]", f'name = "{m.triton_name}"', f'triton_model = "{m.triton_name}"',
                  f"cost_per_request = {m.mean_cost!r}"]
    return "\n".join(lines) + "\n" + TENANTS + extra


class RouterProcess:
    """`python -m messplus.service.cli serve` in its own process group, on a free port."""

    def __init__(self, workdir: Path, config_text: str | None, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "messplus.toml"
        if config_text is not None:
            self.config.write_text(config_text)
        self.port_file = workdir / "port"
        self.log_path = workdir / "router.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout_s: float = 180.0) -> RouterProcess:
        self.port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "messplus.service.cli", "serve", "--port-file", str(self.port_file)]
        if self.config.exists():
            cmd += ["--config", str(self.config)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.wait_serving(deadline - time.monotonic())
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        """A channel to the router (plaintext here; the fault tests' subclass speaks TLS when asked)."""
        return grpc.insecure_channel(self.address)

    def health(self, timeout_s: float = 2.0) -> int:
        """The overall health status (health_pb2.HealthCheckResponse.ServingStatus)."""
        with self.channel() as ch:
            return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                            timeout=timeout_s).status)

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"router never reported SERVING:\n{self.log_tail()}")
            time.sleep(0.05)

    def stub(self, channel: grpc.Channel) -> routing_pb2_grpc.RoutingServiceStub:
        return routing_pb2_grpc.RoutingServiceStub(channel)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush: what a crash does."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: the graceful drain."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise RuntimeError(f"router did not stop on SIGTERM within {timeout_s}s:\n{self.log_tail()}") from None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"
