"""What the operator's queries read (deploy/grafana/messplus.json, deploy/prometheus/messplus-alerts.yaml): the
metric names and label names of every PromQL expression, to hold against what a real router exports. A small
lexer, not a PromQL parser: promtool checks the syntax (tests/unit/test_monitoring.py); this only needs the names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "messplus.json"
ALERTS = ROOT / "deploy" / "prometheus" / "messplus-alerts.yaml"
TARGET_LABELS = frozenset({"instance", "job"})  # added by Prometheus to every scraped series, not by the router
SCRAPE_SERIES = frozenset({"up"})  # what Prometheus itself records per target (1 when its scrape succeeded)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}|([A-Za-z_:][\w:]*)(\s*\()?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                       "offset", "inf", "nan"})


@dataclass(frozen=True)
class Uses:
    """The selectors of one expression, {metric: label names its matchers use}, and the labels it groups by."""

    selectors: Mapping[str, frozenset[str]]
    grouping: frozenset[str]


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus sees it: Grafana's interval variables as a duration."""
    return re.sub(r"\$__(?:rate_)?interval|\$__range", "5m", expr)


def uses(expr: str) -> Uses:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', grafana_to_promql(expr))  # strings say nothing about names
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    grouping = frozenset(g.strip() for m in _GROUPING.finditer(text) for g in m.group(1).split(",") if g.strip())
    text = _GROUPING.sub(" ", text)
    selectors: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(text):
        if m.group(2) is not None:  # name{matchers} or {matchers}
            labels = set(_MATCHER.findall(m.group(2)))
            name = m.group(1) or next((v for v in re.findall(r'__name__\s*=\s*"([^"]*)"', m.group(2))), "")
            selectors.setdefault(name, set()).update(labels - {"__name__"})
        elif m.group(4) is None and m.group(3).lower() not in _KEYWORDS:  # a bare name, not a function call
            selectors.setdefault(m.group(3), set())
    return Uses({k: frozenset(v) for k, v in selectors.items()}, grouping)


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(PromQL query, legend format) of every target of the dashboard's panels (Grafana syntax: variables in)."""
    dash = json.loads(path.read_text())
    panels = [p for top in dash["panels"] for p in (top, *top.get("panels", []))]
    return [(t["expr"], t.get("legendFormat", "")) for p in panels for t in p.get("targets", []) if t.get("expr")]


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    return [expr for expr, _ in dashboard_targets(path)]


def dashboard_variables(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(metric selector, label) of every `label_values(...)` template variable."""
    dash = json.loads(path.read_text())
    out = []
    for var in dash["templating"]["list"]:
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        if m := re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip()):
            out.append((m.group(1), m.group(2)))
    return out


def alert_queries(path: Path = ALERTS) -> list[str]:
    return [r["expr"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def exported(samples: Iterable[tuple[str, tuple[tuple[str, str], ...]]]) -> dict[str, frozenset[str]]:
    """{sample name: label names} from a scrape (tests/support/metrics.py: scrape)."""
    out: dict[str, set[str]] = {}
    for name, labels in samples:
        out.setdefault(name, set()).update(k for k, _ in labels)
    return {k: frozenset(v) for k, v in out.items()}


def problems(exprs: Iterable[str], have: Mapping[str, frozenset[str]]) -> list[str]:
    """What the expressions read that the exported series do not have: unknown metrics, labels no series of
    that metric carries, grouping labels none of the expression's metrics carries."""
    out = []
    for expr in exprs:
        u = uses(expr)
        for metric, labels in u.selectors.items():
            if metric in SCRAPE_SERIES:
                if missing := labels - TARGET_LABELS:
                    out.append(f"{metric}: no label {sorted(missing)} (in {expr})")
            elif metric not in have:
                out.append(f"{metric}: no such metric (in {expr})")
            elif missing := labels - have[metric] - TARGET_LABELS:
                out.append(f"{metric}: no label {sorted(missing)} (in {expr})")
        carried = set().union(*(have.get(m, frozenset()) for m in u.selectors)) | TARGET_LABELS
        if missing := u.grouping - carried:
            out.append(f"grouping by {sorted(missing)}: no metric of the expression has it (in {expr})")
        if not u.selectors:
            out.append(f"no metric found (in {expr})")
    return out


def legend_problems(targets: Iterable[tuple[str, str]], have: Mapping[str, frozenset[str]]) -> list[str]:
    """Legend labels (`{{label}}`) that the query's series cannot carry."""
    out = []
    for expr, legend in targets:
        u = uses(expr)
        carried = set().union(*(have.get(m, frozenset()) for m in u.selectors)) | u.grouping | TARGET_LABELS
        if u.grouping:  # an aggregation keeps only its grouping labels
            carried = set(u.grouping) | TARGET_LABELS
        if missing := set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - carried:
            out.append(f"legend {legend!r}: {sorted(missing)} not in the result (of {expr})")
    return out
