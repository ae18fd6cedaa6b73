"""Which PostgreSQL errors are the database failing (a batch to retry) rather than a job being wrong (a job to
fail alone), and the TCP settings that notice a peer that stopped answering. Used by state/postgres.py."""

from __future__ import annotations

from typing import Any

import psycopg

# a peer that stops answering (a black-holed link) is given up after about 30 s instead of the kernel's ~15 min;
# the URL's own values win
TCP_DEFAULTS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 30_000}

# SQLSTATEs of the database failing a statement rather than the statement being wrong: connection exceptions
# (08), insufficient resources (53: a full disk, too many connections), a transaction rolled back for
# serialization or a deadlock (40), a lock or statement timeout, the server shutting down, an I/O error
_TRANSIENT_CLASSES = ("08", "53", "40")
_TRANSIENT_STATES = frozenset({"55P03", "57014", "57P01", "57P02", "57P03", "58030"})
# a read-only transaction: the URL reached a standby (after a failover) or the database was set read-only;
# psycopg raises it as an InternalError, and each job failing alone dropped its record with health SERVING
_READ_ONLY = "25006"


def database_failure(exc: BaseException) -> bool:
    """Whether a job's error is the database failing (the batch is failed and its records kept for a retry), not
    the job (it fails alone, as a program limit or a bad value always would again)."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate == _READ_ONLY:
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def tcp_defaults(url: str) -> dict[str, Any]:
    """TCP_DEFAULTS less what the URL sets itself."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    return {k: v for k, v in TCP_DEFAULTS.items() if k not in given}
