"""Servers the benchmarks drive, each in its own process (so the load generator never shares their GIL).

`ServerProcess` starts a command that writes its bound port to a file, waits for the standard health service to
say SERVING, and stops it with SIGTERM (SIGKILL after a timeout). `router_config` writes the `messplus serve`
configuration the load tests use: the demo zoo on a Triton of the bench's own, one tenant.
"""

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

TENANT = "acme"


class ServerProcess:
    """A gRPC server process on a free loopback port, in its own session; ready once health says SERVING."""

    def __init__(self, cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = self.workdir / "port"
        self.log_path = self.workdir / "server.log"
        self.cmd = [*cmd, "--port-file", str(self.port_file)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.start_s = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        self.port_file.unlink(missing_ok=True)
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.workdir, start_new_session=True)
        deadline = began + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.cmd[:4]} did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self._wait_serving(deadline)
        self.start_s = time.monotonic() - began
        return self

    def _wait_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server never reported SERVING:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def echo_server(workdir: Path) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "bench.echo_server"], workdir,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def router_config(state_dir: Path, triton_url: str, onnx: Path, models: Sequence[tuple[str, float]]) -> str:
    """A `messplus serve` config: loopback on a free port, this Triton, these (name, cost) models, one tenant.

    Predictor threads and micro-batching stay at their defaults here; the bench overrides them per run through
    the environment (MESSPLUS_PREDICTOR_BATCH_MAX and friends), as an operator would.
    """
    lines = ["[server]", 'listen = "127.0.0.1:0"', "grace_s = 5", "max_inflight = 1024", "", "[state]",
             f'dir = "{state_dir}"', "", "[predictor]", f'onnx = "{onnx}"', "",
             "[triton]", f'url = "{triton_url}"', "timeout_s = 60", "ready_poll_s = 1", "", "[zoo]"]
    for name, cost in models:
        lines += ["", "[[zoo.models]]", f'name = "{name}"', f'triton_model = "{name}"', f"cost_per_request = {cost!r}"]
    lines += ["", "[[tenants]]", f'name = "{TENANT}"', "alpha = 0.7", "seed = 1"]
    return "\n".join(lines) + "\n"


def router_server(workdir: Path, config_text: str, env: dict[str, str] | None = None) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "messplus.toml").write_text(config_text)
    return ServerProcess([sys.executable, "-m", "messplus.service.cli", "serve", "--config",
                          str(workdir / "messplus.toml")], workdir, env=env)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
