"""The satisfaction predictor: prompt text -> embedding (ONNX Runtime) -> per-model p_hat (heads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .heads import Heads
from .types import TextEncoder


class Predictor:
    """Encoder plus heads; `predict` is what a Route pays for."""

    def __init__(self, encoder: TextEncoder, heads: Heads) -> None:
        self.encoder = encoder
        self.heads = heads

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = self.encoder.encode(list(texts))
        p, var = self.heads.predict(emb)
        return emb, p, var
