"""The router's durable state behind one interface (base.Store): SQLite for one router (sqlite.py), PostgreSQL for
replicas that share it (postgres.py). `open_store` picks the configured one."""

from __future__ import annotations

from ..config import StateConfig
from .base import Store


def open_store(cfg: StateConfig, sqlite_path: str) -> Store:
    """The configured backend: the SQLite file at `sqlite_path`, or the PostgreSQL database at `cfg.url`."""
    if cfg.backend == "postgres":
        from .postgres import PostgresStore  # psycopg is imported only where it is used

        return PostgresStore(cfg.url, password=cfg.db_password(), buffer_records=cfg.buffer_records,
                             poll_s=cfg.poll_s, retention_s=cfg.retention_days * 86400.0,
                             record_wait_s=cfg.record_wait_s)
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_path, synchronous=cfg.synchronous)
