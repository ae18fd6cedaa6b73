"""Routing traces (the format of `demo/traces/README.md`) loaded as arrays, and their prompt embeddings, cached.

A trace is one CSV row per prompt: `prompt_id`, `prompt`, `source_benchmark`, then `correct__<model>` (the
satisfaction label in [0, 1]; empty = the source has no label) and `cost__<model>` (cost of serving the prompt
with that model) for every model. The sidecar `NAME.models.json` is optional here: only its `cost_unit` is read;
models, mean costs and accuracies are taken from the CSV itself, so any file of the format loads.

Missing values, never read as 0: an empty or unparsable label is NaN in `labels` ("no feedback for that model
on this prompt"); an empty cost is filled with that model's mean recorded cost and counted in `filled_costs`.

Embeddings are keyed by the SHA-256 of the trace file and an encoder key (the ONNX file's SHA-256 and
`max_tokens`): `cache_dir/<trace sha>-<encoder sha>.npz` maps prompt-text hashes to rows, so a sweep, a
`--limit` run and a later full run share what has been encoded.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import shown
from .routing.pricing import input_tokens
from .routing.types import TextEncoder

log = logging.getLogger("messplus.trace")

CORRECT, COST = "correct__", "cost__"
ENCODE_CHUNK = 64  # prompts per encoder call: the progress bar moves every chunk


class TraceError(ValueError):
    """A trace file that cannot be replayed (missing columns, labels outside [0, 1], mismatched models)."""


@dataclass(frozen=True, kw_only=True)
class Trace:
    """N prompts x K models. `segment[i]` is the index of the file row i came from (drift: several files)."""

    name: str
    paths: tuple[Path, ...]
    prompt_ids: tuple[str, ...]
    prompts: tuple[str, ...]
    sources: tuple[str, ...]
    models: tuple[str, ...]
    labels: np.ndarray          # [N, K] float64, NaN = no label
    costs: np.ndarray           # [N, K] float64, all finite
    segment: np.ndarray         # [N] int64
    cost_unit: str = ""
    filled_costs: int = 0
    file_rows: tuple[tuple[int, int], ...] = field(default=())  # per file: (first row here, row count)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def mean_cost(self) -> np.ndarray:
        return self.costs.mean(axis=0) if len(self) else np.zeros(len(self.models))

    def price_list(self) -> tuple[np.ndarray, np.ndarray]:
        """Per model, a price per request and a price per input token (as the router counts them:
        routing.pricing.input_tokens) fitted to the recorded costs by least squares, both >= 0: the price list an
        operator would configure. Output tokens, unknown before a call, fall into the per-request part."""
        K = len(self.models)
        per_request, per_token = self.mean_cost.astype(np.float64).copy(), np.zeros(K)
        if len(self) < 2:
            return per_request, per_token
        x = np.array([input_tokens(p) for p in self.prompts], dtype=np.float64)
        dx = x - x.mean()
        if not (dx @ dx > 0):
            return per_request, per_token
        for k in range(K):
            y = self.costs[:, k]
            slope = max(float(dx @ (y - y.mean()) / (dx @ dx)), 0.0)
            base = float(y.mean() - slope * x.mean())
            if base < 0:  # the line through the origin instead
                slope, base = float(x @ y / (x @ x)), 0.0
            per_request[k], per_token[k] = base, slope
        return per_request, per_token

    @property
    def accuracy(self) -> np.ndarray:
        """Mean label per model over its labelled prompts (NaN for a model with no label at all)."""
        return nanmean_cols(self.labels)

    def select_models(self, names: Sequence[str]) -> Trace:
        """The same prompts with only these models (in this order)."""
        missing = [n for n in names if n not in self.models]
        if missing:
            raise TraceError(f"trace {self.name} has no models {missing}; it has {list(self.models)}")
        idx = [self.models.index(n) for n in names]
        return replace(self, models=tuple(names), labels=self.labels[:, idx].copy(), costs=self.costs[:, idx].copy())


def nanmean_cols(a: np.ndarray) -> np.ndarray:
    seen = ~np.isnan(a)
    n = seen.sum(axis=0)
    total = np.where(seen, a, 0.0).sum(axis=0)
    return np.divide(total, n, out=np.full(a.shape[1], np.nan), where=n > 0)


def _cell(text: str | None) -> float:
    """A numeric cell; empty or unparsable is NaN (never 0)."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _label(text: str | None) -> float:
    """A label cell: empty (or NaN) is no label; anything else must be a number (checked for [0, 1] after).
    Raises ValueError on text that is not a number ("True", "yes"), which would otherwise vanish as no label."""
    if text is None or not text.strip():
        return math.nan
    return float(text)


def _cost_unit(path: Path) -> str:
    side = path.with_name(path.name.removesuffix(".csv") + ".models.json")
    try:
        return str(json.loads(side.read_text(encoding="utf-8")).get("cost_unit", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def load_trace(path: str | Path, *, limit: int = 0) -> Trace:
    """Read one trace file (its first `limit` rows when limit > 0)."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the header
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        models = tuple(dict.fromkeys(h[len(CORRECT):] for h in header if h.startswith(CORRECT)))
        if "prompt" not in header or not models:
            raise TraceError(f"{path}: needs a 'prompt' column and at least one '{CORRECT}<model>' column")
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:  # csv.DictReader keeps the last of equal names: the other column would be read silently
            raise TraceError(f"{path}: column(s) {twice} appear more than once in the header")
        absent = [m for m in models if COST + m not in header]
        if absent:
            raise TraceError(f"{path}: no '{COST}<model>' column for {absent}")
        ids, prompts, sources, labels, costs = [], [], [], [], []
        for row in reader:
            if limit and len(prompts) >= limit:
                break
            ids.append(row.get("prompt_id") or str(len(ids)))
            prompts.append(row["prompt"] or "")
            sources.append(row.get("source_benchmark") or "")
            labels.append([])
            for m in models:
                cell = row.get(CORRECT + m)
                try:
                    labels[-1].append(_label(cell))
                except ValueError:
                    raise TraceError(f"{path}: row {len(prompts)}, model {m!r}: label {shown(cell)} is not a "
                                     "number (write 1/0 or a satisfaction in [0, 1]; empty for no label)") from None
            costs.append([_cell(row.get(COST + m)) for m in models])
    lab = np.array(labels, dtype=np.float64).reshape(len(prompts), len(models))
    bad = ~np.isnan(lab) & ((lab < 0) | (lab > 1))
    if bad.any():
        r, k = (int(v) for v in np.argwhere(bad)[0])
        raise TraceError(f"{path}: row {r + 1}, model {models[k]!r}: label {lab[r, k]} is not in [0, 1]")
    cost = np.array(costs, dtype=np.float64).reshape(len(prompts), len(models))
    cost[cost < 0] = np.nan
    missing = np.isnan(cost)
    means = nanmean_cols(cost)
    if len(prompts) and np.isnan(means).any():
        raise TraceError(f"{path}: no recorded cost at all for {[m for m, v in zip(models, means) if np.isnan(v)]}")
    cost[missing] = np.broadcast_to(means, cost.shape)[missing]
    if missing.any():
        log.warning("%s: %d empty cost cells filled with the model's mean cost", path.name, int(missing.sum()))
    return Trace(name=path.name.removesuffix(".csv"), paths=(path,), prompt_ids=tuple(ids), prompts=tuple(prompts),
                 sources=tuple(sources), models=models, labels=lab, costs=cost,
                 segment=np.zeros(len(prompts), np.int64), cost_unit=_cost_unit(path),
                 filled_costs=int(missing.sum()), file_rows=((0, len(prompts)),))


def concat(traces: Sequence[Trace]) -> Trace:
    """Traces one after the other (drift). They must share their models; columns follow the first trace."""
    first = traces[0]
    if len(traces) == 1:
        return first
    parts = []
    for t in traces:
        if set(t.models) != set(first.models):
            raise TraceError(f"traces to concatenate must share their models: {first.name} has "
                             f"{list(first.models)}, {t.name} has {list(t.models)}")
        parts.append(t.select_models(first.models))
    starts = np.cumsum([0] + [len(t) for t in parts])
    return Trace(name="+".join(t.name for t in parts), paths=tuple(p for t in parts for p in t.paths),
                 prompt_ids=tuple(x for t in parts for x in t.prompt_ids),
                 prompts=tuple(x for t in parts for x in t.prompts),
                 sources=tuple(x for t in parts for x in t.sources), models=first.models,
                 labels=np.concatenate([t.labels for t in parts]), costs=np.concatenate([t.costs for t in parts]),
                 segment=np.concatenate([np.full(len(t), i, np.int64) for i, t in enumerate(parts)]),
                 cost_unit=first.cost_unit, filled_costs=sum(t.filled_costs for t in parts),
                 file_rows=tuple((int(starts[i]), len(t)) for i, t in enumerate(parts)))


def load_traces(paths: Sequence[str | Path], *, limit: int = 0) -> Trace:
    """Load and concatenate (`limit`: the first rows of each file)."""
    if not paths:
        raise TraceError("no trace given")
    traces = [load_trace(p, limit=limit) for p in paths]
    empty = [str(t.paths[0]) for t in traces if not len(t)]
    if empty:
        raise TraceError(f"no prompts in {', '.join(empty)}")
    return concat(traces)


# ------------------------------------------------------------------------------------------- embeddings
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _read_cache(path: Path, dim: int) -> dict[bytes, np.ndarray]:
    try:
        with open(path, "rb") as fh, np.load(fh) as z:  # the file closes even when its zip does not parse
            keys, emb = z["keys"], z["emb"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a file cut short, too
        if path.exists():
            log.warning("ignoring unreadable embedding cache %s: %s", path, exc)
        return {}
    if emb.ndim != 2 or emb.shape[1] != dim or keys.shape != (emb.shape[0], 32):
        return {}
    return {bytes(k): e for k, e in zip(keys, emb)}


def _write_cache(path: Path, cached: dict[bytes, np.ndarray], dim: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = np.frombuffer(b"".join(cached), dtype=np.uint8).reshape(len(cached), 32)
    emb = np.stack(list(cached.values())).astype(np.float32) if cached else np.zeros((0, dim), np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, keys=keys, emb=emb)
    os.replace(tmp, path)


def _encode_missing(encoder: TextEncoder, texts: list[str], desc: str, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a padded batch
    out: list[np.ndarray] = [np.empty(0)] * len(texts)
    with tqdm(total=len(texts), desc=desc, unit="prompt", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(order), ENCODE_CHUNK):
            idx = order[start:start + ENCODE_CHUNK]
            emb = encoder.encode([texts[i] for i in idx])
            for j, i in enumerate(idx):
                out[i] = np.asarray(emb[j], dtype=np.float32)
            bar.update(len(idx))
    return out


def embed_file(path: Path, prompts: Sequence[str], encoder: TextEncoder, encoder_key: str,
               cache_dir: Path | None, *, progress: bool = True) -> np.ndarray:
    """Embeddings [len(prompts), dim] of prompts of the trace file `path`, encoding only what the cache lacks."""
    cache = None
    if cache_dir is not None:
        enc = hashlib.sha256(encoder_key.encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{file_sha256(path)[:24]}-{enc}.npz"
    cached = _read_cache(cache, encoder.dim) if cache is not None else {}
    keys = [_text_key(p) for p in prompts]
    todo = list(dict.fromkeys(k for k in keys if k not in cached))
    if todo:
        text_of = dict(zip(keys, prompts))
        fresh = _encode_missing(encoder, [text_of[k] for k in todo], f"encoding {path.name}", progress)
        cached.update(zip(todo, fresh))
        if cache is not None:
            _write_cache(cache, cached, encoder.dim)
    if not keys:
        return np.zeros((0, encoder.dim), np.float32)
    return np.ascontiguousarray(np.stack([cached[k] for k in keys]), dtype=np.float32)


def embed_trace(trace: Trace, encoder: TextEncoder, encoder_key: str, cache_dir: Path | None, *,
                progress: bool = True) -> np.ndarray:
    """Embeddings of every prompt of a (possibly concatenated) trace, cached per file."""
    parts = [embed_file(p, trace.prompts[s:s + n], encoder, encoder_key, cache_dir, progress=progress)
             for p, (s, n) in zip(trace.paths, trace.file_rows)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
