"""`messplus pretrain`, and the replay's warm start: the heads learn a trace's recorded labels offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..routing.heads import Heads
from ..routing.router import Router
from ..state import open_store
from ..trace import Trace, TraceError
from .drivers import match_models


def train_heads(heads: Heads, emb: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                columns: Sequence[int] | None = None) -> int:
    """Learn every recorded label of `rows`, in order (the offline warm start; also `messplus pretrain`).

    `columns[k]` is the label column of head k (default: the same index; -1: no column)."""
    columns = list(range(heads.W.shape[0])) if columns is None else list(columns)
    n = 0
    for r in rows:
        for k, j in enumerate(columns):
            if j >= 0 and not math.isnan(labels[r, j]):
                heads.update(emb[r], k, float(labels[r, j]))
                n += 1
    return n


def service_models(cfg: Any) -> tuple[ModelConfig, ...]:
    """The service's zoo: the configured models, else the embedded demo zoo's (named as `messplus serve` names them)."""
    if cfg.zoo.models:
        return tuple(cfg.zoo.models)
    from ..demo.repository import DEFAULT_MODELS, DEFAULT_TRACE, trace_models, triton_model_name

    have = trace_models(DEFAULT_TRACE)
    names, taken, out = (DEFAULT_MODELS if set(DEFAULT_MODELS) <= set(have) else have), set(), []
    for m in names:
        t = triton_model_name(m, taken)
        taken.add(t)
        out.append(ModelConfig(name=t, triton_model=t, cost_per_request=1.0))
    return tuple(out)


def pretrain(cfg: Any, trace: Trace, emb: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Warm-start the service's heads (in its state store) from every label of a trace, like `--warm-start`.

    The heads the service would start with (its snapshot plus the labels since) learn the trace's labels in a
    seeded shuffled order and are written back as a snapshot. Run it while the service is stopped: a running
    router's next snapshot would overwrite them (on SQLite a running router's state is refused: StateInUse)."""
    models = service_models(cfg)
    columns = match_models([(m.name, m.triton_model) for m in models], trace.models)
    if all(j < 0 for j in columns):
        raise TraceError(f"no model of the service's zoo ({', '.join(m.name for m in models)}) is in the trace "
                         f"({', '.join(trace.models)})")
    store = open_store(cfg.state, str(cfg.state_dir / "messplus.sqlite3"))  # the service's: SQLite or PostgreSQL
    try:
        heads = Heads([m.name for m in models], emb.shape[1], prior_var=cfg.predictor.prior_var,
                      prior_accuracy=[m.prior_accuracy for m in models])
        Router(models, (), heads, store)  # restores the heads exactly as the service would at start
        rows = np.random.default_rng([seed, 1]).permutation(len(trace))
        n = train_heads(heads, emb, trace.labels, rows, columns)
        if n == 0:
            raise TraceError("the trace has no label for the service's models: nothing to learn, nothing written")
        snaps = [(n, *heads.snapshot(k)) for k, n in enumerate(heads.models)]
        seq = store.write_pretrained(snaps, heads.features, heads.last_seq).result()
    finally:
        store.close()
    return {"labels": n, "snapshot_seq": seq, "models": {m.name: (trace.models[j] if j >= 0 else None)
                                                         for m, j in zip(models, columns)}}
