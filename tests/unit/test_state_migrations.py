"""A state database written by an earlier messplus is brought up to this code's schema in place, and what it
holds stays usable: its requests take their feedback, and a newer schema than this code knows is refused."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from messplus.service.config import ModelConfig, TenantConfig
from messplus.service.routing.heads import Heads
from messplus.service.routing.router import Router
from messplus.service.routing.types import RouteItem
from messplus.service.state.pgschema import MIGRATIONS, SchemaTooNew
from messplus.service.state.postgres import PostgresStore
from messplus.service.state.sqlite import SqliteStore

DIM = 4
MODELS = (ModelConfig(name="cheap", triton_model="cheap", cost_per_request=1.0),
          ModelConfig(name="big", triton_model="big", cost_per_request=10.0))
TENANT = TenantConfig(name="acme", alpha=0.8, c=0.0)
EMB = (np.ones(DIM, np.float32) / math.sqrt(DIM)).tobytes()
# a request as the schema before the `replica` column stored it (p_served and target predate it)
OLD_REQUEST = ("INSERT INTO requests (request_id, tenant, t, served_model, invoked, exploration, cost, cost_raw, "
               "alpha, embedding, created, p_served, target) VALUES ('old-1', 'acme', 1, 'cheap', 'cheap', 0, 0.1, "
               "1.0, 0.8, ?, ?, 0.5, 0.95)")  # created now: a record past the retention would expire at start


def router(store: SqliteStore | PostgresStore) -> Router:
    return Router(MODELS, [TENANT], Heads([m.name for m in MODELS], DIM), store)


def route_one(r: Router) -> str:
    emb = np.ones((1, DIM), np.float32) / math.sqrt(DIM)
    (routed,) = r.route([RouteItem(tenant="acme")], emb)
    assert not isinstance(routed, Exception)
    r.record(routed.decision, routed.embedding).result(10)
    return routed.decision.request_id


def test_a_sqlite_file_from_before_the_replica_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE tenants (name TEXT PRIMARY KEY, queue REAL NOT NULL DEFAULT 0, requests INTEGER NOT NULL "
        "DEFAULT 0, labelled INTEGER NOT NULL DEFAULT 0, sat_sum REAL NOT NULL DEFAULT 0, cost_sum REAL NOT NULL "
        "DEFAULT 0, cost_raw_sum REAL NOT NULL DEFAULT 0, explore_steps INTEGER NOT NULL DEFAULT 0, "
        "explore_cost_raw REAL NOT NULL DEFAULT 0);"
        "INSERT INTO tenants (name, requests) VALUES ('acme', 1);"
        "CREATE TABLE requests (request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, t INTEGER NOT NULL, "
        "served_model TEXT NOT NULL, invoked TEXT NOT NULL, exploration INTEGER NOT NULL, cost REAL NOT NULL, "
        "cost_raw REAL NOT NULL, alpha REAL NOT NULL, embedding BLOB, created REAL NOT NULL, p_served REAL, "
        "target REAL);"
        "CREATE TABLE labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, model TEXT NOT NULL, "
        "satisfaction REAL NOT NULL, moves_queue INTEGER NOT NULL, queue_after REAL, created REAL NOT NULL, "
        "UNIQUE (request_id, model));")
    conn.execute(OLD_REQUEST, (EMB, time.time()))
    conn.commit()
    conn.close()
    r = router(SqliteStore(path))
    try:
        assert r.tenants["acme"].pending_n == 1  # the old request is awaited, by its stored prediction
        old = r.store.request("old-1")
        assert old is not None and old.replica is None
        new = r.store.request(route_one(r))
        assert new is not None and new.replica == r.replica
        r.feedback("acme", "old-1", 1.0, []).result(10)
        st = r.tenants["acme"]
        assert (st.pending_n, st.resid_n, st.labelled) == (1, 1, 1)  # the old one left the expectation
        (event,) = r.store.label_events(0)
        assert event.p_label is not None  # the labels table took the column: the prediction as the label came
    finally:
        r.store.close()


def test_a_postgresql_database_at_schema_1_is_migrated(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE messplus_schema (version INTEGER NOT NULL)")
        conn.execute(MIGRATIONS[0])
        conn.execute("INSERT INTO messplus_schema (version) VALUES (1)")
        conn.execute("INSERT INTO tenants (name, requests) VALUES ('acme', 1)")
        conn.execute(OLD_REQUEST.replace("?", "%s"), (EMB, time.time()))
    a = router(PostgresStore(postgres_url, poll_s=0.05))
    b = router(PostgresStore(postgres_url, poll_s=0.05))
    try:
        assert a.store.schema_version == len(MIGRATIONS) == 4  # type: ignore[attr-defined]
        old = a.store.request("old-1")
        assert old is not None and old.replica is None and old.p_served == 0.5
        rid = route_one(a)
        stored = b.store.request(rid)
        assert stored is not None and stored.replica == a.replica != b.replica
        a.store.flush()
        b.feedback("acme", "old-1", 1.0, []).result(10)  # a request of no running replica: labelled, counted
        b.feedback("acme", rid, 1.0, []).result(10)
        a.store.catch_up().result(10)  # type: ignore[attr-defined]
        assert (a.tenants["acme"].pending_n, a.tenants["acme"].resid_n) == (0, 1)
        assert b.tenants["acme"].labelled == 2
        assert all(e.p_label is not None for e in a.store.label_events(0))
    finally:
        a.store.close()
        b.store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO messplus_schema (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNew, match="upgrade messplus"):
        PostgresStore(postgres_url)
