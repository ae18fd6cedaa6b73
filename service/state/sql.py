"""The statements both state backends run, in the SQL that SQLite (3.35+) and PostgreSQL both speak: qmark
placeholders (the PostgreSQL store turns them into psycopg's), ON CONFLICT upserts, RETURNING. Each backend
keeps its own schema and migrations; every SQL statement of the project lives in state/.

`conn` is anything with `execute(sql, params) -> cursor` (a sqlite3 connection, or the PostgreSQL store's
adapter), inside the transaction the caller opened.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AlreadyExists, Conflict, NotFound, shown
from .base import Expectation, FeedbackCommit, HeadRow, LabelEvent, QueueStep, RequestRow, TenantRow, now

log = logging.getLogger("messplus.store")

_REQUEST = ("SELECT request_id, tenant, t, served_model, invoked, exploration, cost, cost_raw, alpha, embedding, "
            "p_served, target, replica FROM requests WHERE request_id = ?")
_EVENTS = ("SELECT l.seq, r.tenant, l.request_id, l.model, l.satisfaction, l.moves_queue, l.queue_after, "
           "r.exploration, r.embedding, r.replica, r.p_served, r.target, l.p_label FROM labels l JOIN requests r "
           "ON r.request_id = l.request_id WHERE l.seq > ? ORDER BY l.seq")
_EVENTS_PAGE = _EVENTS + " LIMIT ?"
# records past the retention whose labels every head snapshot has learned (a head last written more than the
# retention before the newest snapshot, a model that left the zoo, is not waited for) and are older than one
# expiry period: the `heads` rows say what the replica that wrote them last has learned, and a replica whose
# tail is behind (a dropped connection, a start) has yet to read a label that came in just now (a late label
# of an old request); dropped, it would never learn it, and the replicas' heads would differ for good.
# Oldest first.
_EXPIRABLE = ("SELECT request_id FROM requests WHERE created < ? AND NOT EXISTS (SELECT 1 FROM labels l "
              "WHERE l.request_id = requests.request_id AND (l.seq > (SELECT COALESCE(MIN(last_label_seq), 0) "
              "FROM heads WHERE updated >= (SELECT MAX(updated) FROM heads) - ?) OR l.created >= ?)) "
              "ORDER BY created LIMIT ?")
# the expected-queue terms of requests (state/base.py Expectation): the unlabelled ones per served model, the
# labelled ones' residuals; `{}` takes a further condition on r
_PENDING = ("SELECT r.tenant, r.served_model, SUM(r.target - r.p_served), COUNT(*) FROM requests r "
            "WHERE r.p_served IS NOT NULL AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.request_id = r.request_id "
            "AND l.model = r.served_model){} GROUP BY r.tenant, r.served_model")
# a label's residual: against the prediction when it came (older labels: when its request was routed)
_RESIDUAL = "(l.satisfaction - COALESCE(l.p_label, r.p_served))"
_RESID = (f"SELECT r.tenant, r.served_model, SUM({_RESIDUAL}), SUM({_RESIDUAL} * {_RESIDUAL}), COUNT(*) "
          "FROM requests r JOIN labels l ON l.request_id = r.request_id AND l.model = r.served_model "
          "WHERE r.p_served IS NOT NULL{} GROUP BY r.tenant, r.served_model")
_LAST_T = "SELECT r.tenant, r.served_model, MAX(r.t) FROM requests r WHERE 1 = 1{} GROUP BY r.tenant, r.served_model"
# the dropped records' terms, per tenant and served model (table `expired`), added to what is there
_TERMS = tuple(f.name for f in dataclasses.fields(Expectation))  # table `expired`'s columns after tenant, model
_FOLD = (f"INSERT INTO expired (tenant, model, {', '.join(_TERMS)}) VALUES (?, ?, {', '.join('?' * len(_TERMS))}) "
         "ON CONFLICT (tenant, model) DO UPDATE SET "
         + "".join(f"{k} = expired.{k} + excluded.{k}, " for k in _TERMS if k != "last_t")
         + "last_t = CASE WHEN excluded.last_t > expired.last_t THEN excluded.last_t ELSE expired.last_t END")
EXPIRE_BATCH = 5000  # records one expiry transaction drops: a first expiry of a large state holds the writer briefly
_IN_LIST = 500  # ids per DELETE ... IN (...) statement


def expire_every(retention_s: float) -> float:
    """Seconds between a store's expiry runs: a tenth of the retention, at most an hour."""
    return min(retention_s / 10, 3600.0)


# -- reads ---------------------------------------------------------------------------------------------------------
def tenants(conn: Any) -> dict[str, TenantRow]:
    rows = conn.execute("SELECT name, queue, requests, labelled, sat_sum, cost_sum, cost_raw_sum, explore_steps, "
                        "explore_cost_raw FROM tenants", ()).fetchall()
    return {r[0]: TenantRow(name=r[0], queue=r[1], requests=r[2], labelled=r[3], sat_sum=r[4], cost_sum=r[5],
                            cost_raw_sum=r[6], explore_steps=r[7], explore_cost_raw=r[8]) for r in rows}


def label_seq(conn: Any) -> int:
    """The last seq of the label log (0: empty)."""
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM labels", ()).fetchone()[0])


def expectations(conn: Any, models: Sequence[str]) -> dict[str, Expectation]:
    """The expected-queue terms over the stored records and those that expiry dropped (table `expired`): the
    unlabelled requests only of those served by `models`."""
    zoo = set(models)
    terms = _terms(conn, "", ())
    terms += [(t, m, dict(zip(_TERMS, rest)))
              for t, m, *rest in conn.execute(f"SELECT tenant, model, {', '.join(_TERMS)} FROM expired", ()).fetchall()]
    out: dict[str, dict[str, float]] = {}
    for tenant, model, e in terms:
        o = out.setdefault(tenant, {})
        for k, v in e.items():
            if k == "last_t":
                o[k] = max(o.get(k, 0), int(v))
            elif k.startswith("resid") or model in zoo:
                o[k] = o.get(k, 0) + (int(v) if k.endswith("_n") else float(v))
    return {k: Expectation(**v) for k, v in out.items()}  # type: ignore[arg-type]


def _terms(conn: Any, only: str, params: tuple[Any, ...]) -> list[tuple[str, str, dict[str, float]]]:
    """(tenant, served model, its expected-queue terms) over the stored records, those matching `only` (a
    condition on r, with `params`)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for tenant, model, total, n in conn.execute(_PENDING.format(only), params).fetchall():
        out.setdefault((tenant, model), {}).update(pending_sum=float(total), pending_n=int(n))
    for tenant, model, total, sq, n in conn.execute(_RESID.format(only), params).fetchall():
        out.setdefault((tenant, model), {}).update(resid_sum=float(total), resid_sq=float(sq), resid_n=int(n))
    for tenant, model, last in conn.execute(_LAST_T.format(only), params).fetchall():
        out.setdefault((tenant, model), {}).update(last_t=int(last))
    return [(t, m, e) for (t, m), e in out.items()]


def model_counts(conn: Any) -> dict[tuple[str, str], tuple[int, int]]:
    rows = conn.execute("SELECT tenant, model, served, invoked FROM model_counts", ()).fetchall()
    return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


def request(conn: Any, request_id: str) -> RequestRow | None:
    r = conn.execute(_REQUEST, (request_id,)).fetchone()
    if r is None:
        return None
    return RequestRow(request_id=r[0], tenant=r[1], t=r[2], served_model=r[3],
                      invoked=tuple(m for m in r[4].split("\n") if m), exploration=bool(r[5]), cost=r[6],
                      cost_raw=r[7], alpha=r[8], embedding=_bytes(r[9]), p_served=r[10], target=r[11],
                      replica=r[12])


def request_exists(conn: Any, request_id: str) -> bool:
    return conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is not None


def head(conn: Any, model: str) -> HeadRow | None:
    r = conn.execute("SELECT dim, last_label_seq, W, S FROM heads WHERE model = ?", (model,)).fetchone()
    return HeadRow(features=r[0], last_seq=r[1], W=_bytes(r[2]), S=_bytes(r[3])) if r else None


def label_events(conn: Any, after: int, limit: int = 0) -> list[LabelEvent]:
    rows = conn.execute(_EVENTS_PAGE, (after, limit)) if limit > 0 else conn.execute(_EVENTS, (after,))
    return [LabelEvent(seq=int(r[0]), tenant=r[1], request_id=r[2], model=r[3], satisfaction=r[4],
                       moves_queue=bool(r[5]), queue_after=r[6], exploration=bool(r[7]), embedding=_bytes(r[8]),
                       replica=r[9], p_served=r[10], target=r[11], p_label=r[12])
            for r in rows.fetchall()]


def _bytes(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


class SqlReads:
    """The Store's reads for a backend that runs `fn(conn, *args)` on a reading connection (its `_read`)."""

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def tenants(self) -> dict[str, TenantRow]:
        return self._read(tenants)  # type: ignore[no-any-return]

    def expectations(self, models: Sequence[str]) -> dict[str, Expectation]:
        return self._read(expectations, models)  # type: ignore[no-any-return]

    def model_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        return self._read(model_counts)  # type: ignore[no-any-return]

    def request_exists(self, request_id: str) -> bool:
        return self._read(request_exists, request_id)  # type: ignore[no-any-return]

    def request(self, request_id: str) -> RequestRow | None:
        return self._read(request, request_id)  # type: ignore[no-any-return]

    def head(self, model: str) -> HeadRow | None:
        return self._read(head, model)  # type: ignore[no-any-return]

    def label_events(self, after: int, limit: int = 0) -> list[LabelEvent]:
        return self._read(label_events, after, limit)  # type: ignore[no-any-return]


# -- writes ----------------------------------------------------------------------------------------------------------
def ensure_tenants(conn: Any, names: tuple[str, ...]) -> None:
    for n in names:
        conn.execute("INSERT INTO tenants (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (n,))


_INSERT_REQUEST = ("INSERT INTO requests (request_id, tenant, t, served_model, invoked, exploration, cost, "
                   "cost_raw, alpha, embedding, created, p_served, target, replica)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING"
                   " RETURNING request_id")
_COUNT_REQUEST = ("UPDATE tenants SET requests = requests + 1, cost_sum = cost_sum + ?, "
                  "cost_raw_sum = cost_raw_sum + ?, explore_steps = explore_steps + ?, "
                  "explore_cost_raw = explore_cost_raw + ? WHERE name = ?")
_COUNT_MODEL = ("ON CONFLICT (tenant, model) DO UPDATE SET served = model_counts.served + excluded.served, "
                "invoked = model_counts.invoked + 1")


def insert_request(conn: Any, row: RequestRow, *, one_statement: bool = False) -> None:
    """Store a routed request and count it. The write is retried after a failed commit, and a commit can succeed
    with its reply lost: the same record found stored (the same router, tenant and t) is that commit, counted
    already. Another request under the id is refused (AlreadyExists).

    `one_statement` (PostgreSQL): the record, the tenant's counters and the model counts go in one statement
    (data-modifying CTEs, the counts only where the record was inserted), not 2 + one per invoked model: each
    statement is a round trip and the router's CPU (docs/BENCHMARKS.md, state backends)."""
    if row.served_model not in row.invoked:
        raise ValueError("served model must be among the invoked ones")
    record = (row.request_id, row.tenant, row.t, row.served_model, "\n".join(row.invoked), int(row.exploration),
              row.cost, row.cost_raw, row.alpha, row.embedding, now(), row.p_served, row.target, row.replica)
    counts = (row.cost, row.cost_raw, int(row.exploration), row.explore_cost_raw, row.tenant)
    served = [int(m == row.served_model) for m in row.invoked]
    if one_statement:
        stored = conn.execute(
            f"WITH ins AS ({_INSERT_REQUEST}), ten AS ({_COUNT_REQUEST} AND EXISTS (SELECT 1 FROM ins)), "
            "mc AS (INSERT INTO model_counts (tenant, model, served, invoked) SELECT ?, m.model, m.served, 1 "
            f"FROM unnest(?::text[], ?::int[]) AS m(model, served) WHERE EXISTS (SELECT 1 FROM ins) {_COUNT_MODEL}) "
            "SELECT request_id FROM ins", (*record, *counts, row.tenant, list(row.invoked), served)).fetchone()
    else:
        stored = conn.execute(_INSERT_REQUEST, record).fetchone()
    if stored is None:
        have = conn.execute("SELECT replica, tenant, t FROM requests WHERE request_id = ?",
                            (row.request_id,)).fetchone()
        if row.replica is not None and have is not None and tuple(have) == (row.replica, row.tenant, row.t):
            return
        raise AlreadyExists(f"request_id {shown(row.request_id)} is stored already, for another request")
    if not one_statement:
        conn.execute(_COUNT_REQUEST, counts)
        for m, s in zip(row.invoked, served):
            conn.execute("INSERT INTO model_counts (tenant, model, served, invoked) VALUES (?, ?, ?, 1) "
                         + _COUNT_MODEL, (row.tenant, m, s))


# a Feedback's read: the record and its tenant's queue; on PostgreSQL also its stored labels, in the same round trip
_FEEDBACK_COLS = ("r.tenant, r.served_model, r.exploration, r.embedding, r.replica, r.p_served, r.target, t.queue, "
                  "t.labelled")
_FEEDBACK_FROM = " FROM requests r LEFT JOIN tenants t ON t.name = r.tenant WHERE r.request_id = ?"
_FEEDBACK_READ_SQLITE = f"SELECT {_FEEDBACK_COLS}{_FEEDBACK_FROM}"
_FEEDBACK_READ = (f"SELECT {_FEEDBACK_COLS}, "
                  "ARRAY(SELECT l.model FROM labels l WHERE l.request_id = r.request_id ORDER BY l.seq), "
                  "ARRAY(SELECT l.satisfaction FROM labels l WHERE l.request_id = r.request_id ORDER BY l.seq)"
                  f"{_FEEDBACK_FROM}")
# the tenant's queue (where the served model's label is new) and the new labels, in the given order, then the
# label log's notification: one statement (PostgreSQL's data-modifying CTEs)
_FEEDBACK_WRITE = ("WITH ten AS (UPDATE tenants SET queue = ?, labelled = labelled + 1, sat_sum = sat_sum + ? "
                   "WHERE name = ? AND ?::boolean), "
                   "ins AS (INSERT INTO labels (request_id, model, satisfaction, moves_queue, queue_after, created, "
                   "p_label) SELECT ?, m.model, m.s, m.served, CASE WHEN m.served = 1 THEN ?::double precision END, "
                   "?, CASE WHEN m.served = 1 THEN ?::double precision END "
                   "FROM unnest(?::text[], ?::double precision[], ?::int[]) WITH ORDINALITY AS m(model, s, served, i) "
                   "ORDER BY m.i RETURNING seq, model) "
                   "SELECT array_agg(seq ORDER BY seq), array_agg(model ORDER BY seq), "
                   "pg_notify(?, max(seq)::text) FROM ins")


def apply_feedback(conn: Any, tenant: str, request_id: str, served_model: str, labels: dict[str, float],
                   step: QueueStep, notify: str = "", p_label: float | None = None) -> FeedbackCommit:
    """Store.apply_feedback's transaction, inside the caller's (which on a shared store holds the log's lock,
    so that label seqs are handed out in commit order: a reader that saw seq n has seen every seq below it).

    `notify` (PostgreSQL): the channel told of the new labels, and the whole of it in two statements, one read
    and one write (each statement is a round trip made while the log's lock is held: they bound how many
    Feedbacks the fleet commits per second; docs/SCALING.md), not five plus one per label."""
    # the router checked its memory; the database decides: a record another replica stored under the same id,
    # or one whose commit failed, must not take this caller's labels
    req = conn.execute(_FEEDBACK_READ if notify else _FEEDBACK_READ_SQLITE, (request_id,)).fetchone()
    if req is None or req[0] != tenant or req[1] != served_model:
        raise NotFound(f"request_id {shown(request_id)} is not a stored request of tenant {tenant!r}")
    exploration, embedding, replica, p_served, target, queue, labelled = req[2:9]
    if notify:
        stored = dict(zip(req[9], req[10]))
    else:
        stored = dict(conn.execute("SELECT model, satisfaction FROM labels WHERE request_id = ?",
                                   (request_id,)).fetchall())
    new: dict[str, float] = {}
    for model, s in labels.items():
        if model in stored:
            if abs(stored[model] - s) > 1e-12:
                raise Conflict(f"request {shown(request_id)} already has satisfaction {stored[model]} for "
                               f"model {model!r}; feedback is write-once")
        else:
            new[model] = s
    moves = served_model in new
    if moves:
        queue = step(float(queue), int(labelled) + 1, new[served_model])
    seqs = _write_labels(conn, tenant, request_id, served_model, new, queue, notify, p_label) if new else {}
    events = [LabelEvent(seq=int(seqs[model]), tenant=tenant, request_id=request_id, model=model, satisfaction=s,
                         moves_queue=model == served_model, queue_after=queue if model == served_model else None,
                         exploration=bool(exploration), embedding=_bytes(embedding), replica=replica,
                         p_served=p_served, target=target, p_label=p_label if model == served_model else None)
              for model, s in new.items()]
    return FeedbackCommit(new=new, given=len(labels), queue=float(queue), moved=moves, events=tuple(events))


def _write_labels(conn: Any, tenant: str, request_id: str, served_model: str, new: dict[str, float], queue: float,
                  notify: str, p_label: float | None) -> dict[str, int]:
    """Store the new labels (and, where the served model's is among them, the tenant's queue); their seqs."""
    moves = served_model in new
    if notify:
        models = list(new)
        got, order, _ = conn.execute(_FEEDBACK_WRITE, (
            queue, new.get(served_model, 0.0), tenant, moves, request_id, queue, now(), p_label, models,
            [new[m] for m in models], [int(m == served_model) for m in models], notify)).fetchone()
        return dict(zip(order, got))
    if moves:
        conn.execute("UPDATE tenants SET queue = ?, labelled = labelled + 1, sat_sum = sat_sum + ? "
                     "WHERE name = ?", (queue, new[served_model], tenant))
    seqs = {}
    for model, s in new.items():
        (seqs[model],) = conn.execute(
            "INSERT INTO labels (request_id, model, satisfaction, moves_queue, queue_after, created, p_label)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (request_id, model, s, int(model == served_model), queue if model == served_model else None,
             now(), p_label if model == served_model else None)).fetchone()
    return seqs


def expire(conn: Any, retention_s: float, limit: int) -> int:
    """Drop up to `limit` request records older than the retention whose labels every head snapshot has learned
    and came in at least one expiry period ago (_EXPIRABLE), and their labels with them (a label of no request
    only grew the log, and answered a reused id's Feedback as a duplicate); returns how many records went. A
    record's Feedback after that is NOT_FOUND. On a quiet state whose newest snapshot is itself older than the
    retention, that snapshot's heads still count.

    What the dropped records add to the tenant's expected queue (an unlabelled one's target - p_served, a
    labelled one's residual, the highest t: `expectations`) is kept first, per tenant and served model (table
    `expired`), so a router started later expects what the one running expected: the SLA counts those requests
    for good, and a request's index is never handed out again."""
    t = now()
    ids = [r[0] for r in conn.execute(_EXPIRABLE, (t - retention_s, retention_s, t - expire_every(retention_s),
                                                   limit)).fetchall()]
    for i in range(0, len(ids), _IN_LIST):
        chunk = tuple(ids[i:i + _IN_LIST])
        marks = ", ".join("?" * len(chunk))
        for tenant, model, e in _terms(conn, f" AND r.request_id IN ({marks})", chunk):
            conn.execute(_FOLD, (tenant, model, *(e.get(k, 0) for k in _TERMS)))
        conn.execute(f"DELETE FROM labels WHERE request_id IN ({marks})", chunk)
        conn.execute(f"DELETE FROM requests WHERE request_id IN ({marks})", chunk)
    return len(ids)


def expire_all(submit: Callable[..., Any], retention_s: float, *, inline: bool = False) -> Any:
    """Run `expire` as jobs of a store's writer (`submit(job, after_commit)`), one EXPIRE_BATCH per transaction,
    the next submitted when one came back full, so that Route's records and Feedback commit in between; returns
    the first job's future. One log line when the run ends: how many went, or why it stopped. `inline`: the
    store runs each job at once on the caller's thread (then the jobs run in a loop, not nested)."""
    batch, gone = EXPIRE_BATCH, [0]

    def job(conn: Any) -> int:
        return expire(conn, retention_s, batch)

    def after(n: int) -> None:
        gone[0] += n
        if n < batch:
            if gone[0]:
                log.info("state: %d request records past the retention (%g days) expired", gone[0],
                         retention_s / 86400)
        elif not inline:
            try:
                submit(job, after).add_done_callback(failed)
            except RuntimeError:  # the store closed meanwhile: the rest waits for the next start
                log.info("state: %d request records past the retention expired before the store closed", gone[0])

    def failed(fut: Any) -> None:
        if fut.exception() is not None:
            log.warning("state: expiry stopped after %d records: %s; it runs again later", gone[0], fut.exception())

    first = last = submit(job, after)
    first.add_done_callback(failed)
    while inline and last.exception() is None and last.result() >= batch:
        last = submit(job, after)
        last.add_done_callback(failed)
    return first


def write_heads(conn: Any, snaps: list[tuple[str, bytes, bytes]], features: int, last_seq: int) -> None:
    for name, W, S in snaps:
        conn.execute("INSERT INTO heads (model, dim, last_label_seq, W, S, updated) VALUES (?, ?, ?, ?, ?, ?) "
                     "ON CONFLICT (model) DO UPDATE SET dim = excluded.dim, last_label_seq = excluded.last_label_seq, "
                     "W = excluded.W, S = excluded.S, updated = excluded.updated",
                     (name, features, last_seq, W, S, now()))
