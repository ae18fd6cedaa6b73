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
RESTORE_PAGE = 10_000  # labels read at a time when the heads replay the log at start (embeddings: ~1.5 KB each)


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
        """Start every head from its latest snapshot (else the prior) and learn the labels after it: each head
        the labels after its own snapshot (after a zoo change the heads' snapshots differ)."""
        seqs = np.zeros(len(self.names), np.int64)
        fresh = None
        for k, name in enumerate(self.names):
            snap = self.store.head(name)
            if snap is not None and snap.features == self.heads.features:
                self.heads.restore(k, snap.W, snap.S)
                seqs[k] = snap.last_seq
                continue
            if fresh is None:
                fresh = Heads(self.names, self.heads.dim, prior_var=self.heads.prior_var,
                              prior_accuracy=[m.prior_accuracy for m in self.models])
            self.heads.restore(k, fresh.W[k].tobytes(), fresh.S[k].tobytes())
        seq = int(seqs.min()) if seqs.size else 0
        self.heads.last_seq = seq
        replayed, after = 0, seq
        while True:  # in pages: a head without a snapshot (a model new to the zoo) replays the whole log
            page = self.store.label_events(after, RESTORE_PAGE)
            replayed += self.learn(page, snapshot=False, learned_to=seqs)
            if len(page) < RESTORE_PAGE:
                break
            after = page[-1].seq
        if replayed:
            log.info("predictor heads: replayed %d labels since snapshot seq %d", replayed, seq)

    def learn(self, events: Sequence[LabelEvent], embeddings: Mapping[str, np.ndarray] | None = None,
              *, snapshot: bool = True, learned_to: np.ndarray | None = None) -> int:
        """Learn the events after `heads.last_seq`, in order (the policy says which); returns how many trained.

        `embeddings` (request id -> embedding) spares decoding the ones the caller has at hand; `learned_to`
        (restore) is each head's own snapshot seq: a head skips the labels it has."""
        learned = 0
        for ev in events:
            if ev.seq <= self.heads.last_seq:
                continue  # learned already: each label once
            k = self.index.get(ev.model)
            trains = k is not None and self.policy.learns(ev.exploration)
            if trains and (learned_to is None or ev.seq > learned_to[k]):
                emb = (embeddings or {}).get(ev.request_id)
                if emb is None:
                    emb = np.frombuffer(ev.embedding or b"", dtype=np.float32)
                learned += 1
                if emb.size == self.heads.dim:
                    self.heads.update(emb, k, ev.satisfaction, ev.seq)  # the label and its seq in one step
                    continue
            self.heads.mark(ev.seq)
        self.since_snapshot += learned
        if snapshot and self.since_snapshot >= self.snapshot_every:
            self.since_snapshot = 0
            self.snapshot()
        return learned

    def snapshot(self) -> Future[None]:
        """Persist the heads with the last label they have learned (replayed after a crash): taken together, so
        a label the writer thread learns meanwhile is in both or in neither."""
        heads, seq = self.heads.snapshot_all()
        return self.store.write_heads([(n, *wb) for n, wb in zip(self.names, heads)], self.heads.features, seq)
