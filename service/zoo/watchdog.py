"""The watchdog between the router and its embedded tritonserver: `python -S watchdog.py OWNER_PID -- COMMAND...`.

It runs COMMAND (tritonserver) as its child in its own process group (TritonServer starts the watchdog as the
leader of a new session; tritonserver and its Python-backend stubs inherit the group), then waits:

- COMMAND exits: the watchdog exits with its code (128 + N when a signal N ended it);
- SIGTERM or SIGINT (the router's stop signals the whole group): caught and not acted on; tritonserver drains
  and exits, and so does the watchdog;
- the owner is gone (its pid is no longer this process's parent: the router died, even by kill -9, and the
  watchdog was handed to init): SIGKILL to the whole group, tritonserver and stubs with it, within `POLL_S`.

Why a process and not prctl(PR_SET_PDEATHSIG) on tritonserver: the parent-death signal fires when the *thread*
that forked the child ends, not the process (the router starts Triton from a worker thread), and it reaches only
tritonserver, not the stubs it forks. getppid() names the parent process, whatever thread forked.

This file is run by path with `python -S` (no site, no package imports: it starts in a few milliseconds), so it
imports nothing from messplus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.1


def owner_gone(owner: int) -> bool:
    return os.getppid() != owner


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: watchdog.py OWNER_PID -- COMMAND...", file=sys.stderr)
        return 2
    owner = int(argv[0])
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A handler, not SIG_IGN: the exec'd child gets the default back (an ignored signal would stay ignored).
        # The group's signal reaches tritonserver itself; the watchdog waits for it to drain and exit.
        signal.signal(sig, lambda *_: None)
    if owner_gone(owner):
        return 1
    child = subprocess.Popen(argv[2:])  # same process group as the watchdog: one killpg reaches all
    while True:
        try:
            code = child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if owner_gone(owner):
                os.killpg(os.getpgrp(), signal.SIGKILL)  # tritonserver, its stubs, and this watchdog
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
