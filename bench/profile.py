"""Where a running server spends its time: py-spy samples the process, this module summarises the stacks.

`record(pid, seconds)` runs `py-spy record --format raw` (collapsed stacks, one line per distinct stack with its
sample count; idle threads are left out by py-spy) without pausing the target, and `summarise` turns the
stacks into the share of samples per thread and per function (inclusive: the function is anywhere on the
stack; self: it is the innermost Python frame).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> str:
    """Sample `pid` for `seconds` into `out` (raw collapsed stacks); returns the raw text."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (it comes with the dev extra: ./scripts/setup.sh dev)")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out.read_text()


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file").rsplit("/", 1)[-1]
    return f"{m.group('func')} ({file})"


def summarise(raw: str, top: int = 12) -> dict[str, object]:
    """Shares of samples by thread, by function inclusive and by innermost function."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        total += n
        threads[re.sub(r"^thread \(\w+\):\s*", "", thread) or "?"] += n
        for name in {_name(f) for f in body}:
            inclusive[name] += n
        if body:
            leaf[_name(body[-1])] += n

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in c.most_common(top)] if total else []
    return {"samples": total, "threads": shares(threads), "inclusive": shares(inclusive), "self": shares(leaf)}
