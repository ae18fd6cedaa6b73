"""Start and stop the real Triton Inference Server that ships in the `nvidia-pytriton` wheel, without Docker.

The wheel carries `tritonserver` 2.51 and the Python backend. Three things make the bundled binary run a plain
model repository (measured, see ARCHITECTURE.md):

- a backend directory holding `python/` with `libtriton_python.so`, `triton_python_backend_utils.py` and the
  `triton_python_backend_stub` built for this interpreter's Python version;
- `LD_LIBRARY_PATH` starting with this interpreter's LIBDIR, else the stub loads the system libpython and every
  model fails with "'_thread.RLock' object has no attribute '_recursion_count'";
- this interpreter's `bin` first on `PATH`: the stub finds site-packages (NumPy) through `python3` on PATH.

The server runs in a process group of its own, led by a watchdog (watchdog.py) that kills the whole group when the
process that started it dies, even by kill -9; `stop()` takes down the stubs with it. The group's id is in
`<work_dir>/tritonserver.pid`, and a start first ends a Triton of the same work folder that an earlier process
left running (proctree.py). Model control is explicit with every model loaded at start, so callers can unload
and load models through the gRPC API.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from ..config import ModelConfig
from .proctree import PID_FILE, end_leftovers, write_pid_file
from .triton import channel_args

INSTALL_HINT = "pip install nvidia-pytriton==0.7.0"
_BIND_ERRORS = ("address already in use", "failed to start grpc", "failed to start http", "failed to start metrics")


class TritonStartError(RuntimeError):
    """Triton did not become ready; the message ends with the tail of its log."""


class StartInterrupted(TritonStartError):
    """The start was called off (the router was asked to stop while Triton was starting); Triton is stopped."""


def triton_dist() -> Path:
    """The `tritonserver` folder inside the installed nvidia-pytriton package."""
    try:
        import pytriton
    except ImportError:
        raise RuntimeError(f"the Triton server binary comes from nvidia-pytriton: {INSTALL_HINT}") from None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"no tritonserver binary under {root}; reinstall it: {INSTALL_HINT}")
    return root


def prepare_backend_dir(work_dir: Path) -> Path:
    """Link `<work_dir>/backends/python` to the Python backend for this interpreter; return `<work_dir>/backends`."""
    dist = triton_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version} (looked for {stub})")
    backends = Path(work_dir) / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    source = dist / "backends" / "python"
    for src in (source / "libtriton_python.so", source / "triton_python_backend_utils.py", stub):
        dst = target / src.name
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        dst.unlink(missing_ok=True)
        dst.symlink_to(src)  # a copy would break the RPATH ($ORIGIN/...) to the wheel's bundled libraries
    return backends


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (Triton cannot bind port 0 and report it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    """Environment for tritonserver: this interpreter's LIBDIR first on LD_LIBRARY_PATH, its bin first on PATH."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def _kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a reused pgid of someone else's: not ours any more
        return False
    return True


class TritonServer:
    """A tritonserver process serving `model_repository` on 127.0.0.1; use as a context manager or start()/stop().

    The gRPC port defaults to a free one; HTTP and metrics are off unless given a port (0: a free one).
    Logs go to `<work_dir>/tritonserver.log`.
    `work_dir` defaults to a fresh temporary folder that stop() removes.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        work_dir: Path | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        log_verbose: int = 0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir if work_dir is not None else tempfile.mkdtemp(prefix="messplus-triton-")).resolve()
        self._ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.log_path = self.work_dir / "tritonserver.log"
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self.metrics_port: int | None = None
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def grpc_url(self) -> str:
        """`127.0.0.1:<port>` of the gRPC endpoint (after start())."""
        if self.grpc_port is None:
            raise RuntimeError("TritonServer is not started")
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the watchdog, which is also the process group id of tritonserver and its stubs."""
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """tritonserver's exit code once it has exited by itself (None while it runs or when never started)."""
        return None if self._process is None else self._process.poll()

    def restart(self) -> TritonServer:
        """Start it again after it exited by itself (a crash, the OOM killer), on the same ports, so its clients
        reconnect to the same address; raise TritonStartError when it does not come back."""
        self._terminate()  # reaps what is left of the old process group
        for kind, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            if port is not None:
                self._ports[kind] = port
        return self.start()

    def start(self, abort: threading.Event | None = None) -> TritonServer:
        """Start the server and return once it answers ready over gRPC; raise TritonStartError otherwise, and
        StartInterrupted (the server stopped) as soon as `abort` is set."""
        if self.running():
            return self
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repository} does not exist")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backend_dir(self.work_dir)
        end_leftovers(self.work_dir, backends)  # a Triton an earlier process of this folder left behind
        began = time.monotonic()
        auto_ports = any(p == 0 for p in self._ports.values()) or not self._ports["grpc"]
        attempts = 3 if auto_ports else 1  # a free port can be taken between probe and bind: retry with new ones
        for attempt in range(attempts):
            self._launch(backends)
            try:
                self._wait_ready(began + self.startup_timeout_s, abort)
                break
            except TritonStartError as exc:
                self._terminate()
                if attempt + 1 == attempts or not any(e in str(exc).lower() for e in _BIND_ERRORS):
                    raise
            except BaseException:  # interrupted while waiting: the server must not outlive the call
                self._terminate()
                raise
        self.startup_s = time.monotonic() - began
        return self

    def _command(self, backends: Path) -> list[str]:
        self.grpc_port = self._ports["grpc"] or free_port()
        self.http_port = self._port_or_free("http")
        self.metrics_port = self._port_or_free("metrics")
        args = [
            str(triton_dist() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--exit-timeout-secs={max(1, int(self.stop_grace_s) - 2)}",
            f"--log-verbose={self.log_verbose}",
        ]
        for kind, port in (("http", self.http_port), ("metrics", self.metrics_port)):
            if port is None:
                args.append(f"--allow-{kind}=false")
            else:
                args += [f"--{kind}-address=127.0.0.1", f"--{kind}-port={port}"]
        return args + list(self.extra_args)

    def _port_or_free(self, kind: str) -> int | None:
        port = self._ports[kind]
        return None if port is None else port or free_port()

    def _launch(self, backends: Path) -> None:
        command = self._command(backends)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-S", str(Path(__file__).with_name("watchdog.py")), str(os.getpid()), "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(),
                cwd=self.work_dir,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill_group, self._process.pid, signal.SIGKILL)
        write_pid_file(self.work_dir, self._process.pid)

    def _wait_ready(self, deadline: float, abort: threading.Event | None = None) -> None:
        with grpcclient.InferenceServerClient(self.grpc_url, channel_args=channel_args()) as client:
            while time.monotonic() < deadline:
                if abort is not None and abort.is_set():
                    raise StartInterrupted("the start was interrupted before Triton was ready")
                if self._process is None or self._process.poll() is not None:
                    code = None if self._process is None else self._process.returncode
                    raise TritonStartError(f"tritonserver exited with code {code} during start-up\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return
                except InferenceServerException:
                    pass  # not listening yet
                time.sleep(0.05)  # between readiness probes, never instead of one
        raise TritonStartError(
            f"tritonserver not ready within {self.startup_timeout_s:.0f} s at {self.grpc_url}\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL it after the grace period; return tritonserver's exit code."""
        code = self._terminate()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return code

    def _terminate(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        pgid = process.pid
        _kill_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            _kill_group(pgid, signal.SIGKILL)
            process.wait(timeout=self.stop_grace_s)
        deadline = time.monotonic() + 2.0  # stubs exit right after the server; then make sure
        while _kill_group(pgid, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_group(pgid, signal.SIGKILL)
        if self._finalizer is not None:
            self._finalizer.detach()
        (self.work_dir / PID_FILE).unlink(missing_ok=True)
        return process.returncode

    def load_model(self, name: str, timeout_s: float = 60.0) -> None:
        """Load (or reload) a model of the repository through the gRPC control API."""
        with grpcclient.InferenceServerClient(self.grpc_url, channel_args=channel_args()) as client:
            client.load_model(name, client_timeout=timeout_s)

    def unload_model(self, name: str, timeout_s: float = 30.0) -> None:
        """Unload a model through the gRPC control API."""
        with grpcclient.InferenceServerClient(self.grpc_url, channel_args=channel_args()) as client:
            client.unload_model(name, client_timeout=timeout_s)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_embedded_triton(state_dir: Path, progress: Callable[[str], None], abort: threading.Event | None = None,
                          grpc_port: int | None = None) -> tuple[TritonServer, tuple[ModelConfig, ...]]:
    """Build the demo repository under `state_dir` if missing and start a local tritonserver on it; returns the
    server and the demo zoo's models with their price list. Setting `abort` ends the start (StartInterrupted).
    A router already running on `state_dir` is found before anything is written (FolderInUse): its Triton
    serves the repository this start would rewrite. `grpc_port`: Triton's port (default: a free one)."""
    from ..demo.repository import DEFAULT_TRACE, build_demo_repository
    from ..trace import load_trace

    work_dir = state_dir / "triton"
    end_leftovers(work_dir, prepare_backend_dir(work_dir))  # FolderInUse; a dead router's Triton is ended
    repo = state_dir / "demo-model-repository"
    progress(f"writing the demo zoo's Triton model repository to {repo}")
    demo = build_demo_repository(repo)
    progress("starting the embedded Triton server (tritonserver from nvidia-pytriton)")
    server = TritonServer(repo, work_dir=work_dir, grpc_port=grpc_port).start(abort)
    progress(f"Triton ready on {server.grpc_url} in {server.startup_s:.1f}s with {len(demo)} models")
    try:  # the demo zoo's price list: per request and per input token, fitted to the trace its models replay
        per_request, per_token = load_trace(DEFAULT_TRACE).select_models([d.trace_name for d in demo]).price_list()
    except BaseException:  # the caller never gets the server to stop: stop it here
        server.stop()
        raise
    models = tuple(ModelConfig(name=d.triton_name, triton_model=d.triton_name, cost_per_request=float(c),
                               cost_per_input_token=float(t)) for d, c, t in zip(demo, per_request, per_token))
    return server, models
