"""PNG plots of a replay (matplotlib, Agg backend; no display needed), one panel per alpha, first seed:

- satisfaction.png: running satisfaction over the stream (MESS+ here and the reference) against alpha;
- cost.png: cumulative recorded cost against the baselines on the same stream order;
- shares.png: share of requests served per model, beside the static mixture and the oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .baselines import oracle

COLORS = {"messplus": "tab:blue", "reference": "tab:red", "static_mixture": "tab:green",
          "cheapest_single": "tab:orange", "oracle": "tab:gray"}
LABELS = {"messplus": "messplus", "reference": "MESS+ reference", "static_mixture": "static mixture",
          "cheapest_single": "cheapest single", "oracle": "hindsight oracle"}


def running_satisfaction(sat: np.ndarray) -> np.ndarray:
    """Mean of the labels seen so far (NaN = unjudged, skipped), per position."""
    judged = ~np.isnan(sat)
    n = np.cumsum(judged)
    total = np.cumsum(np.where(judged, sat, 0.0))
    return np.divide(total, n, out=np.full(sat.shape, np.nan), where=n > 0)


def baseline_cumcost(cv: dict[str, Any]) -> dict[str, np.ndarray]:
    """Cumulative cost of each label-based baseline along the first seed's stream."""
    trace, base, a = cv["trace"], cv["base"], cv["messplus"]
    rows = a.rows
    n = np.arange(1, rows.size + 1)
    out: dict[str, np.ndarray] = {}
    if base["static_mixture"]["mean_cost"] is not None:
        out["static_mixture"] = base["static_mixture"]["mean_cost"] * n
    single = base["cheapest_single"]["model"]
    if single is not None:
        out["cheapest_single"] = np.cumsum(trace.costs[rows, trace.models.index(single)])
    o = oracle(trace.costs[rows], trace.labels[rows], cv["alpha"])
    per_prompt = np.zeros(rows.size)
    c = np.where(np.isnan(trace.labels[rows][o.rows]), 0.0, trace.costs[rows][o.rows])
    per_prompt[o.rows] = (o.solution.x * c).sum(axis=1)
    out["oracle"] = np.cumsum(per_prompt)
    return out


def _panels(n: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 4.0), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_satisfaction(out_dir: Path, curves: dict[float, dict[str, Any]]) -> Path:
    fig, axes = _panels(len(curves))
    for ax, (alpha, cv) in zip(axes, sorted(curves.items())):
        for kind in ("messplus", "reference"):
            if kind in cv:
                y = running_satisfaction(cv[kind].sat)
                ax.plot(np.arange(1, y.size + 1), y, color=COLORS[kind], label=LABELS[kind], lw=1.2)
        ax.axhline(alpha, color="black", ls="--", lw=1, label=f"alpha = {alpha:g}")
        ax.set(title=f"{cv['trace'].name}, alpha {alpha:g}", xlabel="request", ylabel="running satisfaction")
        ax.set_ylim(max(0.0, alpha - 0.25), min(1.0, alpha + 0.25))
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "satisfaction.png")


def plot_cost(out_dir: Path, curves: dict[float, dict[str, Any]]) -> Path:
    fig, axes = _panels(len(curves))
    for ax, (alpha, cv) in zip(axes, sorted(curves.items())):
        for kind in ("messplus", "reference"):
            if kind in cv:
                y = np.cumsum(cv[kind].cost)
                ax.plot(np.arange(1, y.size + 1), y, color=COLORS[kind], label=LABELS[kind], lw=1.5)
        for name, y in baseline_cumcost(cv).items():
            ax.plot(np.arange(1, y.size + 1), y, color=COLORS[name], label=LABELS[name], lw=1, ls="--")
        unit = cv["trace"].cost_unit.split("(")[0].replace(" per request", "").strip() or "trace cost unit"
        ax.set(title=f"{cv['trace'].name}, alpha {alpha:g}", xlabel="request", ylabel=f"cumulative cost ({unit})")
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "cost.png")


def plot_shares(out_dir: Path, curves: dict[float, dict[str, Any]]) -> Path:
    fig, axes = _panels(len(curves))
    for ax, (alpha, cv) in zip(axes, sorted(curves.items())):
        models = cv["trace"].models
        bars: dict[str, np.ndarray] = {}
        for kind in ("messplus", "reference"):
            if kind in cv:
                served = cv[kind].served
                bars[kind] = np.array([(served == k).mean() if served.size else 0.0 for k in range(len(models))])
        mix = cv["base"]["static_mixture"]["mix"]
        bars["static_mixture"] = np.array([mix.get(m, 0.0) for m in models])
        share = cv["base"]["oracle"]["model_share"]
        bars["oracle"] = np.array([share.get(m, 0.0) for m in models])
        width = 0.8 / len(bars)
        x = np.arange(len(models))
        for i, (kind, h) in enumerate(bars.items()):
            ax.bar(x + i * width - 0.4 + width / 2, h, width, color=COLORS[kind], label=LABELS[kind])
        ax.set_xticks(x, [m.rsplit("/", 1)[-1][:18] for m in models], rotation=60, ha="right", fontsize=7)
        ax.set(title=f"{cv['trace'].name}, alpha {alpha:g}", ylabel="share of requests served")
        ax.legend(fontsize=8)
    return _save(fig, out_dir / "shares.png")


def plot_all(out_dir: Path, curves: dict[float, dict[str, Any]]) -> list[Path]:
    """The three PNGs into out_dir; curves[alpha] has trace, base, alpha and RunArrays under messplus/reference."""
    curves = {a: cv for a, cv in curves.items() if "messplus" in cv}
    if not curves:
        return []
    return [plot_satisfaction(out_dir, curves), plot_cost(out_dir, curves), plot_shares(out_dir, curves)]
