"""The heads learn the label log: in seq order, each label once, whichever replica committed it.

Every replica's heads apply the same labels in the same order from the same start (the prior, or a snapshot that
says up to which label it has learned), so their predictions agree. Snapshots let a restart, or a new replica,
replay only the labels after the latest one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import numpy as np

from ..config import ModelConfig
from ..state.base import LabelEvent, Store
from .heads import Heads
from .policy import Policy

log = logging.getLogger("messplus.learner")


class Learner:
    """The heads, the label log they have learned up to (`heads.last_seq`), and their snapshots."""

    def __init__(self, heads: Heads, models: Sequence[ModelConfig], store: Store, policy: Policy,
                 snapshot_every: int) -> None:
        self.heads, self.models, self.store, self.policy = heads, tuple(models), store, policy
        self.names = tuple(m.name for m in self.models)
        self.index = {n: k for k, n in enumerate(self.names)}
        self.snapshot_every = snapshot_every
        self.since_snapshot = 0

    def restore(self) -> None:
        """Start from the latest snapshot of every head (else the prior) and learn the labels after it."""
        seq, complete = 0, True
        for k, name in enumerate(self.names):
            snap = self.store.head(name)
            if snap is None or snap.features != self.heads.features:
                seq, complete = 0, False
                break
            self.heads.restore(k, snap.W, snap.S)
            seq = snap.last_seq if k == 0 else min(seq, snap.last_seq)
        if not complete:  # no snapshot of every head: start from the prior and learn every stored label
            fresh = Heads(self.names, self.heads.dim, prior_var=self.heads.prior_var,
                          prior_accuracy=[m.prior_accuracy for m in self.models])
            self.heads.W[:], self.heads.S[:] = fresh.W, fresh.S
        self.heads.last_seq = seq
        replayed = self.learn(self.store.label_events(seq), snapshot=False)
        if replayed:
            log.info("predictor heads: replayed %d labels since snapshot seq %d", replayed, seq)

    def learn(self, events: Sequence[LabelEvent], embeddings: Mapping[str, np.ndarray] | None = None,
              *, snapshot: bool = True) -> int:
        """Learn the events after `heads.last_seq`, in order (the policy says which); returns how many trained.

        `embeddings` (request id -> embedding) spares decoding the ones the caller has at hand."""
        learned = 0
        for ev in events:
            if ev.seq <= self.heads.last_seq:
                continue  # learned already: each label once
            k = self.index.get(ev.model)
            if k is not None and self.policy.learns(ev.exploration):
                emb = (embeddings or {}).get(ev.request_id)
                if emb is None:
                    emb = np.frombuffer(ev.embedding or b"", dtype=np.float32)
                if emb.size == self.heads.dim:
                    self.heads.update(emb, k, ev.satisfaction)
                learned += 1
            self.heads.last_seq = ev.seq
        self.since_snapshot += learned
        if snapshot and self.since_snapshot >= self.snapshot_every:
            self.since_snapshot = 0
            self.snapshot()
        return learned

    def snapshot(self) -> Future[None]:
        """Persist the heads with the last label they have learned (replayed after a crash)."""
        snaps = [(n, *self.heads.snapshot(k)) for k, n in enumerate(self.names)]
        return self.store.write_heads(snaps, self.heads.features, self.heads.last_seq)
