"""The one writer of a `messplus serve` configuration file; the tests' and the benchmarks' variants are arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Section = Mapping[str, Any]

# The tests' router: predictor on one thread (2-core machines run client, router and Triton at once), Triton
# polled every 0.5 s, two tenants with different policies.
TEST_SERVER: Section = {"grace_s": 5}
TEST_PREDICTOR: Section = {"threads": 1}
TEST_TRITON: Section = {"timeout_s": 10, "ready_poll_s": 0.5}
TEST_ZOO: Section = {"cost_unit": "USD per request"}
TEST_TENANTS: tuple[Section, ...] = ({"name": "acme", "alpha": 0.75, "V": 1.0, "c": 0.5, "seed": 7},
                                     {"name": "beta", "alpha": 0.6})


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _table(header: str, items: Section) -> list[str]:
    return ["", header, *(f"{k} = {toml_value(v)}" for k, v in items.items())]


def serve_toml(state_dir: Path, triton_url: str, onnx: Path, models: Sequence[tuple[str, float]], *,
               server: Section = TEST_SERVER, predictor: Section = TEST_PREDICTOR, triton: Section = TEST_TRITON,
               zoo: Section = TEST_ZOO, security: Section | None = None,
               tenants: Sequence[Section] = TEST_TENANTS) -> str:
    """A config on loopback with a free port, this state dir, this ONNX predictor, this Triton and these
    (Triton model name, cost per request) models; each keyword is the rest of its section."""
    lines = ["[server]", *(f"{k} = {toml_value(v)}" for k, v in {"listen": "127.0.0.1:0", **server}.items())]
    lines += _table("[state]", {"dir": state_dir})
    lines += _table("[predictor]", {"onnx": onnx, **predictor})
    lines += _table("[triton]", {"url": triton_url, **triton})
    lines += _table("[zoo]", zoo)
    for name, cost in models:
        lines += _table("[[zoo.models]]", {"name": name, "triton_model": name, "cost_per_request": cost})
    if security:
        lines += _table("[security]", security)
    for tenant in tenants:
        lines += _table("[[tenants]]", tenant)
    return "\n".join(lines) + "\n"
