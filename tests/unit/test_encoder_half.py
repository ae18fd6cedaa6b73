"""The float16 copies of the encoder (service/encoder/half.py): valid graphs with the fp32 file's interface, the
fused one with ONNX Runtime's attention, and embeddings the CPU provider computes within float16's rounding of
the fp32 ones. Their speed is the GPU's business (bench/gpu_route.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from messplus.service.encoder import Encoder, default_model_dir
from messplus.service.encoder.half import ensure_float16, to_float16

PROMPTS = ["What is 2 + 2?", "Write a Python function that reverses a linked list in place.",
           "Question: The sun is a star. Which is closest to Earth? Answer: " * 12, "ok"]


@pytest.fixture(scope="module")
def fp32(encoder_onnx: Path) -> np.ndarray:
    return Encoder.load(encoder_onnx, default_model_dir() / "tokenizer.json", threads=1).encode(PROMPTS)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_float16_copy_keeps_the_interface_and_the_embeddings(tmp_path: Path, encoder_onnx: Path, fp32: np.ndarray,
                                                             fused: bool) -> None:
    dst = tmp_path / "half.onnx"
    info = to_float16(encoder_onnx, dst, fused=fused)
    assert dst.stat().st_size < 0.55 * encoder_onnx.stat().st_size  # the weights are half as wide
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io == {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64,
                  "sentence_embedding": TensorProto.FLOAT}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["float16"] == ("fused" if fused else "plain") and props["max_position_embeddings"] == "512"
    weights = [i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
               and np.prod(i.dims) > 1000]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    # the pooling and normalisation tail stays float32: ReduceSum, ReduceL2 and the final Div are kept
    kept = {n.op_type for n in model.graph.node if n.name in info["float32_tail"]}  # type: ignore[operator]
    assert {"ReduceSum", "ReduceL2", "Div"} <= kept
    if fused:
        ops = {n.op_type for n in model.graph.node}
        assert info["fused_ops"]["Attention"] == 6 and {"Attention", "SkipLayerNormalization"} <= ops  # type: ignore[index]
    half = Encoder.load(dst, default_model_dir() / "tokenizer.json", threads=1, providers=["CPUExecutionProvider"])
    got = half.encode(PROMPTS)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * fp32, axis=1)
    assert cos.min() > 0.999, cos


def test_float16_copy_is_written_again_when_its_source_is_newer(tmp_path: Path, encoder_onnx: Path) -> None:
    import os
    import shutil

    src = tmp_path / "enc.onnx"
    shutil.copyfile(encoder_onnx, src)
    dst = ensure_float16(src)
    assert dst == tmp_path / "enc.fp16-fused.onnx" and dst.is_file()
    first = dst.stat().st_mtime_ns
    assert ensure_float16(src).stat().st_mtime_ns == first  # up to date: kept
    os.utime(dst, ns=(first - 10**10, first - 10**10))  # the source re-exported after the copy was made
    os.utime(src, ns=(first, first))
    assert ensure_float16(src).stat().st_mtime_ns > first - 10**10
