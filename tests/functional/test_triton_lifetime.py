"""The embedded Triton cannot outlive its router: kill -9 of `messplus serve` takes tritonserver and its
Python-backend stubs with it, and a start after a Triton was left running by hand ends that one first (and says
so). Checked by the state folder's pid file and /proc, not by the code under test: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from messplus.service import config
from messplus.service.demo.repository import build_demo_repository
from messplus.service.zoo.embedded import TritonServer
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.procs import ServerProcess, messplus_serve

pytestmark = pytest.mark.triton


def live_processes() -> dict[int, tuple[int, str]]:
    """{pid: (process group, command line)} of every process that is not a zombie, read from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if state not in ("Z", "X"):
            out[int(entry.name)] = (int(pgrp), cmd)
    return out


def tritons_of(state: Path, pgid: int | None = None) -> dict[int, str]:
    """The live processes of the state folder's Triton: in process group `pgid`, or naming the folder."""
    return {pid: cmd for pid, (pgrp, cmd) in live_processes().items()
            if pgrp == pgid or ("tritonserver" in cmd or "triton_python_backend_stub" in cmd) and str(state) in cmd}


def embedded_router(tmp_path: Path, encoder_onnx: Path, name: str) -> ServerProcess:
    env = {"MESSPLUS_STATE_DIR": str(tmp_path / "state"), "MESSPLUS_SERVER_LISTEN": "127.0.0.1:0",
           "MESSPLUS_PREDICTOR_ONNX": str(encoder_onnx), "MESSPLUS_PREDICTOR_THREADS": "1"}
    return messplus_serve(tmp_path / name, None, env=env)


def gone_within(state: Path, pgid: int, timeout_s: float) -> float:
    began = time.monotonic()
    while left := tritons_of(state, pgid):
        assert time.monotonic() - began < timeout_s, f"still running after {timeout_s} s: {left}"
        time.sleep(0.05)
    return time.monotonic() - began


def test_kill_9_of_the_router_takes_triton_and_its_stubs_with_it(tmp_path: Path, encoder_onnx: Path) -> None:
    state = tmp_path / "state"
    r = embedded_router(tmp_path, encoder_onnx, "router").start()
    try:
        pgid = int((state / "triton" / "tritonserver.pid").read_text())
        tree = tritons_of(state, pgid)
        assert sum("tritonserver" in c for c in tree.values()) >= 1
        assert sum("triton_python_backend_stub" in c for c in tree.values()) == 5, tree  # one per demo model
        os.kill(r.pid, signal.SIGKILL)  # the router alone: Triton lives in a session of its own
        r.proc.wait(10)  # type: ignore[union-attr]
        took = gone_within(state, pgid, 5.0)
    finally:
        r.kill()
    print(f"Triton's {len(tree)} processes gone {took:.2f} s after kill -9 of the router")


def test_a_start_ends_the_triton_an_earlier_router_left_and_serves(tmp_path: Path, encoder_onnx: Path) -> None:
    state = tmp_path / "state"
    # By hand: the embedded Triton of this state folder, then kill -9 of its watchdog only, so tritonserver and
    # its stubs run on with no router and no watchdog (what a router of an earlier version left behind).
    build_demo_repository(state / "demo-model-repository")
    orphan = TritonServer(state / "demo-model-repository", work_dir=state / "triton").start()
    pgid = orphan.pid
    assert pgid is not None
    os.kill(pgid, signal.SIGKILL)
    time.sleep(0.5)
    left = tritons_of(state, pgid)
    assert any("tritonserver" in c for c in left.values()) and len(left) == 6, left
    r = embedded_router(tmp_path, encoder_onnx, "router").start()
    try:
        assert not set(left) & set(tritons_of(state)), "the leftover Triton still runs beside the new one"
        (said,) = [ln for ln in r.log_text().splitlines() if "left running by an earlier router" in ln]
        assert f"process group {pgid}, 6 processes" in said and str(state / "triton") in said, said
        with grpc.insecure_channel(r.address) as ch:
            stub = pb_grpc.RoutingServiceStub(ch)
            events = [m.WhichOneof("event") for m in stub.Generate(
                pb.GenerateRequest(tenant="default", text="Say hello."), timeout=30)]
        assert events[0] == "route" and events[-1] == "done"
        new_pgid = int((state / "triton" / "tritonserver.pid").read_text())
        assert new_pgid != pgid and tritons_of(state, new_pgid)
    finally:
        assert r.stop() == 0, r.log_tail()
    assert not tritons_of(state) and not (state / "triton" / "tritonserver.pid").exists()
    orphan.stop()  # reaps the killed watchdog; its group is gone already


def test_a_second_router_of_the_folder_is_refused_before_it_writes_there(tmp_path: Path, encoder_onnx: Path) -> None:
    state = tmp_path / "state"
    r = embedded_router(tmp_path, encoder_onnx, "router").start()
    try:
        repo = state / "demo-model-repository"
        files = {f: f.stat().st_mtime_ns for f in repo.rglob("*") if f.is_file()}
        second = embedded_router(tmp_path, encoder_onnx, "second").launch()
        assert second.proc is not None and second.proc.wait(60) == 1, second.log_tail()
        said = second.log_text()
        assert "FolderInUse" in said and "a router of this state folder is already running" in said, said
        # it wrote nothing and started nothing: the running router's Triton serves the repository as it was
        assert "writing the demo zoo" not in said and "starting the embedded Triton" not in said, said
        assert "drained and flushed" not in said, said
        assert {f: f.stat().st_mtime_ns for f in repo.rglob("*") if f.is_file()} == files
        with grpc.insecure_channel(r.address) as ch:
            reply = pb_grpc.RoutingServiceStub(ch).Route(pb.RouteRequest(tenant="default", text="Say hello."),
                                                         timeout=30)
        assert reply.model
    finally:
        assert r.stop() == 0, r.log_tail()


def test_an_embedded_triton_that_dies_is_restarted_and_serves_again(tmp_path: Path, encoder_onnx: Path) -> None:
    """kill -9 of tritonserver itself (what the OOM killer does): the router says so with the exit code and the
    log's tail, starts it again on the same port, and Generate works again; before, readiness stayed NOT_SERVING
    until someone restarted the router."""
    state = tmp_path / "state"
    r = embedded_router(tmp_path, encoder_onnx, "router").start()
    try:
        pgid = int((state / "triton" / "tritonserver.pid").read_text())
        (server,) = [pid for pid, cmd in tritons_of(state, pgid).items() if cmd.split()[0].endswith("/tritonserver")]
        os.kill(server, signal.SIGKILL)
        began, readiness = time.monotonic(), set()
        with grpc.insecure_channel(r.address) as ch:
            stub = pb_grpc.RoutingServiceStub(ch)
            while True:
                assert time.monotonic() - began < 90, r.log_tail()
                readiness.add(r.health(""))
                try:
                    events = [m.WhichOneof("event") for m in stub.Generate(
                        pb.GenerateRequest(tenant="default", text="Say hello."), timeout=30)]
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.2)
                    continue
                if events[-1] == "done" and time.monotonic() - began > 0.5:
                    break
        log = r.log_text()
        assert "the embedded Triton exited (code 137); restarting it" in log, r.log_tail()
        assert "the embedded Triton is back on" in log
        # while it restarted, probes saw it: readiness NOT_SERVING, the reason said (they stayed SERVING before)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in readiness, readiness
        said = log.index("the embedded Triton exited")
        assert "unreachable (connection refused)" in log[said:log.index("the embedded Triton is back on")], log[said:]
        new_pgid = int((state / "triton" / "tritonserver.pid").read_text())
        old_group = [pid for pid, (pgrp, _) in live_processes().items() if pgrp == pgid]
        assert new_pgid != pgid and not old_group and tritons_of(state, new_pgid)
    finally:
        assert r.stop() == 0, r.log_tail()
    assert not tritons_of(state)
    print(f"Generate served again {time.monotonic() - began:.1f} s after kill -9 of tritonserver")


def test_sigterm_while_triton_starts_calls_the_start_off(tmp_path: Path, encoder_onnx: Path) -> None:
    """SIGTERM while the embedded Triton is starting: the start is called off at once (Triton stopped, nothing
    listens); before, the router waited for Triton to be ready (up to a minute for a hung one), started serving,
    and only then drained."""
    state = tmp_path / "state"
    r = embedded_router(tmp_path, encoder_onnx, "router").launch()
    try:
        began = time.monotonic()
        while "starting the embedded Triton server" not in r.log_text():
            assert r.running() and time.monotonic() - began < 60, r.log_tail()
            time.sleep(0.02)
        r.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        code = r.proc.wait(30)  # type: ignore[union-attr]
    finally:
        r.kill()
    log = r.log_text()
    assert code == 0, log
    assert "stopping: interrupted during start-up" in log and "listening on" not in log, log
    assert not tritons_of(state) and not (state / "triton" / "tritonserver.pid").exists()


def test_demo_triton_serves_two_routers_from_the_configuration_it_writes(tmp_path: Path, encoder_onnx: Path) -> None:
    """`messplus demo-triton` runs the demo zoo's Triton alone and writes the `[triton]` url and `[[zoo.models]]`
    that point a router at it: two routers started from that file (each on its own state) route and generate on
    it, each with the models and prices the embedded default would have. SIGTERM ends it and its processes."""
    state, zoo = tmp_path / "triton-state", tmp_path / "zoo.toml"
    with open(tmp_path / "demo-triton.log", "wb") as log:
        demo = subprocess.Popen([sys.executable, "-m", "messplus.service.cli", "demo-triton", "--state-dir",
                                 str(state), "--zoo-toml", str(zoo)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    routers: list[ServerProcess] = []
    try:
        began = time.monotonic()
        while not zoo.exists():
            assert demo.poll() is None and time.monotonic() - began < 120, (tmp_path / "demo-triton.log").read_text()
            time.sleep(0.1)
        text = zoo.read_text()
        cfg = config.from_mapping(tomllib.loads(text), env={})
        assert len(cfg.zoo.models) == 5 and all(m.cost_per_request > 0 for m in cfg.zoo.models)
        for name in ("a", "b"):
            routers.append(messplus_serve(tmp_path / name, text, env={
                "MESSPLUS_STATE_DIR": str(tmp_path / name / "state"), "MESSPLUS_SERVER_LISTEN": "127.0.0.1:0",
                "MESSPLUS_PREDICTOR_ONNX": str(encoder_onnx), "MESSPLUS_PREDICTOR_THREADS": "1"}).start())
        for r in routers:
            with grpc.insecure_channel(r.address) as ch:
                stub = pb_grpc.RoutingServiceStub(ch)
                listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
                assert [m.name for m in listed.models] == [m.name for m in cfg.zoo.models]
                assert listed.triton.reachable and all(m.available for m in listed.models)
                events = list(stub.Generate(pb.GenerateRequest(tenant="default", text="Say hello."), timeout=60))
                assert events[-1].WhichOneof("event") == "done" and events[-1].done.served_model
        tree = tritons_of(state)
        assert sum("triton_python_backend_stub" in c for c in tree.values()) == 5, tree
    finally:
        for r in routers:
            r.stop()
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(60)
    assert code == 0, (tmp_path / "demo-triton.log").read_text()
    assert not tritons_of(state), tritons_of(state)
