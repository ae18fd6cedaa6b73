"""The router's durable state behind one interface (base.Store): SQLite for one router (sqlite.py), PostgreSQL for
replicas that share it (postgres.py). `open_store` picks the configured one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from ..config import StateConfig
from .base import Store


class StateInUse(RuntimeError):
    """Another process holds the SQLite state: a router (or a pretrain) on the same file."""


def lock_sqlite_state(sqlite_path: Path) -> IO[str]:
    """Hold the SQLite state for this process until the returned file is closed (the OS lets go when the
    process dies): one router per file, and `messplus pretrain` never under a running router, whose next heads
    snapshot would overwrite the pretrained heads. Raises StateInUse, naming the holder's pid."""
    lock = Path(str(sqlite_path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the router's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StateInUse(f"the state {sqlite_path} is in use by another messplus process (pid {holder}), a "
                         "running router: stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def describe(cfg: StateConfig, sqlite_path: str) -> str:
    """Where the state is, for a person: `SQLite PATH` or `PostgreSQL USER@HOST:PORT/DB` (the URL never holds a
    password: config refuses one)."""
    if cfg.backend != "postgres":
        return f"SQLite {sqlite_path}"
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(cfg.url)
    except Exception:  # noqa: BLE001 - the start's own connect says what is wrong with it
        return "PostgreSQL (unparsable url)"
    user = f"{d['user']}@" if d.get("user") else ""
    return f"PostgreSQL {user}{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


def open_store(cfg: StateConfig, sqlite_path: str) -> Store:
    """The configured backend: the SQLite file at `sqlite_path`, held for this process until the store is closed
    (`lock_sqlite_state`: StateInUse while another router or pretrain holds it), or the PostgreSQL database at
    `cfg.url`."""
    if cfg.backend == "postgres":
        from .postgres import PostgresStore  # psycopg is imported only where it is used

        return PostgresStore(cfg.url, password=cfg.db_password(), buffer_records=cfg.buffer_records,
                             poll_s=cfg.poll_s, retention_s=cfg.retention_days * 86400.0,
                             record_wait_s=cfg.record_wait_s)
    from .sqlite import SqliteStore

    lock = lock_sqlite_state(Path(sqlite_path))
    try:
        return SqliteStore(sqlite_path, synchronous=cfg.synchronous, held=lock,
                           retention_s=cfg.retention_days * 86400.0)
    except BaseException:
        lock.close()
        raise
