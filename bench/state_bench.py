"""The state backends under load, in one run: SQLite (one router's file) against PostgreSQL (the state replicas
share), one `messplus serve` process at a time on the same Triton, the same prompts and clients.

    python -m bench.state_bench            measure, store as "state" in docs/bench/results.json, re-render the docs
    python -m bench.state_bench --quick    a smoke run (numbers meaningless; writes var/bench-quick/state.json)

Also the phase `state` of `python -m bench.run_all` (`make bench`). Per router (backends in the order
sqlite, postgres, postgres, sqlite, so that drift of the shared machine falls on both alike):
  route      Route at 64 closed-loop clients (bench.loadgen), the trace's shortest prompts (the encoder's cost is
             least there, so the state's share of a Route is largest)
  feedback1  Feedback one call at a time on requests that router routed (each one label: the served model's)
  feedback   Feedback at 64 clients on the rest
On PostgreSQL (a real server on this machine, fsync on like SQLite's synchronous = FULL) the database's own
counters (pg_stat_database: transactions committed, rows written) are read around each part, after the
statistics settle, and divided by the calls; the idle rate (the label-log tail's polls) is measured apart. The
first PostgreSQL router also routes with the database stopped (`route_db_down`): Route's hot path has no round
trip to wait for, so its rate holds while the records wait in the buffer.
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
from .procs import TENANT, ServerProcess, router_server
from .prompts import trace_prompts

ORDER = ("sqlite", "postgres", "postgres", "sqlite")
SETTLE_S = 2.5  # PostgreSQL publishes a busy backend's counters at most once a second


@dataclass(frozen=True)
class StatePlan:
    route_s: float = 8.0
    warmup_s: float = 2.0
    clients: int = 64
    feedback_serial: int = 200
    feedback_s: float = 8.0
    idle_s: float = 5.0


QUICK_STATE = StatePlan(route_s=1.0, warmup_s=0.5, feedback_serial=20, feedback_s=1.0, idle_s=1.0)


def short_prompts(chars: int = 400) -> list[str]:
    """The trace's prompts under `chars` characters (its MBPP rows, ~400 of them), in the bench's seeded order."""
    return [p for p in trace_prompts() if len(p) < chars]


class Counters:
    """pg_stat_database of one database (read from another): transactions committed and rows written, read after
    they settle."""

    def __init__(self, admin_url: str, db: str) -> None:
        self.admin_url, self.db = admin_url, db

    def read(self) -> dict[str, int]:
        time.sleep(SETTLE_S)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:  # a new one: the server may have restarted
            row = conn.execute("SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM "
                               "pg_stat_database WHERE datname = %s", (self.db,)).fetchone()
        assert row is not None
        return {"xact": int(row[0]), "rows": int(row[1]), "t": time.monotonic()}


def per_call(before: dict[str, float], after: dict[str, float], calls: int, idle_xact_s: float) -> dict[str, float]:
    """The database's work between two readings per call; `less_idle` without the idle rate (the tail's polls)
    over the same time."""
    xact = after["xact"] - before["xact"]  # the readings connect to another database: not counted here
    idle = idle_xact_s * (after["t"] - before["t"])
    return {"calls": calls, "xact": xact, "xact_per_call": xact / max(calls, 1),
            "xact_per_call_less_idle": max(xact - idle, 0.0) / max(calls, 1),
            "rows_per_call": (after["rows"] - before["rows"]) / max(calls, 1)}


async def feedback_load(address: str, ids: list[str], clients: int, limit_s: float) -> dict[str, Any]:
    """Feedback (the served model's label) on `ids` by `clients` closed-loop clients until done or limit_s."""
    todo = list(ids)
    latency: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.RoutingServiceStub(ch)
        began = time.perf_counter()

        async def client() -> None:
            while todo and time.perf_counter() - began < limit_s:
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
    """One run: a PostgreSQL server of its own, routers on `config` (a Triton the caller started)."""

    def __init__(self, plan: StatePlan, work: Path, config: str, say: Callable[[str], None] = print) -> None:
        self.plan, self.work, self.config, self.say = plan, work, config, say
        self.prompts = short_prompts()
        self.runs: list[dict[str, Any]] = []

    def _ids(self, backend: str, where: str) -> list[str]:
        if backend == "sqlite":
            with sqlite3.connect(f"file:{where}?mode=ro", uri=True) as conn:
                ids = [r[0] for r in conn.execute("SELECT request_id FROM requests")]
        else:
            with psycopg.connect(where) as conn:
                ids = [r[0] for r in conn.execute("SELECT request_id FROM requests")]
        random.Random(0).shuffle(ids)
        return ids

    def _route(self, srv: ServerProcess) -> dict[str, Any]:
        r = asyncio.run(run_load(srv.address, "route", self.prompts, self.plan.clients,
                                 duration_s=self.plan.route_s, warmup_s=self.plan.warmup_s))
        self.say(f"   {r.line()}")
        return asdict(r)

    def one(self, k: int, backend: str, pg: PostgresServer) -> dict[str, Any]:
        env, url, counters = {}, "", None
        if backend == "postgres":
            db = f"bench{k}"
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
            url = pg.url.rsplit("/", 1)[0] + f"/{db}"
            env = {"MESSPLUS_STATE_BACKEND": "postgres", "MESSPLUS_STATE_URL": url}
            counters = Counters(pg.url, db)
        srv = router_server(self.work / f"state-{k}-{backend}", self.config,
                            env={**env, "MESSPLUS_STATE_DIR": str(self.work / f"state-{k}-{backend}" / "var")})
        srv.start()
        self.say(f"   router {k} ({backend}) serving after {srv.start_s:.1f} s")
        run: dict[str, Any] = {"backend": backend, "start_s": round(srv.start_s, 2)}
        try:
            if counters is not None:
                a = counters.read()
                time.sleep(self.plan.idle_s)
                b = counters.read()
                run["idle_xact_per_s"] = (b["xact"] - a["xact"]) / (b["t"] - a["t"])
            before = counters.read() if counters else None
            run["route"] = self._route(srv)
            if counters is not None and before is not None:
                routed = self._requests(url)
                run["route_db"] = per_call(before, counters.read(), routed, run["idle_xact_per_s"])
                if k == ORDER.index("postgres"):
                    run["route_db_down"] = self._route_db_down(srv, pg, url, routed)
            ids = self._ids(backend, url or str(self.work / f"state-{k}-{backend}" / "var" / "messplus.sqlite3"))
            n1 = self.plan.feedback_serial
            for key, chunk, clients in (("feedback1", ids[:n1], 1), ("feedback", ids[n1:], self.plan.clients)):
                before = counters.read() if counters else None
                fb = asyncio.run(feedback_load(srv.address, chunk, clients, self.plan.feedback_s))
                if counters is not None and before is not None:
                    fb["db"] = per_call(before, counters.read(), fb["completed"], run["idle_xact_per_s"])
                self.say(f"   {key}: {fb['throughput_rps']:.0f}/s at {clients} clients, p50 {fb['p50_ms']:.1f} ms"
                         + (f", {fb['db']['xact_per_call']:.2f} transactions each" if "db" in fb else ""))
                run[key] = fb
        finally:
            srv.stop()
        return run

    @staticmethod
    def _requests(url: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT requests FROM tenants WHERE name = %s", (TENANT,)).fetchone()
        return int(row[0]) if row else 0

    def _route_db_down(self, srv: ServerProcess, pg: PostgresServer, url: str, before: int) -> dict[str, Any]:
        """Route with the database stopped, then how long the buffered records took to commit once it was back."""
        pg.stop("fast")
        try:
            r = self._route(srv)
        finally:
            pg.start()
        t0 = time.monotonic()
        while (now := self._requests(url)) < before + r["completed"] and time.monotonic() - t0 < 120:
            time.sleep(0.2)
        return {**r, "records_committed": now - before, "commit_after_restart_s": round(time.monotonic() - t0, 2)}

    def run(self) -> dict[str, Any]:
        pg = PostgresServer(fsync=True).start()
        try:
            for k, backend in enumerate(ORDER):
                self.runs.append(self.one(k, backend, pg))
            with psycopg.connect(pg.url) as conn:
                version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        finally:
            pg.close()
        return summarise(self.runs, self.plan, version)


def summarise(runs: list[dict[str, Any]], plan: StatePlan, version: str) -> dict[str, Any]:
    def rps(backend: str, key: str) -> float:
        return float(np.mean([r[key]["throughput_rps"] for r in runs if r["backend"] == backend]))

    def db(key: str, field: str) -> float:
        return float(np.mean([(r[key] if key == "route_db" else r[key]["db"])[field] for r in pg]))

    pg = [r for r in runs if r["backend"] == "postgres"]
    return {"plan": asdict(plan), "postgres_version": version, "runs": runs,
            "route_rps": {b: rps(b, "route") for b in ("sqlite", "postgres")},
            "route_ratio": rps("postgres", "route") / rps("sqlite", "route"),
            "route_ratio_met": rps("postgres", "route") / rps("sqlite", "route") >= 0.95,
            "feedback_rps": {b: rps(b, "feedback") for b in ("sqlite", "postgres")},
            "feedback1_rps": {b: rps(b, "feedback1") for b in ("sqlite", "postgres")},
            "feedback_ratio": rps("postgres", "feedback") / rps("sqlite", "feedback"),
            "db": {f"{key}_{field}": db(key, field) for key in ("route_db", "feedback1", "feedback")
                   for field in ("xact_per_call", "xact_per_call_less_idle", "rows_per_call")}}


def changed_files() -> list[str]:
    """The router's files (service/, kernels/) that differ from the commit the run is recorded at: a working tree
    shared with other work in progress runs what it holds."""
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "service", "kernels"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True, check=False)
    return sorted(line[3:] for line in done.stdout.splitlines() if line.strip())


def section(res: dict[str, Any]) -> list[str]:
    """docs/BENCHMARKS.md's part on the state backends, from results.json's "state" (bench.report calls it)."""
    st = res.get("state")
    head = ["## State backends: SQLite and PostgreSQL", ""]
    if not st:
        return [*head, "Not measured in this results file: `python -m bench.state_bench` adds it.", ""]
    m, d, p = st["machine"], st["db"], st["plan"]
    down = next(r["route_db_down"] for r in st["runs"] if "route_db_down" in r)
    up = next(r["route"] for r in st["runs"] if "route_db_down" in r)
    rps, fb, fb1 = st["route_rps"], st["feedback_rps"], st["feedback1_rps"]
    out = [*head,
           f"Command: **`{st['command']}`** "
           + ("(also phase `state` of `make bench`)" if "state_bench" in st["command"] else "(its phase `state`)")
           + f", {st['seconds']:.0f} s, on "
           f"{m['date']}, at commit `{m['commit']}`"
           + (f" with uncommitted changes to {', '.join(f'`{f}`' for f in st['changed'])}" if st.get("changed")
              else "") + "; every ratio below is between runs of that one command. "
           f"PostgreSQL {st['postgres_version'].split()[0]} on this machine (loopback), fsync on like SQLite's "
           "`synchronous = FULL`. One router process at a time, each on a fresh state, in the order "
           f"{', '.join(ORDER)} (the shared machine's drift falls on both); Route at {p['clients']} closed-loop "
           "clients for " f"{p['route_s']:g} s on the trace's ~420 short prompts (its MBPP rows: the encoder is "
           "cheapest there, so the state's share of a Route is largest); then Feedback (the served model's "
           f"label) on requests that router routed, {p['feedback_serial']} one at a time, then the rest at "
           f"{p['clients']} clients. The database's work is its own count (`pg_stat_database`: transactions "
           "committed, rows written), read around each part once the counters settle; `less idle` takes away "
           "the idle rate measured before (the label-log tail reads the log every `poll_s`).", "",
           "| target | measured | |", "|---|---|---|",
           f"| Route req/s, PostgreSQL against SQLite >= 0.95x | {rps['postgres']:.1f} against {rps['sqlite']:.1f}"
           f" req/s: {st['route_ratio']:.2f}x | {'met' if st['route_ratio_met'] else '**missed**'} |",
           f"| database round trips on Route's path: 0 | Route answers before its record is written: the "
           f"writer thread group-commits records, {d['route_db_xact_per_call_less_idle']:.3f} transactions per "
           f"Route ({d['route_db_xact_per_call']:.3f} with the idle polls, {d['route_db_rows_per_call']:.1f} rows). "
           f"With the database stopped Route ran at {down['throughput_rps']:.1f} req/s (p50 {down['p50_ms']:.0f} ms; "
           f"{up['throughput_rps']:.1f} and {up['p50_ms']:.0f} ms just before, same router); its "
           f"{down['records_committed']} records were committed {down['commit_after_restart_s']:.1f} s after the "
           "database was back | met |",
           f"| transactions per Feedback: 1 | one client: {d['feedback1_xact_per_call_less_idle']:.2f} "
           f"({d['feedback1_xact_per_call']:.2f} with the idle polls, {d['feedback1_rows_per_call']:.1f} rows); "
           f"{p['clients']} clients: {d['feedback_xact_per_call_less_idle']:.3f} (group commit) | "
           f"{'met' if d['feedback1_xact_per_call_less_idle'] < 1.05 else '**missed**'} |",
           f"| Feedback/s, each backend | {p['clients']} clients: SQLite {fb['sqlite']:.0f}, PostgreSQL "
           f"{fb['postgres']:.0f} ({st['feedback_ratio']:.2f}x); one client: {fb1['sqlite']:.0f} and "
           f"{fb1['postgres']:.0f} | reported |", "",
           "| run | backend | Route req/s | p50 ms | p99 ms | Feedback/s, 1 client | p50 ms | Feedback/s, "
           f"{p['clients']} clients | p50 ms | p99 ms | transactions per Route / Feedback (1, {p['clients']}) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in enumerate(st["runs"]):
        ro, f1, f = r["route"], r["feedback1"], r["feedback"]
        xact = (f"{r['route_db']['xact_per_call_less_idle']:.3f} / {f1['db']['xact_per_call_less_idle']:.2f}, "
                f"{f['db']['xact_per_call_less_idle']:.3f}" if "route_db" in r else "")
        out.append(f"| {k} | {r['backend']} | {ro['throughput_rps']:.1f} | {ro['p50_ms']:.0f} | {ro['p99_ms']:.0f} | "
                   f"{f1['throughput_rps']:.0f} | {f1['p50_ms']:.1f} | {f['throughput_rps']:.0f} | {f['p50_ms']:.1f} |"
                   f" {f['p99_ms']:.1f} | {xact} |")
    by = {b: [r["route"]["throughput_rps"] for r in st["runs"] if r["backend"] == b] for b in ("sqlite", "postgres")}
    spread, gap = max(max(v) - min(v) for v in by.values()), abs(rps["postgres"] - rps["sqlite"])
    out += ["", f"Route req/s run by run: SQLite {', '.join(f'{x:.1f}' for x in by['sqlite'])}, PostgreSQL "
            f"{', '.join(f'{x:.1f}' for x in by['postgres'])}. The drift between two runs of one backend on this "
            f"shared machine ({spread:.1f} req/s) is {'larger' if spread > gap else 'smaller'} than the gap between "
            f"the backends' means ({gap:.1f}); running each backend early and late is what keeps it out of the ratio.",
            ""]
    out += ["A Feedback on PostgreSQL is one transaction of about a dozen statements (the log lock, the stored "
            "labels, the tenant's queue, the label insert, the notification, the log since this router's cursor), "
            "each a loopback round trip from the router's writer thread, where SQLite's run in process; it is "
            "Feedback's rate that pays for sharing the state, not Route's.", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    from .run_all import OUT, ROOT, Suite, Plan, QUICK

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "var" / "bench-state"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    suite = Suite(QUICK if args.quick else Plan(), work, work)
    suite.start_zoo()
    began = time.monotonic()
    try:
        res = StateBench(QUICK_STATE if args.quick else StatePlan(), work, suite.config).run()
    finally:
        suite.triton.stop()
    res["seconds"] = round(time.monotonic() - began, 1)
    res["command"] = "python -m bench.state_bench" + (" --quick" if args.quick else "")
    from .host import machine
    res["machine"], res["changed"] = machine(), changed_files()
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
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
