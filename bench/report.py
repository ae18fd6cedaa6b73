"""Render docs/bench/results.json (written by bench.run_all) as docs/BENCHMARKS.md, plots and the README's table.

    python -m bench.report            re-render the page and the README table from the stored results

Every number on the page comes from the results file of one run; the targets are judged against ceilings
measured in that same run.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from . import gpu_report
from .state_bench import section as state_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench" / "results.json"
README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
SOAK_SKIP_S = 30.0  # the resident set's slope is fitted after the first 30 s (allocator and caches warm up)
MAX_ERROR_RATE = 0.0  # a throughput or latency target is met only when no call of its run failed


def _by_clients(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    return next(r for r in rows if r["clients"] == n)


def memory(res: dict[str, Any]) -> dict[str, float]:
    rss = np.array(res["soak"]["rss"], dtype=np.float64)
    t, mb = rss[:, 0], rss[:, 1] / 2**20
    keep = t >= min(SOAK_SKIP_S, t[-1] / 2)
    slope = float(np.polyfit(t[keep], mb[keep], 1)[0] * 60) if keep.sum() >= 2 else float("nan")
    return {"seconds": float(t[-1]), "rss_start_mb": float(mb[0]), "rss_mean_mb": float(mb[keep].mean()),
            "rss_end_mb": float(mb[-1]), "rss_max_mb": float(mb.max()), "slope_mb_per_min": slope,
            "fit_from_s": float(t[keep][0])}


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured: each with its value, the ceiling or bound, the ratio and whether met."""
    soak = res["soak"]
    echo64 = _by_clients(res["echo"], 64)["throughput_rps"]
    before = max(res["predictor"]["results"], key=lambda r: r["prompts_per_s"])
    after = {r["batch"]: r for r in res["predictor2"]["results"]}
    pred_ceiling = float(np.mean([before["prompts_per_s"], after[before["batch"]]["prompts_per_s"]]))
    ceiling = min(echo64, pred_ceiling)
    running = max(1, round(soak["server"].get("mean_batch", 1)))
    pred_lat = after[running]["p50_ms"]
    k16 = [r for r in res["kernels"]["decide"] if r["K"] == 16 and r["B"] > 1]
    second = max(r["kernels_s"] for r in res["kernels"]["jit"]["second"])
    mem = memory(res)
    thr = soak["throughput_rps"] / ceiling
    p99 = soak["p99_ms"] / pred_lat
    us = max(r["numba_us_per_request"] for r in k16)
    speedup = min(r["speedup"] for r in k16)
    return {
        "echo64_rps": echo64, "predictor_best_batch": before["batch"], "predictor_ceiling_rps": pred_ceiling,
        "predictor_ceiling_before_rps": before["prompts_per_s"],
        "predictor_ceiling_after_rps": after[before["batch"]]["prompts_per_s"],
        "ceiling_rps": ceiling, "route64_rps": soak["throughput_rps"], "throughput_ratio": thr,
        "throughput_met": thr >= 0.70 and soak["error_rate"] <= MAX_ERROR_RATE, "running_batch": running,
        "predictor_latency_ms": pred_lat, "route64_p99_ms": soak["p99_ms"], "p99_ratio": p99,
        "p99_met": p99 <= 2.0 and soak["error_rate"] <= MAX_ERROR_RATE, "route64_error_rate": soak["error_rate"],
        "decide_k16_us_per_request": us, "decide_k16_speedup": speedup, "decide_met": us < 1.0 and speedup >= 10,
        "second_start_kernels_s": second, "second_start_met": second < 1.0, "memory": mem,
    }


# ---------------------------------------------------------------------------------------------------- README
def readme_table(res: dict[str, Any]) -> str:
    t = targets(res)
    mem = t["memory"]
    rows = [
        ("Route throughput, 64 clients", f"{t['route64_rps']:.1f} req/s",
         f"{t['throughput_ratio']:.0%} of the ceiling ({t['ceiling_rps']:.1f}: min of echo "
         f"{t['echo64_rps']:.0f}, predictor {t['predictor_ceiling_rps']:.1f})", ">= 70%"),
        ("Route p99, 64 clients", f"{t['route64_p99_ms']:.0f} ms",
         f"{t['p99_ratio']:.2f}x the predictor's {t['predictor_latency_ms']:.0f} ms at batch {t['running_batch']}",
         "<= 2x"),
        ("decision kernel, K=16, batched", f"{t['decide_k16_us_per_request']:.3f} µs/request",
         f"{t['decide_k16_speedup']:.1f}x faster than NumPy", "< 1 µs, >= 10x"),
        ("second start, kernels", f"{t['second_start_kernels_s']:.2f} s", "numba cache", "< 1 s"),
        ("router RSS under load", f"{mem['rss_mean_mb']:.0f} MB",
         f"slope {mem['slope_mb_per_min']:+.2f} MB/min over {mem['seconds'] / 60:.0f} min (the 50,000-request "
         "cache filling)", "reported"),
    ]
    verdicts = [_met(t["throughput_met"]), _met(t["p99_met"]), _met(t["decide_met"]), _met(t["second_start_met"]), ""]
    lines = ["| measure | value | against | target | |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {v} |" for (a, b, c, d), v in zip(rows, verdicts)]
    m = res["machine"]
    lines.append("")
    lines.append(f"Measured by `{res['command']}` on {m['cores']} cores ({m['cpu']}), {m['date']}, commit "
                 f"{m['commit']}; details in [docs/BENCHMARKS.md](docs/BENCHMARKS.md).")
    return "\n".join(lines)


def update_readme(res: dict[str, Any], readme: Path) -> None:
    text = readme.read_text()
    block = f"{README_START}\n{readme_table(res)}\n{README_END}"
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise RuntimeError(f"{readme} has no {README_START} ... {README_END} block")
    readme.write_text(pattern.sub(lambda _: block, text))


def readme_block(readme: Path) -> str:
    text = readme.read_text()
    i, j = text.index(README_START) + len(README_START), text.index(README_END)
    return text[i:j].strip()


# ---------------------------------------------------------------------------------------------------- plots
def plots(res: dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    route = sorted([*res["route"], res["soak"]], key=lambda r: r["clients"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    series = (("echo servicer (gRPC ceiling)", res["echo"], "tab:gray"), ("Route", route, "tab:blue"),
              ("Generate (demo zoo)", res["generate"], "tab:green"))
    for label, rows, color in series:
        n = [r["clients"] for r in rows]
        ax1.plot(n, [r["throughput_rps"] for r in rows], "o-", color=color, label=label)
        if label != series[0][0]:
            ax2.plot(n, [r["p50_ms"] for r in rows], "o-", color=color, label=f"{label} p50")
            ax2.plot(n, [r["p99_ms"] for r in rows], "s--", color=color, label=f"{label} p99")
    t = targets(res)
    ax1.axhline(t["predictor_ceiling_rps"], color="tab:red", ls=":", label="predictor alone, best batch")
    for ax, ylabel in ((ax1, "requests / s"), (ax2, "latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_title("throughput")
    ax2.set_title("latency")
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)
    plt.close(fig)

    rss = np.array(res["soak"]["rss"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(rss[:, 0], rss[:, 1] / 2**20)
    ax.set_xlabel("seconds under Route load, 64 clients")
    ax.set_ylabel("router RSS, MB")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- page
def _load_rows(rows: list[dict[str, Any]], extra: bool = False) -> list[str]:
    out = ["| clients | req/s | p50 ms | p95 ms | p99 ms | errors | completed |" + (" mean batch |" if extra else ""),
           "|---|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for r in sorted(rows, key=lambda r: r["clients"]):
        err = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        line = (f"| {r['clients']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {err} | {r['completed']} |")
        if extra:
            mb = r.get("server", {}).get("mean_batch")
            line += f" {mb:.1f} |" if mb is not None else " |"
        out.append(line)
    return out


def _changed(res: dict[str, Any]) -> str:
    """What the run's code was beside its commit, as the header says it: the uncommitted files its state phase
    recorded, or the later commit that phase started at (a commit made while the run went on), or the state
    section's own later run (`python -m bench.state_bench` replaces it alone)."""
    state = res.get("state", {})
    later = state.get("machine", {}).get("commit")
    if "state_bench" in state.get("command", ""):
        return f" (its state section from a later `{state['command']}`, at `{later}`: that section says so)"
    changed = state.get("changed") or []
    if changed:
        return f" (with uncommitted changes to {', '.join(f'`{c}`' for c in changed)})"
    if later and later != res["machine"]["commit"]:
        return f" (its state phase at `{later}`, committed while the run went on)"
    return ""


P99_MIN_BATCHES = 100  # fewer batches than this have no 99th percentile worth the name


def _tail(r: dict[str, Any]) -> str:
    """A batch size's p99 cell: the p99 where enough batches ran, else the slowest batch (results from before
    max_ms was recorded: a dash)."""
    if r["batches"] >= P99_MIN_BATCHES:
        return f"{r['p99_ms']:.0f}"
    return f"max {r['max_ms']:.0f}" if "max_ms" in r else "–"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def page(res: dict[str, Any]) -> str:
    t = targets(res)
    m, p, mem = res["machine"], res["plan"], t["memory"]
    ph = res["phases"]
    L: list[str] = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py from docs/bench/results.json; run `make bench` to regenerate. -->",
        "",
        f"Every number below was produced by one run of **`{res['command']}`** (`make bench`), "
        f"{res['total_s']:.0f} s in all, on {m['date']}, at commit `{m['commit']}`{_changed(res)}, except in the "
        "sections that name another command and date (the batching A/B runs, the GPU runs, the float16 check).",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, no GPU; Python {m['python']}, "
        f"ONNX Runtime {m['onnxruntime']}, Numba {m['numba']}, grpcio {m['grpcio']}. The machine is shared with "
        "other engineers' test runs: the 1-minute load average before and after each phase is listed at the "
        "end, and every target is a ratio to a ceiling measured in the same run.",
        "",
        "Prompts: the RouterBench trace shipped in `service/demo/traces/` (its 3,164 rows, one seeded "
        "shuffle; ARC and Winogrande prompts carry few-shot blocks and hit the encoder's 256-token cap, MBPP "
        "prompts are ~20 tokens). Load (`bench/loadgen.py`): closed loop, each client sends its next request when "
        f"the last one answered; the window opens after at least {p['warmup_s']:g} s, once every client has had an "
        "answer; latency percentiles are over the calls issued in the window that succeeded (those that finish "
        "while the load drains included), and a target counts as met only with no failed call; throughput is N / (mean time "
        "between two answers to the same client), Little's law, which a micro-batching server's bursts of "
        "answers do not bias the way a count over the window does.",
        "",
        "## Targets",
        "",
        "| target | measured | against | ratio | |",
        "|---|---|---|---|---|",
        f"| Route throughput at 64 clients >= 70% of min(echo ceiling, predictor ceiling) | "
        f"{t['route64_rps']:.1f} req/s | min({t['echo64_rps']:.0f}, {t['predictor_ceiling_rps']:.1f}) = "
        f"{t['ceiling_rps']:.1f} req/s | {t['throughput_ratio']:.0%} | {_met(t['throughput_met'])} |",
        f"| Route p99 at 64 clients <= 2x the predictor's latency at the batch it runs at | "
        f"{t['route64_p99_ms']:.0f} ms | predictor alone, batch {t['running_batch']}: p50 "
        f"{t['predictor_latency_ms']:.0f} ms | {t['p99_ratio']:.2f}x | {_met(t['p99_met'])} |",
        f"| decision kernel < 1 µs/request at K=16 in batches, >= 10x NumPy | "
        f"{t['decide_k16_us_per_request']:.3f} µs/request (worst of B=64, 1024) | NumPy twin | "
        f"{t['decide_k16_speedup']:.1f}x (worst) | {_met(t['decide_met'])} |",
        f"| second start spends < 1 s compiling kernels | {t['second_start_kernels_s']:.3f} s (worst of "
        f"{len(res['kernels']['jit']['second'])} starts) | first start {res['kernels']['jit']['first']['kernels_s']:.2f} s"
        f" | | {_met(t['second_start_met'])} |",
        f"| memory: RSS at steady load, slope over 5 minutes | {mem['rss_mean_mb']:.0f} MB mean | "
        f"slope {mem['slope_mb_per_min']:+.2f} MB/min (fit from {mem['fit_from_s']:.0f} s to "
        f"{mem['seconds']:.0f} s) | | reported |",
        "",
        f"The Route figures at 64 clients are the {p['soak_s']:.0f} s soak run (default settings); the "
        f"predictor ceiling is the mean of its best batch ({t['predictor_best_batch']}) measured before the "
        f"router runs ({t['predictor_ceiling_before_rps']:.1f} prompts/s) and after the soak "
        f"({t['predictor_ceiling_after_rps']:.1f}).",
        "",
    ]
    L += _missed(res, t)
    route = [*res["route"], res["soak"]]
    L += ["## Route: `messplus serve` under load", "",
          f"Command: `python -m bench.run_all` (phase `route`: one fresh router per client count, "
          f"{p['route_s']:.0f} s windows; 64 clients: phase `soak`, {p['soak_s']:.0f} s). A real router process "
          "(default settings: predictor on all cores, micro-batching defaults) against a real Triton serving the "
          "demo zoo; the load generator runs in another process.", ""]
    L += _load_rows(route, extra=True)
    L += ["", "In a closed loop the mean latency is N / throughput whatever the batching (Little's law): with a CPU "
          f"predictor that serves {t['predictor_ceiling_rps']:.0f} prompts per second here, 256 clients queue for "
          "four batches of 64 each. That "
          "is what admission control (RESOURCE_EXHAUSTED under overload) is for, not a speed problem. `mean batch` "
          "is the router's own count over its lifetime (from its stop log), warm-up included.",
          "", "![load](bench/load.png)", "",
          "## The ceilings, same run", "",
          f"**gRPC ceiling**: `bench/echo_server.py`, a RoutingService that answers Route at once with a reply "
          f"shaped like the real one, served with grpc.aio and the router's error mapping (not its guard: no "
          f"authentication, admission or rate limit), "
          f"{p['echo_s']:.0f} s windows, same load generator:", ""]
    L += _load_rows(res["echo"])
    L += ["", f"**Model ceiling**: `python -m bench.predictor_bench` — the predictor alone (tokeniser, ONNX "
          f"Runtime on {res['predictor']['providers'][0]}, all cores, 5 heads), consecutive batches of the same "
          f"prompt sequence (a p99 only from {P99_MIN_BATCHES} batches or more; from fewer, the slowest batch):", "",
          "| batch | prompts/s | batch p50 ms | batch p99 ms | batches | tokens/prompt |", "|---|---|---|---|---|---|"]
    for key in ("predictor", "predictor2"):
        for r in res[key]["results"]:
            tag = "" if key == "predictor" else " (after the soak)"
            L.append(f"| {r['batch']}{tag} | {r['prompts_per_s']:.1f} | {r['p50_ms']:.0f} | {_tail(r)} | "
                     f"{r['batches']} | {r['mean_tokens']:.0f} |")
    L += ["", "## Generate: Route + Triton (demo zoo), streamed", "",
          f"Same router process for all client counts, {p['generate_s']:.0f} s windows. An exploration step calls "
          "its choice and one more model in parallel (`explore_models` 2); Triton and its Python-backend models "
          "share the same 2 cores. Not at 256 clients: draining 256 calls of several seconds each does not fit the suite's 10 minutes.", ""]
    L += _load_rows(res["generate"])
    ttft = [f"{r['clients']}: {r['ttft_p50_ms']:.0f} ms" for r in res["generate"] if r.get("ttft_p50_ms")]
    L += ["", f"Time to the first text chunk, p50 by clients: {', '.join(ttft)}.", ""]
    L += _batching(res)
    L += gpu_report.batching_ab()
    L += _kernels(res)
    L += ["## Memory", "",
          f"The router's resident set (VmRSS), sampled every second during the soak (Route, 64 clients, "
          f"{mem['seconds']:.0f} s): {mem['rss_start_mb']:.0f} MB at the start, {mem['rss_mean_mb']:.0f} MB mean "
          f"after {mem['fit_from_s']:.0f} s, {mem['rss_end_mb']:.0f} MB at the end, {mem['rss_max_mb']:.0f} MB at "
          f"most; least-squares slope {mem['slope_mb_per_min']:+.2f} MB/min. The router keeps the last 50,000 "
          f"routed requests in memory for Feedback (each with its 1.5 KB embedding); the soak routed "
          f"{res['soak']['completed']} requests, so that cache was still filling.", "",
          "![rss](bench/rss.png)", ""]
    L += _profile(res)
    L += state_section(res)
    L += gpu_report.gpu()
    L += ["## Phases of this run", "", "| phase | seconds | load avg before | after |", "|---|---|---|---|"]
    L += [f"| {k} | {v['seconds']:.0f} | {v['load_before']:.2f} | {v['load_after']:.2f} |" for k, v in ph.items()]
    L += ["", _EARLIER]
    return "\n".join(L) + "\n"


def _missed(res: dict[str, Any], t: dict[str, Any]) -> list[str]:
    out = []
    if not t["throughput_met"]:
        out.append(f"- Route throughput: {t['throughput_ratio']:.0%} of the ceiling, "
                   f"{0.70 - t['throughput_ratio']:.0%} short of 70% ({0.70 * t['ceiling_rps'] - t['route64_rps']:.1f}"
                   " req/s).")
    if not t["p99_met"]:
        soak, after = res["soak"], {r["batch"]: r for r in res["predictor2"]["results"]}[t["running_batch"]]
        mb = soak["server"].get("mean_batch", float("nan"))
        out.append(f"- Route p99: {t['p99_ratio']:.2f}x the predictor's batch latency, {t['p99_ratio'] / 2:.2f}x the "
                   f"2x bound. The router ran batches of {mb:.1f} on average (64 possible): callers that come back "
                   f"more than `batch_delay_ms` after their batch finished miss the next one and wait for it to end "
                   f"too, so the tail waits for two or three batch times (Route p50 {soak['p50_ms']:.0f} ms, p95 "
                   f"{soak['p95_ms']:.0f} ms, p99 {soak['p99_ms']:.0f} ms), and the batch time itself varies (the "
                   f"predictor alone at batch {t['running_batch']}: p50 {after['p50_ms']:.0f} ms, p99 "
                   f"{after['p99_ms']:.0f} ms, {after['batches']} batches, on a machine at load average "
                   f"{res['phases']['soak']['load_before']:.1f}).")
    pr = res.get("profile", {})
    run = dict(pr.get("self", [])).get("Session.run (onnxruntime_inference_collection.py)")
    if out and run is not None:
        out.append(f"- Where the time goes (profile below): {run:.0%} of the router's non-idle samples are inside "
                   "ONNX Runtime's `Session.run`, the encoder; gRPC, handlers, batching, the decision kernels and "
                   f"SQLite share the other {1 - run:.0%}. The encoder bounds both throughput and latency.")
    if res["total_s"] > 600:
        out.append(f"- The suite took {res['total_s']:.0f} s, over its 600 s budget, on a machine at load average "
                   f"{max(v['load_before'] for v in res['phases'].values()):.1f} at worst.")
    if not t["decide_met"]:
        out.append("- Decision kernel: see the kernel table.")
    if not t["second_start_met"]:
        out.append(f"- Second start: {t['second_start_kernels_s']:.2f} s compiling kernels.")
    if not out:
        return []
    return ["### Missed in this run", "", *out, ""]


def _batching(res: dict[str, Any]) -> list[str]:
    rows = [*res["batching"], {**res["soak"], "batch_max": res["soak_settings"]["batch_max"],
                               "batch_delay_ms": res["soak_settings"]["batch_delay_ms"], "default": True}] \
        if "soak_settings" in res else list(res["batching"])
    out = ["## Micro-batching settings (Route, 64 clients)", "",
           "One fresh router per setting (`MESSPLUS_PREDICTOR_BATCH_MAX`, `MESSPLUS_PREDICTOR_BATCH_DELAY_MS`); "
           "the default's row is the soak.", "",
           "| batch_max | batch_delay_ms | req/s | p50 ms | p99 ms | mean batch |", "|---|---|---|---|---|---|"]
    for r in rows:
        mb = r.get("server", {}).get("mean_batch")
        tag = " (default)" if r.get("default") else ""
        out.append(f"| {r['batch_max']}{tag} | {r['batch_delay_ms']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | "
                   f"{r['p99_ms']:.0f} | {mb:.1f} |" if mb is not None else
                   f"| {r['batch_max']}{tag} | {r['batch_delay_ms']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | "
                   f"{r['p99_ms']:.0f} | |")
    loads = [x for ph in res["phases"].values() for x in (ph["load_before"], ph["load_after"])]
    out += ["", f"These rows ran minutes apart on a shared machine whose load moved between {min(loads):.1f} and "
            f"{max(loads):.1f} (phases table below), so their req/s and latencies may differ by more than a setting "
            "explains; the mean batch is the "
            "robust signal: it shows whether 64 concurrent callers share one predictor batch or split into "
            "smaller batches that alternate (each call then waits for two).", ""]
    return out


def _kernels(res: dict[str, Any]) -> list[str]:
    k = res["kernels"]
    out = ["## Kernels: Numba against the NumPy twin", "",
           "Command: `python -m bench.kernels_bench` (inside `bench.run_all`), best of 7 repeats, one thread.", "",
           "| K models | B requests | Numba µs/request | NumPy µs/request | speed-up |", "|---|---|---|---|---|"]
    for r in k["decide"]:
        out.append(f"| {r['K']} | {r['B']} | {r['numba_us_per_request']:.4f} | {r['numpy_us_per_request']:.4f} | "
                   f"{r['speedup']:.1f}x |")
    out += ["", "| head kernel | K, B, D | Numba µs/call | NumPy µs/call | speed-up |", "|---|---|---|---|---|"]
    for r in k["heads"]:
        out.append(f"| `{r['kernel']}` | {r['K']}, {r['B']}, {r['D']} | {r['numba_us']:.1f} | {r['numpy_us']:.1f} | "
                   f"{r['numpy_us'] / r['numba_us']:.2f}x |")
    hp = {r["B"]: r for r in k["heads"] if r["kernel"] == "head_predict"}
    pred = {r["batch"]: r for r in res["predictor"]["results"]}
    both = sorted(set(hp) & set(pred))
    if both:
        b = both[-1]
        out += ["", f"`head_predict` (the heads' share of a Route batch: K=5 demo models, D=385) is a single-thread "
                "kernel that reads only the upper triangle of each covariance (half the multiply-adds of the NumPy "
                "twin, which runs them through a two-thread BLAS). At batch "
                f"{b} it takes {hp[b]['numba_us'] / 1e3:.2f} ms against {pred[b]['p50_ms']:.0f} ms for the whole "
                f"predictor call at that batch ({hp[b]['numba_us'] / 1e3 / pred[b]['p50_ms']:.2%}): the encoder, "
                "not the heads, bounds Route."]
    j = k["jit"]
    out += ["", "JIT cost in fresh interpreters (import of `messplus.kernels`, which compiles or loads every kernel, "
            "plus `kernels.warmup()`; numba's own import not counted), sharing one numba cache directory that was "
            "empty before the first:", "",
            "| start | kernels s | of which import | warm-up | numba import s |", "|---|---|---|---|---|"]
    for i, r in enumerate([j["first"], *j["second"]]):
        name = "first (empty cache)" if i == 0 else f"{i + 1} (cache)"
        out.append(f"| {name} | {r['kernels_s']:.3f} | {r['import_kernels_s']:.3f} | {r['warmup_s']:.3f} | "
                   f"{r['import_numba_s']:.3f} |")
    out.append("")
    return out


def _profile(res: dict[str, Any]) -> list[str]:
    pr = res.get("profile", {})
    out = ["## Where the time goes: py-spy on the router (Route, 64 clients, during the soak)", ""]
    if "error" in pr or not pr.get("samples"):
        return [*out, f"Not available in this run: {pr.get('error', 'no samples')}", ""]
    out += [f"`py-spy record --format raw --threads --nonblocking` for {res['plan']['profile_s']:.0f} s on the "
            f"router process, {res['plan']['profile_at_s']:.0f} s into the soak ({pr['samples']} non-idle samples "
            "at 100 Hz), summarised by `bench/profile.py`. "
            "ONNX Runtime's own worker threads are native and not sampled; the predictor thread's share is the "
            "time it spends inside `session.run` and around it.", "",
            "| thread | share of samples |", "|---|---|"]
    out += [f"| {name} | {share:.0%} |" for name, share in pr["threads"]]
    out += ["", "| function (inclusive) | share | | innermost Python frame (self) | share |", "|---|---|---|---|---|"]
    for left, right in zip_longest(pr["inclusive"], pr["self"]):
        a = f"`{left[0]}` | {left[1]:.0%}" if left else " | "
        b = f"`{right[0]}` | {right[1]:.0%}" if right else " | "
        out.append(f"| {a} | | {b} |")
    out.append("")
    return out


_EARLIER = """## Earlier, manual measurements (not regenerated by the suite)

Predictor encoder (all-MiniLM-L6-v2, ONNX Runtime CPU, 2 threads), measured by the encoder's author with
interleaved repeats (min to median): 1 short prompt (9 tokens) 2.3-4 ms; 1 prompt of 200 tokens 28-44 ms; 32 mixed
trace prompts (40-256 tokens) 0.78-1.07 s. Sorting a batch by length into sub-batches of 8 was the fastest way to
run 32 prompts (0.85-0.90 s against 1.4-3.0 s padded to the batch's longest). Export from the packaged weights:
1-2.4 s, 90.3 MB.

On the lent H200 (same lease as the GPU section, by hand: 8 batches of 256 trace prompts, medians), a batch of 256
spent 22 ms tokenising, 28 ms more in ONNX Runtime on CUDA (encode: 50 ms) and 13 ms more in the five heads
(predict: 63 ms): at its peak the GPU predictor is bound by the host's CPU work, not by the GPU. One CUDA run of the
whole batch instead of sub-batches of 64 saved 5 ms (encode 46 ms)."""


def write_docs(res: dict[str, Any], root: Path = ROOT) -> None:
    (root / "docs" / "BENCHMARKS.md").write_text(page(res))
    update_readme(res, root / "README.md")


def main() -> int:
    res = json.loads(RESULTS.read_text())
    plots(res, RESULTS.parent)
    write_docs(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
