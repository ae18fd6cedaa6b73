"""Prometheus metrics on their own port, scraped for real, agree with what the router answers, and carry every
metric and label the operator's dashboard (deploy/grafana/) and alert rules (deploy/prometheus/) query; JSON logs
carry the request id (the log of a `messplus serve` process: serve() sets the log format up for the process)."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.metrics import scrape
from ..support.promql import (alert_queries, dashboard_queries, dashboard_targets, dashboard_variables, exported,
                              legend_problems, problems, uses)
from ..support.procs import ServerProcess

pytestmark = pytest.mark.triton
NEVER = pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)


def test_metrics_endpoint_shows_the_sla_per_tenant_and_model_and_logs_carry_the_request_id(
        router_process: Callable[..., ServerProcess]) -> None:
    r = router_process(server={"metrics_listen": "127.0.0.1:0", "log_format": "json"})
    predicted: dict[str, float] = {}
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for i in range(10):
            reply = stub.Route(pb.RouteRequest(tenant="acme", text=f"obs {i}: capital of France?",
                                               request_id=f"obs-{i}", overrides=NEVER), timeout=10)
            if i < 5:
                stub.Feedback(pb.FeedbackRequest(tenant="acme", request_id=reply.request_id,
                                                 satisfaction=float(i % 2)), timeout=10)
                p = next(x.p_hat for x in reply.predictions if x.model == reply.model)
                predicted[reply.model] = predicted.get(reply.model, 0.0) + p
        generated = []
        for i in range(3):
            stream = list(stub.Generate(pb.GenerateRequest(tenant="beta", text=f"gen {i}"), timeout=30))
            generated.append(stream[0].route.request_id)
        with pytest.raises(grpc.RpcError):
            stub.Route(pb.RouteRequest(tenant="acme", text=""), timeout=10)
        status = {t: stub.SlaStatus(pb.SlaStatusRequest(tenant=t), timeout=5) for t in ("acme", "beta")}
        m = scrape(r.metrics_port)

    def value(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    for t, st in status.items():
        assert value("messplus_tenant_queue", tenant=t) == pytest.approx(st.queue)
        assert value("messplus_tenant_alpha", tenant=t) == st.alpha
        assert value("messplus_tenant_satisfaction", tenant=t) == pytest.approx(st.satisfaction)
        assert value("messplus_tenant_requests_total", tenant=t) == st.requests
        assert value("messplus_tenant_cost_total", tenant=t) == pytest.approx(st.mean_cost * st.requests)
        assert value("messplus_tenant_exploration_rate", tenant=t) == pytest.approx(st.exploration_steps / st.requests)
        for share in st.models:
            assert value("messplus_model_selections_total", tenant=t, model=share.model) == share.served
            assert value("messplus_model_invocations_total", tenant=t, model=share.model) == share.invoked
    assert status["acme"].queue > 0 and status["acme"].labelled == 5
    assert value("messplus_rpc_duration_seconds_count", method="Route", code="OK") == 10
    assert value("messplus_rpc_duration_seconds_count", method="Route", code="INVALID_ARGUMENT") == 1
    assert value("messplus_rpc_duration_seconds_count", method="Generate", code="OK") == 3
    assert value("messplus_rpc_duration_seconds_bucket", method="Route", code="OK", le="+Inf") == 10
    triton_calls = sum(v for (n, _), v in m.items() if n == "messplus_triton_request_duration_seconds_count")
    assert triton_calls >= 3
    for model, p in predicted.items():  # calibration: predicted against observed, per model
        assert value("messplus_label_predicted_total", model=model) == pytest.approx(p)
    assert sum(v for (n, _), v in m.items() if n == "messplus_labels_total") == 5
    assert sum(v for (n, _), v in m.items() if n == "messplus_label_observed_total") == 2  # i = 1, 3
    assert all(v == 1 for (n, _), v in m.items() if n == "messplus_model_available")

    # The dashboard's and the alert rules' queries read only what this router exports.
    have = exported(m)
    assert problems(dashboard_queries(), have) == []
    assert problems(alert_queries(), have) == []
    assert legend_problems(dashboard_targets(), have) == []
    assert problems([f"{sel}" for sel, _ in dashboard_variables()], have) == []
    for sel, label in dashboard_variables():
        assert label in have[next(iter(uses(sel).selectors))] | {"instance"}, (sel, label)

    records = [json.loads(line) for line in r.log_path.read_text().splitlines()]  # every line, start-up's too
    assert any(x["msg"].startswith("listening on ") and x["logger"] == "messplus" for x in records)
    access = {(x.get("request_id"), x.get("rpc")): x for x in records if x["logger"] == "messplus.access"}
    for i in range(10):
        assert access[(f"obs-{i}", "Route")]["code"] == "OK"
    for rid in generated:
        assert access[(rid, "Generate")]["tenant"] == "beta" and access[(rid, "Generate")]["ms"] > 0
