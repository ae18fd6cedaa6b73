"""The ONNX graph of the prompt encoder (all-MiniLM-L6-v2), written with ``onnx.helper`` from its weights.

The BERT encoder, the attention-masked mean pooling and the L2 normalisation of sentence-transformers, in
standard opset-17 ops (export.py's docstring has the graph's I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
EXPORTER_VERSION = "1"


# ----------------------------------------------------------------------------------------------------- graph
class _GraphBuilder:
    """Tiny helper around onnx.helper that names values and keeps nodes and initializers in order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._counter = 0

    def _fresh(self, hint: str) -> str:
        self._counter += 1
        name = f"{hint}_{self._counter}"
        self._names.add(name)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs: object) -> str:
        out = self._fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n_{out}", **attrs))
        return out


def _hyper(config: dict) -> dict:
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} not divisible by num_attention_heads {heads}")
    act = str(config.get("hidden_act", "gelu"))
    if act != "gelu":
        raise ValueError(f"hidden_act {act!r} not supported (only exact erf GELU, 'gelu')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    return {
        "hidden": hidden,
        "heads": heads,
        "head_dim": hidden // heads,
        "layers": int(config["num_hidden_layers"]),
        "eps": float(config.get("layer_norm_eps", 1e-12)),
        "max_positions": int(config["max_position_embeddings"]),
        "vocab": int(config["vocab_size"]),
    }


def build_model(weights: dict[str, np.ndarray], config: dict, *, strip_prefix: str | None = None) -> onnx.ModelProto:
    """Return the ONNX model (BERT encoder + masked mean pooling + L2 normalisation) for these weights."""
    hp = _hyper(config)
    H, nh, hd = hp["hidden"], hp["heads"], hp["head_dim"]
    eps = hp["eps"]

    if strip_prefix is None:  # checkpoints saved from BertForX carry a "bert." prefix
        strip_prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
    w = {k[len(strip_prefix) :]: v for k, v in weights.items() if k.startswith(strip_prefix)}

    def W(name: str) -> np.ndarray:
        try:
            arr = w[name]
        except KeyError:
            raise KeyError(f"weight {name!r} missing from the checkpoint") from None
        return arr.astype(np.float32, copy=False)

    g = _GraphBuilder()
    f32 = np.float32
    i64 = np.int64

    # shared constants
    c_zero_1d = g.const("c_zero_1d", np.array([0], i64))
    c_one_f = g.const("c_one_f", np.array(1.0, f32))
    c_half_f = g.const("c_half_f", np.array(0.5, f32))
    c_sqrt2_f = g.const("c_sqrt2_f", np.array(math.sqrt(2.0), f32))
    c_neg_f = g.const("c_mask_neg_f", np.array(np.finfo(np.float32).min, f32))
    c_scale_f = g.const("c_attn_scale_f", np.array(hd**-0.5, f32))
    c_split_heads = g.const("c_split_heads_shape", np.array([0, 0, nh, hd], i64))
    c_merge_heads = g.const("c_merge_heads_shape", np.array([0, 0, H], i64))
    c_axes_12 = g.const("c_axes_1_2", np.array([1, 2], i64))
    c_axis_1 = g.const("c_axis_1", np.array([1], i64))
    c_axis_m1 = g.const("c_axis_m1", np.array([-1], i64))
    c_norm_eps = g.const("c_norm_eps_f", np.array(1e-12, f32))
    c_count_min = g.const("c_count_min_f", np.array(1e-9, f32))

    # ---- embeddings: word + position + token_type(0), LayerNorm
    word = g.const("embeddings.word_embeddings.weight", W("embeddings.word_embeddings.weight"))
    pos_table = W("embeddings.position_embeddings.weight") + W("embeddings.token_type_embeddings.weight")[0]
    pos = g.const("embeddings.position_plus_token_type0", pos_table.astype(f32))

    x = g.op("Gather", [word, "input_ids"], "word_emb", axis=0)  # [B,S,H]
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [1] = S
    pos_rows = g.op("Slice", [pos, c_zero_1d, seq_len, c_zero_1d], "pos_emb")  # [S,H]
    x = g.op("Add", [x, pos_rows], "emb_sum")

    def layer_norm(inp: str, prefix: str) -> str:
        gamma = g.const(f"{prefix}.weight", W(f"{prefix}.weight"))
        beta = g.const(f"{prefix}.bias", W(f"{prefix}.bias"))
        return g.op("LayerNormalization", [inp, gamma, beta], "ln", axis=-1, epsilon=eps)

    def linear(inp: str, prefix: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]
        wt = g.const(f"{prefix}.weight_T", np.ascontiguousarray(W(f"{prefix}.weight").T))
        b = g.const(f"{prefix}.bias", W(f"{prefix}.bias"))
        y = g.op("MatMul", [inp, wt], "mm")
        return g.op("Add", [y, b], "lin")

    x = layer_norm(x, "embeddings.LayerNorm")

    # ---- attention mask -> additive bias [B,1,1,S] (0 for tokens, float32 min for padding)
    mask_f = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)  # [B,S]
    inv = g.op("Sub", [c_one_f, mask_f], "mask_inv")
    bias = g.op("Mul", [inv, c_neg_f], "mask_bias")
    bias = g.op("Unsqueeze", [bias, c_axes_12], "mask_bias4d")

    # ---- encoder layers (post-LayerNorm BERT)
    for i in range(hp["layers"]):
        p = f"encoder.layer.{i}"
        q = linear(x, f"{p}.attention.self.query")
        k = linear(x, f"{p}.attention.self.key")
        v = linear(x, f"{p}.attention.self.value")
        q = g.op("Transpose", [g.op("Reshape", [q, c_split_heads], "q_r")], "q_t", perm=[0, 2, 1, 3])  # [B,h,S,d]
        k = g.op("Transpose", [g.op("Reshape", [k, c_split_heads], "k_r")], "k_t", perm=[0, 2, 3, 1])  # [B,h,d,S]
        v = g.op("Transpose", [g.op("Reshape", [v, c_split_heads], "v_r")], "v_t", perm=[0, 2, 1, 3])  # [B,h,S,d]
        scores = g.op("MatMul", [q, k], "scores")
        scores = g.op("Mul", [scores, c_scale_f], "scores_scaled")
        scores = g.op("Add", [scores, bias], "scores_masked")
        probs = g.op("Softmax", [scores], "probs", axis=-1)
        ctx = g.op("MatMul", [probs, v], "ctx")  # [B,h,S,d]
        ctx = g.op("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, c_merge_heads], "ctx_r")  # [B,S,H]
        attn = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attn, x], "res1"), f"{p}.attention.output.LayerNorm")

        inter = linear(x, f"{p}.intermediate.dense")
        # exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))  (the pattern ONNX Runtime fuses into its Gelu kernel)
        e = g.op("Erf", [g.op("Div", [inter, c_sqrt2_f], "gelu_div")], "gelu_erf")
        e = g.op("Add", [e, c_one_f], "gelu_add")
        e = g.op("Mul", [inter, e], "gelu_mul")
        inter = g.op("Mul", [e, c_half_f], "gelu")
        out = linear(inter, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [out, x], "res2"), f"{p}.output.LayerNorm")

    # ---- attention-masked mean pooling (sentence-transformers Pooling, mean_tokens)
    mask3 = g.op("Unsqueeze", [mask_f, c_axis_m1], "mask3")  # [B,S,1]
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3], "masked"), c_axis_1], "tok_sum", keepdims=0)  # [B,H]
    count = g.op("ReduceSum", [mask3, c_axis_1], "tok_count", keepdims=0)  # [B,1]
    count = g.op("Max", [count, c_count_min], "tok_count_clamped")
    mean = g.op("Div", [summed, count], "mean_pool")

    # ---- L2 normalisation (torch.nn.functional.normalize, eps 1e-12)
    norm = g.op("ReduceL2", [mean], "l2", axes=[-1], keepdims=1)
    norm = g.op("Max", [norm, c_norm_eps], "l2_clamped")
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="n_sentence_embedding"))

    graph = helper.make_graph(
        g.nodes,
        "all_minilm_l6_v2_mean_pool_l2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs=[helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="messplus.export_onnx",
        producer_version=EXPORTER_VERSION,
    )
    model.ir_version = 8  # opset 17 needs IR >= 8; keep it low so older ONNX Runtime builds load the file
    return model


# ---------------------------------------------------------------------------------------------------- export
