"""Servers the benchmarks drive, each in its own process (so the load generator never shares their GIL).

The process harness is the tests' (tests/support/procs.py: `ServerProcess` starts a command that writes its
bound port to a file, waits for the standard health service to say SERVING, stops it with SIGTERM, SIGKILL after
a timeout), and so is the config writer (tests/support/config.py). `router_config` holds the load tests' variant:
the demo zoo on a Triton of the bench's own, one tenant, a high admission limit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.config import serve_toml
from tests.support.procs import ServerProcess, messplus_serve

__all__ = ["TENANT", "ServerProcess", "cpu_seconds", "echo_server", "route_only_config", "router_config",
           "router_server", "rss_bytes"]
TENANT = "acme"


def echo_server(workdir: Path) -> ServerProcess:
    path = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    return ServerProcess([sys.executable, "-m", "bench.echo_server"], workdir, env={"PYTHONPATH": os.pathsep.join(path)})


def router_config(state_dir: Path, triton_url: str, onnx: Path, models: Sequence[tuple[str, float]]) -> str:
    """A `messplus serve` config: loopback on a free port, this Triton, these (name, cost) models, one tenant.

    Predictor threads and micro-batching stay at their defaults here; the bench overrides them per run through
    the environment (MESSPLUS_PREDICTOR_BATCH_MAX and friends), as an operator would.
    """
    return serve_toml(state_dir, triton_url, onnx, models, server={"grace_s": 5, "max_inflight": 1024},
                      predictor={}, triton={"timeout_s": 60, "ready_poll_s": 1}, zoo={},
                      tenants=[{"name": TENANT, "alpha": 0.7, "seed": 1}])


def route_only_config(state_dir: Path, onnx: Path, models: Sequence[tuple[str, float]]) -> str:
    """`router_config` without any Triton (`triton.url = "none"`): the Route path alone, as on a GPU box."""
    from messplus.service.config import ROUTE_ONLY

    return router_config(state_dir, ROUTE_ONLY, onnx, models)


def router_server(workdir: Path, config_text: str, env: dict[str, str] | None = None) -> ServerProcess:
    return messplus_serve(workdir, config_text, env=env)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # the fields after the command name (which may hold spaces)


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """CPU seconds (user + system) a process has spent (Linux /proc); with `tree`, its children's too: those alive
    now and those it has waited for (a child reaped while the children are read would be in neither: the read is
    taken again then). A process gone meanwhile counts 0."""
    tick = os.sysconf("SC_CLK_TCK")
    for _ in range(5):
        try:
            f = _stat(pid)  # f[11:15]: utime, stime, cutime, cstime; f[1]: the parent's pid
        except OSError:
            return 0.0
        total = sum(int(x) for x in f[11:15 if tree else 13])
        if not tree:
            return total / tick
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    g = _stat(int(entry))
                except OSError:
                    continue
                if int(g[1]) == pid:
                    total += int(g[11]) + int(g[12])
        try:
            if _stat(pid)[13:15] == f[13:15]:  # no child reaped meanwhile
                break
        except OSError:
            return 0.0
    return total / tick
