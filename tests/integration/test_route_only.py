"""A Route-only router (`triton.url = "none"`): no Triton anywhere, and Route, Feedback, health and ListModels
serve as usual; Generate says plainly that this router does not call models. A real router in this process with
the real ONNX predictor; nothing listens for Triton."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest

from messplus.service import config as config_mod
from messplus.service.statuscmd import report
from messplus.v1 import routing_pb2 as pb

from ..support.config import serve_toml
from ..support.inprocess import AppThread
from ..support.target import SERVING

MODELS = [("small", 1.0), ("large", 10.0)]


def route_only_toml(state: Path, onnx: Path) -> str:
    return serve_toml(state, config_mod.ROUTE_ONLY, onnx, MODELS)


def test_config_route_only_needs_its_models_and_no_address() -> None:
    cfg = config_mod.from_mapping({"triton": {"url": "none"}, "zoo": {"models": [
        {"name": "small", "triton_model": "small", "cost_per_request": 1.0}]}}, env={})
    assert cfg.route_only and not cfg.embedded_triton
    with pytest.raises(config_mod.ConfigError, match="zoo.models"):
        config_mod.from_mapping({"triton": {"url": "none"}}, env={})
    with pytest.raises(config_mod.ConfigError, match="HOST:PORT"):
        config_mod.from_mapping({"triton": {"url": "nohost"}, "zoo": {"models": [
            {"name": "small", "triton_model": "small", "cost_per_request": 1.0}]}}, env={})


def test_route_and_feedback_serve_without_any_triton(tmp_path: Path, encoder_onnx: Path) -> None:
    app = AppThread(tmp_path / "app", route_only_toml(tmp_path / "state", encoder_onnx)).start()
    try:
        assert app.health() == SERVING
        with app.channel() as ch:
            stub = app.stub(ch)
            routed = [stub.Route(pb.RouteRequest(tenant="acme", text=f"What is {i} + {i}?"), timeout=30)
                      for i in range(4)]
            assert {r.model for r in routed} <= {"small", "large"}
            assert all(p.available for r in routed for p in r.predictions)
            fb = stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id=routed[0].request_id,
                                                  satisfaction=1.0), timeout=30)
            assert fb.labels_applied >= 1
            listed = stub.ListModels(pb.ListModelsRequest(), timeout=5)
            assert listed.triton.state == config_mod.ROUTE_ONLY and not listed.triton.address
            assert all(m.available for m in listed.models)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(pb.GenerateRequest(tenant="acme", text="write me a poem"), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "Route-only" in (err.value.details() or "")
            status = stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
            assert status.requests == 4  # the refused Generate was not counted
        out = io.StringIO()
        report(app.address, ["acme"], out=out)
        assert "no Triton (a Route-only router); 2/2 zoo models available" in out.getvalue()
        assert not any("Triton" in line for line in app.progress), app.progress
    finally:
        app.stop()


def test_feedback_looks_for_another_replicas_record_without_holding_a_thread(
        tmp_path: Path, encoder_onnx: Path, postgres_url: str) -> None:
    """With a shared PostgreSQL state, Feedback for a record another replica is still committing looks again
    for up to state.record_wait_s. Those waits held a thread of the event loop's executor each (cores + 4 of
    them): a flood of Feedback for ids that exist nowhere stalled SlaStatus and every other Feedback."""
    import threading
    import time

    from messplus.service.state.base import RequestRow
    from messplus.service.state.postgres import PostgresStore

    env = {"MESSPLUS_STATE_BACKEND": "postgres", "MESSPLUS_STATE_URL": postgres_url,
           "MESSPLUS_STATE_RECORD_WAIT_S": "4"}
    app = AppThread(tmp_path / "app", route_only_toml(tmp_path / "state", encoder_onnx), env=env).start()
    other = PostgresStore(postgres_url)  # the replica that routed "late-1"
    try:
        with app.channel() as ch:
            stub = app.stub(ch)
            flood = [stub.Feedback.future(pb.FeedbackRequest(tenant="acme", request_id=f"nowhere-{i}",
                                                             satisfaction=1.0), timeout=20) for i in range(30)]
            late = stub.Feedback.future(pb.FeedbackRequest(tenant="acme", request_id="late-1", satisfaction=1.0),
                                        timeout=20)
            time.sleep(0.5)
            began = time.monotonic()
            status = stub.SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=3)  # 30 waits hold no thread
            assert status.tenant == "acme" and time.monotonic() - began < 3
            threading.Timer(0.5, lambda: other.insert_request(RequestRow(
                request_id="late-1", tenant="acme", t=1, served_model="small", invoked=("small",),
                exploration=False, cost=0.1, cost_raw=1.0, alpha=0.75, embedding=b"", explore_cost_raw=0.0,
                p_served=0.5, target=0.9)).result(10)).start()
            assert late.result().labels_applied == 1  # found once the other replica committed it
            for f in flood:
                with pytest.raises(grpc.RpcError) as err:
                    f.result()
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        other.close()
        app.stop()


def test_a_request_id_another_replica_routed_is_already_exists(tmp_path: Path, encoder_onnx: Path,
                                                                postgres_url: str) -> None:
    """With a shared state, Route with a caller's id that another replica (or this one, longer ago than its
    memory) routed is refused ALREADY_EXISTS, as on a router of its own. Before, it was answered, its record was
    refused when it committed, and its Feedback then labelled the other request (the one the id names in the
    database) with this call's satisfaction."""
    from messplus.service.state.base import RequestRow
    from messplus.service.state.postgres import PostgresStore

    other = PostgresStore(postgres_url)  # the replica that routed "order-42"
    env = {"MESSPLUS_STATE_BACKEND": "postgres", "MESSPLUS_STATE_URL": postgres_url}
    app = AppThread(tmp_path / "app", route_only_toml(tmp_path / "state", encoder_onnx), env=env).start()
    try:
        other.insert_request(RequestRow(
            request_id="order-42", tenant="acme", t=1, served_model="small", invoked=("small",), exploration=False,
            cost=0.1, cost_raw=1.0, alpha=0.75, embedding=b"", explore_cost_raw=0.0, p_served=0.5,
            target=0.9)).result(10)
        with app.channel() as ch:
            stub = app.stub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Route(pb.RouteRequest(tenant="acme", text="hi", request_id="order-42"), timeout=20)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "order-42" in (err.value.details() or "")
            assert stub.Route(pb.RouteRequest(tenant="acme", text="hi", request_id="order-43"),
                              timeout=20).request_id == "order-43"  # a new id is routed
            row = other.request("order-42")
            assert row is not None and (row.t, row.served_model) == (1, "small")  # still the other's request
    finally:
        other.close()
        app.stop()


def test_a_failed_start_with_json_logs_ends_in_a_json_line(tmp_path: Path, encoder_onnx: Path) -> None:
    """With `server.log_format = "json"` a log shipper reads every line of stderr as one JSON object: the line a
    start that fails ends with too (it was plain text, `messplus: cannot start: ...`). A real `messplus serve`
    (Route-only) on an address another socket holds."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        listen = f"127.0.0.1:{held.getsockname()[1]}"
        cfg = tmp_path / "router.toml"
        cfg.write_text(serve_toml(tmp_path / "state", config_mod.ROUTE_ONLY, encoder_onnx, MODELS,
                                  server={"listen": listen, "log_format": "json"}))
        done = subprocess.run([sys.executable, "-m", "messplus.service.cli", "serve", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # each one JSON, or this raises
    assert lines[-1]["level"] == "ERROR" and lines[-1]["msg"].startswith("cannot start: "), lines[-1]
    assert f"cannot listen on {listen}: the address is in use" in lines[-1]["msg"], lines[-1]
