"""The benchmark suite's code still runs: its load generator against a real router process and the echo ceiling,
the predictor-alone measurement, and the batch statistics the router logs. Nothing here judges a number."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bench.loadgen import check_loopback, run_load
from bench.procs import echo_server, router_config, router_server, rss_bytes
from bench.prompts import trace_prompts

from ..support.fixtures import DemoZoo

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return trace_prompts(limit=40)


def test_load_generator_runs_against_the_echo_ceiling(tmp_path: Path, prompts: list[str]) -> None:
    with echo_server(tmp_path / "echo") as srv:
        r = asyncio.run(run_load(srv.address, "route", prompts, 4, duration_s=0.5, warmup_s=0.2))
        g = asyncio.run(run_load(srv.address, "generate", prompts, 2, duration_s=0.5, warmup_s=0.2))
    assert r.completed > 0 and r.errors == {} and r.throughput_rps > 0
    assert g.completed > 0 and g.errors == {} and g.ttft_p50_ms is not None


def test_load_generator_drives_a_real_router_and_reads_its_batches(tmp_path: Path, demo_zoo: DemoZoo,
                                                                    encoder_onnx: Path, prompts: list[str]) -> None:
    cfg = router_config(tmp_path / "state", demo_zoo.server.grpc_url, encoder_onnx, demo_zoo.priced)
    srv = router_server(tmp_path / "router", cfg, env={"MESSPLUS_PREDICTOR_THREADS": "1"}).start()
    try:
        assert rss_bytes(srv.pid) > 0
        route = asyncio.run(run_load(srv.address, "route", prompts, 3, duration_s=1.0, warmup_s=0.3))
        gen = asyncio.run(run_load(srv.address, "generate", prompts, 2, duration_s=1.0, warmup_s=0.3))
    finally:
        srv.stop()
    assert route.completed > 0 and route.errors == {}, route
    assert gen.completed > 0 and gen.errors == {}, gen
    assert re.search(r"micro-batching: \d+ batches, \d+ items", srv.log_text()), srv.log_tail()


def test_predictor_alone_measures_batches(encoder_onnx: Path, prompts: list[str]) -> None:
    from bench.predictor_bench import load_predictor, measure

    pred = load_predictor(encoder_onnx, threads=1)
    r = measure(pred, prompts, 2, seconds=0.0, min_batches=1)
    assert r.batch == 2 and r.batches >= 1 and r.prompts_per_s > 0


def test_load_targets_are_loopback_only() -> None:
    check_loopback("127.0.0.1:1")
    check_loopback("[::1]:1")
    check_loopback("localhost:1")
    for bad in ("10.0.0.1:50051", "example.com:443", "0.0.0.0:1"):
        with pytest.raises(ValueError):
            check_loopback(bad)
