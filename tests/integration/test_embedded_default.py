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


def test_a_start_that_fails_after_triton_is_up_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo zoo's price list is read after Triton answers ready; if that fails (a fault caused here by a
    stand-in, the trace ships with the package), the server it started must not live on until the process exits."""
    from messplus.service import trace
    from messplus.service.zoo.embedded import start_embedded_triton

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("the demo trace cannot be read")

    monkeypatch.setattr(trace, "load_trace", broken)
    said: list[str] = []
    with pytest.raises(OSError, match="demo trace"):
        start_embedded_triton(tmp_path, said.append)
    assert any("Triton ready" in s for s in said)  # it did start
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_child_triton(p, tmp_path)], \
        "the embedded Triton outlived the failed start"


def _is_child_triton(proc: Path, root: Path) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "tritonserver" in cmd and str(root) in cmd
