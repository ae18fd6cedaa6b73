"""What a replay writes: summary.json, the per-request arrays, the plots, and a plain-text table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def write_outputs(out_dir: Path, summary: list[dict[str, Any]], curves: dict[float, dict[str, Any]] | None = None,
                  *, plots: bool = True) -> list[Path]:
    """DIR/summary.json, DIR/runs/*.npz (per-request arrays of the first seed) and the PNG plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    part = path.with_name(path.name + ".part")  # a crash leaves the previous summary, never half of one
    part.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(part, path)
    written = [path]
    for alpha, cv in (curves or {}).items():
        for kind in ("messplus", "reference"):
            if kind in cv:
                a = cv[kind]
                npz = out_dir / "runs" / f"alpha{alpha:g}-{kind}-seed{cv['seed']}.npz"
                npz.parent.mkdir(exist_ok=True)
                np.savez_compressed(npz, rows=a.rows, served=a.served, exploration=a.exploration, cost=a.cost,
                                    sat=a.sat, queue=a.queue, invoked=a.invoked)
                written.append(npz)
    if plots and curves:
        from .plots import plot_all

        written += plot_all(out_dir, curves)
    return written


def format_table(summary: list[dict[str, Any]]) -> str:
    """A plain-text table of a summary: one line per run, then the baselines. A ratio against a baseline that
    does not reach alpha (its best assignment falls short) is marked `*`, and the baselines line says which."""
    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(x, spec)

    lines = []
    for e in summary:
        b = e["baselines"]
        short = {name for name in ("static_mixture", "task_oracle", "oracle") if not _reaches(b.get(name))}

        def x(r: dict[str, Any], key: str, base: str) -> str:
            v = r.get(key)
            return f(v, ".3f") + ("*" if v is not None and base in short else "")

        lines.append(f"{e['trace']}  alpha={e['alpha']:g}  (cost unit: {e['cost_unit'] or 'trace'})")
        for r in e["runs"]:
            lines.append(f"  seed {r['seed']}: satisfaction {f(r['satisfaction'], '.4f')} sla_met {r['sla_met']} "
                         f"mean_cost {f(r['mean_cost'])} explore {f(r['exploration_fraction'], '.3f')} "
                         f"x static {x(r, 'cost_vs_static_mixture', 'static_mixture')} "
                         f"x task oracle {x(r, 'cost_vs_task_oracle', 'task_oracle')} "
                         f"x oracle {x(r, 'cost_vs_oracle', 'oracle')} x reference {f(r['cost_vs_reference'], '.3f')}")
        ref, task = b["messplus_reference"] or {}, b.get("task_oracle") or {}
        single = b["cheapest_single"]
        lines.append(f"  cheapest model alone reaching alpha: "
                     f"{single['model'] + ' ' + f(single['mean_cost']) if single['model'] else 'none'}; "
                     f"static mixture {f(b['static_mixture']['mean_cost'])}; task oracle {f(task.get('mean_cost'))}; "
                     f"oracle {f(b['oracle']['mean_cost'])}; "
                     f"MESS+ reference {f(ref.get('mean_cost'))} (satisfaction {f(ref.get('satisfaction'), '.4f')})")
        if short:
            names = ", ".join(f"{n.replace('_', ' ')} (satisfaction {f(b[n].get('satisfaction'), '.4f')})"
                              for n in ("static_mixture", "task_oracle", "oracle") if n in short)
            lines.append(f"  * short of alpha even at their best: {names}; a ratio against them is not a saving")
    return "\n".join(lines)


def _reaches(base: dict[str, Any] | None) -> bool:
    """Whether a baseline reaches alpha (every seed's, where they differ by seed); True when absent."""
    if not base:
        return True
    return all(b.get("feasible", True) for b in base.get("per_seed", [base]))
