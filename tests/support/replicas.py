"""The client side of router replicas on one PostgreSQL state (issue 16), for tests/functional/test_replicas.py:
starting `messplus serve` processes on one database, the books of what their clients saw, and the label log in
the database as the reference every replica's SlaStatus is checked against."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import psycopg

from messplus.service import config as config_mod
from messplus.service.routing.tenant import fold_queue
from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc

from .procs import ServerProcess

TENANTS = ("acme", "beta")
SATISFACTIONS = (0.0, 0.25, 1.0, 1.0)
NEVER, ALWAYS = pb.EXPLORATION_MODE_NEVER, pb.EXPLORATION_MODE_ALWAYS


# -- the replicas -------------------------------------------------------------------------------------------------
def start_replicas(router_process: Callable[..., ServerProcess], tmp_path: Path, url: str,
                   names: Sequence[str]) -> list[ServerProcess]:
    """`messplus serve` processes on the database at `url` (the label log polled every 0.2 s), started together."""
    env = {"MESSPLUS_STATE_BACKEND": "postgres", "MESSPLUS_STATE_URL": url, "MESSPLUS_STATE_POLL_S": "0.2"}

    def start(name: str) -> ServerProcess:
        return router_process(name, state_dir=tmp_path / f"state-{name}", env=env)

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(start, names))


def tenant_configs(replica: ServerProcess) -> dict[str, config_mod.TenantConfig]:
    return {t.name: t for t in config_mod.load(replica.workdir / "messplus.toml", {}).tenants}


def satisfaction(rid: str, model: str) -> float:
    """The label the clients give (request, model): fixed, spread over SATISFACTIONS."""
    return SATISFACTIONS[zlib.crc32(f"{rid}/{model}".encode()) % len(SATISFACTIONS)]


# -- the database: the reference ------------------------------------------------------------------------------------
def served_labels(url: str) -> dict[str, list[float]]:
    """Each tenant's queue-moving labels in log order, read from the labels table."""
    out: dict[str, list[float]] = {t: [] for t in TENANTS}
    with psycopg.connect(url) as conn:
        for tenant, s in conn.execute("SELECT r.tenant, l.satisfaction FROM labels l JOIN requests r "
                                      "USING (request_id) WHERE l.moves_queue = 1 ORDER BY l.seq"):
            out[tenant].append(s)
    return out


def stored_labels(url: str) -> dict[tuple[str, str], float]:
    """(request_id, model) -> satisfaction of every label in the log (the table holds each pair once)."""
    with psycopg.connect(url) as conn:
        return {(rid, m): s for rid, m, s in conn.execute("SELECT request_id, model, satisfaction FROM labels")}


def stored_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM requests")}


def wait_agreement(replicas: Sequence[ServerProcess], url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Until every replica's SlaStatus (queue, labelled) equals the queue folded from the label log and the
    database's tenant rows agree too; returns the folded queues."""
    cfgs = tenant_configs(replicas[0])
    deadline = time.monotonic() + timeout_s
    while True:
        sats = served_labels(url)
        want = {t: (fold_queue(cfgs[t], s), len(s)) for t, s in sats.items()}
        got = []
        for r in replicas:
            with r.channel() as ch:
                stub = pb_grpc.RoutingServiceStub(ch)
                got.append({t: stub.SlaStatus(pb.SlaStatusRequest(tenant=t), timeout=10) for t in TENANTS})
        with psycopg.connect(url) as conn:
            rows = dict(conn.execute("SELECT name, queue FROM tenants").fetchall())
        ok = all(abs(g[t].queue - want[t][0]) < 1e-9 and g[t].labelled == want[t][1] for g in got for t in TENANTS)
        if ok and all(abs(rows[t] - want[t][0]) < 1e-9 for t in TENANTS):
            return {t: q for t, (q, _) in want.items()}
        if time.monotonic() > deadline:
            seen = [{t: (g[t].queue, g[t].labelled) for t in TENANTS} for g in got]
            raise AssertionError(f"SlaStatus never agreed with the label log: want {want}, replicas {seen}, "
                                 f"database {rows}")
        time.sleep(0.2)


# -- the traffic ---------------------------------------------------------------------------------------------------
class Call(NamedTuple):
    rpc: str
    replica: int
    sent: float      # time.monotonic()
    answered: float
    code: str        # "OK" or the status code's name
    request_id: str  # "" for a Route that failed


@dataclass
class Books:
    """What the clients saw: Route and Feedback outcomes by status, the acknowledged labels and who routed what."""

    routed: dict[str, tuple[str, int]] = field(default_factory=dict)  # request_id -> (tenant, replica)
    replies: dict[str, pb.RouteReply] = field(default_factory=dict)
    acked: dict[str, dict[str, float]] = field(default_factory=dict)   # request_id -> {model: satisfaction}
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rpc, code)
    feedback_at: Counter[int] = field(default_factory=Counter)        # acknowledged Feedback by replica
    calls: list[Call] = field(default_factory=list)
    duplicates: int = 0  # Feedback acknowledged as a duplicate (committed by an earlier call that got no answer)

    def log(self, rpc: str, replica: int, sent: float, code: str, rid: str = "") -> None:
        self.codes[rpc, code] += 1
        self.calls.append(Call(rpc, replica, sent, time.monotonic(), code, rid))

    def feedback_calls(self) -> list[Call]:
        return [c for c in self.calls if c.rpc == "Feedback"]

    def labels(self) -> int:
        return sum(len(v) for v in self.acked.values())


def acked_labels(books: Books) -> dict[tuple[str, str], float]:
    return {(rid, m): s for rid, labels in books.acked.items() for m, s in labels.items()}


def feedback_request(tenant: str, reply: pb.RouteReply) -> tuple[pb.FeedbackRequest, dict[str, float]]:
    """The served model's label and, on an exploration step, every explored model's."""
    rid = reply.request_id
    labels = {m: satisfaction(rid, m) for m in reply.explored_models if m != reply.model}
    req = pb.FeedbackRequest(tenant=tenant, request_id=rid, satisfaction=satisfaction(rid, reply.model),
                             labels=[pb.ModelSatisfaction(model=m, satisfaction=s) for m, s in labels.items()])
    return req, {reply.model: satisfaction(rid, reply.model), **labels}


async def route(stub: pb_grpc.RoutingServiceStub, books: Books, i: int, replica: int, mode: int) -> pb.RouteReply:
    """Route the i-th request (tenants in turn, a short prompt) at `replica` with exploration `mode`."""
    tenant, sent = TENANTS[i % len(TENANTS)], time.monotonic()
    try:
        reply = await stub.Route(pb.RouteRequest(tenant=tenant, text=f"question {i}: what is {i} + {i % 7}?",
                                                 overrides=pb.RouteOverrides(exploration=mode)), timeout=30)
    except grpc.aio.AioRpcError as exc:
        books.log("Route", replica, sent, exc.code().name)
        raise
    books.log("Route", replica, sent, "OK", reply.request_id)
    books.routed[reply.request_id] = (tenant, replica)
    books.replies[reply.request_id] = reply
    return reply


async def feedback(stub: pb_grpc.RoutingServiceStub, books: Books, rid: str, replica: int) -> bool:
    """One Feedback at `replica`; True when acknowledged (its labels then count as acked)."""
    tenant, sent = books.routed[rid][0], time.monotonic()
    req, labels = feedback_request(tenant, books.replies[rid])
    try:
        reply = await stub.Feedback(req, timeout=30)
    except grpc.aio.AioRpcError as exc:
        books.log("Feedback", replica, sent, exc.code().name, rid)
        return False
    books.log("Feedback", replica, sent, "OK", rid)
    books.duplicates += reply.labels_applied < len(labels)
    books.acked[rid] = labels
    books.feedback_at[replica] += 1
    return True


class Fleet:
    """aio stubs to every replica (open inside a running event loop)."""

    def __init__(self, replicas: Sequence[ServerProcess]) -> None:
        self.channels = [r.aio_channel() for r in replicas]
        self.stubs = [pb_grpc.RoutingServiceStub(ch) for ch in self.channels]

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self.channels))


def predictions(replica: ServerProcess, prompts: Sequence[str]) -> np.ndarray:
    """p_hat of every model for each prompt, one Route at a time (a batch of one: the encoder's input is the
    same at every replica)."""
    with replica.channel() as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        return np.array([[p.p_hat for p in stub.Route(pb.RouteRequest(
            tenant="acme", text=text, overrides=pb.RouteOverrides(exploration=NEVER)), timeout=30).predictions]
            for text in prompts])


