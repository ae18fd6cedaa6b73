"""The embedded Triton's process tree as /proc shows it: its pid file, its process group, and a Triton left
running by an earlier router of the same work folder (found and ended at the next start).

An embedded Triton is one process group: the watchdog (watchdog.py, the group leader, whose pid the pid file
holds), tritonserver, and the Python-backend stubs tritonserver forks. Every process of the group that carries the
work folder's `--backend-directory=...` argument (the watchdog and tritonserver) marks the group as this folder's.
Linux only (/proc), like the bundled tritonserver itself.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PID_FILE = "tritonserver.pid"
PROC = Path("/proc")
log = logging.getLogger("messplus.triton")


class FolderInUse(RuntimeError):
    """A live router owns the Triton of this work folder: a second router must not start on the same state."""


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str  # R, S, D, Z, ...
    args: tuple[str, ...]

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # a zombie runs nothing and holds no memory: it is gone


def read_proc(pid: int) -> Proc | None:
    """The process `pid` from /proc, None when it does not exist (any more)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    args = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], args)


def processes() -> list[Proc]:
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (p := read_proc(int(entry.name))) is not None:
            out.append(p)
    return out


def marker(backends: Path) -> str:
    """The argument that names a work folder's Triton (tritonserver's backend directory lives in the folder)."""
    return f"--backend-directory={backends}"


def group(pgid: int) -> list[Proc]:
    """The live processes of process group `pgid`."""
    return [p for p in processes() if p.pgid == pgid and p.alive]


def folder_groups(backends: Path) -> dict[int, list[Proc]]:
    """Live process groups holding a Triton of this work folder (found by its marker, whatever the pid file says):
    {pgid: every live process of the group}."""
    mark = marker(backends)
    procs = [p for p in processes() if p.alive]
    pgids = {p.pgid for p in procs if mark in p.args}
    return {g: [p for p in procs if p.pgid == g] for g in sorted(pgids)}


def write_pid_file(work_dir: Path, pgid: int) -> Path:
    path = work_dir / PID_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pgid}\n")
    os.replace(tmp, path)
    return path


def read_pid_file(work_dir: Path) -> int | None:
    try:
        return int((work_dir / PID_FILE).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def end_group(pgid: int, grace_s: float = 5.0) -> bool:
    """SIGTERM the group, SIGKILL what is left after `grace_s`; True once no live process of it remains."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:  # not ours: a reused pgid
            return False
        deadline = time.monotonic() + wait_s
        while group(pgid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return True
    return not group(pgid)


def _owner(members: list[Proc]) -> Proc | None:
    """The live watchdog leading the group, if any (it ends the group itself within 0.1 s of its owner's death)."""
    return next((p for p in members if p.pid == p.pgid and any(a.endswith("watchdog.py") for a in p.args)), None)


def end_leftovers(work_dir: Path, backends: Path) -> list[tuple[int, int]]:
    """End every Triton of this work folder that no live router owns; return [(pgid, processes ended)].

    A group led by a live watchdog belongs to a running router (a dead router's watchdog ends its group within
    0.1 s), so it is left alone and FolderInUse raised: two routers must not share a state folder.
    """
    groups = folder_groups(backends)
    recorded = read_pid_file(work_dir)
    if recorded is not None and recorded not in groups and any(marker(backends) in p.args for p in group(recorded)):
        groups[recorded] = group(recorded)
    if any(_owner(m) for m in groups.values()):
        time.sleep(0.5)  # a watchdog whose router just died is ending its group now
        groups = {g: group(g) for g in groups}
    ended = []
    for pgid, members in groups.items():
        if not members:
            continue
        owner = _owner(members)
        if owner is not None:
            raise FolderInUse(f"the Triton of {work_dir} (process group {pgid}) belongs to the running process "
                              f"{owner.ppid}: a router of this state folder is already running; stop it first")
        log.warning("ending the tritonserver left running by an earlier router of %s: process group %d, %d "
                    "processes (pids %s)", work_dir, pgid, len(members), ", ".join(str(p.pid) for p in members))
        if not end_group(pgid):
            raise RuntimeError(f"cannot end the leftover Triton of {work_dir} (process group {pgid})")
        ended.append((pgid, len(members)))
    if ended:
        (work_dir / PID_FILE).unlink(missing_ok=True)
    return ended
