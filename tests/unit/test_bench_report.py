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
