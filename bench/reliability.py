"""Measure the reliability figures for real: `python bench/reliability.py [--out docs/reliability.json]`.

Runs the fault tests in tests/functional (real Triton servers, kill -9 and SIGTERM of real router processes,
model unloads, overload; routers in processes of their own where the process is the point, in the test's process
otherwise), which record what they measured; writes those figures as JSON and prints the headline
numbers that docs/RELIABILITY.md reports. Exit status: pytest's (the figures are only worth something when
every invariant held).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def headline(figures: dict) -> dict:
    def get(test: str, *keys: str) -> object:
        node: object = figures.get(test, {})
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    dur = "test_kill_9_during_sustained_feedback_loses_no_acked_label_and_applies_none_twice"
    unload = "test_unloaded_model_is_masked_out_and_readmitted_while_no_request_fails"
    down = "test_triton_killed_gives_unavailable_quickly_and_health_not_serving"
    load = "test_ten_times_sustainable_load_is_refused_quickly_and_admitted_latency_holds"
    drain = "test_sigterm_under_load_goes_not_serving_first_and_finishes_every_inflight_call"
    fuzz = "test_ten_thousand_fuzzed_messages_per_rpc_get_a_field_naming_status_and_never_crash_or_hang"
    return {
        "acked_but_lost": get(dur, "acked_but_lost"), "double_applied": get(dur, "double_applied"),
        "feedback_per_s_at_kill": get(dur, "feedback_per_s"),
        "failed_requests_model_unloaded": get(unload, "failed_requests"),
        "recovery_s_after_triton_ready": get(unload, "readmitted_after_ready_s"),
        "unavailable_after_triton_killed_s": get(down, "generate_unavailable_s"),
        "p99_ms_1x": get(load, "1x", "admitted_p99_ms"), "p99_ms_10x": get(load, "10x", "admitted_p99_ms"),
        "refused_p99_ms_10x": get(load, "10x", "refused_p99_ms"),
        "failed_inflight_on_sigterm": get(drain, "failed_inflight"),
        "fuzzed_messages": sum((v or {}).get("messages", 0) for v in (figures.get(fuzz) or {}).values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.json"))
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k durability)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.unlink(missing_ok=True)
    env = {**os.environ, "RELIABILITY_FIGURES_JSON": str(out)}
    began = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/functional",
                          *args.pytest_args], cwd=ROOT, env=env)
    figures = json.loads(out.read_text()) if out.exists() else {}
    figures["_run"] = {"pytest_exit": rc, "seconds": round(time.monotonic() - began, 1),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    figures["headline"] = headline(figures)
    out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures["headline"], indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
