"""The state backends under load, in one run: SQLite (one router's file) against PostgreSQL (the state replicas
share), on the same Triton, prompts and clients.

    python -m bench.state_bench            measure, store as "state" in docs/bench/results.json, re-render the docs
    python -m bench.state_bench --quick    a smoke run (numbers meaningless; writes var/bench-quick/state.json)

Also the phase `state` of `python -m bench.run_all` (`make bench`). Two routers run side by side, each on a
fresh state (the idle one costs nothing: the PostgreSQL one's tail reads the log twice a second), and the load
alternates between them in short windows, in blocks ordered sqlite-postgres-postgres-sqlite then the reverse,
so that the shared machine's drift, which is larger than the difference measured, falls on both alike:
  route      Route at 64 closed-loop clients (bench.loadgen) on the trace's short prompts (the encoder's cost is
             least there, so the state's share of a Route is largest)
  feedback1  Feedback one call at a time on requests that router routed (one label each: the served model's)
  feedback   Feedback at 64 clients, windows of a fixed number of calls
Around each Route window the routes the backend stored and the CPU seconds they took are counted (the router's,
and the PostgreSQL server's processes: on this machine both share its cores).
On PostgreSQL (a real server on this machine, fsync on like SQLite's synchronous = FULL) the database's own
counters (pg_stat_database: transactions committed, rows written) are read around each part once they settle,
and divided by the calls; the idle rate is measured apart. Last, the PostgreSQL router routes with the database
stopped (`route_db_down`): Route's hot path has no round trip to wait for, so its rate holds while the records
wait in the buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg

from messplus.v1 import routing_pb2 as pb
from messplus.v1 import routing_pb2_grpc as pb_grpc
from tests.support.postgres import PostgresServer

from .loadgen import run_load
from .procs import TENANT, ServerProcess, cpu_seconds, router_server
from .prompts import trace_prompts
from .state_report import section  # noqa: F401 - bench.report renders the results through it

BACKENDS = ("sqlite", "postgres")
SETTLE_S = 2.5  # PostgreSQL publishes a busy backend's counters at most once a second


@dataclass(frozen=True)
class StatePlan:
    route_s: float = 4.0
    warmup_s: float = 1.0
    clients: int = 64
    blocks: int = 3              # Route: each block is four windows, two per backend (ABBA, then BAAB)
    feedback_serial: int = 200
    feedback_window: int = 300   # Feedback calls per 64-client window
    feedback_blocks: int = 2
    idle_s: float = 5.0


QUICK_STATE = StatePlan(route_s=1.0, warmup_s=0.5, blocks=1, feedback_serial=20, feedback_window=50,
                        feedback_blocks=1, idle_s=1.0)


def short_prompts(chars: int = 400) -> list[str]:
    """The trace's prompts under `chars` characters (its MBPP rows, ~400 of them), in the bench's seeded order."""
    return [p for p in trace_prompts() if len(p) < chars]


def order(block: int) -> tuple[str, ...]:
    a, b = BACKENDS if block % 2 == 0 else BACKENDS[::-1]
    return (a, b, b, a)


class Counters:
    """pg_stat_database of one database (read from another): transactions committed and rows written (inserted,
    updated, deleted, TOAST included), read after they settle."""

    def __init__(self, admin_url: str, db: str) -> None:
        self.admin_url, self.db = admin_url, db

    def read(self) -> dict[str, float]:
        time.sleep(SETTLE_S)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:  # a new one: the server may have restarted
            row = conn.execute("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM "
                               "pg_stat_database WHERE datname = %s", (self.db,)).fetchone()
        assert row is not None
        return {"xact": int(row[0]), "rows": int(row[1]), "t": time.monotonic()}


def per_call(before: dict[str, float], after: dict[str, float], calls: int, idle_xact_s: float,
             probes: int = 0) -> dict[str, float]:
    """The database's work between two readings per call; `less_idle` without the idle rate over the same time.
    `probes`: the bench's own reads of the database between them (StateBench._requests), not counted."""
    xact = after["xact"] - before["xact"] - probes  # the readings connect to another database: not counted here
    idle = idle_xact_s * (after["t"] - before["t"])
    return {"calls": calls, "xact": xact, "xact_per_call": xact / max(calls, 1),
            "xact_per_call_less_idle": max(xact - idle, 0.0) / max(calls, 1),
            "rows_per_call": (after["rows"] - before["rows"]) / max(calls, 1)}


async def feedback_load(address: str, ids: list[str], clients: int) -> dict[str, Any]:
    """Feedback (the served model's label) on every one of `ids` by `clients` closed-loop clients."""
    todo = list(ids)
    latency: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        began = time.perf_counter()

        async def client() -> None:
            while todo:
                rid = todo.pop()
                t0 = time.perf_counter()
                try:
                    await stub.Feedback(pb.FeedbackRequest(tenant=TENANT, request_id=rid,
                                                           satisfaction=float(len(rid) % 2)), timeout=30)
                    latency.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))
        took = time.perf_counter() - began
    lat = np.array(latency) * 1e3
    return {"clients": clients, "completed": len(latency), "seconds": round(took, 3),
            "throughput_rps": len(latency) / took, "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None, "errors": errors}


class StateBench:
    """One run: a PostgreSQL server of its own and two routers on `config` (a Triton the caller started)."""

    def __init__(self, plan: StatePlan, work: Path, config: str, say: Callable[[str], None] = print) -> None:
        self.plan, self.work, self.config, self.say = plan, work, config, say
        self.prompts = short_prompts()
        self.routers: dict[str, ServerProcess] = {}
        self.res: dict[str, Any] = {"plan": asdict(plan), "route": [], "feedback": [], "feedback1": {}}
        self._probe: psycopg.Connection[Any] | None = None
        self.probes = 0  # reads of the bench database by _requests

    def _start(self, backend: str, env: dict[str, str]) -> ServerProcess:
        folder = self.work / backend
        srv = router_server(folder, self.config, env={**env, "MESSPLUS_STATE_DIR": str(folder / "var")}).start()
        self.say(f"   router ({backend}) serving after {srv.start_s:.1f} s")
        return srv

    def _ids(self, backend: str) -> list[str]:
        if backend == "sqlite":
            with self._sqlite() as c:
                ids = [r[0] for r in c.execute("SELECT request_id FROM requests")]
        else:
            with psycopg.connect(self.url) as conn:
                ids = [r[0] for r in conn.execute("SELECT request_id FROM requests")]
        random.Random(0).shuffle(ids)
        return ids

    def _sqlite(self) -> closing[sqlite3.Connection]:
        """The SQLite router's state, read-only, closed on leaving the `with` (a connection's own `with` only
        ends a transaction)."""
        return closing(sqlite3.connect(f"file:{self.work / 'sqlite' / 'var' / 'messplus.sqlite3'}?mode=ro", uri=True))

    def _requests(self) -> int:
        """The tenant's stored requests, read on one kept connection (no connection start-up in the server's CPU
        or counters; each read is one transaction, counted in `probes`), opened again after a restart."""
        try:
            return self._read_requests()
        except psycopg.OperationalError:  # the server restarted (_route_db_down): a fresh connection
            if self._probe is not None:
                self._probe.close()
            return self._read_requests()

    def _read_requests(self) -> int:
        if self._probe is None or self._probe.closed:
            self._probe = psycopg.connect(self.url, autocommit=True)
        self.probes += 1
        row = self._probe.execute("SELECT requests FROM tenants WHERE name = %s", (TENANT,)).fetchone()
        return int(row[0]) if row else 0

    def _stored(self, backend: str) -> int:
        """The Routes the backend has committed, once its group commit has caught up (the count holds still)."""
        def count() -> int:
            if backend == "postgres":
                return self._requests()
            with self._sqlite() as c:
                row = c.execute("SELECT requests FROM tenants WHERE name = ?", (TENANT,)).fetchone()
            return int(row[0]) if row else 0
        last, deadline = count(), time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if (now := count()) == last:
                break
            last = now
        return last

    def _cpu(self, backend: str) -> tuple[float, float]:
        """CPU seconds so far of the backend's router and of the PostgreSQL server (the postmaster and its
        children): both share this machine's cores with the router."""
        postmaster = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        return cpu_seconds(self.routers[backend].pid), cpu_seconds(postmaster, tree=True)

    def _route(self, backend: str, block: int, account: bool = True) -> dict[str, Any]:
        """One Route window; with `account`, around it (warm-up and drain included) the Routes the backend stored
        and the CPU they took: the router's and the database server's."""
        n0, (r0, d0) = (self._stored(backend), self._cpu(backend)) if account else (0, (0.0, 0.0))
        r = asyncio.run(run_load(self.routers[backend].address, "route", self.prompts, self.plan.clients,
                                 duration_s=self.plan.route_s, warmup_s=self.plan.warmup_s))
        self.say(f"   {backend:8s} {r.line()}")
        out = {"backend": backend, "block": block, **asdict(r)}
        if account:
            n1 = self._stored(backend)
            r1, d1 = self._cpu(backend)
            out.update(stored=n1 - n0, router_cpu_s=r1 - r0, db_cpu_s=d1 - d0)
        return out

    def _feedback(self, backend: str, ids: list[str], clients: int, block: int = 0) -> dict[str, Any]:
        fb = asyncio.run(feedback_load(self.routers[backend].address, ids, clients))
        self.say(f"   {backend:8s} feedback at {clients}: {fb['throughput_rps']:.0f}/s, p50 {fb['p50_ms']:.1f} ms")
        return {"backend": backend, "block": block, **fb}

    def _route_db_down(self, pg: PostgresServer) -> dict[str, Any]:
        """Route with the database stopped, then how long the buffered records took to commit once it was back."""
        before = self._requests()
        pg.stop("fast")
        try:
            r = self._route("postgres", -1, account=False)  # the database is down: nothing to count there
        finally:
            pg.start()
        t0 = time.monotonic()
        while (now := self._requests()) < before + r["completed"] and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        return {**r, "records_committed": now - before, "commit_after_restart_s": round(time.monotonic() - t0, 2)}

    def measure(self, pg: PostgresServer) -> None:
        p, res = self.plan, self.res
        counters = Counters(pg.url, "bench")
        a = counters.read()
        time.sleep(p.idle_s)
        b = counters.read()
        idle = res["idle_xact_per_s"] = (b["xact"] - a["xact"]) / (b["t"] - a["t"])
        before, probes = counters.read(), self.probes
        for block in range(p.blocks):
            res["route"] += [self._route(backend, block) for backend in order(block)]
        probes, after = self.probes - probes, counters.read()
        res["route_db"] = per_call(before, after, self._requests(), idle, probes)
        ids = {backend: self._ids(backend) for backend in BACKENDS}
        for backend in BACKENDS:
            chunk, ids[backend] = ids[backend][:p.feedback_serial], ids[backend][p.feedback_serial:]
            before = counters.read()
            res["feedback1"][backend] = self._feedback(backend, chunk, 1)
            if backend == "postgres":
                res["feedback1_db"] = per_call(before, counters.read(), len(chunk), idle)
        before = counters.read()
        for block in range(p.feedback_blocks):
            for backend in order(block):
                chunk, ids[backend] = ids[backend][:p.feedback_window], ids[backend][p.feedback_window:]
                res["feedback"].append(self._feedback(backend, chunk, p.clients, block))
        calls = sum(w["completed"] for w in res["feedback"] if w["backend"] == "postgres")
        res["feedback_db"] = per_call(before, counters.read(), calls, idle)
        res["route_db_down"] = self._route_db_down(pg)

    def run(self) -> dict[str, Any]:
        pg = self.pg = PostgresServer(fsync=True).start()
        try:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
                version = conn.execute("SHOW server_version").fetchone()
                self.res["postgres_version"] = str(version[0]) if version else ""
            self.url = pg.url.rsplit("/", 1)[0] + "/bench"
            self.routers["sqlite"] = self._start("sqlite", {})
            self.routers["postgres"] = self._start("postgres", {"MESSPLUS_STATE_BACKEND": "postgres",
                                                                "MESSPLUS_STATE_URL": self.url})
            self.measure(pg)
        finally:
            if self._probe is not None:
                self._probe.close()
            for srv in self.routers.values():
                srv.stop()
            pg.close()
        return summarise(self.res)


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Per backend the mean over its windows, the ratio of the means, and each block's own ratio."""
    def mean(kind: str, backend: str, block: int | None = None) -> float:
        return float(np.mean([w["throughput_rps"] for w in res[kind]
                              if w["backend"] == backend and block in (None, w["block"])]))

    out = dict(res)
    for kind, blocks in (("route", res["plan"]["blocks"]), ("feedback", res["plan"]["feedback_blocks"])):
        out[f"{kind}_rps"] = {b: mean(kind, b) for b in BACKENDS}
        out[f"{kind}_ratio"] = mean(kind, "postgres") / mean(kind, "sqlite")
        out[f"{kind}_block_ratios"] = [mean(kind, "postgres", k) / mean(kind, "sqlite", k) for k in range(blocks)]
    out["route_ratio_met"] = out["route_ratio"] >= 0.95
    cpu = {}
    for b in BACKENDS:
        ws = [w for w in res["route"] if w["backend"] == b and "stored" in w]
        n = sum(w["stored"] for w in ws)
        if n:
            cpu[b] = {"router_ms": 1000 * sum(w["router_cpu_s"] for w in ws) / n,
                      "db_ms": 1000 * sum(w["db_cpu_s"] for w in ws) / n, "routes": n}
    if len(cpu) == len(BACKENDS):  # CPU per Route, router and database server together, PostgreSQL / SQLite
        out["route_cpu"] = cpu
        out["route_cpu_ratio"] = sum(cpu["postgres"][k] for k in ("router_ms", "db_ms")) / \
            sum(cpu["sqlite"][k] for k in ("router_ms", "db_ms"))
    return out


def changed_files() -> list[str]:
    """The router's files (service/, kernels/) that differ from the commit the run is recorded at: a working tree
    shared with other work in progress runs what it holds."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "service", "kernels"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, check=False)
    return sorted(line[3:] for line in done.stdout.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    from .host import machine
    from .run_all import OUT, QUICK, ROOT, Plan, Suite

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "var" / "bench-state"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    if work.exists():
        import shutil
        shutil.rmtree(work)
    work.mkdir(parents=True)
    suite = Suite(QUICK if args.quick else Plan(), work, work)
    suite.start_zoo()
    began = time.monotonic()
    try:
        res = StateBench(QUICK_STATE if args.quick else StatePlan(), work / "backends", suite.config).run()
    finally:
        suite.triton.stop()
    res.update(seconds=round(time.monotonic() - began, 1), machine=machine(), changed=changed_files(),
               command="python -m bench.state_bench" + (" --quick" if args.quick else ""))
    print(json.dumps({k: v for k, v in res.items() if k not in ("route", "feedback", "feedback1")}, indent=1))
    if args.quick:
        (ROOT / "var" / "bench-quick").mkdir(parents=True, exist_ok=True)
        (ROOT / "var" / "bench-quick" / "state.json").write_text(json.dumps(res, indent=1))
        return 0
    results = OUT / "results.json"
    stored = json.loads(results.read_text())
    stored["state"] = res
    results.write_text(json.dumps(stored, indent=1))
    from . import report
    report.write_docs(stored, ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
