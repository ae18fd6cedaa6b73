"""The sections of docs/BENCHMARKS.md that come from result files of their own (not bench.run_all's): the GPU runs
(docs/bench/gpu_route.json, written by `python -m bench.gpu_route` on a GPU box; docs/bench/gpu.json, the earlier
encoder-only run of bench.gpu_predictor), the float16 encoder's agreement (docs/bench/fp16.json, bench.fp16_check)
and the micro-batching A/B (docs/bench/batching_ab.json, bench.batching_ab). bench/report.py places them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "docs" / "bench"
GPU_ROUTE_TARGET = 0.70  # Route >= 70% of min(echo ceiling, GPU predictor ceiling)
FP16_TARGET = 20_000.0  # prompts/s at the fp16 encoder's best batch
GPU_RUN = "bash scripts/gpu_device.sh"  # the prepared device run (scripts/gpu_payload.py says how)


def _load(name: str, folder: Path) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def batching_ab(folder: Path = BENCH) -> list[str]:
    """Every docs/bench/batching_ab*.json, one table each (the runs differ by the machine's load)."""
    out = []
    for path in sorted(folder.glob("batching_ab*.json")):
        out += _batching_ab(json.loads(path.read_text()), path.name)
    return out


def _batching_ab(res: dict[str, Any], fname: str) -> list[str]:
    from .batching_ab import summary

    m = res["machine"]
    load = f", load average {res['load'][0]:.1f} to {res['load'][1]:.1f}" if "load" in res else ""
    out = [f"### Before and after `batch_gather`, side by side (`{fname}`)", "",
           f"**`{res['command']}`** ({res['total_s']:.0f} s, {m['date']}, commit `{m['commit']}`{load}): "
           f"{res['reps']} reps, "
           f"each a fresh Route-only router per setting (no Triton beside it) in alternating order, {res['clients']} "
           f"clients, {res['seconds']:.0f} s windows. `before` = `batch_gather = 0` (a batch waits "
           "`batch_delay_ms` from its first caller); `after` = the default (while callers keep coming back, up to a "
           "tenth of the last batch's time). `over 1.5x p50`: the calls that took more than 1.5 times the median, "
           "i.e. waited for a second batch; `missed their batch`: the calls that came while a batch ran (the "
           "router's own count: with 64 clients and batches of up to 64, a caller that came back too late for its "
           "cohort's batch; it includes the first wave, the 63 calls that come while the first caller's batch of one "
           "runs, about 4% of a quiet run's calls). Where req/s moves from rep to rep, the machine's load moved "
           "(other engineers' runs on the same 2 cores): the latency columns then follow the load more than the "
           "setting, and the router's count and the mean batch are the signal.", "",
           "| setting | rep | req/s | p50 ms | p99 ms | p99 / p50 | over 1.5x p50 | missed their batch | mean batch |",
           "|---|---|---|---|---|---|---|---|---|"]
    rows = [(r["setting"], str(r["rep"]), r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["p99_ms"] / r["p50_ms"],
             r.get("slow_share"), r.get("missed_share"), r["mean_batch"]) for r in res["runs"]]
    rows += [(f"**{name}, mean**", "", s["rps"], s["p50_ms"], s["p99_ms"], s["tail"], s.get("slow_share"),
              s.get("missed_share"), s["mean_batch"]) for name, s in summary(res).items()]
    for name, rep, rps, p50, p99, tail, slow, missed, batch in rows:
        share = [f"{x:.1%}" if x is not None else "" for x in (slow, missed)]
        out.append(f"| {name} | {rep} | {rps:.1f} | {p50:.0f} | {p99:.0f} | {tail:.2f} | {share[0]} | {share[1]} | "
                   f"{batch:.1f} |")
    return out + [""]


def fp16(folder: Path = BENCH) -> list[str]:
    res = _load("fp16.json", folder)
    if res is None:
        return []
    c, h, b = res["cosine"], res["heads"], res["bytes"]
    out = ["### The float16 encoder against fp32, on the CPU", "",
           f"**`{res['command']}`** ({res['total_s']:.0f} s, on {res['machine']['date']}, at commit "
           f"`{res['machine']['commit']}`): `{res['model']}` ({b['fp16'] / 1e6:.1f} MB against "
           f"{b['fp32'] / 1e6:.1f} MB; service/encoder/half.py: ONNX Runtime's BERT fusions for a GPU, float16 weights "
           "and activations, float32 inputs, output and pooling tail), run by ONNX Runtime's CPU provider, against the "
           f"fp32 export on all {res['prompts']:,} prompts of `{res['trace']}`:", "",
           f"- cosine of the two embeddings of each prompt: min {c['min']:.7f}, 1st percentile {c['p01']:.7f}, median "
           f"{c['median']:.7f} (largest difference of one coordinate {c['max_abs_diff']:.1e});",
           f"- heads trained on the warm-start half with each embedding, on the other {h['test_prompts']:,} prompts: "
           f"predicted satisfaction differs by {h['mean_abs_p_diff']:.1e} on average, {h['max_abs_p_diff']:.1e} at "
           f"most; the exploit choice (cheapest of cost - price x satisfaction, 25 prices) is the same for "
           f"{h['same_choice_min']:.2%} of the prompts at the worst price ({h['same_choice_mean']:.2%} on average);",
           "- whole cold-start replays through the router, each embedding (a router learns from what it served, so "
           "one different choice changes the rest of the stream):", "",
           "| alpha | seed | same model served | first difference at request | satisfaction fp32 / fp16 | SLA | "
           "cost / static mix fp32 / fp16 |", "|---|---|---|---|---|---|---|"]
    for r in res["replays"]:
        first = "none" if r["first_difference"] is None else f"{r['first_difference']:,}"
        sla = f"{'met' if r['sla_met_fp32'] else 'missed'} / {'met' if r['sla_met_fp16'] else 'missed'}"
        out.append(f"| {r['alpha']:.2f} | {r['seed']} | {r['same_served']:.1%} | {first} | "
                   f"{r['satisfaction_fp32']:.4f} / {r['satisfaction_fp16']:.4f} | {sla} | "
                   f"{r['cost_vs_static_mixture_fp32']:.2f}x / {r['cost_vs_static_mixture_fp16']:.2f}x |")
    return out + [""]


def gpu_route(folder: Path = BENCH) -> list[str]:
    res = _load("gpu_route.json", folder)
    head = ["### The whole Route path on a GPU", ""]
    if res is None:
        return head + [
            "**Not run yet: no GPU was lent to the task that built it (issue 19).** The script is ready and runs end "
            "to end on the CPU provider in the tests (`--smoke`). `python -m bench.gpu_route` (`make bench-gpu`) "
            "starts a real `messplus serve` with its predictor on ONNX Runtime's CUDA execution provider and no "
            "Triton at all (`triton.url = \"none\"`, a Route-only router), loads it at 1, 64, 256 and 1,024 clients, "
            "and measures in the same run the gRPC echo ceiling and the encoder's batch ceiling (ONNX Runtime alone, "
            "and the predictor as a Route batch pays for it), with the fused float16 copy of the encoder; it writes "
            "`docs/bench/gpu_route.json`, which this section renders. On the lent machine, what travels and the "
            f"exact calls: `scripts/gpu_payload.py` (`{GPU_RUN}` is the last call).", ""]
    m, j = res["machine"], res["judged"]
    a = res.get("agreement")
    out = head + [
        f"One run of **`{res['command']}`** ({res['total_s']:.0f} s) on {m['date']}, commit `{m['commit']}`, on "
        f"{res['gpu'].split(',')[0] or 'no GPU'} ({m['cores']} cores, {m['cpu']}; Python {m['python']}, ONNX Runtime "
        f"{m['onnxruntime']} with {', '.join(res['providers'])}). Model: `{Path(res['model']).name}`. Router: "
        f"Route-only, micro-batches of up to {res['plan']['batch_max']}, started in {res['router']['start_s']} s, "
        f"mean batch {res['router']['mean_batch'] or 0:.1f} over the run.", ""]
    if a:
        out += [f"Agreement with the fp32 encoder on the CPU ({a['prompts']} prompts): min cosine {a['min_cosine']:.5f}, "
                f"median {a['median_cosine']:.6f}.", ""]
    out += ["| batch | ONNX Runtime alone, prompts/s | p50 | predictor (tokenise + encode + heads), prompts/s | p50 | "
            "p99 | tokens/prompt |", "|---|---|---|---|---|---|---|"]
    for r in res["encoder"]:
        out.append(f"| {r['batch']} | {r['encoder_prompts_per_s']:.0f} | {r['encoder_p50_ms']:.1f} ms | "
                   f"{r['predictor_prompts_per_s']:.0f} | {r['predictor_p50_ms']:.1f} ms | {r['predictor_p99_ms']:.1f} ms "
                   f"| {r['mean_tokens']:.0f} |")
    best = j["encoder_best_prompts_per_s"]
    out += ["", f"The encoder's ceiling: {best:.0f} prompts/s at batch {j['encoder_best_batch']} "
            f"({'met' if best >= FP16_TARGET else '**missed**'}: >= {FP16_TARGET:,.0f}); the predictor's, which Route "
            f"pays: {j['predictor_best_prompts_per_s']:.0f} prompts/s at batch {j['predictor_best_batch']}.", "",
            "| clients | Route req/s | p50 | p95 | p99 | echo req/s | Route / min(echo, predictor) | |",
            "|---|---|---|---|---|---|---|---|"]
    for r, row in zip(res["route"], j["route"]):
        judged = r["clients"] >= 256
        verdict = ("met" if row["ratio"] >= GPU_ROUTE_TARGET else "**missed**") if judged else ""
        out.append(f"| {r['clients']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
                   f"{r['p99_ms']:.1f} ms | {row['echo_rps']:.0f} | {row['ratio']:.0%} | {verdict} |")
    return out + [""]


def earlier_gpu(folder: Path = BENCH) -> list[str]:
    """The encoder-only run of bench.gpu_predictor (docs/bench/gpu.json), fp32 on CUDA."""
    g = _load("gpu.json", folder)
    if g is None:
        return []
    m, agree = g["machine"], g["agreement"]
    rows = g["predictor"]["results"]
    best = max(rows, key=lambda r: r["prompts_per_s"])
    L = ["### Earlier: the fp32 predictor alone on CUDA", "",
         f"One run of **`{g['command']}`** ({g['total_s']:.0f} s) on {m['date']}, at commit `{m['commit']}`, on "
         f"a lent {g['gpu'].split(',')[0]} ({m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB; Python "
         f"{m['python']}, ONNX Runtime {m['onnxruntime']} with {', '.join(g['predictor']['providers'])}, "
         f"Numba {m['numba']}). `docs/bench/gpu.json` holds every number. The predictor is the same one the "
         "CPU suite measures (tokeniser, the exported all-MiniLM-L6-v2, five heads) on the same prompt sequence; "
         "the CPU column is the CPU provider of the same host with all its cores, in the same run.",
         "",
         f"Agreement: on {agree['prompts']} prompts the CUDA provider's embeddings differ from the CPU "
         f"provider's by at most {agree['max_abs_diff']:.1e} (smallest cosine {agree['min_cosine']:.6f}), so a "
         "GPU box routes on the same predictions.",
         "",
         "| batch | CUDA prompts/s | batch p50 | batch p99 | CPU prompts/s (same host) | CUDA / CPU |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['batch']} | {r['prompts_per_s']:.0f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                 f"{r['cpu_prompts_per_s']:.0f} | {r['speedup_vs_cpu']:.1f}x |")
    cpu1 = g["predictor_cpu"]["results"][0]
    L += ["", f"The CUDA predictor peaks at {best['prompts_per_s']:.0f} prompts/s (batch {best['batch']}); one "
          f"prompt alone takes {rows[0]['p50_ms']:.1f} ms p50 against {cpu1['p50_ms']:.1f} ms on the host's CPU. "
          "ONNX Runtime's CUDA build (onnxruntime-gpu, CUDA 13) and the exported model travelled to the box; "
          "the box's own CUDA libraries served it. That run did not measure the Route path (`--skip-route`): the "
          "embedded Triton could not travel, and Route could not run without one then.", ""]
    return L


def gpu(folder: Path = BENCH) -> list[str]:
    """The GPU section: the Route path (gpu_route.json), the fp16 agreement (fp16.json), the earlier run."""
    return ["## GPU (ONNX Runtime CUDA execution provider)", "", *gpu_route(folder), *fp16(folder),
            *earlier_gpu(folder)]
