"""Helpers of the fault tests: a router process that may speak TLS, its config, and latency statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from ..integration.conftest import DemoZoo
from ..integration.router_process import RouterProcess, config_toml

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def router_config(state_dir: Path, zoo: DemoZoo, onnx: Path, server: dict[str, Any],
                  security: dict[str, Any]) -> str:
    text = config_toml(state_dir, zoo.server.grpc_url, onnx, zoo.models)
    extra = "".join(f"\n{k} = {_toml(v)}" for k, v in server.items())
    text = text.replace("grace_s = 5", f"grace_s = 5{extra}", 1) if "grace_s" not in server else \
        text.replace("grace_s = 5", extra.lstrip("\n"), 1)
    if security:
        text += "\n[security]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in security.items())
    return text


class Router(RouterProcess):
    """RouterProcess that can reach a TLS port (client_tls: grpc.ChannelCredentials) and knows its metrics port."""

    def __init__(self, workdir: Path, config_text: str | None, env: dict[str, str] | None = None,
                 client_tls: grpc.ChannelCredentials | None = None) -> None:
        super().__init__(workdir, config_text, env)
        self.client_tls = client_tls

    def channel(self) -> grpc.Channel:  # health() and wait_serving() of RouterProcess go through this
        if self.client_tls is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.client_tls)

    def aio_channel(self, **options: Any) -> grpc.aio.Channel:
        opts = list(options.items())
        if self.client_tls is None:
            return grpc.aio.insecure_channel(self.address, options=opts)
        return grpc.aio.secure_channel(self.address, self.client_tls, options=opts)

    @property
    def metrics_port(self) -> int:
        return int(Path(str(self.port_file) + ".metrics").read_text())


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))
    return ordered[rank]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the router's Prometheus endpoint: {(name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
