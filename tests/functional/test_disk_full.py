"""The disk fills up under the router (its file-size limit lowered with prlimit, so SQLite's writes fail with
EFBIG like on a full disk): Feedback is refused with UNAVAILABLE and never acknowledged unapplied; once space is
back, the refused feedback is accepted and every queue still equals a recomputation from the stored log."""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.procs import ServerProcess
from ..support.target import SERVING
from .test_durability import check_log, route_many, stored

pytestmark = pytest.mark.triton


def test_full_disk_refuses_feedback_with_unavailable_and_recovers_without_loss(
        router_process: Callable[..., ServerProcess], tmp_path: Path, figures: dict) -> None:
    r = router_process()
    ids = asyncio.run(route_many(r, 400))
    db = tmp_path / "state" / "messplus.sqlite3"
    assert r.proc is not None
    acked: dict[str, float] = {}
    outcomes: Counter[str] = Counter()
    refused: list[tuple[str, str]] = []
    with r.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)

        def send(tenant: str, rid: str) -> str:
            try:
                stub.Feedback(pb.FeedbackRequest(tenant=tenant, request_id=rid, satisfaction=0.0), timeout=10)
                acked[rid] = 0.0
                return "OK"
            except grpc.RpcError as err:
                return err.code().name

        for tenant, rid in ids[:50]:
            assert send(tenant, rid) == "OK"
        # The limit sits 64 KiB past the database file. Not past the WAL: once SQLite has checkpointed, it
        # rewrites the WAL from its start, so a WAL already at its high-water mark would never grow into a limit
        # set above it and the disk would never "fill" (that made this test pass or fail by checkpoint timing).
        limit = db.stat().st_size + 64 * 1024
        _, hard = resource.prlimit(r.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(r.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))  # the disk is "full" from here
        try:
            for tenant, rid in ids[50:]:
                code = send(tenant, rid)
                outcomes[code] += 1
                if code != "OK":
                    refused.append((tenant, rid))
            assert r.health() == SERVING
        finally:
            resource.prlimit(r.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back
        retried = Counter(send(tenant, rid) for tenant, rid in refused)
    _, labels = stored(db)
    durable = {rid: s for _, rid, s, _ in labels}
    lost = [rid for rid, s in acked.items() if durable.get(rid) != s]
    log = check_log(db)
    figures.update(while_full=dict(outcomes), retried_after=dict(retried), acked_but_lost=len(lost),
                   double_applied=log["double_applied"])
    assert outcomes["UNAVAILABLE"] > 0, f"the disk never filled: {outcomes}"
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert retried == {"OK": len(refused)}
    assert lost == [] and log["double_applied"] == 0 and log["labels"] == len(ids)
