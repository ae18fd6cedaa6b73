"""What a bench report says about the host it ran on (without the service's gRPC stubs and the bench suite's
servers, so a GPU box with only the predictor's packages and grpcio can load it)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    import numba
    import onnxruntime
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:  # no git on the host (a copied tree on a GPU box): the caller may set BENCH_COMMIT
        commit = ""
    commit = commit or os.environ.get("BENCH_COMMIT", "")  # not MESSPLUS_*: the router would take it for config
    return {"cores": len(os.sched_getaffinity(0)), "cpu": model, "memory_gib": round(mem / 2**30, 1),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numba": numba.__version__,
            "grpcio": __import__("grpc").__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
