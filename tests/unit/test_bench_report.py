"""The README's speed table and docs/BENCHMARKS.md say what the stored benchmark results say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.procs import cpu_seconds
from bench.report import P99_MIN_BATCHES, RESULTS, ROOT, _tail, page, readme_block, readme_table, targets


def test_readme_speed_table_is_rendered_from_the_results_file() -> None:
    res = json.loads(RESULTS.read_text())
    assert readme_block(ROOT / "README.md") == readme_table(res), "run `python -m bench.report` after a bench run"


def test_benchmarks_page_is_rendered_from_the_results_file() -> None:
    res = json.loads(RESULTS.read_text())
    assert (ROOT / "docs" / "BENCHMARKS.md").read_text() == page(res), "run `python -m bench.report`"


def test_the_header_names_the_code_each_part_of_the_run_measured() -> None:
    res = json.loads(RESULTS.read_text())
    res["machine"]["commit"] = "aaaaaaa"
    res["state"] = {**res["state"], "machine": {**res["state"].get("machine", {}), "commit": "aaaaaaa"}, "changed": [],
                    "command": "python -m bench.run_all"}
    assert "at commit `aaaaaaa`, except" in page(res)
    res["state"]["machine"]["commit"] = "bbbbbbb"  # committed while the run went on
    assert "at commit `aaaaaaa` (its state phase at `bbbbbbb`, committed while the run went on)" in page(res)
    res["state"]["changed"] = ["service/state/sql.py"]
    assert "at commit `aaaaaaa` (with uncommitted changes to `service/state/sql.py`)" in page(res)
    res["state"] = {**res["state"], "command": "python -m bench.state_bench", "changed": []}  # a later run of its own
    assert ("at commit `aaaaaaa` (its state section from a later `python -m bench.state_bench`, at `bbbbbbb`: that "
            "section says so)") in page(res)


def test_a_p99_is_shown_only_from_enough_batches() -> None:
    row = {"batches": P99_MIN_BATCHES, "p99_ms": 39.4, "max_ms": 80.0}
    assert _tail(row) == "39"
    assert _tail({**row, "batches": 2}) == "max 80"  # two batches: the slower one, named as such
    assert _tail({"batches": 2, "p99_ms": 39.4}) == "–"  # results from before max_ms was recorded


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


def test_nearest_neighbour_predictor_on_a_hand_made_case() -> None:
    import numpy as np

    from bench.routing_table import _knn_predict

    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0], [0.0, 1.0]])  # model 0 knows the first topic
    p = _knn_predict(train, labels, np.array([[2.0, 0.1], [0.0, 3.0]]), k=2, prior_n=0.0)
    assert p.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # cosine, not distance: by distance [0.3, 0.1] is nearest to [0.3, 0.3] (labels 0, 0) and [0.9, 0.1],
    # by cosine to [0.9, 0.1] and [1, 0]
    mixed = np.vstack([train, [[0.3, 0.3]]])
    mixed_labels = np.vstack([labels, [[0.0, 0.0]]])
    assert _knn_predict(mixed, mixed_labels, np.array([[0.3, 0.1]]), k=2, prior_n=0.0).tolist() == [[1.0, 0.0]]
    # a model with no label among the neighbours and no prior weight gets its mean label (2/3), not NaN
    assert abs(_knn_predict(train, labels, np.array([[0.9, 0.1]]), k=1, prior_n=0.0)[0, 1] - 2 / 3) < 1e-12
    shrunk = _knn_predict(train, labels, np.array([[1.0, 0.0]]), k=2, prior_n=2.0)
    # two labels of 1 for model 0 and a prior of 2 pseudo-labels at its mean 0.5: (2 + 1) / 4
    assert shrunk[0, 0] == 0.75
    # model 1 has one label (0) among the neighbours and a mean of 2/3: (0 + 4/3) / 3
    assert abs(shrunk[0, 1] - 4 / 9) < 1e-12


def test_gpu_section_renders_the_gpu_results_or_says_it_was_not_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bench.gpu_report import earlier_gpu as _gpu
    from bench.gpu_report import gpu as section

    assert "Not run yet" in "\n".join(section(tmp_path))
    row = {"batch": 1, "batches": 9, "prompts_per_s": 400.0, "p50_ms": 2.5, "p99_ms": 3.0, "mean_tokens": 200.0}
    cpu = dict(row, prompts_per_s=80.0, p50_ms=12.0)
    gpu = {"machine": {"date": "d", "commit": "c", "cores": 16, "cpu": "x", "memory_gib": 1.0, "python": "3",
                       "onnxruntime": "1", "numba": "0"},
           "gpu": "NVIDIA H200, 580, 143771 MiB", "command": "python -m bench.gpu_predictor", "total_s": 1.0,
           "agreement": {"prompts": 4, "max_abs_diff": 1e-4, "min_cosine": 0.99999},
           "predictor": {"providers": ["CUDAExecutionProvider"], "results": [dict(row, cpu_prompts_per_s=80.0,
                                                                                   speedup_vs_cpu=5.0)]},
           "predictor_cpu": {"providers": ["CPUExecutionProvider"], "results": [cpu]}}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    text = "\n".join(_gpu(tmp_path))
    assert "| 1 | 400 | 2.5 ms | 3.0 ms | 80 | 5.0x |" in text
    assert "2.5 ms p50 against 12.0 ms" in text and "NVIDIA H200" in text
    load = {"throughput_rps": 3000.0, "p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": 40.0}
    route = {"machine": gpu["machine"], "gpu": gpu["gpu"], "command": "python -m bench.gpu_route", "total_s": 200.0,
             "providers": ["CUDAExecutionProvider"], "model": "/x/minilm-l6-v2.fp16-fused.onnx",
             "plan": {"batch_max": 256}, "router": {"start_s": 9.0, "mean_batch": 100.0},
             "encoder": [{"batch": 256, "encoder_prompts_per_s": 25000.0, "encoder_p50_ms": 10.0,
                          "predictor_prompts_per_s": 9000.0, "predictor_p50_ms": 28.0, "predictor_p99_ms": 30.0,
                          "mean_tokens": 227.0}],
             "route": [dict(load, clients=64), dict(load, clients=256, throughput_rps=2000.0)],
             "echo": [dict(load, clients=64, throughput_rps=5000.0), dict(load, clients=256, throughput_rps=5000.0)]}
    from bench.gpu_route import judge

    route["judged"] = judge(route)
    (tmp_path / "gpu_route.json").write_text(json.dumps(route))
    text = "\n".join(section(tmp_path))
    assert "Not run yet" not in text and "25000 prompts/s at batch 256 (met" in text
    assert "| 64 | 3000 | 20.0 ms | 30.0 ms | 40.0 ms | 5000 | 60% |  |" in text  # 3000 / min(5000, 9000)
    assert "| 256 | 2000 | 20.0 ms | 30.0 ms | 40.0 ms | 5000 | 40% | **missed** |" in text


def test_gpu_bench_refuses_to_measure_without_the_cuda_provider() -> None:
    import onnxruntime

    from bench import gpu_predictor

    if gpu_predictor.CUDA in onnxruntime.get_available_providers():  # pragma: no cover - a GPU box
        pytest.skip("the CUDA provider is available here")
    assert gpu_predictor.main(["--skip-route", "--json", "/nonexistent/gpu.json"]) == 2


def test_task_mix_from_the_training_half_on_a_hand_made_case() -> None:
    from types import SimpleNamespace

    import numpy as np

    from bench.routing_table import _mix_on_half

    # two tasks, a cheap model (cost 1) and a dear one (cost 10); rows 0-3 train, rows 4-7 are replayed.
    # On the training half the cheap model gets task A right and task B wrong; on the replayed half it gets
    # only half of A right, so the training half's mix must aim higher than alpha to reach it there.
    labels = np.array([[1, 1], [1, 1], [0, 1], [0, 1],
                       [1, 1], [0, 1], [0, 1], [0, 1]], dtype=float)
    t = SimpleNamespace(models=("cheap", "dear"), costs=np.tile([1.0, 10.0], (8, 1)), labels=labels,
                        sources=("A", "A", "B", "B") * 2)
    fit, test = np.arange(4), np.arange(4, 8)
    # at 0.25 the training half's own answer (everything cheap) already reaches it on the replayed half
    assert _mix_on_half(t, fit, test, 0.25) == 1.0
    # at 0.5 the replayed half needs task B half on the dear model: (2 * 1 + 2 * (0.5 * 10 + 0.5 * 1)) / 4;
    # the training half's target is raised in steps until it asks for that share (from 0.75 on)
    cost = _mix_on_half(t, fit, test, 0.5)
    assert cost is not None and 3.25 <= cost <= 3.25 + 9 * 2 * 2 * 0.0025 / 4 + 1e-9
    # the training half gives task A to the cheap model at any target (it got A all right there), so the replayed
    # half never passes (1 + 2) / 4 = 0.75: 0.9 is out of reach
    assert _mix_on_half(t, fit, test, 0.9) is None


def test_horizons_table_counts_eligible_runs_on_hand_made_summaries(tmp_path: Path) -> None:
    from bench.routing_table import CASES, horizons_table

    def run(sat: float, best: float | None, cost: float | None, met: bool) -> dict[str, object]:
        return {"satisfaction": sat, "best_single_satisfaction": best, "cost_vs_static_mixture": cost,
                "sla_met": met}

    # alpha 0.7: a run whose best model reaches 0.75 is eligible (0.75 >= 0.73); one at 0.72 is not. The
    # fourth run's static mix falls short of alpha on its window: its cost ratio (0.5) is left out
    summary = [{"alpha": 0.7, "runs": [run(0.69, 0.75, 2.0, False), run(0.71, 0.75, 1.0, True),
                                      run(0.60, 0.72, 3.0, False), run(0.60, 0.68, 0.5, False)],
                "baselines": {"messplus_reference": {"runs": [run(0.72, 0.75, 9.0, True),
                                                              run(0.69, 0.75, 9.0, False),
                                                              run(0.7, 0.72, 9.0, True),
                                                              run(0.6, 0.68, 9.0, False)]},
                              "static_mixture": {"feasible": False, "per_seed": [
                                  {"feasible": True}, {"feasible": True}, {"feasible": True},
                                  {"feasible": False}]}}}]
    folder = tmp_path / f"{CASES[0].key}-short100"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = horizons_table(tmp_path).splitlines()
    assert rows[2:] == [f"| {CASES[0].key} | 100 | 1/2 | -0.0100 | 2.00x (3.00) | 1/2 |"]


def test_caution_table_sets_off_beside_on_from_hand_made_summaries(tmp_path: Path) -> None:
    from bench.routing_table import CASES, caution_table

    def summary(*runs: tuple[float, float, float, bool]) -> str:
        return json.dumps([{"alpha": 0.7, "runs": [
            {"satisfaction": s, "best_single_satisfaction": b, "cost_vs_static_mixture": c, "sla_met": m}
            for s, b, c, m in runs], "baselines": {"messplus_reference": None}}])

    key = CASES[0].key
    files = {f"{key}-short": summary((0.69, 0.75, 2.0, False), (0.71, 0.72, 1.0, True)),  # 1 eligible, missed
             f"caution/{key}-short": summary((0.72, 0.75, 6.0, True), (0.71, 0.72, 4.0, True)),
             f"{key}-short-warm": summary((0.71, 0.75, 1.5, True), (0.69, 0.75, 1.0, False)),  # 2 eligible
             f"caution/{key}-short-warm": summary((0.72, 0.75, 3.0, True), (0.70, 0.75, 2.0, True)),
             f"caution-off/{key}-cold": summary((0.70, 0.9, 1.0, True), (0.71, 0.9, 3.0, True)),
             f"caution/{key}-cold": summary((0.72, 0.9, 2.0, True), (0.69, 0.9, 2.0, False))}
    for name, text in files.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "summary.json").write_text(text)
    rows = caution_table(tmp_path).splitlines()
    assert rows[2:] == [f"| {key} | – → – | 0/1 → 1/1 | – → – | 1.50x → 5.00x | 1/2 → 2/2 | 1.25x → 2.50x | "
                        f"2/2 → 1/2 | 2.00x (3.00) | 2.00x (2.00) |"]


def test_finetune_table_on_a_hand_made_result(tmp_path: Path) -> None:
    from bench.finetune_encoder import render, write_block

    def at(cost: float, met: bool) -> dict[str, dict[str, object]]:
        return {"0.50": {"satisfaction": 0.51, "sla_met": met, "cost_vs_static_mixture": 1.0,
                         "cost_vs_task_oracle": cost}}

    seeds = [{"seed": 0, "fit_s": 100, "frozen": at(1.2, True), "fine-tuned": at(1.1, True)},
             {"seed": 1, "fit_s": 200, "frozen": at(1.4, True), "fine-tuned": at(1.5, False)}]
    (tmp_path / "bbh.json").write_text(json.dumps({"trace": "bbh.csv", "epochs": 3, "seeds": seeds}))
    block = render(tmp_path)
    assert block.splitlines()[2:] == ["| bbh | 0.50 | 3 | 2/2, 1.30x (1.40) | 1/2, 1.30x (1.50) | 150 s |"]
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- routing-finetune:begin -->\nold\n<!-- routing-finetune:end -->\nb\n")
    write_block(doc, block)
    text = doc.read_text()
    assert text.startswith("a\n<!-- routing-finetune:begin -->\n")
    assert text.endswith("<!-- routing-finetune:end -->\nb\n")
    assert block in text and "old" not in text


def test_surplus_table_prices_each_runs_final_satisfaction_on_the_tiny_trace(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.routing_table as T

    # tiny_trace: small (accuracy 0.5, cost 1), medium (0.75, 3), large (0.875, 10). At alpha 0.6 the static
    # mix is 40% medium: cost 1.8; at 0.605, 42%: 1.84 (1.02x); a run ending at 0.65 is priced at 60%: 2.2
    # (1.22x), one ending at 0.6 at 1.8. Router costs 1.5x and 1.0x: 1.5 / 1.222 and 1.0 / 1.0, mean 1.11x
    monkeypatch.setattr(T, "DATA", Path(__file__).resolve().parents[1] / "fixtures")
    monkeypatch.setattr(T, "CASES", (T.Case("tiny", ("tiny_trace.csv",), (0.6,)),))
    (tmp_path / "tiny-cold").mkdir()
    runs = [{"satisfaction": 0.65, "cost_vs_static_mixture": 1.5}, {"satisfaction": 0.6, "cost_vs_static_mixture": 1.0}]
    (tmp_path / "tiny-cold" / "summary.json").write_text(json.dumps([{"alpha": 0.6, "runs": runs}]))
    rows = T.surplus_table(tmp_path).splitlines()
    assert rows[2:] == ["| tiny | 0.60 | 0.0250 (0.0500) | 1.02x | 1.11x (1.22) | 1.25x | 1.11x |"]


def test_spend_table_sets_the_cold_router_beside_the_task_oracle_on_the_tiny_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import bench.routing_table as T

    # tiny_trace's tasks at mean costs: the cheapest model of each (small; medium on code, where small has no
    # label) reaches 4.5 of 8 labels; alpha 0.6 needs 4.8, and the cheapest 0.3 more is medium on proof (+1
    # label for +3, where arith costs 14 a label and words 18). Small serves 6.7 of 8 requests (0.84), medium
    # 1.3 (0.16); at the mean prices 1 and 3, 0.84 + 0.49: spend 0.63 and 0.37. The router invoked small,
    # medium and large on 0.25, 0.5 and 0.3 of the requests: 0.25 + 1.5 + 3 = 4.75 -> 0.05, 0.32, 0.63
    monkeypatch.setattr(T, "DATA", Path(__file__).resolve().parents[1] / "fixtures")
    monkeypatch.setattr(T, "CASES", (T.Case("tiny", ("tiny_trace.csv",), (0.5, 0.6)),))
    monkeypatch.setattr(T, "SPEND_MODELS", 3)
    cold = tmp_path / "tiny-cold"
    cold.mkdir()
    runs = [{"model_share": {"small": s, "medium": 0.5, "large": 0.5 - s},
             "invoked_share": {"small": 0.25, "medium": 0.5, "large": 0.3}} for s in (0.1, 0.3)]
    (cold / "summary.json").write_text(json.dumps([{"alpha": 0.5, "runs": []}, {"alpha": 0.6, "runs": runs}]))
    rows = T.spend_table(tmp_path).splitlines()
    assert rows[2:] == ["| tiny | 0.60 | small | 1 | 0.500 | 0.84 | 0.63 | 0.20 | 0.05 | - |",
                        "| tiny | 0.60 | medium | 3 | 0.750 | 0.16 | 0.37 | 0.50 | 0.32 | - |",
                        "| tiny | 0.60 | large | 10 | 0.875 | 0.00 | 0.00 | 0.30 | 0.63 | - |"]
    (cold / "runs").mkdir()
    np.savez(cold / "runs" / "alpha0.6-messplus-seed0.npz", invoked=np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0]], bool))
    assert [r.rsplit("|", 2)[1].strip() for r in T.spend_table(tmp_path).splitlines()[2:]] == ["1", "2", "1"]


def test_sparse_table_prices_two_standard_errors_of_a_fifth_of_the_labels_on_the_tiny_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.routing_table as T

    # 100 requests, 20 labelled, alpha 0.6 (label variance 0.24): SE = sqrt(0.8^2 0.24 / 20 + 0.8 0.24 / 100)
    # = sqrt(0.0096) = 0.0980; alpha + 2 SE = 0.7960 takes 36.8% large (0.875, cost 10) over medium (0.75, 3):
    # 5.574 against the 1.8 at alpha (3.10x). The router: 2.5x with 20% feedback, ending 0.04 above alpha on
    # average, 1.25x with full feedback: 2.00x
    monkeypatch.setattr(T, "DATA", Path(__file__).resolve().parents[1] / "fixtures")
    monkeypatch.setattr(T, "CASES", (T.Case("tiny", ("tiny_trace.csv",), (0.6,)),))
    for cond, runs in (("rate", [{"satisfaction": 0.65, "cost_vs_static_mixture": 2.0},
                                 {"satisfaction": 0.63, "cost_vs_static_mixture": 3.0}]),
                       ("cold", [{"satisfaction": 0.61, "cost_vs_static_mixture": 1.5},
                                 {"satisfaction": 0.6, "cost_vs_static_mixture": 1.0}])):
        for r in runs:
            r.update(requests=100, feedback_requests=20 if cond == "rate" else 100)
        (tmp_path / f"tiny-{cond}").mkdir()
        (tmp_path / f"tiny-{cond}" / "summary.json").write_text(json.dumps([{"alpha": 0.6, "runs": runs}]))
    rows = T.sparse_table(tmp_path).splitlines()
    assert rows[2:] == ["| tiny | 0.60 | 0.20 | 0.0980 | 3.10x | 2.50x (+0.0400) | 1.25x | 2.00x |"]


def test_the_state_section_says_what_a_route_costs_in_cpu_on_each_backend() -> None:
    res = json.loads(RESULTS.read_text())
    cpu = {"sqlite": {"router_ms": 20.0, "db_ms": 0.05, "routes": 1000},
           "postgres": {"router_ms": 21.0, "db_ms": 0.45, "routes": 900}}
    text = page({**res, "state": {**res["state"], "route_cpu": cpu, "route_cpu_ratio": 21.45 / 20.05,
                                  "route_ratio": 0.93}})
    assert ("| CPU per Route (router + database server) | SQLite 20.0 ms (+ 0.05 ms: the PostgreSQL server idling "
            "beside it), PostgreSQL 21.0 + 0.45 ms: 1.07x | reported |") in text
    assert "+5.0% in the router (where its writer thread" in text
    assert "that is 0.93x the requests; the windows measured 0.93x" in text
    cheaper = {**cpu, "postgres": {**cpu["postgres"], "router_ms": 19.0}}
    text = page({**res, "state": {**res["state"], "route_cpu": cheaper, "route_cpu_ratio": 19.45 / 20.05}})
    assert "-5.0% in the router (which the record its writer thread sends through psycopg did not" in text
    old = {k: v for k, v in res["state"].items() if k not in ("route_cpu", "route_cpu_ratio")}
    assert "CPU per Route" not in page({**res, "state": old})  # results from before it was counted


def test_cpu_seconds_counts_a_process_and_the_children_it_waited_for() -> None:
    before = cpu_seconds(os.getpid(), tree=True)
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(4_000_000))"], check=True)
    assert cpu_seconds(os.getpid(), tree=True) - before >= 0.1  # the child's, waited for
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        mine, start = cpu_seconds(os.getpid()), cpu_seconds(os.getpid(), tree=True)
        deadline = time.monotonic() + 30
        while cpu_seconds(busy.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # a live child's own time counts in its parent's tree, not in the parent alone
        assert cpu_seconds(os.getpid(), tree=True) - start >= 0.25 > cpu_seconds(os.getpid()) - mine
    finally:
        busy.kill()
        busy.wait()
    assert cpu_seconds(2**22 + 12345) == 0.0  # past pid_max: no such process


def test_routing_table_jobs_write_the_summaries_a_serial_run_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      encoder_onnx: Path) -> None:
    """`--jobs 2` replays in two spawned processes; each replay is seeded, so every summary is the serial run's
    (the tiny trace, two conditions; the workers get the trace folder and the predictor's folder as arguments)."""
    import bench.routing_table as T

    monkeypatch.setattr(T, "DATA", Path(__file__).resolve().parents[1] / "fixtures")
    monkeypatch.setattr(T, "VAR", encoder_onnx.parent)
    monkeypatch.setattr(T, "CASES", (T.Case("tiny", ("tiny_trace.csv",), (0.6,)),))
    monkeypatch.setattr(T, "DRIFT", ())
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        argv = ["--out", str(out), "--cache-dir", str(tmp_path / "emb"), "--seeds", "1", "--only", "tiny-cold",
                "--only", "tiny-delay", "--jobs", str(jobs)]
        assert T.main(argv) == 0
        # every field but the replays' own times (wall_s), the one thing a run cannot repeat
        runs[jobs] = {c: json.loads((out / f"tiny-{c}" / "summary.json").read_text(),
                                    object_hook=lambda d: {k: v for k, v in d.items() if k != "wall_s"})
                      for c in ("cold", "delay")}
    assert runs[2] == runs[1]
    assert runs[1]["cold"] != runs[1]["delay"]  # two different replays, not one written twice
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        T.main(["--out", str(tmp_path / "x"), "--jobs", "0"])
