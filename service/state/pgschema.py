"""The PostgreSQL state's schema: its versions, and the migration every router runs at start (docs/SCALING.md,
Schema). Versions only ever go forward; a router refuses a database migrated by a newer messplus."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

log = logging.getLogger("messplus.store")

MIGRATE_LOCK = 0x6D6573735F6D6967
MIGRATIONS = (
    # version 1: the SQLite schema's tables, in PostgreSQL's types
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY, queue DOUBLE PRECISION NOT NULL DEFAULT 0, requests BIGINT NOT NULL DEFAULT 0,
        labelled BIGINT NOT NULL DEFAULT 0, sat_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        cost_sum DOUBLE PRECISION NOT NULL DEFAULT 0, cost_raw_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        explore_steps BIGINT NOT NULL DEFAULT 0, explore_cost_raw DOUBLE PRECISION NOT NULL DEFAULT 0);
    CREATE TABLE model_counts (
        tenant TEXT NOT NULL, model TEXT NOT NULL, served BIGINT NOT NULL DEFAULT 0,
        invoked BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (tenant, model));
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, t BIGINT NOT NULL, served_model TEXT NOT NULL,
        invoked TEXT NOT NULL, exploration INTEGER NOT NULL, cost DOUBLE PRECISION NOT NULL,
        cost_raw DOUBLE PRECISION NOT NULL, alpha DOUBLE PRECISION NOT NULL, embedding BYTEA,
        created DOUBLE PRECISION NOT NULL, p_served DOUBLE PRECISION, target DOUBLE PRECISION);
    CREATE INDEX requests_created ON requests (created);
    CREATE TABLE labels (
        seq BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, model TEXT NOT NULL,
        satisfaction DOUBLE PRECISION NOT NULL, moves_queue INTEGER NOT NULL, queue_after DOUBLE PRECISION,
        created DOUBLE PRECISION NOT NULL, UNIQUE (request_id, model));
    CREATE TABLE heads (
        model TEXT PRIMARY KEY, dim INTEGER NOT NULL, last_label_seq BIGINT NOT NULL, W BYTEA NOT NULL,
        S BYTEA NOT NULL, updated DOUBLE PRECISION NOT NULL);
    """,
    # version 2: which router process routed each request (its label leaves that router's expected-queue terms)
    "ALTER TABLE requests ADD COLUMN replica TEXT",
    # version 3: what expired records added to each tenant's expected queue, per served model (state/sql.py expire)
    """
    CREATE TABLE expired (
        tenant TEXT NOT NULL, model TEXT NOT NULL, pending_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        pending_n BIGINT NOT NULL DEFAULT 0, resid_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
        resid_sq DOUBLE PRECISION NOT NULL DEFAULT 0, resid_n BIGINT NOT NULL DEFAULT 0,
        last_t BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (tenant, model));
    """,
    # version 4: the served model's predicted satisfaction when its label came (the predictor's bias, prequential)
    "ALTER TABLE labels ADD COLUMN p_label DOUBLE PRECISION",
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer messplus: this one must not write to it."""


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to this code's version under a session advisory lock; returns the version."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS messplus_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM messplus_schema").fetchone()
        have = int(row[0] or 0) if row else 0
        if have > len(MIGRATIONS):
            raise SchemaTooNew(f"the state database has schema version {have}, newer than this messplus knows "
                               f"({len(MIGRATIONS)}): upgrade messplus before pointing it at this database")
        for version in range(have + 1, len(MIGRATIONS) + 1):
            with conn.transaction():
                conn.execute(MIGRATIONS[version - 1])  # type: ignore[arg-type]
                conn.execute("INSERT INTO messplus_schema (version) VALUES (%s)", (version,))
            log.info("state schema migrated to version %d", version)
        return len(MIGRATIONS)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
