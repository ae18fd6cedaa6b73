"""`messplus replay` and `messplus pretrain`: the instrument's own behaviour on a tiny hand-made trace.

Most tests use a stand-in encoder (hashed words, 16 dimensions) so they measure the instrument, not MiniLM;
`test_cli_replay_with_the_real_onnx_encoder` runs the whole command with the real ONNX encoder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from messplus.service import config as config_mod
from messplus.service.cli import main
from messplus.service.routing.heads import Heads
from messplus.service.replay import (Condition, InProcess, Outage, ReplaySetup, Step, format_table, pretrain, replay,
                                     run_stream, split_stream, write_outputs)
from messplus.service.replay import TenantOverrides as Policy
from messplus.service.config import TenantConfig
from messplus.service.routing.router import Router
from messplus.service.state.sqlite import SqliteStore as Store
from messplus.service.trace import TraceError, concat, embed_trace, load_trace

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny_trace.csv"
SMALL, MEDIUM, LARGE = 0, 1, 2


class HashEncoder:
    """Stand-in encoder: bag of hashed words, unit norm. Counts the texts it encodes."""

    dim = 16

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


@pytest.fixture(scope="module")
def tiny():
    return load_trace(TINY)


@pytest.fixture(scope="module")
def emb(tiny) -> np.ndarray:
    return embed_trace(tiny, HashEncoder(), "hash", None, progress=False)


def _strip(summary: list[dict[str, Any]]) -> str:
    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k != "wall_s"}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o
    return json.dumps(clean(summary), sort_keys=True)


# --------------------------------------------------------------------------------------------- the trace
def test_trace_loads_models_costs_and_missing_labels(tiny) -> None:
    assert tiny.models == ("small", "medium", "large") and len(tiny) == 8
    assert list(tiny.mean_cost) == [1.0, 3.0, 10.0]
    assert np.isnan(tiny.labels[6:, SMALL]).all() and not np.isnan(tiny.labels[:6]).any()
    assert tiny.cost_unit == "test units per request" and tiny.filled_costs == 0


def test_trace_errors_and_filled_costs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt_id,prompt,correct__a,cost__a\n1,hi,1.5,1\n", encoding="utf-8")
    with pytest.raises(TraceError, match="not in"):
        load_trace(bad)
    nocost = tmp_path / "nocost.csv"
    nocost.write_text("prompt_id,prompt,correct__a\n1,hi,1\n", encoding="utf-8")
    with pytest.raises(TraceError, match="cost__"):
        load_trace(nocost)
    twice = tmp_path / "twice.csv"  # the second correct__a would be the only one read
    twice.write_text("prompt_id,prompt,correct__a,cost__a,correct__a\n1,hi,1,1,0\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"\['correct__a'\] appear more than once"):
        load_trace(twice)
    gap = tmp_path / "gap.csv"
    gap.write_text("prompt_id,prompt,correct__a,cost__a\n1,hi,,2\n2,ho,1,\n3,hu,0,4\n", encoding="utf-8")
    t = load_trace(gap)
    assert list(t.costs[:, 0]) == [2.0, 3.0, 4.0] and t.filled_costs == 1 and t.accuracy[0] == 0.5
    booleans = tmp_path / "booleans.csv"  # what pandas writes for a bool column: it vanished as "no label"
    booleans.write_text("prompt,correct__a,cost__a\nhi,1,1\nho,True,1\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"row 2, model 'a': label 'True' is not a number"):
        load_trace(booleans)
    bom = tmp_path / "bom.csv"  # saved by a spreadsheet: the mark was read as part of the first column's name
    bom.write_text("prompt_id,prompt,correct__a,cost__a\n7,hi,1,1\n", encoding="utf-8-sig")
    assert load_trace(bom).prompt_ids == ("7",)


def test_price_list_is_fitted_per_request_and_per_input_token(tmp_path: Path) -> None:
    # a: 0.5 per request + 0.01 per input token (characters / 4); b: a flat 2; c: falls as prompts grow
    rows = ["prompt_id,prompt,correct__a,cost__a,correct__b,cost__b,correct__c,cost__c"]
    for i, chars in enumerate((40, 400, 4000)):
        rows.append(f"{i},{'x' * chars},1,{0.5 + 0.01 * chars / 4},1,2,1,{3.0 - chars / 4000}")
    path = tmp_path / "priced.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    per_request, per_token = load_trace(path).price_list()
    np.testing.assert_allclose(per_request, [0.5, 2.0, np.mean([2.99, 2.9, 2.0])])
    np.testing.assert_allclose(per_token, [0.01, 0.0, 0.0], atol=1e-12)  # no negative prices
    one = tmp_path / "one.csv"
    one.write_text("prompt_id,prompt,correct__a,cost__a\n1,hi,1,7\n", encoding="utf-8")
    assert [list(x) for x in load_trace(one).price_list()] == [[7.0], [0.0]]


def test_the_router_is_given_the_price_list_unless_flat_costs(tiny, emb) -> None:
    priced = InProcess(tiny, TenantConfig(name="t", alpha=0.7), emb.shape[1])
    flat = InProcess(tiny, TenantConfig(name="t", alpha=0.7), emb.shape[1], flat_costs=True)
    per_request, per_token = tiny.price_list()
    np.testing.assert_allclose(priced.router.pricing.cost_input, per_token)
    np.testing.assert_allclose(flat.router.pricing.cost_fixed, tiny.mean_cost)
    assert not flat.router.pricing.cost_input.any()
    for d in (priced, flat):
        d.close()


def test_concatenated_traces_must_share_models(tiny, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("prompt_id,prompt,correct__small,cost__small\n1,hi,1,1\n", encoding="utf-8")
    with pytest.raises(TraceError, match="share"):
        concat([tiny, load_trace(other)])
    both = concat([tiny, tiny])
    assert len(both) == 16 and list(both.segment) == [0] * 8 + [1] * 8


def test_embeddings_are_cached_by_trace_and_encoder(tiny, tmp_path: Path) -> None:
    enc = HashEncoder()
    first = embed_trace(tiny, enc, "hash-v1", tmp_path, progress=False)
    assert enc.encoded == 8 and len(list(tmp_path.glob("*.npz"))) == 1
    again = embed_trace(tiny, enc, "hash-v1", tmp_path, progress=False)
    assert enc.encoded == 8 and np.array_equal(first, again)
    embed_trace(tiny, enc, "hash-v2", tmp_path, progress=False)  # another encoder: encoded again
    assert enc.encoded == 16 and len(list(tmp_path.glob("*.npz"))) == 2
    for cache in tmp_path.glob("*.npz"):  # cut short (a crash while writing) or empty: encoded again, no crash
        cache.write_bytes(cache.read_bytes()[:100])
    assert np.array_equal(embed_trace(tiny, enc, "hash-v1", tmp_path, progress=False), first)
    assert enc.encoded == 24


# -------------------------------------------------------------------------------------------- the stream
def test_outage_parsing() -> None:
    assert Outage.parse("a/b:c:10:20") == Outage("a/b:c", 10, 20, True)
    assert Outage.parse("m:0.25:0.5").window(100) == (25, 50)
    assert Outage.parse("m:0:1.0").window(8) == (0, 8)
    for bad in ("m:5", "m:0.5:0.2", "m:0.5:2.5", ":0:1"):
        with pytest.raises(ValueError):
            Outage.parse(bad)


def test_stream_order_seed_warm_start_and_drift(tiny) -> None:
    a_train, a = split_stream(tiny, 3, Condition())
    b_train, b = split_stream(tiny, 3, Condition())
    assert a_train.size == 0 and np.array_equal(a, b) and sorted(a) == list(range(8))
    assert not np.array_equal(a, split_stream(tiny, 4, Condition())[1])
    train, rest = split_stream(tiny, 0, Condition(warm_start=0.5))
    assert len(train) == len(rest) == 4 and sorted([*train, *rest]) == list(range(8))
    drift = concat([tiny, tiny])
    _, rows = split_stream(drift, 0, Condition())
    assert (drift.segment[rows] == [0] * 8 + [1] * 8).all()  # files keep their order
    _, rows = split_stream(tiny, 0, Condition(order="source"))
    src = [tiny.sources[r] for r in rows]
    assert src == sorted(src, key=["arith", "geo", "words", "proof", "code"].index)
    # --first N: the first N requests of the same stream (a new tenant's first day)
    assert np.array_equal(split_stream(tiny, 3, Condition(first=5))[1], a[:5])
    train, rest = split_stream(tiny, 0, Condition(warm_start=0.5, first=3))
    assert len(train) == 4 and np.array_equal(rest, split_stream(tiny, 0, Condition(warm_start=0.5))[1][:3])


def test_first_n_baselines_are_those_of_the_replayed_requests(tiny, emb) -> None:
    """With --first the baselines (best single model included) are computed on the requests replayed only."""
    (e,) = replay(tiny, emb, ReplaySetup(alphas=(0.5,), seeds=(1,), cond=Condition(first=4), reference=False))
    _, rows = split_stream(tiny, 1, Condition(first=4))
    acc = np.nanmean(tiny.labels[rows], axis=0)
    best = max(range(len(tiny.models)), key=lambda k: (acc[k], -tiny.costs[rows].mean(0)[k]))
    (run,) = e["runs"]
    assert run["requests"] == 4 and e["condition"]["first"] == 4
    assert e["baselines"]["best_single"]["model"] == tiny.models[best]
    assert run["best_single_satisfaction"] == pytest.approx(acc[best])


def test_table_marks_ratios_against_a_baseline_short_of_alpha(tiny, emb) -> None:
    """At alpha 0.95 no static mix reaches alpha on the tiny trace (its best model: 0.875), while the oracle, which
    picks per prompt, does: the table must not print the ratio against the static mix as if it were a saving."""
    (e,) = replay(tiny, emb, ReplaySetup(alphas=(0.95,), seeds=(1,), reference=False))
    assert not e["baselines"]["static_mixture"]["feasible"] and e["baselines"]["oracle"]["feasible"]
    table = format_table([e])
    run = next(line for line in table.splitlines() if line.startswith("  seed 1:"))
    assert f"x static {e['runs'][0]['cost_vs_static_mixture']:.3f}* " in run
    assert f"x oracle {e['runs'][0]['cost_vs_oracle']:.3f} " in run
    assert not e["baselines"]["task_oracle"]["feasible"]  # its tasks hold rows that no one model answers all of
    assert "  cheapest model alone reaching alpha: none; static mixture " in table  # no model alone reaches 0.95
    assert table.splitlines()[-1] == ("  * short of alpha even at their best: static mixture (satisfaction 0.8750), "
                                      "task oracle (satisfaction 0.8750); a ratio against them is not a saving")
    (ok,) = replay(tiny, emb, ReplaySetup(alphas=(0.5,), seeds=(1,), reference=False))
    assert "*" not in format_table([ok])


class Scripted:
    """A driver that serves a fixed model (explores every model when `explore`), and logs feedback."""

    def __init__(self, served: int, explore: bool = False, K: int = 3) -> None:
        self.served, self.explore, self.K = served, explore, K
        self.routed: list[str] = []
        self.fed: list[tuple[int, str, int, dict[int, float]]] = []

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Step | None:
        self.routed.append(rid)
        invoked = tuple(int(k) for k in np.flatnonzero(avail)) if self.explore else (self.served,)
        return Step(self.served, invoked, self.explore, 0.0) if avail[self.served] else None

    def record(self, step: Step, emb: np.ndarray, cost_raw: float) -> None:
        pass

    def feedback(self, rid: str, served: int, labels: dict[int, float]) -> None:
        self.fed.append((len(self.routed), rid, served, labels))

    def queue(self) -> float:
        return 0.0


def test_empty_label_gives_no_feedback_and_is_not_judged(tiny, emb) -> None:
    rows = np.arange(8)
    d = Scripted(SMALL)
    a = run_stream(d, tiny, rows, emb, Condition(), 0)
    assert len(d.fed) == 6 and all(lab.keys() == {SMALL} for *_, lab in d.fed)  # t7, t8: nothing at all
    assert np.isnan(a.sat[6:]).all() and np.nanmean(a.sat) == 0.5
    assert list(a.cost) == [1.0] * 8
    d = Scripted(MEDIUM, explore=True)
    a = run_stream(d, tiny, rows, emb, Condition(), 0)
    assert [set(lab) for *_, lab in d.fed] == [{0, 1, 2}] * 6 + [{1, 2}] * 2  # every label but the empty ones
    assert d.fed[6][3] == {MEDIUM: 1.0, LARGE: 1.0}
    assert list(a.cost) == [13.0, 15.0] * 4  # every invoked model's recorded cost


def test_feedback_delay_and_rate(tiny, emb) -> None:
    d = Scripted(MEDIUM)
    run_stream(d, tiny, np.arange(8), emb, Condition(feedback_delay=3), 0)
    # feedback of request i arrives after requests i+1..i+3 were routed (routed count = i + 4), the rest at the end
    assert [(n, rid.rsplit("-", 1)[1]) for n, rid, *_ in d.fed][:4] == [(4, "0"), (5, "1"), (6, "2"), (7, "3")]
    assert len(d.fed) == 8 and all(n == 8 for n, *_ in d.fed[4:])
    d = Scripted(MEDIUM)
    a = run_stream(d, tiny, np.arange(8), emb, Condition(feedback_rate=0.0), 0)
    assert d.fed == [] and not np.isnan(a.sat).any() and a.sat.mean() == 0.75


def test_feedback_rate_zero_means_no_learning_but_every_request_is_judged(tiny, emb) -> None:
    drv = InProcess(tiny, Policy(c=0.5).tenant(0.7, 0), emb.shape[1])
    a = run_stream(drv, tiny, np.arange(8), emb, Condition(feedback_rate=0.0), 0)
    assert drv.router.heads.labels.sum() == 0 and drv.queue() == 0.0
    assert a.extra["labels_given"] == 0 and a.extra["feedback_requests"] == 0
    judged = ~np.isnan(a.sat)
    assert judged.sum() == 8 - int(((a.served == SMALL) & (np.arange(8) >= 6)).sum())
    drv.close()
    full = InProcess(tiny, Policy(c=0.5).tenant(0.7, 0), emb.shape[1])
    run_stream(full, tiny, np.arange(8), emb, Condition(), 0)
    assert full.router.heads.labels.sum() > 0
    full.close()


def test_outage_masks_the_model_during_its_window(tiny, emb) -> None:
    cond = Condition(outages=(Outage("small", 2, 6, True),))
    drv = InProcess(tiny, Policy(c=50.0).tenant(0.7, 0), emb.shape[1])  # c large: every step explores
    a = run_stream(drv, tiny, np.arange(8), emb, cond, 0)
    assert a.exploration.all()
    assert not a.invoked[2:6, SMALL].any() and a.invoked[:2, SMALL].all() and a.invoked[6:, SMALL].all()
    drv.close()
    d = Scripted(SMALL)
    a = run_stream(d, tiny, np.arange(8), emb, Condition(outages=(Outage("small", 0.25, 0.5, False),)), 0)
    assert list(a.served) == [0, 0, -1, -1, 0, 0, 0, 0] and a.sat[2] == 0.0  # unrouted counts as unsatisfied


# -------------------------------------------------------------------------------------------- the replay
def test_same_seed_same_result_and_summary_shape(tiny, emb, tmp_path: Path) -> None:
    setup = ReplaySetup(alphas=(0.7, 0.8), seeds=(0, 1))
    curves: dict[float, dict[str, Any]] = {}
    one = replay(tiny, emb, setup, curves=curves)
    two = replay(tiny, emb, setup)
    assert _strip(one) == _strip(two)
    assert [e["alpha"] for e in one] == [0.7, 0.8]
    for e in one:
        assert e["trace"] == "tiny_trace" and set(e["baselines"]) == {
            "cheapest_single", "best_single", "static_mixture", "oracle", "task_oracle", "messplus_reference"}
        for r in e["runs"]:
            assert {"seed", "satisfaction", "mean_cost", "exploration_fraction", "sla_met", "model_share"} <= set(r)
            assert r["sla_met"] == (r["satisfaction"] >= e["alpha"] - 1e-9)
            assert r["requests"] == 8 and r["judged"] + r["unjudged"] == 8
    assert one[0]["baselines"]["static_mixture"]["mean_cost"] == pytest.approx(2.6)
    written = write_outputs(tmp_path, one, curves, plots=False)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(one))
    assert len(written) == 1 + 4  # summary, and messplus + reference arrays for two alphas


def test_warm_start_trains_on_the_other_part(tiny, emb) -> None:
    setup = ReplaySetup(alphas=(0.7,), seeds=(0,), cond=Condition(warm_start=0.5), reference=False)
    (entry,) = replay(tiny, emb, setup)
    (run,) = entry["runs"]
    assert run["requests"] == 4 and run["warm_start_labels"] > 0


def test_pretrain_writes_heads_the_service_restores(tiny, emb, tmp_path: Path) -> None:
    raw = {"state": {"dir": str(tmp_path)}, "triton": {"url": "localhost:1"},
           "zoo": {"models": [{"name": m, "triton_model": m, "cost_per_request": c}
                              for m, c in zip(tiny.models, tiny.mean_cost)]}}
    cfg = config_mod.from_mapping(raw, env={})
    result = pretrain(cfg, tiny, emb)
    assert result["labels"] == 22 and result["snapshot_seq"] == 1
    expected = Heads(tiny.models, emb.shape[1])
    from messplus.service.replay import train_heads
    train_heads(expected, emb, tiny.labels, np.random.default_rng([0, 1]).permutation(8))
    store = Store(tmp_path / "messplus.sqlite3", inline=True)
    heads = Heads(tiny.models, emb.shape[1])
    Router(cfg.zoo.models, (), heads, store)
    assert np.array_equal(heads.W, expected.W) and np.array_equal(heads.S, expected.S)
    store.close()
    again = pretrain(cfg, tiny, emb)  # on top of the restored heads
    assert again["snapshot_seq"] == 1


def test_pretrain_refuses_a_state_a_router_holds_and_a_trace_without_labels(tiny, emb, tmp_path: Path) -> None:
    """A running router's next snapshot overwrote what pretrain wrote (it said rc 0); a trace whose cells are all
    empty wrote a snapshot of the prior and said so as a success."""
    from messplus.service.state import StateInUse, lock_sqlite_state

    raw = {"state": {"dir": str(tmp_path)}, "triton": {"url": "localhost:1"},
           "zoo": {"models": [{"name": m, "triton_model": m, "cost_per_request": c}
                              for m, c in zip(tiny.models, tiny.mean_cost)]}}
    cfg = config_mod.from_mapping(raw, env={})
    held = lock_sqlite_state(tmp_path / "messplus.sqlite3")  # what `messplus serve` holds while it runs
    try:
        with pytest.raises(StateInUse, match=rf"in use by another messplus process \(pid {os.getpid()}\)"):
            pretrain(cfg, tiny, emb)
    finally:
        held.close()
    empty = replace(tiny, labels=np.full_like(tiny.labels, np.nan))
    with pytest.raises(TraceError, match="no label for the service's models"):
        pretrain(cfg, empty, emb)
    assert pretrain(cfg, tiny, emb)["labels"] == 22  # the lock went with the holder


def test_pretrain_writes_into_the_configured_postgresql(tiny, emb, tmp_path: Path, postgres_url: str) -> None:
    """Replicas on PostgreSQL restore the pretrained heads from the database, not from a stray SQLite file."""
    raw = {"state": {"dir": str(tmp_path), "backend": "postgres", "url": postgres_url}, "triton": {"url": "none"},
           "zoo": {"models": [{"name": m, "triton_model": m, "cost_per_request": c}
                              for m, c in zip(tiny.models, tiny.mean_cost)]}}
    cfg = config_mod.from_mapping(raw, env={})
    assert pretrain(cfg, tiny, emb)["labels"] == 22
    assert not (tmp_path / "messplus.sqlite3").exists()
    from messplus.service.state.postgres import PostgresStore
    store = PostgresStore(postgres_url)
    assert all(store.head(m) is not None for m in tiny.models)
    store.close()


def test_bad_input_to_replay_is_one_line_and_exit_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(TINY.read_text().replace(",1.0,", ",2.0,", 1))  # a label of 2
    for argv in (["--trace", str(bad)], ["--trace", str(TINY), "--outage", "foo"]):
        assert main(["replay", *argv, "--alpha", "0.5", "--out", str(tmp_path / "o"), "--no-plots"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("messplus: invalid input: ") and "Traceback" not in err


# ------------------------------------------------------------------------------- gRPC: the running service
@pytest.fixture
def service(tiny) -> Iterator[tuple[str, Router]]:
    """The service's RoutingServicer on a real gRPC server (port 0) with the stand-in encoder; no Triton."""
    import grpc

    from messplus.service.config import ModelConfig, TenantConfig
    from messplus.service.routing.predictor import Predictor
    from messplus.service.routing.types import Routed
    from messplus.service.server.batcher import MicroBatcher
    from messplus.service.server.servicer import RoutingServicer
    from messplus.v1 import routing_pb2_grpc

    per_request, per_token = tiny.price_list()  # the price list the in-process replay gives its router
    models = [ModelConfig(name=m, triton_model=m, cost_per_request=float(c), cost_per_input_token=float(t))
              for m, c, t in zip(tiny.models, per_request, per_token)]
    heads = Heads(tiny.models, HashEncoder.dim)
    router = Router(models, [TenantConfig(name="default", alpha=0.7, seed=0)], heads, Store(":memory:", inline=True))
    predictor = Predictor(HashEncoder(), heads)

    def route_batch(items: list[Any]) -> list[Any]:
        e, p, var = predictor.predict([text for text, _ in items])
        return [d if isinstance(d, Exception) else Routed(d, e[b])
                for b, d in enumerate(router.decide([it for _, it in items], p, var))]

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        box["server"] = server = grpc.aio.server()
        box["batcher"] = batcher = MicroBatcher(route_batch, max_batch=4, max_delay_s=0.0)
        routing_pb2_grpc.add_RoutingServiceServicer_to_server(
            RoutingServicer(router, batcher, None, max_prompt_chars=10_000, triton_timeout_s=5.0,  # type: ignore
                            cost_unit="test"), server)
        box["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"127.0.0.1:{box['port']}", router
    async def stop() -> None:
        await box["server"].stop(0)
        await box["batcher"].close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    router.store.close()


@pytest.mark.parametrize("addresses", [1, 2], ids=["one-address", "two-addresses"])
def test_grpc_replay_agrees_with_in_process(tiny, emb, service, addresses) -> None:
    """Two addresses of the same service: Route alternates between the channels and Feedback goes to a seeded
    random one; the numbers are the same router's, so the single router's in-process replay's."""
    from messplus.service.replay import GrpcDriver

    addr, router = service
    driver = GrpcDriver(addr if addresses == 1 else [addr] * addresses, "default", tiny.models)
    assert len(driver.stubs) == addresses
    assert driver.alpha == pytest.approx(0.7) and driver.trace_models == list(tiny.models)
    setup = ReplaySetup(alphas=(0.7,), seeds=(0,), cond=Condition(feedback_delay=1), reference=False)
    try:
        (remote,) = replay(tiny, emb, setup, grpc_driver=driver)
    finally:
        driver.close()
    (local,) = replay(tiny, emb, setup)
    keep = ("satisfaction", "mean_cost", "exploration_fraction", "labels_given", "queue_end")
    r, m = remote["runs"][0], local["runs"][0]
    assert {k: r[k] for k in keep} == pytest.approx({k: m[k] for k in keep})
    assert r["model_share"] == m["model_share"] and r["sla_met"] == m["sla_met"]
    assert router.tenants["default"].requests == 8


# ----------------------------------------------------------------------------------- the real encoder
@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from messplus.service.encoder import ensure_exported

    return ensure_exported(tmp_path_factory.mktemp("encoder"))


def test_cli_replay_with_the_real_onnx_encoder(onnx_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["replay", "--trace", str(TINY), "--alpha", "0.7", "--alpha", "0.8", "--seeds", "2", "--out", str(out),
            "--onnx", str(onnx_path), "--cache-dir", str(tmp_path / "cache"), "--threads", "2", "--quiet",
            "--outage", "@cheapest:0.5:1.0"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["alpha"] for e in summary] == [0.7, 0.8] and all(len(e["runs"]) == 2 for e in summary)
    assert summary[0]["condition"]["outages"] == [{"model": "medium", "start": 0.5, "end": 1.0, "indices": False}]
    assert all((out / f"{p}.png").stat().st_size > 1000 for p in ("satisfaction", "cost", "shares"))
    emb = np.load(next((tmp_path / "cache").glob("*.npz")))["emb"]
    assert emb.shape == (8, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert "static mixture 2.6" in capsys.readouterr().out
    assert main(args) == 0  # again, from the embedding cache: same numbers
    assert _strip(json.loads((out / "summary.json").read_text())) == _strip(summary)
    assert not math.isnan(summary[0]["runs"][0]["satisfaction"])


@pytest.mark.parametrize("flags, message", [
    (["--caution", "10", "--floor-window", "0"], "--caution: needs the price floor"),
    (["--V", "-1"], r"--V: must be in \(0, 1000000\]"),
    (["--V", "1e308"], r"--V: must be in \(0, 1000000\]"),  # V' overflowed: NaN scores, every request unrouted
    (["--explore-budget", "-0.5"], "--explore-budget:"),
])
def test_cli_replay_refuses_knobs_the_service_would(flags: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=message):  # checked before the trace is even read
        main(["replay", "--trace", str(tmp_path / "absent.csv"), "--alpha", "0.7", "--out", str(tmp_path), *flags])


@pytest.mark.parametrize("flags, message", [
    (["--V", "inf"], "argument --V: not a finite number: 'inf'"),
    (["--alpha", "nan"], "argument --alpha: not a finite number: 'nan'"),
    (["--models", "a,a"], "--models needs distinct trace model names (a given twice)"),
    (["--models", ","], "--models needs distinct trace model names"),
    (["--grpc", ""], "--grpc needs HOST:PORT"),
    (["--tenant", "acme"], "--tenant, --tls-ca and --tls-server-name drive a running service: they need --grpc"),
    (["--grpc", "localhost:1", "--tls-server-name", "messplus.svc"], "--tls-server-name needs TLS: give --tls-ca"),
])
def test_cli_replay_refuses_flags_it_would_ignore_or_misread(flags: list[str], message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Each was accepted: inf ran with every request unrouted, a model given twice ran twice, --grpc '' ran in
    process, --tenant without --grpc was ignored."""
    with pytest.raises(SystemExit) as ended:  # before the trace is read
        main(["replay", "--trace", str(tmp_path / "absent.csv"), "--alpha", "0.7", "--out", str(tmp_path), *flags])
    assert message in f"{ended.value.code} {capsys.readouterr().err}"
    assert main(["replay", "--trace", str(tmp_path / "absent.csv"), "--alpha", "0.7", "--out", str(tmp_path),
                 "--outage", "a:nan:nan"]) == 2
    assert "outage 'a:nan:nan': need 0 <= START <= END" in capsys.readouterr().err
