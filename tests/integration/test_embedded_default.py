"""`messplus serve` with no configuration: its own Triton with the demo zoo, SQLite state, port 50051 by default."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.procs import messplus_serve

pytestmark = pytest.mark.triton


def test_serve_without_config_starts_triton_and_the_demo_zoo(tmp_path: Path, encoder_onnx: Path) -> None:
    env = {"MESSPLUS_STATE_DIR": str(tmp_path / "state"), "MESSPLUS_SERVER_LISTEN": "127.0.0.1:0",
           "MESSPLUS_PREDICTOR_ONNX": str(encoder_onnx)}
    proc = messplus_serve(tmp_path, None, env=env).start()
    try:
        with grpc.insecure_channel(proc.address) as ch:
            stub = pb_grpc.RoutingServiceStub(ch)
            models = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
            assert len(models) == 5 and all(m.available for m in models)
            events = [m.WhichOneof("event") for m in stub.Generate(
                pb.GenerateRequest(tenant="default", text="Say hello."), timeout=30)]
            assert events[0] == "route" and events[-1] == "done" and "text" in events
            assert stub.SlaStatus(pb.SlaStatusRequest(tenant="default"), timeout=5).requests == 1
        triton_pids = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_child_triton(p, tmp_path)]
        assert triton_pids, "the embedded Triton is not running"
    finally:
        assert proc.stop(timeout_s=60) == 0, proc.log_tail()
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_child_triton(p, tmp_path)], \
        "the embedded Triton outlived the router"
    assert (tmp_path / "state" / "messplus.sqlite3").exists()


def _is_child_triton(proc: Path, root: Path) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "tritonserver" in cmd and str(root) in cmd
