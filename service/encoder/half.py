"""float16 copies of the exported encoder, for ONNX Runtime's CUDA execution provider.

Both start from the fp32 export (export.py) and keep its interface: int64 ``input_ids`` and ``attention_mask``
in, the float32 unit-norm ``sentence_embedding`` out, so ``Encoder`` runs either file unchanged.

- ``plain``: the same graph with float16 weights and activations (``onnxruntime.transformers.float16``, which
  ships with ONNX Runtime). What stays float32: the graph's inputs and output, and the tail after the last
  LayerNorm (the attention-masked mean pooling over up to 512 tokens and the L2 normalisation: ReduceSum, Div,
  ReduceL2, Max), whose sums and tiny epsilons float16 would round. Constants beyond float16's range are clamped:
  the mask's additive bias (float32's min) becomes -65504, after which Softmax still gives padding exp() = 0.
  LayerNorm and Softmax run in float16 with float32 accumulation inside ONNX Runtime's CUDA kernels.
- ``fused``: first ONNX Runtime's transformer optimizer for BERT with its GPU fusions (one Attention node per
  layer, which the CUDA provider runs with its fused multi-head attention kernels, SkipLayerNormalization,
  BiasGelu), then the same float16 conversion. This is the GPU's file; several of its fused float16 kernels exist
  for CUDA only, so the CPU provider may refuse it.

    python -m messplus.service.encoder.half SRC.onnx DST.onnx [--fused]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from .export import _atomic_save

Progress = Callable[[str], None]
TAIL_OPS = ("ReduceSum", "ReduceL2", "Div", "Max", "Mul", "Unsqueeze")  # the pooling and normalisation tail


def _tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the last LayerNorm-like node on the way to the output: the pooling and the L2
    normalisation (what stays float32)."""
    producer = {out: n for n in model.graph.node for out in n.output}
    keep: list[str] = []
    todo = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type not in TAIL_OPS:
            continue  # a graph input, an initializer, or the encoder's last LayerNorm: the tail ends there
        seen.add(node.name)
        keep.append(node.name)
        todo.extend(node.input)
    return keep


def _mask_as_exported_by_torch(model: onnx.ModelProto) -> None:
    """Rewrite two spots of graph.py's attention into what a torch export of BERT has, which ONNX Runtime's
    attention fusion matches: the mask's additive bias as Unsqueeze, Unsqueeze, Cast, Sub(1, .), Mul(., min)
    (graph.py: Cast, Sub, Mul, Unsqueeze; the same values, the ops commute), and the scores divided by
    sqrt(head_dim) instead of multiplied by its inverse."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = list(model.graph.node)
    old = next((n for n in nodes if n.op_type == "Unsqueeze" and n.name.startswith("n_mask_bias4d")), None)
    if old is None:
        return  # not graph.py's pattern: leave it to the optimizer
    mul = next(n for n in nodes if old.input[0] in n.output)
    sub = next(n for n in nodes if mul.input[0] in n.output)
    names = [f"mask_std_{i}" for i in range(5)]
    one_axis = [helper.make_tensor(f"mask_std_axis_{a}", TensorProto.INT64, [1], [a]) for a in (1, 2)]
    model.graph.initializer.extend(one_axis)
    new = [helper.make_node("Unsqueeze", ["attention_mask", one_axis[0].name], [names[0]], name="n_" + names[0]),
           helper.make_node("Unsqueeze", [names[0], one_axis[1].name], [names[1]], name="n_" + names[1]),
           helper.make_node("Cast", [names[1]], [names[2]], name="n_" + names[2], to=TensorProto.FLOAT),
           helper.make_node("Sub", [sub.input[0], names[2]], [names[3]], name="n_" + names[3]),
           helper.make_node("Mul", [names[3], mul.input[1]], [names[4]], name="n_" + names[4])]
    for n in nodes:
        n.input[:] = [names[4] if i == old.output[0] else i for i in n.input]
    keep = [n for n in nodes if n not in (old, mul, sub)]
    # the scores' scale as a Div by sqrt(head_dim), so that the mask's Mul is the only Mul above each Add
    scale = next(i for i in model.graph.initializer if i.name == "c_attn_scale_f")
    inverse = float(numpy_helper.to_array(scale).reshape(-1)[0])
    root = helper.make_tensor("c_attn_sqrt_dim_f", TensorProto.FLOAT, [], [1.0 / inverse])
    model.graph.initializer.append(root)
    for n in keep:
        if n.op_type == "Mul" and n.input[1] == scale.name:
            n.op_type, n.input[1] = "Div", root.name
    del model.graph.node[:]
    model.graph.node.extend(new + keep)


def fuse_for_gpu(model: onnx.ModelProto, *, heads: int, hidden: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ONNX Runtime's BERT fusions for a GPU (pure graph rewriting, no GPU needed); the fused op counts."""
    from onnxruntime.transformers import optimizer

    _mask_as_exported_by_torch(model)

    opt = optimizer.optimize_model(model, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                   use_gpu=True)
    fused = opt.model
    domains = {n.domain for n in fused.graph.node if n.domain} - {o.domain for o in fused.opset_import}
    fused.opset_import.extend(onnx.helper.make_opsetid(d, 1) for d in sorted(domains))  # com.microsoft
    return fused, {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def to_float16(src: Path, dst: Path, *, fused: bool = False, progress: Progress | None = None) -> dict[str, object]:
    """Write the float16 copy of the encoder at ``src`` to ``dst`` (atomically); returns what was done."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    t0 = time.perf_counter()
    model = onnx.load(str(src))
    info: dict[str, object] = {"source": str(src), "fused": fused}
    if fused:
        hidden = int(model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or 384)
        model, info["fused_ops"] = fuse_for_gpu(model, heads=_heads(model, hidden), hidden=hidden)
    tail = _tail_nodes(model)
    wrapped = OnnxModel(model)  # its conversion infers shapes symbolically, so it knows the fused ops too
    wrapped.convert_float_to_float16(keep_io_types=True, node_block_list=tail)
    wrapped.topological_sort()  # the Casts it adds around the float32 tail are appended at the end
    half = wrapped.model
    for prop in model.metadata_props:  # Encoder reads max_position_embeddings from the metadata
        if not any(p.key == prop.key for p in half.metadata_props):
            half.metadata_props.add(key=prop.key, value=prop.value)
    onnx.helper.set_model_props(half, {**{p.key: p.value for p in half.metadata_props},
                                       "float16": "fused" if fused else "plain"})
    onnx.checker.check_model(half)
    _atomic_save(half, Path(dst))
    info.update(float32_tail=tail, bytes=Path(dst).stat().st_size, seconds=round(time.perf_counter() - t0, 2))
    if progress is not None:
        progress(f"float16 encoder {dst} ({info['bytes'] / 1e6:.1f} MB, {'fused' if fused else 'plain'}) in "
                 f"{info['seconds']} s")
    return info


def ensure_float16(src: Path, progress: Progress | None = None) -> Path:
    """The fused float16 copy beside the float32 export ``src`` (``<stem>.fp16-fused.onnx``), written when it is
    absent or older than ``src`` (a re-export after an upgrade of messplus or of the weights left the old copy)."""
    dst = Path(src).with_name(Path(src).stem + ".fp16-fused.onnx")
    if not dst.is_file() or dst.stat().st_mtime < Path(src).stat().st_mtime:
        to_float16(Path(src), dst, fused=True, progress=progress)
    return dst


def _heads(model: onnx.ModelProto, hidden: int) -> int:
    """Attention heads of the exported graph: the split-heads Reshape's constant [0, 0, heads, head_dim]."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == "c_split_heads_shape":
            return int(numpy_helper.to_array(init)[2])
    return 12 if hidden == 384 else max(1, hidden // 64)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="the fp32 export (python -m messplus.service.encoder.export)")
    ap.add_argument("dst", type=Path)
    ap.add_argument("--fused", action="store_true", help="ONNX Runtime's BERT GPU fusions first")
    args = ap.parse_args(argv)
    to_float16(args.src, args.dst, fused=args.fused, progress=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
