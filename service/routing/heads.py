"""The learned part of the satisfaction predictor: one Bayesian logistic-regression head per zoo model.

Each head sees the prompt's embedding plus a constant feature and keeps a Gaussian over its weights (mean W,
covariance S), updated online by one Newton/ADF step per label (kernels.head_update). The predictive
probability is moderated by the weight uncertainty (kernels.head_predict), which keeps early predictions
near the prior instead of at 0 or 1, and the variance tells the router which models it knows least about.

Thread safety: `lock` guards W and S; the predictor thread reads under it, the store's writer thread updates
under it after each feedback commit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from messplus import kernels


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))


class Heads:
    """K heads over D = dim + 1 features (the embedding and a constant 1)."""

    def __init__(self, models: Sequence[str], dim: int, *, prior_var: float = 1.0,
                 prior_accuracy: Sequence[float] | None = None) -> None:
        self.models = tuple(models)
        self.dim = dim
        self.prior_var = prior_var
        prior = prior_accuracy if prior_accuracy is not None else [0.5] * len(self.models)
        self.bias_logit = np.array([_logit(p) for p in prior], dtype=np.float64)
        self.W, self.S = kernels.head_init(len(self.models), dim + 1, prior_var, self.bias_logit)
        self.lock = threading.Lock()
        self.labels = np.zeros(len(self.models), dtype=np.int64)
        self.last_seq = 0

    @property
    def features(self) -> int:
        return self.dim + 1

    def featurize(self, emb: np.ndarray) -> np.ndarray:
        """[B, dim] float32 embeddings -> [B, dim + 1] float64 features with the constant last."""
        emb = np.atleast_2d(emb)
        x = np.empty((emb.shape[0], self.dim + 1), dtype=np.float64)
        x[:, :-1] = emb
        x[:, -1] = 1.0
        return x

    def predict(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted satisfaction probability and logit variance, each [B, K]."""
        x = self.featurize(emb)
        p = np.empty((x.shape[0], len(self.models)), dtype=np.float64)
        var = np.empty_like(p)
        with self.lock:
            kernels.head_predict(x, self.W, self.S, p, var)
        return p, var

    def predicted(self, emb: np.ndarray, model: int) -> float | None:
        """One model's predicted satisfaction for one embedding ([dim]); None for an embedding of another size
        (a record stored without one)."""
        if emb.size != self.dim:
            return None
        x, p, var = self.featurize(emb.reshape(1, -1)), np.empty((1, 1)), np.empty((1, 1))
        with self.lock:  # that model's head alone: a Feedback pays for one head, not the zoo's
            kernels.head_predict(x, self.W[model:model + 1], self.S[model:model + 1], p, var)
        return float(p[0, 0])

    def update(self, emb: np.ndarray, model: int, satisfaction: float, seq: int | None = None) -> None:
        """Learn one label; `seq` (the label's in the log) becomes last_seq in the same step."""
        x = self.featurize(emb)[0]
        with self.lock:
            kernels.head_update(x, float(satisfaction), np.int64(model), self.W, self.S)
            self.labels[model] += 1
            if seq is not None:
                self.last_seq = seq

    def mark(self, seq: int) -> None:
        """A label of the log that trains no head: learned, as far as last_seq goes."""
        with self.lock:
            self.last_seq = seq

    def snapshot(self, model: int) -> tuple[bytes, bytes]:
        with self.lock:
            return self.W[model].tobytes(), self.S[model].tobytes()

    def snapshot_all(self) -> tuple[list[tuple[bytes, bytes]], int]:
        """Every head and the last label they have learned, taken together (a label cannot fall between)."""
        with self.lock:
            return [(self.W[k].tobytes(), self.S[k].tobytes()) for k in range(len(self.models))], self.last_seq

    def restore(self, model: int, W: bytes, S: bytes) -> None:
        w = np.frombuffer(W, dtype=np.float64)
        s = np.frombuffer(S, dtype=np.float64).reshape(self.features, self.features)
        with self.lock:
            self.W[model] = w
            self.S[model] = s
