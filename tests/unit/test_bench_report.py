"""The README's speed table and docs/BENCHMARKS.md say what the stored benchmark results say."""

from __future__ import annotations

import json

from bench.report import RESULTS, ROOT, page, readme_block, readme_table, targets


def test_readme_speed_table_is_rendered_from_the_results_file() -> None:
    res = json.loads(RESULTS.read_text())
    assert readme_block(ROOT / "README.md") == readme_table(res), "run `python -m bench.report` after a bench run"


def test_benchmarks_page_is_rendered_from_the_results_file() -> None:
    res = json.loads(RESULTS.read_text())
    assert (ROOT / "docs" / "BENCHMARKS.md").read_text() == page(res), "run `python -m bench.report`"


def test_every_target_is_judged() -> None:
    t = targets(json.loads(RESULTS.read_text()))
    for key in ("throughput_met", "p99_met", "decide_met", "second_start_met"):
        assert isinstance(t[key], bool)
    assert t["ceiling_rps"] == min(t["echo64_rps"], t["predictor_ceiling_rps"])


def test_threshold_cost_of_the_predictor_limit_on_a_hand_made_case() -> None:
    import numpy as np

    from bench.routing_table import _threshold_cost

    cost = np.array([[1.0, 10.0], [1.0, 10.0]])
    labels = np.array([[0.0, 1.0], [1.0, 1.0]])  # the cheap model fails prompt 0 only
    knows = labels.copy()                        # a predictor that knows it
    blind = np.array([[0.5, 0.9], [0.5, 0.9]])   # one that knows nothing per prompt
    assert _threshold_cost(cost, cost, labels, knows, 0.5) == 1.0    # everything on the cheap model
    assert _threshold_cost(cost, cost, labels, knows, 1.0) == 5.5    # prompt 0 on the dear one
    assert _threshold_cost(cost, cost, labels, knows, 0.75) == 3.25  # half of prompt 0 on the dear one
    assert _threshold_cost(cost, cost, labels, blind, 0.75) == 5.5   # half of everything on the dear one
