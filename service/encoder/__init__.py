"""The prompt encoder: all-MiniLM-L6-v2 on ONNX Runtime (encoder.py), exported from the packaged weights
without torch (export.py)."""

from .encoder import DEFAULT_ONNX_NAME, Encoder, default_model_dir
from .export import ensure_exported, export_minilm

__all__ = ["DEFAULT_ONNX_NAME", "Encoder", "default_model_dir", "ensure_exported", "export_minilm"]
