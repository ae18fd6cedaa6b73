"""`messplus replay --grpc` across three real `messplus serve` replicas on one real PostgreSQL state (issue 16),
against the in-process simulation `messplus replay --replicas 3` on the same stream.

The replicas (the session's real Triton and demo zoo, tests/support) share the database and tail its label log;
the replay routes the RouterBench trace's first prompts (a slice, for time: they are ARC-Challenge) round-robin
over them and sends each Feedback to a seeded random replica. The in-process replay routes the same prompts in
the same order through three `Router`s on one shared in-process state with the label log delivered at once
(--sync-lag 0) and one price per model (--flat-costs: the service's config prices each model by its mean cost).

"Within noise", as used here: for satisfaction and mean cost, the two runs' difference is at most two standard
errors of a difference of two independent means over the slice's n requests, each run's per-request spread its
own (runs/*.npz): |m_grpc - m_inproc| <= 2 sqrt(s_grpc^2 / n + s_inproc^2 / n). The runs see the same prompts, so
this is the wide side of the noise; what may differ between them is what real replicas add (the tail's timing,
the service's batching and its full-trace mean prices), which is what the test bounds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from messplus.service.cli import main
from messplus.service.demo.repository import DEFAULT_MODELS, DEFAULT_TRACE

from ..support.procs import ServerProcess

pytestmark = pytest.mark.triton
ALPHA = 0.8  # the first prompts are ARC-Challenge: the cheapest model 0.67, Mixtral 0.85, GPT-4 0.95
PROMPTS = 800
TENANT = {"name": "scale", "alpha": ALPHA}  # the service's default policy, as the in-process replay's


def _replay(out: Path, *extra: str) -> dict[str, Any]:
    """`messplus replay` of the slice; returns the run's summary with its per-request cost and satisfaction."""
    args = ["replay", "--trace", str(DEFAULT_TRACE), "--limit", str(PROMPTS), "--alpha", str(ALPHA), "--out",
            str(out), "--no-reference", "--no-plots", "--quiet", *extra]
    assert main(args) == 0
    (entry,) = json.loads((out / "summary.json").read_text())
    (run,) = entry["runs"]
    arrays = np.load(out / "runs" / f"alpha{ALPHA:g}-messplus-seed0.npz")
    return {**run, "cost": arrays["cost"], "sat": arrays["sat"], "models": [m["name"] for m in entry["models"]]}


def _noise(a: np.ndarray, b: np.ndarray) -> float:
    """Two standard errors of the difference of the two means (over the judged requests: NaN is no label)."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    return 2 * math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)


def test_replay_across_three_replicas_meets_the_sla_within_noise_of_the_simulation(
        router_process: Callable[..., ServerProcess], postgres_url: str, encoder_onnx: Path, tmp_path: Path) -> None:
    env = {"MESSPLUS_STATE_BACKEND": "postgres", "MESSPLUS_STATE_URL": postgres_url}
    replicas = [router_process(f"r{i}", state_dir=tmp_path / f"state-{i}", env=env, tenants=[TENANT])
                for i in range(3)]
    addrs = ",".join(f"127.0.0.1:{r.port}" for r in replicas)

    remote = _replay(tmp_path / "grpc", "--grpc", addrs, "--tenant", TENANT["name"])
    local = _replay(tmp_path / "inproc", "--replicas", "3", "--sync-lag", "0", "--flat-costs",
                    "--models", ",".join(DEFAULT_MODELS), "--onnx", str(encoder_onnx),
                    "--cache-dir", str(tmp_path / "embeddings"))

    assert remote["models"] == local["models"] and remote["requests"] == local["requests"] == PROMPTS
    # every request with a recorded label for its served answer had its Feedback acknowledged (an error raises)
    assert remote["unrouted"] == 0 and remote["feedback_requests"] == remote["judged"] > 0.95 * PROMPTS
    assert remote["sla_met"], f"satisfaction {remote['satisfaction']:.4f} < alpha {ALPHA} across the replicas"
    for key, arr in (("satisfaction", "sat"), ("mean_cost", "cost")):
        diff, noise = abs(remote[key] - local[key]), _noise(remote[arr], local[arr])
        print(f"{key}: replicas {remote[key]:.6g}, simulation {local[key]:.6g}, two standard errors {noise:.3g}")
        assert diff <= noise, (f"{key}: replicas {remote[key]:.6g}, simulation {local[key]:.6g}: "
                               f"differ by {diff:.3g} > two standard errors {noise:.3g}")
    for r in replicas:  # the replicas served the whole replay and are still healthy
        assert r.running()
