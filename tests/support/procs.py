"""A server in a process of its own: the command writes its bound port to `--port-file`, readiness is the
standard health service saying SERVING, stop is SIGTERM (the drain) with SIGKILL after a timeout, kill is
SIGKILL of the whole process group (a crash). Used by the tests where a process is the point (signals, kill -9,
the disk filling under it, the embedded default start) and by the benchmarks (a load generator must not share
the server's GIL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from .target import Target


class ServerProcess(Target):
    """`cmd --port-file PATH` in its own session, in `workdir` (its log: workdir/server.log), on a free port."""

    def __init__(self, cmd: Sequence[str], workdir: Path, env: dict[str, str] | None = None,
                 client_tls: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(client_tls)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = self.workdir / "port"
        self.log_path = self.workdir / "server.log"
        self.cmd = [*cmd, "--port-file", str(self.port_file)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def metrics_port(self) -> int:
        """The Prometheus port `messplus serve` writes next to the port file when server.metrics_listen is set."""
        return int(Path(str(self.port_file) + ".metrics").read_text())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 180.0, ready: str = "") -> ServerProcess:
        """Start and wait until the health name `ready` ("" = overall readiness) says SERVING."""
        began = time.monotonic()
        self.launch()
        assert self.proc is not None
        deadline = began + timeout_s
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.cmd[:4]} did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        try:
            self.wait_serving(deadline - time.monotonic(), ready)
        except RuntimeError:
            self.kill()
            raise
        self.start_s = time.monotonic() - began
        return self

    def launch(self) -> ServerProcess:
        """Start the process and return at once (start() also waits until it serves)."""
        self.port_file.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.workdir, start_new_session=True)
        return self

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait (the graceful drain): the exit status, None if never started. A process still
        running after timeout_s is killed and RuntimeError raised with its log tail."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.cmd[:4]} did not stop on SIGTERM within {timeout_s}s:\n"
                               f"{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL to the process group: no drain, no flush: what a crash does."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        self.proc.wait(30)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def messplus_serve(workdir: Path, config_text: str | None, env: dict[str, str] | None = None,
                   client_tls: grpc.ChannelCredentials | None = None) -> ServerProcess:
    """`messplus serve` with `config_text` written to workdir/messplus.toml (None: no --config, the embedded
    default and MESSPLUS_* variables)."""
    cmd = [sys.executable, "-m", "messplus.service.cli", "serve"]
    if config_text is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "messplus.toml").write_text(config_text)
        cmd += ["--config", str(workdir / "messplus.toml")]
    return ServerProcess(cmd, workdir, env=env, client_tls=client_tls)
