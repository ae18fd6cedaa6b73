"""kill -9 during sustained Feedback: every acknowledged label is applied exactly once after the restart."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.procs import ServerProcess
from ..support.target import Target

pytestmark = pytest.mark.triton
ALPHA = {"acme": 0.75, "beta": 0.6}


async def route_many(r: Target, n: int) -> list[tuple[str, str]]:
    async with r.aio_channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[str, str]:
            tenant = "acme" if i % 3 else "beta"
            async with sem:
                reply = await stub.Route(pb.RouteRequest(
                    tenant=tenant, text=f"question {i}: what is {i} + {i % 7}?",
                    overrides=pb.RouteOverrides(exploration=pb.EXPLORATION_MODE_NEVER)), timeout=30)
            return tenant, reply.request_id

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def feedback_until_killed(r: ServerProcess, ids: list[tuple[str, str]], sat: dict[str, float],
                                kill_after_acks: int) -> dict:
    """Send Feedback 48 at a time (every 8th is a resend of an acked one); kill -9 once enough are acked."""
    books: dict = {"acked": {}, "resent_applied": 0, "started": time.monotonic(), "killed_at": None}
    async with r.aio_channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        todo = list(ids)

        async def worker(w: int) -> None:
            k = 0
            while todo:
                k += 1
                if k % 8 == 0 and books["acked"]:
                    rid = random.Random(k * 97 + w).choice(list(books["acked"]))
                    tenant = books["acked"][rid][0]
                    resend = True
                else:
                    tenant, rid = todo.pop()
                    resend = False
                try:
                    reply = await stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=rid,
                                                                   satisfaction=sat[rid]), timeout=10)
                except grpc.RpcError:
                    return  # the router is gone
                if resend:
                    books["resent_applied"] += reply.labels_applied
                else:
                    books["acked"][rid] = (tenant, sat[rid])
                if books["killed_at"] is None and len(books["acked"]) >= kill_after_acks:
                    books["killed_at"] = time.monotonic()
                    r.kill()

        await asyncio.gather(*(worker(w) for w in range(48)))
    return books


def stored(db: Path) -> tuple[dict[str, tuple[float, float, int]], list[tuple[str, str, float, int]]]:
    """Tenants (queue, sat_sum, labelled) and served labels (tenant, request_id, satisfaction, seq) in seq order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tenants = {n: (q, s, c) for n, q, s, c in conn.execute("SELECT name, queue, sat_sum, labelled FROM tenants")}
        labels = conn.execute("SELECT r.tenant, l.request_id, l.satisfaction, l.seq FROM labels l JOIN requests r "
                              "ON r.request_id = l.request_id WHERE l.moves_queue = 1 ORDER BY l.seq").fetchall()
    return tenants, labels


def recomputed_queues(labels: list[tuple[str, str, float, int]]) -> dict[str, float]:
    """The default tenant policy's queue, folded by hand: the n-th label is held to alpha + 0.3 / (2 sqrt(n)),
    with no floor (docs/ROUTING.md)."""
    q, n = dict.fromkeys(ALPHA, 0.0), dict.fromkeys(ALPHA, 0)
    for tenant, _, s, _ in labels:
        n[tenant] += 1
        q[tenant] = q[tenant] + ALPHA[tenant] + 0.3 / (2 * math.sqrt(n[tenant])) - s
    return q


def check_log(db: Path) -> dict[str, int]:
    """The stored state against a recomputation from the stored label log; returns the double-applied count."""
    tenants, labels = stored(db)
    per_request = {}
    for tenant, rid, _, _ in labels:
        per_request[rid] = per_request.get(rid, 0) + 1
    double = sum(c - 1 for c in per_request.values())
    for name, q in recomputed_queues(labels).items():
        mine = [s for t, _, s, _ in labels if t == name]
        assert tenants[name][0] == pytest.approx(q, abs=1e-9), f"{name}: stored queue != recomputation from the log"
        assert tenants[name][2] == len(mine) and tenants[name][1] == pytest.approx(sum(mine), abs=1e-9)
    return {"double_applied": double, "labels": len(labels)}


def test_kill_9_during_sustained_feedback_loses_no_acked_label_and_applies_none_twice(
        router_process: Callable[..., ServerProcess], tmp_path: Path, figures: dict) -> None:
    r = router_process()
    ids = asyncio.run(route_many(r, 1500))
    rng = random.Random(5)
    sat = {rid: rng.choice((0.0, 0.25, 1.0, 1.0)) for _, rid in ids}
    books = asyncio.run(feedback_until_killed(r, ids, sat, kill_after_acks=700))
    assert books["killed_at"] is not None, "the flood ended before the kill"
    rate = len(books["acked"]) / (books["killed_at"] - books["started"])
    db = tmp_path / "state" / "messplus.sqlite3"

    began = time.monotonic()
    again = router_process(name="again")
    restart_s = time.monotonic() - began
    _, labels = stored(db)
    durable = {rid: s for _, rid, s, _ in labels}
    lost = [rid for rid, (_, s) in books["acked"].items() if durable.get(rid) != s]
    after_kill = check_log(db)
    with again.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for tenant, q in recomputed_queues(labels).items():
            assert stub.SlaStatus(pb.SlaStatusRequest(tenant=tenant), timeout=5).queue == pytest.approx(q, abs=1e-9)
        resent_applied = 0  # every acked label again: each must come back as a duplicate
        for rid, (tenant, s) in books["acked"].items():
            resent_applied += stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=rid, satisfaction=s),
                                            timeout=10).labels_applied
        for tenant, rid in ids:  # then the rest: each applies once
            if rid not in books["acked"]:
                stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=rid, satisfaction=sat[rid]), timeout=10)
        final = check_log(db)
        labelled = sum(stub.SlaStatus(pb.SlaStatusRequest(tenant=t), timeout=5).labelled for t in ALPHA)
    double = after_kill["double_applied"] + final["double_applied"] + resent_applied + books["resent_applied"]
    figures.update(acked=len(books["acked"]), acked_but_lost=len(lost), double_applied=double,
                   feedback_per_s=round(rate, 1), committed_not_acked=after_kill["labels"] - len(books["acked"]),
                   restart_s=round(restart_s, 2), synchronous="FULL")
    assert len(books["acked"]) >= 700 and rate >= 100, f"not a sustained load: {rate:.0f} feedback/s"
    assert lost == [], f"{len(lost)} acknowledged labels lost"
    assert double == 0
    assert final["labels"] == labelled == len(ids)
