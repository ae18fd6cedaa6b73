"""docs/BENCHMARKS.md's section on the state backends, rendered from results.json's "state" (bench.state_bench)."""

from __future__ import annotations

from typing import Any


def _rows(windows: list[dict[str, Any]], blocks: int, ratios: list[float]) -> list[str]:
    out = []
    for k in range(blocks):
        mine = [w for w in windows if w["block"] == k]
        cells = ", ".join(f"{w['backend']} {w['throughput_rps']:.1f}" for w in mine)
        p50 = ", ".join(f"{w['p50_ms']:.0f}" for w in mine)
        out.append(f"| {k} | {cells} | {p50} | {ratios[k]:.2f}x |")
    return out


def section(res: dict[str, Any]) -> list[str]:
    st = res.get("state")
    head = ["## State backends: SQLite and PostgreSQL", ""]
    if not st or "route_db" not in st:
        return [*head, "Not measured in this results file: `python -m bench.state_bench` adds it.", ""]
    m, p = st["machine"], st["plan"]
    rdb, f1db, fdb, down = st["route_db"], st["feedback1_db"], st["feedback_db"], st["route_db_down"]
    rps, fb, fb1 = st["route_rps"], st["feedback_rps"], st["feedback1"]
    br = st["route_block_ratios"]
    out = [*head,
           f"Command: **`{st['command']}`** "
           + ("(also phase `state` of `make bench`)" if "state_bench" in st["command"] else "(its phase `state`)")
           + f", {st['seconds']:.0f} s, on {m['date']}, at commit `{m['commit']}`"
           + (f" with uncommitted changes to {', '.join(f'`{f}`' for f in st['changed'])}" if st.get("changed")
              else "")
           + "; every figure below is from that one run. "
           f"PostgreSQL {st['postgres_version'].split()[0]} on this machine (loopback), fsync on like SQLite's "
           "`synchronous = FULL`. Two routers side by side on the same Triton, each on a fresh state; the load "
           f"alternates between them in windows, in blocks ordered SQLite-PostgreSQL-PostgreSQL-SQLite and then "
           f"the reverse, so that the shared machine's drift falls on both. Route: {p['clients']} closed-loop "
           f"clients, {p['route_s']:g} s windows, on the trace's ~420 short prompts (its MBPP rows: the encoder is "
           "cheapest there, so the state's share of a Route is largest). Feedback (the served model's label) on "
           f"requests that router routed: {p['feedback_serial']} one at a time, then windows of "
           f"{p['feedback_window']} calls at {p['clients']} clients. The database's work is its own count "
           "(`pg_stat_database`: transactions committed; rows inserted, updated and deleted, TOAST included), "
           "read around each part once the counters settle; `less idle` takes away the idle rate measured "
           f"before ({st['idle_xact_per_s']:.1f} transactions/s: the label-log tail reads the log every `poll_s`).",
           "",
           "| target | measured | |", "|---|---|---|",
           f"| Route req/s, PostgreSQL against SQLite >= 0.95x | {rps['postgres']:.1f} against {rps['sqlite']:.1f} "
           f"req/s: {st['route_ratio']:.3f}x (blocks: {', '.join(f'{r:.2f}' for r in br)}) | "
           f"{'met' if st['route_ratio_met'] else '**missed**'} |",
           f"| database round trips on Route's path: 0 | Route answers before its record is written: the writer "
           f"thread group-commits records, {rdb['xact_per_call_less_idle']:.3f} transactions per Route "
           f"({rdb['xact_per_call']:.3f} with the idle polls; {rdb['rows_per_call']:.1f} rows). With the database "
           f"stopped the PostgreSQL router routed {down['throughput_rps']:.1f} req/s (p50 {down['p50_ms']:.0f} ms, "
           f"against {rps['postgres']:.1f} over its windows above); its {down['records_committed']} buffered "
           f"records were committed {down['commit_after_restart_s']:.1f} s after the database was back | "
           # group commit (well under one transaction per Route), no call failed while the database was down,
           # and every record routed then was committed once it was back
           f"{'met' if rdb['xact_per_call_less_idle'] < 0.5 and down['error_rate'] == 0 and down['records_committed'] >= down['completed'] else '**missed**'} |",
           *_cpu_row(st),
           f"| transactions per Feedback: 1 | one client: {f1db['xact_per_call_less_idle']:.2f} "
           f"({f1db['xact_per_call']:.2f} with the idle polls; {f1db['rows_per_call']:.1f} rows: the label, the "
           f"tenant's queue); {p['clients']} clients: {fdb['xact_per_call_less_idle']:.3f} (group commit) | "
           f"{'met' if f1db['xact_per_call_less_idle'] < 1.05 else '**missed**'} |",
           f"| Feedback/s, each backend | {p['clients']} clients: SQLite {fb['sqlite']:.0f}, PostgreSQL "
           f"{fb['postgres']:.0f} ({st['feedback_ratio']:.2f}x); one client: {fb1['sqlite']['throughput_rps']:.0f} "
           f"(p50 {fb1['sqlite']['p50_ms']:.1f} ms) and {fb1['postgres']['throughput_rps']:.0f} "
           f"(p50 {fb1['postgres']['p50_ms']:.1f} ms) | reported |", "",
           "Route, req/s by window:", "",
           "| block | windows in order | p50 ms | PostgreSQL / SQLite |", "|---|---|---|---|",
           *_rows(st["route"], p["blocks"], br), "",
           *_cpu_note(st),
           f"Feedback at {p['clients']} clients, calls/s by window:", "",
           "| block | windows in order | p50 ms | PostgreSQL / SQLite |", "|---|---|---|---|",
           *_rows(st["feedback"], p["feedback_blocks"], st["feedback_block_ratios"]), "",
           "A Feedback on PostgreSQL is one transaction of five statements whatever its number of labels: the "
           "begin with the log lock, one read (the record, its stored labels, the tenant's queue), one write (the "
           "queue, the labels, the notification), the log since this router's cursor, the commit; a batch of n "
           "Feedbacks is 3n + 2, the log read once (`tests/unit/test_shared_state.py` counts them). Each is a "
           "loopback round trip from the router's writer thread, made while the fleet's log lock is held, where "
           "SQLite's run in process: sharing the state costs Feedback's rate, not Route's. Until 2026-12-07 a "
           "Feedback was 11 statements plus one per label (0.39x SQLite's rate at 64 clients, in a run the same "
           "day at `f9247ff`); docs/SCALING.md has the fleet's rate with the database farther away."
           + _snapshots(fdb["rows_per_call"], p["clients"]), ""]
    return out


def _cpu_row(st: dict[str, Any]) -> list[str]:
    cpu = st.get("route_cpu")
    if not cpu:
        return []
    sq, pg = cpu["sqlite"], cpu["postgres"]
    return [f"| CPU per Route (router + database server) | SQLite {sq['router_ms']:.1f} ms (+ {sq['db_ms']:.2f} ms: the "
            f"PostgreSQL server idling beside it), PostgreSQL {pg['router_ms']:.1f} + {pg['db_ms']:.2f} ms: "
            f"{st['route_cpu_ratio']:.2f}x | reported |"]


def _cpu_note(st: dict[str, Any]) -> list[str]:
    """Why the Route rates differ: on a saturated host the rate follows the CPU a Route takes."""
    cpu = st.get("route_cpu")
    if not cpu:
        return []
    sq, pg, ratio = cpu["sqlite"], cpu["postgres"], st["route_cpu_ratio"]
    router = 100 * (pg["router_ms"] / sq["router_ms"] - 1)
    why = ("where its writer thread sends each record through psycopg: one statement, for the request, the "
           "tenant's counters and the model counts" if router > 0 else "which the record its writer thread sends "
           "through psycopg did not outweigh")
    return [f"The PostgreSQL server runs on the router's cores here. Counted around each window (warm-up and "
            f"drain included, {sq['routes'] + pg['routes']:,} stored Routes), a Route on PostgreSQL took "
            f"{ratio:.2f}x the CPU of one on SQLite: {router:+.1f}% in the router ({why}) and {pg['db_ms']:.2f} ms "
            f"in the server. Where the cores are saturated, as under 64 clients here, that is {1 / ratio:.2f}x the "
            f"requests; the windows measured {st['route_ratio']:.2f}x.", ""]


def _snapshots(rows: float, clients: int) -> str:
    if rows < 2.2:
        return ""
    return (f" At {clients} clients a Feedback wrote {rows:.1f} rows on average: the two of its transaction plus the "
            "heads snapshots (every 500 labels a router has learned, five heads, each with its 385 x 385 "
            "covariance: about 6 MB and 9,000 TOAST rows per snapshot, and every replica writes its own).")
