"""`messplus replay --replicas N --sync-lag L` (service/replay/replicas.py): N routers on one shared state, on a
hand-made trace (the tiny fixture repeated) with the stand-in HashEncoder of test_replay.py.

What it must hold: one replica without lag is exactly the single-router replay; without lag every replica
decides with the one queue (the fold of the label log) and equal heads; with lag L every replica's heads have
learned exactly the labels committed before the last L requests, and nothing after them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from messplus.service.cli import main
from messplus.service.config import PredictorConfig
from messplus.service.replay import Condition, Outage, ReplaySetup, TenantOverrides, replay, run_stream, split_stream
from messplus.service.replay.drivers import TENANT
from messplus.service.replay.replicas import Replicas
from messplus.service.routing.heads import Heads
from messplus.service.routing.tenant import fold_queue
from messplus.service.trace import concat, embed_trace, load_trace

from .test_replay import TINY, HashEncoder, _strip

REPEAT = 25  # the tiny trace's 8 prompts, 25 times: 200 requests


@pytest.fixture(scope="module")
def stream() -> Any:
    return concat([load_trace(TINY)] * REPEAT)


@pytest.fixture(scope="module")
def stream_emb(stream: Any) -> np.ndarray:
    return embed_trace(stream, HashEncoder(), "hash", None, progress=False)


def _without_replicas(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for e in summary:
        assert (e["condition"].pop("replicas"), e["condition"].pop("sync_lag")) == (1, 0)
    return summary


@pytest.mark.parametrize("cond", [Condition(), Condition(feedback_delay=7), Condition(feedback_rate=0.3),
                                  Condition(warm_start=0.3),
                                  Condition(outages=(Outage.parse("medium:0.2:0.6"),))],
                         ids=["cold", "delay", "rate", "warm", "outage"])
def test_one_replica_without_lag_is_the_single_router_replay(stream, stream_emb, cond) -> None:
    setup = ReplaySetup(alphas=(0.7, 0.8), seeds=(0, 1), cond=cond)
    single = replay(stream, stream_emb, setup)
    shared = replay(stream, stream_emb, replace(setup, cond=replace(cond, replicas=1)))
    assert _strip(_without_replicas(shared)) == _strip(single)


class Watched(Replicas):
    """Replicas that check, at every request (after the log's delivery, before routing), what each replica
    knows against the label log on the shared state."""

    def __init__(self, *args: Any, check: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.check, self.checked = check, 0
        self.commits: list[tuple[int, int]] = []  # (position at commit, last seq) of every feedback transaction
        self.store.apply_feedback = self._watch(self.store.apply_feedback)  # type: ignore[method-assign]
        self.taken = [0] * len(self.replicas)  # feedbacks each replica took
        for k, r in enumerate(self.replicas):
            r.feedback = self._count(k, r.feedback)  # type: ignore[method-assign]

    def _count(self, k: int, feedback: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            self.taken[k] += 1
            return feedback(*args)
        return wrapped

    def _watch(self, apply: Any) -> Any:
        def wrapped(*args: Any, **kw: Any) -> Any:
            fut = apply(*args, **kw)
            if fut.result().events:
                self.commits.append((self.position, fut.result().events[-1].seq))
            return fut
        return wrapped

    def route(self, rid: str, text: str, emb: np.ndarray, avail: np.ndarray) -> Any:
        self.store.position = self.position
        self.store.deliver(self.position - self.lag)
        self.check(self)
        self.checked += 1
        return super().route(rid, text, emb, avail)  # its own deliver() finds nothing new


def _run(stream: Any, emb: np.ndarray, *, replicas: int, lag: int, check: Any, cond: Condition = Condition()) -> Any:
    tenant = TenantOverrides().tenant(0.75, 0)
    driver = Watched(stream, tenant, emb.shape[1], replicas=replicas, sync_lag=lag, seed=0, check=check)
    _, rows = split_stream(stream, 0, cond)
    try:
        run_stream(driver, stream, rows, emb, cond, 0)
        driver.labels = len(driver.store.label_events(0))
    finally:
        driver.close()
    assert driver.checked == len(rows)
    return driver


def _queue_labels(driver: Replicas, through: int | None = None) -> list[float]:
    return [ev.satisfaction for ev in driver.store.label_events(0)
            if ev.moves_queue and (through is None or ev.seq <= through)]


def test_replicas_without_lag_keep_one_queue_and_equal_heads(stream, stream_emb) -> None:
    def check(d: Replicas) -> None:
        log = d.store.label_events(0)
        last = log[-1].seq if log else 0
        one = fold_queue(d.routers[0].tenants[TENANT].cfg, _queue_labels(d))
        assert d.store.tenants()[TENANT].queue == pytest.approx(one, abs=1e-12)
        first = d.routers[0].heads
        for r in d.routers:
            st = r.tenants[TENANT]
            assert st.queue == pytest.approx(one, abs=1e-12)  # the queue each decides with: the one queue
            assert st.labelled == len(_queue_labels(d)) and r.heads.last_seq == last
            assert np.array_equal(r.heads.W, first.W) and np.array_equal(r.heads.S, first.S)
            assert st.next_t == d.position + 1  # the whole stream's request clock

    driver = _run(stream, stream_emb, replicas=3, lag=0, check=check)
    assert driver.labels >= sum(driver.taken) > len(stream) / 2
    assert min(driver.taken) > sum(driver.taken) / 5  # feedback reached every replica


@pytest.mark.parametrize("lag", [1, 5, 40])
def test_with_lag_heads_learn_exactly_the_labels_before_the_last_L_requests(stream, stream_emb, lag) -> None:
    def check(d: Watched) -> None:
        through = max((seq for pos, seq in d.commits if pos <= d.position - lag), default=0)
        newer = [seq for pos, seq in d.commits if pos > d.position - lag]
        prefix = [ev for ev in d.store.label_events(0) if ev.seq <= through]
        heads = Heads(d.routers[0].names, stream_emb.shape[1], prior_var=PredictorConfig().prior_var)
        for ev in prefix:  # the log's first labels, learned from the prior as the service learns them
            heads.update(np.frombuffer(ev.embedding or b"", np.float32), d.routers[0].index[ev.model], ev.satisfaction)
        for r in d.routers:
            assert r.heads.last_seq == through
            assert np.array_equal(r.heads.W, heads.W) and np.array_equal(r.heads.S, heads.S)
            # the queue it decides with is the one queue as of a label no older than the lagged log
            st = r.tenants[TENANT]
            assert st.queue_seq >= max((ev.seq for ev in prefix if ev.moves_queue), default=0)
            assert st.queue == pytest.approx(fold_queue(st.cfg, _queue_labels(d, st.queue_seq)), abs=1e-12)
        if newer:
            assert d.store.label_events(0)[-1].seq > through  # the last L requests' labels are not learned yet

    _run(stream, stream_emb, replicas=3, lag=lag, check=check)


def test_lag_and_replicas_are_in_the_summary_and_the_command_line(tmp_path, stream, stream_emb) -> None:
    cond = Condition(replicas=4, sync_lag=10)
    (entry,) = replay(stream, stream_emb, ReplaySetup(alphas=(0.75,), seeds=(0,), cond=cond))
    assert entry["condition"]["replicas"] == 4 and entry["condition"]["sync_lag"] == 10
    assert entry["runs"][0]["requests"] == len(stream) and entry["baselines"]["messplus_reference"] is not None
    (plain,) = replay(stream, stream_emb, ReplaySetup(alphas=(0.75,), seeds=(0,)))
    assert "replicas" not in plain["condition"]  # the default replay's summary is unchanged
    base = ["replay", "--trace", str(TINY), "--alpha", "0.7", "--out", str(tmp_path / "out"), "--quiet"]
    with pytest.raises(SystemExit, match="--sync-lag needs --replicas"):
        main([*base, "--sync-lag", "3"])
    with pytest.raises(SystemExit, match="replicas >= 0"):
        main([*base, "--replicas", "-1"])
    with pytest.raises(SystemExit, match="simulates them in process"):
        main([*base, "--replicas", "2", "--grpc", "127.0.0.1:1"])

