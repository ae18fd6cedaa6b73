"""The demo zoo: a Triton model repository whose models replay what real LLMs did on a routing trace.

A trace (format in `traces/README.md`) holds, per prompt, each model's satisfaction label (`correct__<m>`,
0..1, empty = no label) and cost (`cost__<m>`). `build_demo_repository` writes one Python-backend model per
chosen trace model; each answers a prompt with the outcome that model really had (see `model.py`). The
`TraceGrader` reads the same trace and gives the label a served answer earns, so routing, feedback and cost
are real numbers without any LLM weights.

Prompt texts are matched by SHA-256 of their UTF-8 bytes. Where a trace repeats a prompt text (2 in RouterBench,
105 in RouteLLM MMLU) the first row wins, in the model and in the grader alike.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
import shutil
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

TRACES_DIR = Path(__file__).resolve().parent / "traces"
DEFAULT_TRACE = TRACES_DIR / "routerbench_arc_wino_mbpp.csv"
MODEL_SOURCE = Path(__file__).resolve().parent / "model.py"

DEFAULT_MODELS = (
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
)
"""The default zoo on the RouterBench trace, cheapest first (mean USD per request, accuracy):
Mistral-7B (8.2e-5, 0.584), Mixtral-8x7B (2.5e-4, 0.742), Yi-34B (3.3e-4, 0.773), GPT-3.5-1106 (4.2e-4, 0.732),
GPT-4-1106 (5.0e-3, 0.880). They span the trace's 60x cost range with distinct accuracies, the first three and
GPT-4 lie on the cost/accuracy frontier, and GPT-3.5 is dominated on average (dearer than Yi-34B, less accurate)
yet right on prompts where others fail, so a router has to learn per prompt, not sort by price. Five models keep
the zoo small enough to start in seconds and to explore (every model is called) cheaply."""

_CORRECT = "correct__"
_COST = "cost__"


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo zoo: trace column name, Triton model name, mean cost and accuracy on the trace."""

    trace_name: str
    triton_name: str
    mean_cost: float
    accuracy: float


@dataclass(frozen=True)
class Outcome:
    """What one model did on one prompt: label in 0..1 (None = no label) and cost (None = not recorded)."""

    prompt_id: str
    label: float | None
    cost: float | None


def prompt_key(prompt: str) -> str:
    """SHA-256 of the prompt's UTF-8 bytes, as `model.py` computes it on the bytes Triton receives."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def trace_models(trace_csv: Path) -> list[str]:
    """Model names of a trace, in column order (cheapest first by the format's convention)."""
    with _open_trace(trace_csv) as reader:
        return [name[len(_CORRECT) :] for name in reader.fieldnames or () if name.startswith(_CORRECT)]


def triton_model_name(trace_name: str, taken: Collection[str] = ()) -> str:
    """A valid Triton model (directory) name: the part after the last '/', other characters made '-'."""
    for candidate in (trace_name.rsplit("/", 1)[-1], trace_name):
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", candidate).strip(".-") or "model"
        if name not in taken:
            return name
    index = 2
    while f"{name}-{index}" in taken:
        index += 1
    return f"{name}-{index}"


def build_demo_repository(
    out_dir: Path,
    trace_csv: Path = DEFAULT_TRACE,
    models: list[str] | None = None,
    latency_ms: float = 0.0,
    instances: int = 1,
    decoupled: bool = True,
) -> list[DemoModel]:
    """Write a Triton model repository replaying `models` of `trace_csv` into out_dir; return them, cheapest first.

    `models` defaults to DEFAULT_MODELS when the trace has them all, else to every model of the trace. Each
    model gets `<name>/config.pbtxt`, `<name>/outcomes.json` (only its own columns) and `<name>/1/model.py`.
    Existing model directories of the same names are replaced. `decoupled=False` makes plain request/response
    models (one response, no streaming), as a non-vLLM backend would serve.
    """
    trace_csv = Path(trace_csv)
    available = trace_models(trace_csv)
    if models is None:
        models = list(DEFAULT_MODELS) if set(DEFAULT_MODELS) <= set(available) else available
    missing = [m for m in models if m not in available]
    if missing:
        raise ValueError(f"{trace_csv.name} has no columns for {missing}; it has {available}")
    if not models:
        raise ValueError(f"{trace_csv.name} names no models (no {_CORRECT}<model> columns)")
    outcomes: dict[str, dict[str, list]] = {m: {} for m in models}
    labels: dict[str, list[float]] = {m: [] for m in models}
    costs: dict[str, list[float]] = {m: [] for m in models}
    with _open_trace(trace_csv) as reader:
        for row in reader:
            key = prompt_key(row["prompt"])
            for m in models:
                label, cost = _number(row[_CORRECT + m]), _number(row.get(_COST + m, ""))
                outcomes[m].setdefault(key, [row["prompt_id"], label, cost])
                labels[m].extend(() if label is None else (label,))
                costs[m].extend(() if cost is None else (cost,))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built: list[DemoModel] = []
    taken: set[str] = set()
    for m in models:
        name = triton_model_name(m, taken)
        taken.add(name)
        config = _config_pbtxt(name, m, trace_csv.name, latency_ms, instances, decoupled)
        _write_model(out_dir / name, m, trace_csv.name, outcomes[m], config)
        built.append(DemoModel(m, name, _mean(costs[m]), _mean(labels[m])))
    return sorted(built, key=lambda d: d.mean_cost)


def _write_model(model_dir: Path, trace_name: str, source: str, outcomes: dict, config: str) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(MODEL_SOURCE, model_dir / "1" / "model.py")
    payload = {"trace_model": trace_name, "source_trace": source, "outcomes": outcomes}
    (model_dir / "outcomes.json").write_text(json.dumps(payload, separators=(",", ":")), encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")


def _config_pbtxt(name: str, trace_name: str, source: str, latency_ms: float, instances: int, decoupled: bool) -> str:
    parameters = {
        "trace_model": trace_name,
        "source_trace": source,
        "outcomes_file": "outcomes.json",
        "latency_ms": repr(float(latency_ms)),
    }
    params = "\n".join(
        f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in parameters.items()
    )
    return f"""name: {_quote(name)}
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: {str(decoupled).lower()} }}
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ -1 ] }}
]
instance_group [ {{ count: {int(instances)} kind: KIND_CPU }} ]
{params}
"""


def _quote(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _number(text: str) -> float | None:
    """A trace cell as a number; empty or unparsable means no value (never 0)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class _open_trace:
    """Context manager yielding a csv.DictReader over a trace (embedded newlines kept, big fields allowed)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> csv.DictReader:
        csv.field_size_limit(sys.maxsize)
        return csv.DictReader(self._file)

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class TraceGrader:
    """Grades answers against a trace: the label and cost each model has for a prompt's text."""

    def __init__(self, trace_csv: Path = DEFAULT_TRACE) -> None:
        self.models = trace_models(trace_csv)
        self._by_key: dict[str, dict[str, Outcome]] = {}
        with _open_trace(trace_csv) as reader:
            for row in reader:
                outcomes = {
                    m: Outcome(row["prompt_id"], _number(row[_CORRECT + m]), _number(row.get(_COST + m, "")))
                    for m in self.models
                }
                self._by_key.setdefault(prompt_key(row["prompt"]), outcomes)

    def outcomes(self, prompt: str) -> dict[str, Outcome]:
        """Every model's outcome on this prompt text; empty when the trace lacks it."""
        return self._by_key.get(prompt_key(prompt), {})

    def label(self, prompt: str, model: str) -> float | None:
        """The satisfaction label `model` earned on this prompt; None when unlabelled or unknown."""
        found = self.outcomes(prompt).get(model)
        return None if found is None else found.label


@functools.lru_cache(maxsize=4)
def grader(trace_csv: Path = DEFAULT_TRACE) -> TraceGrader:
    """A cached TraceGrader per trace file."""
    return TraceGrader(Path(trace_csv))


def lookup_label(trace_csv: Path, prompt: str) -> dict[str, float | None]:
    """Label per trace model for this prompt text ({} when the trace lacks it); empty label -> None."""
    return {m: o.label for m, o in grader(Path(trace_csv)).outcomes(prompt).items()}
